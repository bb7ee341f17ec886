"""`make bench`'s driver (`python -m tools.bench`): each part's result is written once, naming the machine and how
long the part took; a failing part is marked in SUMMARY.md and the exit status; `--only` keeps the other parts'
results in the table."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from tools.bench import __main__ as driver


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """Two small real parts, importable as modules: one that measures something, one that fails."""
    pkg = tmp_path / "benchparts"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "counting.py").write_text(textwrap.dedent("""
        import time

        def run(out_dir):
            t = time.perf_counter()
            total = sum(range(100_000))
            return {"total": total, "ms": round((time.perf_counter() - t) * 1000, 3), "rows": [{"n": 1}]}
    """))
    (pkg / "broken.py").write_text("def run(out_dir):\n    raise RuntimeError('no device')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(driver, "PARTS", {"counting": "benchparts.counting", "broken": "benchparts.broken"})
    yield
    for name in ("benchparts", "benchparts.counting", "benchparts.broken"):
        sys.modules.pop(name, None)


def test_each_part_is_written_once_with_the_machine(parts, tmp_path) -> None:
    out = tmp_path / "results"
    assert driver.main(["--out", str(out), "--only", "counting"]) == 0
    saved = json.loads((out / "counting.json").read_text())
    assert saved["total"] == sum(range(100_000)) and saved["rows"] == [{"n": 1}]
    assert saved["machine"]["cpus"] >= 1 and "platform" in saved["machine"] and saved["seconds"] >= 0
    summary = (out / "SUMMARY.md").read_text()
    assert "## counting" in summary and f"| total | {sum(range(100_000))} |" in summary
    assert "| rows.0.n | 1 |" in summary
    assert "broken" not in summary


def test_a_failing_part_is_reported_and_the_others_kept(parts, tmp_path) -> None:
    out = tmp_path / "results"
    assert driver.main(["--out", str(out), "--only", "counting"]) == 0
    assert driver.main(["--out", str(out), "--only", "broken"]) == 1
    assert not (out / "broken.json").exists()
    summary = (out / "SUMMARY.md").read_text()
    assert "## broken\n\nFAILED, see the log." in summary
    assert "## counting" in summary, "--only refreshes one part and keeps the table of the others"

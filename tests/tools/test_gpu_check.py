"""`make gpu-check` cannot rot on machines without a GPU: its dry run goes through every step on the CPU (the gpu
tests collected, the stage benchmarks, the compile variants, a served session) and writes the same files. It runs
the way a GPU node without a package index runs it (tools/gpu_kit.py): through the kit's runner, in a Python that
has only the kit's and the image's distributions, so a new import the kit lacks fails here."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from tools import gpu_kit

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python")]))


def _python_of_a_gpu_node(root: Path) -> Path:
    """A virtual environment holding only the kit's and the image's distributions (linked from this one): what the
    check imports beyond them is missing there, as it would be on the node, for its child processes too."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    (site,) = root.glob("lib/python*/site-packages")
    allowed = gpu_kit.allowed_distributions(f"{sys.version_info.major}.{sys.version_info.minor}")
    own = {gpu_kit._canonical(n) for n in gpu_kit.OWN}  # the runner puts the checkout on the path, as on the node
    linked = set()
    for dist in metadata.distributions():
        name = gpu_kit._canonical(dist.metadata["Name"])
        if name not in allowed or name in own:
            continue
        linked.add(name)
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    assert {"torch", "grpcio", "protobuf", "pydantic"} <= linked and not linked & {"av", "aiortc", "grpcio-tools"}
    return root / "bin" / "python"


def test_dry_run_goes_through_every_step_and_writes_the_results(tmp_path):
    kit = tmp_path / "kit"
    kit.mkdir()  # no wheels: this machine has the kit's packages installed; the module is built in the checkout
    shutil.copy2(next((ROOT / "services/renderer").glob("_paste*.so")), kit / gpu_kit.PASTE_MODULE)
    out, archive = tmp_path / "out", tmp_path / "back" / "gpu-check.tar.gz"
    python = _python_of_a_gpu_node(tmp_path / "node")
    proc = subprocess.run([python, "-m", "tools.gpu_kit", "run", "--kit", str(kit), "--archive", str(archive),
                           "--dry-run", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with tarfile.open(archive) as tar:  # one file to carry back, holding every result
        assert {"gpu-summary.md", "gpu-serving.json", "gpu-environment.json"} <= set(tar.getnames())
    for part in ("environment", "tests", "renderer", "motion", "audio", "compile", "postprocess", "serving"):
        result = json.loads((out / f"gpu-{part}.json").read_text())
        assert "error" not in result, (part, result.get("error"), result.get("traceback"))
    summary = (out / "gpu-summary.md").read_text()
    assert "DRY RUN" in summary
    env = json.loads((out / "gpu-environment.json").read_text())
    if env["tensorrt"] is None:
        assert any(s.startswith("TensorRT") for s in env["skipped"]), "a missing TensorRT must be reported"
    if "CUDAExecutionProvider" not in env["onnxruntime_providers"]:
        assert any(s.startswith("onnxruntime-gpu") for s in env["skipped"])
    assert any(s.startswith("PyAV") for s in env["skipped"]), "PyAV is outside the kit, and must be reported"
    tests = json.loads((out / "gpu-tests.json").read_text())
    assert tests["ok"] and tests["collected"] > 0, tests["summary"]
    compiled = json.loads((out / "gpu-compile.json").read_text())
    assert {r["variant"] for r in compiled["rows"]} >= {"eager", "compile-eager"}
    assert all("error" not in r for r in compiled["rows"]), compiled["rows"]
    assert all(r["max_abs_diff_vs_eager"] < 1e-3 for r in compiled["rows"] if "ms_per_frame" in r)
    serving = json.loads((out / "gpu-serving.json").read_text())
    first = serving["levels"][0]
    assert first["sessions"] == 1 and first["frames_complete"] and not first["errors"], first
    for part in ("renderer", "motion", "audio"):
        rows = json.loads((out / f"gpu-{part}.json").read_text())["rows"]
        assert rows and all("error" not in r for r in rows), (part, rows)
    # the torch paste-back (the GPU path, here on CPU tensors) gives the CPU kernel's bytes
    post = json.loads((out / "gpu-postprocess.json").read_text())["rows"]
    assert [r["size"] for r in post] == ["512x512", "1920x1080"], post
    assert all(r["device_vs_cpu_max_diff"] == 0 and r["paste_back_device_ms"] > 0 for r in post), post


def test_without_a_gpu_the_real_run_stops_and_says_how_to_check_it(tmp_path):
    import torch

    if torch.cuda.is_available():
        return  # on a GPU machine the real run is `make gpu-check` itself
    proc = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--out", str(tmp_path)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--dry-run" in proc.stderr


def test_the_kit_carries_the_pinned_versions_and_leaves_torch_to_the_image():
    kit = gpu_kit.kit_distributions("3.12")
    pins = gpu_kit.pinned()
    for name in gpu_kit.KIT:
        key = gpu_kit._canonical(name)
        assert kit[key] == pins[key], f"{name}: the kit would carry {kit[key]}, pyproject.toml pins {pins[key]}"
    assert "pydantic-core" in kit, "pydantic needs its own exact pydantic-core, whatever the image holds"
    assert not set(kit) & {"torch", "numpy", "av", "typing-extensions"}, sorted(kit)


def test_the_runner_without_a_kit_says_how_to_make_one(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tools.gpu_kit", "run", "--kit", str(tmp_path / "none"), "--dry-run"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "make gpu-kit" in proc.stderr, proc.stderr

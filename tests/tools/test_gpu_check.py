"""`make gpu-check` cannot rot on machines without a GPU: its dry run goes through every step on the CPU (the gpu
tests collected, the stage benchmarks, the compile variants, a served session) and writes the same files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python")]))


def test_dry_run_goes_through_every_step_and_writes_the_results(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--dry-run", "--out", str(tmp_path)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for part in ("environment", "tests", "renderer", "motion", "audio", "compile", "postprocess", "serving"):
        result = json.loads((tmp_path / f"gpu-{part}.json").read_text())
        assert "error" not in result, (part, result.get("error"), result.get("traceback"))
    summary = (tmp_path / "gpu-summary.md").read_text()
    assert "DRY RUN" in summary
    env = json.loads((tmp_path / "gpu-environment.json").read_text())
    if env["tensorrt"] is None:
        assert any(s.startswith("TensorRT") for s in env["skipped"]), "a missing TensorRT must be reported"
    if "CUDAExecutionProvider" not in env["onnxruntime_providers"]:
        assert any(s.startswith("onnxruntime-gpu") for s in env["skipped"])
    tests = json.loads((tmp_path / "gpu-tests.json").read_text())
    assert tests["ok"] and tests["collected"] > 0, tests["summary"]
    compiled = json.loads((tmp_path / "gpu-compile.json").read_text())
    assert {r["variant"] for r in compiled["rows"]} >= {"eager", "compile-eager"}
    assert all("error" not in r for r in compiled["rows"]), compiled["rows"]
    assert all(r["max_abs_diff_vs_eager"] < 1e-3 for r in compiled["rows"] if "ms_per_frame" in r)
    serving = json.loads((tmp_path / "gpu-serving.json").read_text())
    first = serving["levels"][0]
    assert first["sessions"] == 1 and first["frames_complete"] and not first["errors"], first
    for part in ("renderer", "motion", "audio"):
        rows = json.loads((tmp_path / f"gpu-{part}.json").read_text())["rows"]
        assert rows and all("error" not in r for r in rows), (part, rows)
    # the torch paste-back (the GPU path, here on CPU tensors) gives the CPU kernel's bytes
    post = json.loads((tmp_path / "gpu-postprocess.json").read_text())["rows"]
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

"""Shared fixtures: the golden folder, a real Redis, GPU detection."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def golden_dir() -> Path:
    return Path(os.environ.get("DITTO_GOLDEN_DIR", ROOT.parent / "shared" / "golden")).resolve()


def golden_case(name: str) -> tuple[dict, dict[str, np.ndarray], Path]:
    """(case.json, io.npz arrays, folder) of a golden case; skips when the folder lacks it."""
    folder = golden_dir() / name
    if not (folder / "case.json").is_file():
        pytest.skip(f"golden case {name} not present in {golden_dir()}")
    case = json.loads((folder / "case.json").read_text())
    with np.load(folder / "io.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return case, arrays, folder


def scaled_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max|got - ref| / max(1, max|ref|), the golden README's metric."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"shape {got.shape} != reference {ref.shape}"
    return float(np.max(np.abs(got - ref)) / max(1.0, float(np.max(np.abs(ref))))) if ref.size else 0.0


def has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis server (REDIS_URL, default 127.0.0.1:6379). Fails, not skips, when none answers: CI starts one."""
    import redis

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError as err:
        pytest.fail(f"no Redis at {url} ({err}); start one: redis-server --daemonize yes --save ''")
    finally:
        client.close()
    return url


@pytest.fixture
def unique_prefix(request) -> str:
    """A Redis key prefix private to one test."""
    import uuid

    return f"ditto-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    import sys

    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "ditto_app.cli", *args], cwd=ROOT, env=e, capture_output=True,
                          text=True, timeout=timeout)


def pytest_configure(config):
    # Structured logs at warning level in the test process (the default structlog config prints debug lines).
    from ditto import telemetry
    from ditto.config import TelemetrySettings

    telemetry.setup(TelemetrySettings(log_level="warning", log_format="console"), "ditto-tests")

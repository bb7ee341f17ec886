"""Shared fixtures: the parity data, a real Redis, GPU detection."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tools.golden_pack import load_case

ROOT = Path(__file__).resolve().parents[1]


# The public parity data ships with the repository (tests/golden/README.md); DITTO_GOLDEN_DIR points elsewhere.
GOLDEN_IN_REPO = ROOT / "tests" / "golden"


def golden_dir() -> Path:
    return Path(os.environ.get("DITTO_GOLDEN_DIR") or GOLDEN_IN_REPO).resolve()


def golden_case(name: str) -> tuple[dict, dict[str, np.ndarray], Path]:
    """(case.json, io.npz arrays, folder) of a golden case. A case missing from the repository's own data is a
    failure; it is a skip only when DITTO_GOLDEN_DIR names another folder on purpose."""
    folder = golden_dir() / name
    if not (folder / "case.json").is_file():
        if os.environ.get("DITTO_GOLDEN_DIR"):
            pytest.skip(f"golden case {name} is not in DITTO_GOLDEN_DIR={golden_dir()} (unset it to use tests/golden)")
        pytest.fail(f"golden case {name} is missing from {GOLDEN_IN_REPO}: the parity data ships with the "
                    "repository; restore it with `git checkout -- tests/golden`")
    case, arrays = load_case(folder)  # io.npz plus the inputs regenerate.json rebuilds (tests/golden/README.md)
    return case, arrays, folder


def scaled_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max|got - ref| / max(1, max|ref|), the metric of tests/golden/README.md."""
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
def redis_url(request) -> str:
    """A real Redis server. With REDIS_URL set, that one (it must answer); otherwise a throwaway `redis-server` on a
    free port, started for this test session and stopped after it (pytest-redis), so the tests never write to a Redis
    the user runs."""
    import redis

    url = os.environ.get("REDIS_URL")
    if not url:
        if not request.config.getini("redis_exec"):
            pytest.fail("no redis-server on PATH: install it (Debian/Ubuntu: apt-get install redis-server; "
                        "`make setup` does this as root) or set REDIS_URL to a Redis you run")
        proc = request.getfixturevalue("redis_proc")
        return f"redis://{proc.host}:{proc.port}/0"
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError as err:
        pytest.fail(f"REDIS_URL is set but no Redis answers there ({err}); start it or unset REDIS_URL")
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real Redis Cluster (3 primaries, 3 replicas, tests/redis_cluster.py) started for the first test that needs
    it and stopped after the session."""
    import shutil

    from tests.redis_cluster import LocalRedisCluster

    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        pytest.fail("redis-server and redis-cli must be on PATH for the Redis Cluster tests (apt-get install "
                    "redis-server)")
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster) -> str:
    """The URL of one node of the test Redis Cluster (any node will do)."""
    return redis_cluster.url


@pytest.fixture
def unique_prefix(request) -> str:
    """A Redis key prefix private to one test."""
    import uuid

    return f"ditto-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["memory", "redis", "redis_cluster"])
async def bus(request, unique_prefix):
    """Each bus implementation in turn (the in-memory one, Redis Streams on the real Redis of `redis_url`, and on a
    real Redis Cluster), under a key prefix private to the test, emptied afterwards."""
    from ditto.bus import MemoryBus, RedisBus

    if request.param == "memory":
        b = MemoryBus(unique_prefix)
        yield b
    else:
        url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
        b = RedisBus(url, unique_prefix)
        yield b
        await b.purge()
    await b.close()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    import sys

    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "ditto_app.cli", *args], cwd=ROOT, env=e, capture_output=True,
                          text=True, timeout=timeout)


def _import_hypothesis_eagerly() -> None:
    """Hypothesis imports some of its own modules lazily, deep inside a running test. Being a pytest plugin, its
    modules go through pytest's assertion rewriter, which then parses them with a deep stack; on CPython 3.11.7 that
    can fail with "SystemError: AST constructor recursion depth mismatch". Importing them all here, at a shallow
    stack, makes that impossible (hypothesis.extra needs optional packages and is left out)."""
    import importlib
    import pkgutil

    import hypothesis

    for mod in pkgutil.walk_packages(hypothesis.__path__, "hypothesis."):
        if mod.name.startswith("hypothesis.extra"):
            continue
        try:
            importlib.import_module(mod.name)
        except ImportError:
            continue


@pytest.fixture(scope="session", autouse=True)
def _hypothesis_imported_up_front() -> None:
    _import_hypothesis_eagerly()  # before the first test, at a shallow stack (not at plugin initialisation)


def pytest_configure(config):
    # Structured logs at warning level in the test process (the default structlog config prints debug lines).
    from ditto import telemetry
    from ditto.config import TelemetrySettings

    telemetry.setup(TelemetrySettings(log_level="warning", log_format="console"), "ditto-tests")

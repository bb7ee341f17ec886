"""What a user gets from `pip install` without make: the small client package in an empty virtualenv (no torch)
talks to a real `ditto serve`; the main package's wheel carries every layer and the generated stubs; the committed
stubs match the protos."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_committed_stubs_match_the_protos():
    res = subprocess.run([sys.executable, "-m", "tools.gen_protos", "--check"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def _portrait_png() -> bytes:
    import cv2
    from skimage import data

    return cv2.imencode(".png", cv2.resize(data.astronaut()[:, :, ::-1], (160, 128)))[1].tobytes()


@pytest.fixture
def served(tmp_path):
    """`ditto serve` (tiny profile, synthetic weights) in its own process, as a user runs it."""
    from ditto_app.cluster import serve_process

    with serve_process(tmp_path / "serve.log") as server:
        yield server.address


def test_the_client_package_alone_converses_with_a_real_server(tmp_path, served):
    env_dir = tmp_path / "client-venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    import shutil

    client_src = tmp_path / "client-src"  # a copy: pip builds in place, and no build/ should land in the checkout
    shutil.copytree(ROOT / "clients" / "python", client_src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", str(client_src)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    (tmp_path / "portrait.png").write_bytes(_portrait_png())
    script = textwrap.dedent(f"""
        import importlib.util, math, struct
        from ditto_client import AvatarClient
        from ditto_client.v1 import avatar_pb2
        for heavy in ("torch", "numpy", "ditto", "services"):
            assert importlib.util.find_spec(heavy) is None, heavy + " must not come with the client"
        from ditto_client.timeline import SpeechTimeline  # plain Python until speech needs resampling
        timeline = SpeechTimeline()
        timeline.push(bytes(1280), 16000)
        assert timeline.take_chunk(640) == bytes(1280)
        rate = 16000
        pcm = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 220 * i / rate)
                                             * (0.5 + 0.5 * math.sin(2 * math.pi * 4 * i / rate))))
                       for i in range(int(0.8 * rate)))
        chunks = [pcm[i:i + 6400] for i in range(0, len(pcm), 6400)]
        with AvatarClient({served!r}) as client:
            avatar = client.register_avatar({str(tmp_path / 'portrait.png')!r})
            kinds = [m.WhichOneof("kind") for m in client.converse(
                avatar.avatar_id, chunks, idle_policy=avatar_pb2.IDLE_POLICY_FREEZE)]
        print(kinds.count("frame"), kinds[0], kinds[-1])
    """)
    res = subprocess.run([str(py), "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split() == ["20", "started", "final"]


def test_the_main_wheel_carries_every_layer_and_imports_outside_the_checkout(tmp_path):
    # built from a copy of the checkout's files (what git tracks or would track), so no build/ lands in the checkout
    import shutil

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    src = tmp_path / "src"
    for name in files:
        if (ROOT / name).is_file() and not name.startswith("tests/golden/"):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = (tmp_path / "dist").glob("ditto_service-*.whl")
    # the extension is built on the stable ABI: one wheel for every CPython from 3.11 (a GPU image's 3.12 too)
    assert "-cp311-abi3-" in wheel.name, wheel.name
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("ditto/bus/worker.py", "ditto_app/cli.py", "ditto_training/trainer.py",
                   "services/orchestrator/service.py", "services/renderer/networks/decoder.py"):
        assert needed in names, f"{needed} missing from the wheel"
    assert "services/renderer/_paste.abi3.so" in names, "the compiled paste-back extension is missing from the wheel"
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "Requires-Dist: ditto-client==0.1.0" in zipfile.ZipFile(wheel).read(meta).decode()
    target = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                          str(wheel)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    check = ("import ditto_client, ditto_app, ditto_app.cli; ditto_app.cli.build_parser(); "
             "import numpy as np; from services.renderer.putback import PutBack; "
             "from services.renderer import paste_kernel; "
             "out = PutBack()(np.zeros((64, 64, 3), np.uint8), np.full((512, 512, 3), 200, np.float32), "
             "np.array([[0.1, 0, 4], [0, 0.1, 4], [0, 0, 1]], np.float32)); assert out[30, 30, 0] == 200; "
             "print(ditto_app.__file__); print(paste_kernel._paste.__file__)")
    res = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(target)))
    assert res.returncode == 0, res.stderr
    assert all(line.startswith(str(target)) for line in res.stdout.split()), res.stdout

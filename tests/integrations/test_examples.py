"""The copyable examples run: examples/pipecat_bot.py end to end against a `ditto serve` process; the LiveKit example
imports (it needs a LiveKit server to run, which these machines cannot have)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serving_helpers import portrait_png

from ditto_app.cluster import stop_group
from ditto_client import AvatarClient

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.e2e
def test_pipecat_example_talks_with_a_face(tmp_path):
    port = _free_port()
    log = tmp_path / "serve.log"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'clients' / 'python'}")
    with open(log, "wb") as f:
        server = subprocess.Popen([sys.executable, "-m", "ditto_app.cli", "serve", "--weights", "synthetic",
                                   "--profile", "tiny", "--device", "cpu", "--port", str(port)],
                                  cwd=ROOT, env=env, stdout=f,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while b"READY orchestrator" not in log.read_bytes():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        with AvatarClient(f"127.0.0.1:{port}") as client:
            avatar = client.register_avatar(portrait_png())
        out = subprocess.run([sys.executable, "examples/pipecat_bot.py"], cwd=ROOT, capture_output=True, text=True,
                             timeout=600, env=dict(env, DITTO_ADDRESS=f"127.0.0.1:{port}",
                                                   DITTO_AVATAR_ID=avatar.avatar_id))
        assert out.returncode == 0, out.stderr[-3000:]
        m = re.search(r"video frames: (\d+), speech delivered with them: ([\d.]+) s", out.stdout)
        assert m, out.stdout[-2000:]
        assert int(m.group(1)) >= 50 and float(m.group(2)) == pytest.approx(2.0)
    finally:
        stop_group(server, 30)


def test_livekit_example_imports():
    out = subprocess.run([sys.executable, "-c", "import runpy; runpy.run_path('examples/livekit_agent.py')"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'clients' / 'python'}"))
    assert out.returncode == 0, out.stderr[-3000:]

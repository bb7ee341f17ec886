"""The copyable examples run: examples/pipecat_bot.py end to end against a `ditto serve` process; the LiveKit example
imports (it needs a LiveKit server to run, which these machines cannot have)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from serving_helpers import portrait_png

from ditto_app.cluster import serve_process
from ditto_client import AvatarClient

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_pipecat_example_talks_with_a_face(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'clients' / 'python'}")
    with serve_process(tmp_path / "serve.log", env=env) as server:
        with AvatarClient(server.address) as client:
            avatar = client.register_avatar(portrait_png())
        out = subprocess.run([sys.executable, "examples/pipecat_bot.py"], cwd=ROOT, capture_output=True, text=True,
                             timeout=600, env=dict(env, DITTO_ADDRESS=server.address,
                                                   DITTO_AVATAR_ID=avatar.avatar_id))
        assert out.returncode == 0, out.stderr[-3000:]
        m = re.search(r"video frames: (\d+), speech delivered with them: ([\d.]+) s", out.stdout)
        assert m, out.stdout[-2000:]
        assert int(m.group(1)) >= 50 and float(m.group(2)) == pytest.approx(2.0)


def test_livekit_example_imports():
    out = subprocess.run([sys.executable, "-c", "import runpy; runpy.run_path('examples/livekit_agent.py')"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'clients' / 'python'}"))
    assert out.returncode == 0, out.stderr[-3000:]

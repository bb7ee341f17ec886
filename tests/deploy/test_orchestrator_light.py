"""The orchestrator needs no model stack. Its image installs a light requirement set (made by the Dockerfile from
pyproject.toml, as the build does); here every process of a real orchestrator (`ditto serve` over Redis, orchestrator
only, and the decoder helpers it starts) runs with only those distributions importable: an import of anything else
fails, as it would in the image, and is recorded. It must start, decode a client's files in its helpers, and never
even try torch or the other model libraries."""

from __future__ import annotations

import importlib.metadata as md
import io
import json
import os
import re
import subprocess
import sys
import time
import wave
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from deploy_support import DEPLOY, ROOT
from packaging.requirements import Requirement

from ditto import rpc
from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc

MODEL_STACK = {"torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "transformers", "tensorrt", "scipy",
               "skimage", "accelerate", "safetensors", "ai_edge_litert", "huggingface_hub"}
OWN_PACKAGES = {"ditto", "ditto_app", "ditto_training", "ditto_client", "services", "integrations", "tools"}

# Installed in every process by sitecustomize: a top-level import outside ALLOWED fails as if not installed (and is
# written down), so optional imports of a library take their fallback, as they would in the image.
SITECUSTOMIZE = '''
import json, os, sys
_allowed = set(json.load(open(os.environ["LIGHT_ALLOWED"])))
_log = os.environ["LIGHT_REFUSED"]

class _OnlyTheLightSet:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if path is None and top == name and top not in _allowed and top not in sys.stdlib_module_names \\
                and not top.startswith("_"):
            with open(_log, "a") as f:
                f.write(top + "\\n")
            raise ModuleNotFoundError(f"No module named {top!r} (not in the orchestrator image)", name=top)
        return None

sys.meta_path.insert(0, _OnlyTheLightSet())
'''


def orchestrator_requirements(tmp_path: Path) -> list[str]:
    """requirements-orchestrator.txt as the Dockerfile's `sources` stage writes it (its RUN python -c, run here)."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text().replace("\\\n", "")
    code = re.search(r'RUN python -c "(import tomllib;.*?)"\n', text, re.S)
    assert code, "the sources stage's requirement script"
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    subprocess.run([sys.executable, "-c", code.group(1)], cwd=tmp_path, check=True)
    return (tmp_path / "requirements-orchestrator.txt").read_text().split()


def closure(requirements: list[str]) -> set[str]:
    """The distributions pip installs for `requirements` (their dependencies, recursively, markers evaluated)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in md.requires(req.name) or ()]
        except md.PackageNotFoundError:
            pass
    return seen


def importable_tops(dists: set[str]) -> set[str]:
    by_dist: dict[str, set[str]] = {}
    for top, names in md.packages_distributions().items():
        for d in names:
            by_dist.setdefault(d.lower().replace("_", "-"), set()).add(top)
    return set().union(*(by_dist.get(d, set()) for d in dists)) | OWN_PACKAGES


def wav_bytes(seconds: float = 0.5, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((0.2 * np.sin(np.arange(int(seconds * rate)) / 10) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


@pytest.fixture
def light_env(tmp_path) -> dict[str, str]:
    reqs = orchestrator_requirements(tmp_path)
    names = {Requirement(r).name for r in reqs}
    assert not names & {"torch", "onnx", "onnxruntime", "onnxscript", "transformers", "scipy", "accelerate"}, names
    allowed = importable_tops(closure(reqs))
    assert not allowed & MODEL_STACK, allowed & MODEL_STACK
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (tmp_path / "allowed.json").write_text(json.dumps(sorted(allowed)))
    env = dict(os.environ)
    env.update(LIGHT_ALLOWED=str(tmp_path / "allowed.json"), LIGHT_REFUSED=str(tmp_path / "refused.txt"),
               PYTHONPATH=os.pathsep.join([str(site), str(ROOT), str(ROOT / "clients" / "python")]))
    return env


def refused(env: dict[str, str]) -> set[str]:
    path = Path(env["LIGHT_REFUSED"])
    return set(path.read_text().split()) if path.exists() else set()


def test_importing_the_orchestrator_loads_no_model_library(light_env):
    code = ("import pkgutil, importlib, sys, services.orchestrator as o\n"
            "for m in pkgutil.iter_modules(o.__path__): importlib.import_module('services.orchestrator.' + m.name)\n"
            f"print(sorted(k for k in sys.modules if k.partition('.')[0] in {sorted(MODEL_STACK)!r}))")
    out = subprocess.run([sys.executable, "-c", code], env=light_env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"
    assert not refused(light_env) & MODEL_STACK


def test_a_running_orchestrator_and_its_decoders_need_only_the_light_set(light_env, redis_url, tmp_path):
    env = {**light_env, "DITTO_BUS__KIND": "redis", "REDIS_URL": redis_url, "DITTO_BUS__PREFIX": "light-orch",
           "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "orchestrator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ditto_app.cli", "serve", "--port", "0"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (m := re.search(rb"READY orchestrator grpc=\S+:(\d+)", log.read_bytes())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        address = f"127.0.0.1:{int(m.group(1))}"
        with grpc.insecure_channel(address, options=rpc.channel_options()) as ch:
            stub = avatar_pb2_grpc.AvatarStub(ch)
            # a portrait and an audio file are decoded in the helpers; what fails next is only the missing stages
            png = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()
            with pytest.raises(grpc.RpcError) as err:
                stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=png, filename="p.png"), timeout=120)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert "no renderer" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Render(avatar_pb2.RenderRequest(avatar_id="a" * 32, audio=wav_bytes(),
                                                          audio_filename="a.wav"), timeout=120))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()  # decoded, then no avatar
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "onnxruntime" not in maps
    finally:
        proc.terminate()
        proc.wait(30)
    assert not refused(env) & MODEL_STACK, refused(env)

"""ONNX export runs in ONNX Runtime with the torch results; checkpoints load strictly with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ditto.weights import CheckpointError
from services.motion_generator.diffusion import ddim_sample
from services.motion_generator.export import export_onnx
from services.motion_generator.models import (
    OnnxBackend,
    TorchBackend,
    load_motion_decoder,
    open_backend,
    save_checkpoint,
    synthetic_motion_decoder,
)
from services.motion_generator.synthetic import write_synthetic


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> tuple[TorchBackend, OnnxBackend]:
    model = synthetic_motion_decoder("tiny", seed=11)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "lmdm_tiny.onnx")
    return TorchBackend(model), OnnxBackend(path, "tiny")


def test_onnx_one_step_matches_torch(tiny_onnx) -> None:
    tb, ob = tiny_onnx
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 80, 265)).astype(np.float32)
        cf = rng.standard_normal((batch, 265)).astype(np.float32)
        cond = rng.standard_normal((batch, 80, 1103)).astype(np.float32)
        t = np.array([999, 500, 0][:batch], np.int64)
        pn_t, x0_t = tb.one_step(x, cf, cond, t)
        pn_o, x0_o = ob.one_step(x, cf, cond, t)
        assert np.max(np.abs(x0_o - x0_t)) / max(1, np.abs(x0_t).max()) <= 1e-4
        assert np.max(np.abs(pn_o - pn_t)) / max(1, np.abs(pn_t).max()) <= 1e-4
    # the numpy DDIM loop around either backend gives the same window
    cf, cond = cf[:1], cond[:1]
    x_T = rng.standard_normal((1, 80, 265)).astype(np.float32)
    noise = rng.standard_normal((9, 1, 80, 265)).astype(np.float32)
    a = ddim_sample(tb.one_step, cf, cond, 10, x_T, noise)
    b = ddim_sample(ob.one_step, cf, cond, 10, x_T, noise)
    assert np.max(np.abs(a - b)) / max(1, np.abs(a).max()) <= 1e-3


def test_checkpoint_round_trip_and_errors(tmp_path: Path) -> None:
    model = synthetic_motion_decoder("tiny", seed=3)
    path = save_checkpoint(model, tmp_path / "trained.pth", step=10)
    loaded = load_motion_decoder(path, "tiny")
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    # missing key: the message names the file and the key
    sd = dict(model.state_dict())
    del sd["final_layer.bias"]
    torch.save({"model_state_dict": sd}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth.*final_layer\.bias"):
        load_motion_decoder(tmp_path / "missing.pth", "tiny")
    # wrong profile: a shape mismatch names the key
    with pytest.raises(CheckpointError, match="null_cond_embed"):
        load_motion_decoder(path, "full")
    # truncated file
    data = path.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth.*truncated or corrupt"):
        load_motion_decoder(tmp_path / "truncated.pth", "tiny")
    # wrong container
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="model_state_dict"):
        load_motion_decoder(tmp_path / "plain.pth", "tiny")
    # rotary copies that disagree
    sd = dict(model.state_dict())
    sd["seqTransDecoder.stack.1.rotary.freqs"] = sd["rotary.freqs"] + 1
    torch.save({"model_state_dict": sd}, tmp_path / "rotary.pth")
    with pytest.raises(CheckpointError, match="rotary"):
        load_motion_decoder(tmp_path / "rotary.pth", "tiny")
    with pytest.raises(CheckpointError, match="not found"):
        load_motion_decoder(tmp_path / "nope.pth", "tiny")


def test_write_synthetic_is_official_layout(tmp_path: Path) -> None:
    written = write_synthetic(tmp_path, "tiny", seed=4)
    assert written == tmp_path / "ditto_pytorch/models/lmdm_v0.4_hubert.pth"
    backend = open_backend(tmp_path, "tiny")
    assert isinstance(backend, TorchBackend)
    ref = synthetic_motion_decoder("tiny", seed=4)
    for (k, a), (_, b) in zip(ref.state_dict().items(), backend.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k

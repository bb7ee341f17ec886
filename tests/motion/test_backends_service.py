"""The motion stage on each backend: ONNX Runtime gives the PyTorch stage's frames, the ONNX export is cached per
checkpoint, TensorRT fails clearly where it cannot run and matches PyTorch on a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from ditto.bus.memory import MemoryBus
from ditto.weights import OFFICIAL_FILES, CheckpointError
from ditto_app.stages import build_stage
from ditto_app.synthetic import ensure_synthetic
from services.motion_generator.backends import (
    BackendError,
    TensorRTBackend,
    cached_onnx,
    onnx_cache_path,
    open_stage_backend,
)
from services.motion_generator.generator import KeypointBatch, MotionGenerator, SessionSettings
from services.motion_generator.models import TorchBackend, save_checkpoint, synthetic_motion_decoder

from .helpers import avatar, features

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def weights() -> Path:
    return ensure_synthetic("tiny")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def stage_frames(generator: MotionGenerator, n_features: int = 70) -> KeypointBatch:
    """One streamed session (two pushes and the end), as the stage's handler drives it."""
    session = generator.session(avatar(), SessionSettings(seed=5, steps=4))
    feats = features(n_features)
    parts = [session.push(feats[:30]), session.push(feats[30:]), session.end()]
    return KeypointBatch.concat(parts, 0)


def test_onnxruntime_stage_matches_torch_stage_and_caches_its_export(weights, cache) -> None:
    torch_stage = build_stage("motion_generator", weights, "tiny", MemoryBus(), "cpu", "torch", cache)
    ort_stage = build_stage("motion_generator", weights, "tiny", MemoryBus(), "cpu", "onnxruntime", cache)
    assert torch_stage.session_stage.generator.backend.name == "torch"
    assert ort_stage.session_stage.generator.backend.name == "onnxruntime"

    ref = stage_frames(torch_stage.session_stage.generator)
    got = stage_frames(ort_stage.session_stage.generator)
    assert len(ref) == len(got) > 0
    np.testing.assert_array_equal(got.source_index, ref.source_index)
    for name in ("motion", "x_d", "x_s"):
        a, b = getattr(ref, name), getattr(got, name)
        err = np.max(np.abs(a - b)) / max(1.0, float(np.abs(a).max()))
        assert err <= 1e-4, f"{name}: ONNX Runtime differs from torch by {err:.2e}"

    # the export was written once into cache/motion, keyed by the checkpoint's content, and a second stage reuses it
    exported = sorted((cache / "motion").glob("*.onnx"))
    assert len(exported) == 1 and exported[0].name.startswith("lmdm-tiny-")
    stamp = exported[0].stat().st_mtime_ns
    again = build_stage("motion_generator", weights, "tiny", MemoryBus(), "cpu", "onnxruntime", cache)
    assert again.session_stage.generator.backend.name == "onnxruntime"
    assert sorted((cache / "motion").glob("*.onnx")) == exported
    assert exported[0].stat().st_mtime_ns == stamp
    assert not list((cache / "motion").glob(".*partial*"))
    # same cached file for the same checkpoint content
    assert cached_onnx(weights / OFFICIAL_FILES["lmdm"].path, "tiny", cache / "motion") == exported[0]


def test_export_cache_key_follows_checkpoint_content(weights, tmp_path) -> None:
    # a retrained checkpoint at the same path must not be served from the old export; a copy elsewhere may be
    ours = weights / OFFICIAL_FILES["lmdm"].path
    copy = tmp_path / "copy.pth"
    copy.write_bytes(ours.read_bytes())
    assert onnx_cache_path(copy, "tiny", tmp_path) == onnx_cache_path(ours, "tiny", tmp_path)
    retrained = save_checkpoint(synthetic_motion_decoder("tiny", seed=9), tmp_path / "copy.pth")
    assert onnx_cache_path(retrained, "tiny", tmp_path) != onnx_cache_path(ours, "tiny", tmp_path)
    assert onnx_cache_path(ours, "full", tmp_path) != onnx_cache_path(ours, "tiny", tmp_path)


def test_unknown_backend_and_missing_checkpoint_are_clear(weights, tmp_path) -> None:
    with pytest.raises(ValueError, match="motion backend must be one of"):
        build_stage("motion_generator", weights, "tiny", MemoryBus(), "cpu", "openvino", tmp_path)
    with pytest.raises(CheckpointError, match=r"nothing\.pth: file not found"):
        open_stage_backend(tmp_path / "nothing.pth", "tiny", "cpu", "onnxruntime", tmp_path)


@pytest.mark.skipif(HAS_TRT and torch.cuda.is_available(), reason="TensorRT can run here: the GPU test covers it")
def test_tensorrt_without_tensorrt_or_cuda_is_a_clear_error(weights, tmp_path) -> None:
    expected = "CUDA" if HAS_TRT else r"needs the TensorRT 10 Python package.*pip install"
    with pytest.raises(BackendError, match=expected):
        build_stage("motion_generator", weights, "tiny", MemoryBus(), "auto", "tensorrt", tmp_path)
    with pytest.raises(BackendError, match=expected):
        TensorRTBackend(tmp_path / "any.onnx", "tiny", "cuda", tmp_path)
    # it fails before spending time on an export
    assert not (tmp_path / "motion").exists()


@pytest.mark.gpu
def test_tensorrt_matches_torch_and_caches_its_engine(weights, tmp_path) -> None:
    pytest.importorskip("tensorrt")
    ckpt = weights / OFFICIAL_FILES["lmdm"].path
    onnx_path = cached_onnx(ckpt, "tiny", tmp_path)
    trt_backend = TensorRTBackend(onnx_path, "tiny", "cuda", tmp_path / "trt", max_batch=2)
    ref = TorchBackend(synthetic_motion_decoder("tiny"), "cpu")
    rng = np.random.default_rng(0)
    for batch in (1, 3):                # 3 > max_batch: run in two engine calls
        x = rng.standard_normal((batch, 80, 265)).astype(np.float32)
        cf = rng.standard_normal((batch, 265)).astype(np.float32)
        cond = rng.standard_normal((batch, 80, 1103)).astype(np.float32)
        t = np.array([999, 500, 0][:batch], np.int64)
        for a, b in zip(ref.one_step(x, cf, cond, t), trt_backend.one_step(x, cf, cond, t), strict=True):
            assert a.shape == b.shape
            assert np.max(np.abs(a - b)) / max(1.0, np.abs(a).max()) <= 1e-3    # fp32, no TF32
    engines = sorted((tmp_path / "trt").glob("*.engine"))
    assert len(engines) == 1
    stamp = engines[0].stat().st_mtime_ns
    TensorRTBackend(onnx_path, "tiny", "cuda", tmp_path / "trt", max_batch=2)
    assert sorted((tmp_path / "trt").glob("*.engine")) == engines and engines[0].stat().st_mtime_ns == stamp

    # the stage on TensorRT gives the torch stage's frames
    trt_stage = build_stage("motion_generator", weights, "tiny", MemoryBus(), "cuda", "tensorrt", tmp_path)
    assert trt_stage.session_stage.generator.backend.name == "tensorrt"
    got = stage_frames(trt_stage.session_stage.generator)
    want = stage_frames(MotionGenerator(ref))
    err = np.max(np.abs(got.motion - want.motion)) / max(1.0, float(np.abs(want.motion).max()))
    assert err <= 1e-3

"""HuBERT backends: our ONNX export of a small random HuBERT has the reference's names and shapes, runs in ONNX
Runtime and matches transformers; batched and per-window layouts agree; a local checkpoint folder loads."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from ditto.weights import OFFICIAL_FILES, CheckpointError
from services.audio_encoder.hubert import OnnxHubert, TensorRTHubert, TorchHubert
from services.audio_encoder.hubert_model import HubertShape, load_hubert_folder, random_hubert
from services.audio_encoder.synthetic import write_synthetic


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    return (0.1 * np.random.default_rng(3).standard_normal((3, 6480))).astype(np.float32)


def test_export_has_reference_interface(tiny_onnx):
    s = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    (inp,), (out,) = s.get_inputs(), s.get_outputs()
    assert (inp.name, inp.type, inp.shape[0]) == ("input_values", "tensor(float)", 1)
    assert out.name == "encoding_out" and len(out.shape) == 2 and out.shape[1] == 1024
    for n in (3240, 6480, 12960):  # the reference's TensorRT profile range
        y = s.run(None, {"input_values": np.zeros((1, n), np.float32)})[0]
        assert y.shape == ((n - 400) // 320 + 1, 1024)


def test_onnx_matches_transformers(tiny_onnx, tiny_onnx_batched, windows):
    torch_out = TorchHubert(random_hubert(HubertShape.tiny(), seed=0)).encode_windows(windows)
    assert torch_out.shape == (3, 20, 1024)
    loop = OnnxHubert(tiny_onnx)
    batched = OnnxHubert(tiny_onnx_batched)
    assert not loop.batched and batched.batched
    scale = max(1.0, float(np.abs(torch_out).max()))
    for got in (loop.encode_windows(windows), batched.encode_windows(windows)):
        assert got.shape == (3, 20, 1024)
        assert float(np.abs(got - torch_out).max()) / scale < 1e-4


def test_checkpoint_folder_round_trip(tmp_path, windows):
    model = random_hubert(HubertShape.tiny(), seed=5)
    model.save_pretrained(tmp_path / "ckpt")
    ref = TorchHubert(model).encode_windows(windows)
    np.testing.assert_allclose(TorchHubert.from_folder(tmp_path / "ckpt").encode_windows(windows), ref, atol=1e-5)
    with pytest.raises(CheckpointError, match="config.json"):
        load_hubert_folder(tmp_path)


def test_write_synthetic_layout(tmp_path, tiny_onnx, windows):
    path = write_synthetic(tmp_path, "tiny", seed=0)
    assert path == tmp_path / OFFICIAL_FILES["hubert"].path
    # same profile and seed as the fixture: the same network
    np.testing.assert_allclose(OnnxHubert(path).encode_windows(windows[:1]),
                               OnnxHubert(tiny_onnx).encode_windows(windows[:1]), atol=1e-6)


def test_bad_model_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        OnnxHubert(tmp_path / "missing.onnx")
    broken = tmp_path / "hubert.onnx"
    broken.write_bytes(b"\x08\x01garbage")
    with pytest.raises(CheckpointError, match="cannot load"):
        OnnxHubert(broken)


def test_wrong_window_shape(tiny_onnx):
    with pytest.raises(ValueError, match="6480"):
        OnnxHubert(tiny_onnx).encode_windows(np.zeros((2, 6400), np.float32))


@pytest.mark.gpu
def test_tensorrt_fp32_matches_onnxruntime(tiny_onnx, tiny_onnx_batched, windows, tmp_path):
    ref = OnnxHubert(tiny_onnx).encode_windows(windows)
    for path in (tiny_onnx, tiny_onnx_batched):
        got = TensorRTHubert(path, "cuda", max_batch=4, cache_dir=tmp_path).encode_windows(windows)
        assert float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max())) < 1e-3


@pytest.mark.gpu
def test_onnxruntime_cuda_matches_cpu(tiny_onnx_batched, windows):
    ref = OnnxHubert(tiny_onnx_batched).encode_windows(windows)
    got = OnnxHubert(tiny_onnx_batched, device="cuda").encode_windows(windows)
    assert float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max())) < 1e-3


def test_cli_exports_a_transformers_checkpoint_folder(tmp_path, monkeypatch, windows):
    from ditto_app.features_cli import resolve_onnx

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = random_hubert(HubertShape.tiny(), seed=7)
    model.save_pretrained(tmp_path / "ckpt")
    path = resolve_onnx(str(tmp_path / "ckpt"), "full")
    assert path.is_file() and str(path).startswith(str(tmp_path / "cache"))
    assert resolve_onnx(str(tmp_path / "ckpt"), "full") == path  # exported once, then reused
    ref = TorchHubert(model).encode_windows(windows)
    got = OnnxHubert(path).encode_windows(windows)
    assert float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max())) < 1e-4

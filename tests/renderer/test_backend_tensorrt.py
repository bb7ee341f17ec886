"""TensorRT 10 backend (GPU machines) and the GPU paths of the PyTorch and ONNX Runtime backends."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from services.renderer.models import RendererConfig, RendererModels
from tests.conftest import scaled_error

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _inputs(batch: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(21)
    x = {
        "img": torch.rand(batch, 3, 256, 256, generator=gen),
        "f_s": torch.randn(batch, *RendererConfig.tiny().feature_shape, generator=gen),
        "x_s": 0.3 * torch.randn(batch, 21, 3, generator=gen),
        "x_d": 0.3 * torch.randn(batch, 21, 3, generator=gen),
    }
    return {k: v.to(device) for k, v in x.items()}


def _compare(models: RendererModels, ref: RendererModels, fp16_tol: float) -> None:
    x = _inputs(3, str(models.device))
    r = {k: v.cpu() for k, v in x.items()}
    pairs = {
        "appearance": (models.appearance(x["img"]), ref.appearance(r["img"]), fp16_tol),
        "stitch": (models.stitch(x["x_s"], x["x_d"]), ref.stitch(r["x_s"], r["x_d"]), 1e-2),
        "warp_decode": (models.warp_decode(x["f_s"], x["x_s"], x["x_d"]),
                        ref.warp_decode(r["f_s"], r["x_s"], r["x_d"]), fp16_tol),
    }
    got_m, ref_m = models.motion(x["img"]), ref.motion(r["img"])
    # fp32 on every backend (TF32 convolutions allowed, as cuDNN and TensorRT default to)
    pairs.update({f"motion.{k}": (got_m[k], ref_m[k], 5e-3) for k in ref_m})
    for name, (got, want, tol) in pairs.items():
        assert got.device.type == models.device.type, name
        err = scaled_error(got.float().cpu().numpy(), want.numpy())
        assert err <= tol, f"{name}: scaled error {err:.3g} > {tol}"


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"TensorRT 10 Python package.*not installed"):
        RendererModels.load("synthetic", profile="tiny", backend="tensorrt")


@pytest.mark.gpu
def test_torch_cuda_autocast_matches_cpu() -> None:
    ref = RendererModels.load("synthetic", profile="tiny", seed=3)
    models = RendererModels.load("synthetic", profile="tiny", seed=3, device="cuda")
    _compare(models, ref, fp16_tol=2e-2)


@pytest.mark.gpu
def test_onnxruntime_cuda_matches_cpu(tmp_path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    ref = RendererModels.load("synthetic", profile="tiny", seed=3)
    models = RendererModels.load("synthetic", profile="tiny", seed=3, device="cuda", backend="onnxruntime",
                                 cache_dir=tmp_path)
    _compare(models, ref, fp16_tol=5e-3)        # fp32 graphs; TF32 convolutions


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed")
def test_tensorrt_matches_torch_and_caches_engines(tmp_path) -> None:
    ref = RendererModels.load("synthetic", profile="tiny", seed=3)
    models = RendererModels.load("synthetic", profile="tiny", seed=3, device="cuda", backend="tensorrt",
                                 cache_dir=tmp_path)
    _compare(models, ref, fp16_tol=2e-2)
    engines = sorted((tmp_path / "trt").glob("*.engine"))
    assert len(engines) == 5
    stamps = [p.stat().st_mtime_ns for p in engines]
    again = RendererModels.load("synthetic", profile="tiny", seed=3, device="cuda", backend="tensorrt",
                                cache_dir=tmp_path)
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "trt").glob("*.engine"))] == stamps
    # Batches above the engines' profile (16) are split into chunks.
    x = _inputs(1, "cuda")
    big = again.stitch(x["x_s"].expand(20, 21, 3), x["x_d"].expand(20, 21, 3))
    assert big.shape == (20, 21, 3) and torch.allclose(big[0], big[19])

"""Post-processing on the GPU (services/renderer/gpu_post.py): nvJPEG through torchvision, the paste-back on CUDA
tensors, and the CPU fallback where either is missing. Kept apart from the encoder tests so that the GPU check's
offline kit (no PyAV) collects it."""

from __future__ import annotations

import numpy as np
import pytest

from services.renderer.encode import JpegEncoder, make_encoder

from .pictures import decode_rgb, photo


def test_gpu_jpeg_falls_back_to_the_cpu_without_cuda():
    import torch

    from services.renderer.gpu_post import GpuJpegEncoder, gpu_jpeg_available

    assert not gpu_jpeg_available("cpu")
    assert isinstance(make_encoder(0, 320, 240, device="cpu"), JpegEncoder)
    if not torch.cuda.is_available():
        assert not gpu_jpeg_available("cuda")
        assert isinstance(make_encoder(0, 320, 240, device="cuda"), JpegEncoder)
    img = photo()
    # numpy frames (a CPU paste-back) go through the CPU encoder, so the GPU encoder is a drop-in
    assert GpuJpegEncoder(90).encode(img) == JpegEncoder(90).encode(img)


@pytest.mark.gpu
def test_paste_back_and_jpeg_on_the_gpu_match_the_cpu_path():
    import torch

    from services.renderer.gpu_post import GpuJpegEncoder, gpu_jpeg_available
    from services.renderer.putback import PutBack

    assert gpu_jpeg_available("cuda"), "install the gpu extra (torchvision) on GPU machines"
    rng = np.random.default_rng(0)
    frame_np = photo(1080, 1920)
    render = rng.uniform(0, 255, (512, 512, 3)).astype(np.float32)
    m = np.array([[1.3, -0.1, 700], [0.1, 1.3, 150], [0, 0, 1]], np.float32)
    pb = PutBack()
    cpu = pb(frame_np, render, m)
    gpu = pb.blend_torch(torch.from_numpy(frame_np).cuda(), torch.from_numpy(render).cuda(), m)
    assert np.abs(gpu.cpu().numpy().astype(int) - cpu).max() <= 1  # CUDA may contract the blend into FMAs
    enc = GpuJpegEncoder(90)
    assert isinstance(make_encoder(0, 1920, 1080, device="cuda"), GpuJpegEncoder)
    jpgs = enc.encode_many([gpu, gpu])
    assert len(jpgs) == 2 and jpgs[0][:2] == b"\xff\xd8"
    back = decode_rgb(jpgs[0])
    assert np.abs(back.astype(int) - decode_rgb(JpegEncoder(90).encode(cpu))).mean() < 2.0

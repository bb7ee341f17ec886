"""Post-processing on the GPU: paste-back (`PutBack.blend_torch`, the exact warp table) and JPEG encoding
(`torchvision.io.encode_jpeg` on CUDA tensors, nvJPEG), so a GPU renderer hands the CPU only compressed bytes.

torchvision is in the `gpu` extra (the GPU image), not in the CPU install: the wheel on the package index is built
against the CUDA torch and does not import beside the pinned CPU torch. Everything here falls back to the CPU path
(`services.renderer.encode.JpegEncoder`, `PutBack.__call__`) when there is no CUDA device or no torchvision.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

import numpy as np

from .encode import Encoding, JpegEncoder


def is_cuda(device: Any) -> bool:
    return str(device).startswith("cuda")


@functools.cache
def _torchvision_jpeg() -> Any:
    """torchvision.io.encode_jpeg when torchvision imports and CUDA is there, else None."""
    try:
        import torch
        from torchvision.io import encode_jpeg  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except Exception:  # ImportError, or a torchvision built for another torch (an undefined-symbol OSError)
        return None
    return encode_jpeg if torch.cuda.is_available() else None


def gpu_jpeg_available(device: Any) -> bool:
    return is_cuda(device) and _torchvision_jpeg() is not None


class GpuJpegEncoder:
    """JPEG on the GPU for frames that are CUDA tensors ([H, W, 3] uint8); numpy frames and RGBA (PNG) go through
    the CPU encoder, so it is a drop-in `FrameEncoder`. `device_frames` tells the renderer to keep the pasted
    frames on the GPU for it."""

    encoding = Encoding.JPEG
    device_frames = True

    def __init__(self, quality: int = 90) -> None:
        self.cpu = JpegEncoder(quality)
        self.quality = quality
        self.backend = "torchvision-cuda"

    def encode(self, frame: Any) -> bytes:
        if isinstance(frame, np.ndarray) or frame.shape[-1] == 4:
            return self.cpu.encode(frame if isinstance(frame, np.ndarray) else frame.cpu().numpy())
        return self.encode_many([frame])[0]

    def encode_many(self, frames: list[Any]) -> list[bytes]:
        """Several CUDA frames in one call (torchvision batches them on the device)."""
        encode_jpeg = _torchvision_jpeg()
        chw = [f.permute(2, 0, 1).contiguous() for f in frames]
        data = encode_jpeg(chw, quality=self.quality)
        return [bytes(d.cpu().numpy().tobytes()) for d in data]

    def flush(self) -> list[bytes]:
        return []


class DeviceFrames:
    """Source frames of avatars, uploaded once to the GPU (LRU, bounded by count)."""

    def __init__(self, device: Any, max_frames: int = 512) -> None:
        self.device = device
        self.max_frames = max_frames
        self._frames: OrderedDict[tuple[str, int], Any] = OrderedDict()

    def get(self, avatar_id: str, index: int, frame: np.ndarray) -> Any:
        import torch

        key = (avatar_id, index)
        t = self._frames.get(key)
        if t is None:
            t = self._frames[key] = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device)
            while len(self._frames) > self.max_frames:
                self._frames.popitem(last=False)
        self._frames.move_to_end(key)
        return t

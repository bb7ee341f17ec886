"""Frame encoders (raw RGB, JPEG, H.264 access units) of the streamed frames (docs/model.md §7.4).

- `RawEncoder`: the pixels as they are (RGB or RGBA, C order).
- `JpegEncoder`: one JPEG per frame (OpenCV, quality 1..100). RGBA frames are encoded as PNG, since JPEG has no
  alpha channel.
- `H264Encoder`: one Annex-B access unit per frame with no frame delay (x264 `zerolatency`, no B-frames),
  yuv420p, CRF 18 as the reference's writer. The first unit carries SPS/PPS and an IDR.

Whole video files (MP4 with audio, WebM with alpha) are written by the kernel's `ditto.media.writers`.
"""

from __future__ import annotations

import enum
from fractions import Fraction
from typing import Any, Protocol

# PyAV (FFmpeg) is imported where an H.264 stream or an MP4 is made, not here: a process that serves JPEG or raw
# frames never loads FFmpeg's libraries, and the GPU check's offline kit (tools/gpu_kit.py) can leave PyAV out.
import cv2
import numpy as np

from ditto.media.writers import EncodeError, check_frame, x264_options
from ditto.pipeline import FPS

__all__ = ["EncodeError", "Encoding", "FrameEncoder", "H264Encoder", "JpegEncoder", "RawEncoder", "jpeg_backends",
           "make_encoder"]


class Encoding(enum.IntEnum):
    """Frame encodings (values as in `ditto.v1.FrameEncoding`; 0 means JPEG)."""

    RAW_RGB = 1
    JPEG = 2
    H264 = 3


class FrameEncoder(Protocol):
    encoding: Encoding

    def encode(self, frame: np.ndarray) -> bytes: ...

    def flush(self) -> list[bytes]: ...


class RawEncoder:
    encoding = Encoding.RAW_RGB

    def encode(self, frame: np.ndarray) -> bytes:
        return check_frame(frame).tobytes()

    def flush(self) -> list[bytes]:
        return []


def jpeg_backends() -> list[str]:
    """JPEG encoders available here: "opencv" (OpenCV's libjpeg-turbo, after an RGB -> BGR copy) and "simplejpeg"
    (libjpeg-turbo taking RGB as it is) when installed."""
    names = ["opencv"]
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        pass
    else:
        names.append("simplejpeg")
    return names


class JpegEncoder:
    """JPEG, 4:2:0 chroma (as OpenCV's default), through libjpeg-turbo. The default backend is simplejpeg when
    installed: the same library as OpenCV's build, minus the RGB -> BGR copy OpenCV needs (bench/results/
    postprocess.json has the CPU milliseconds of each)."""

    encoding = Encoding.JPEG

    def __init__(self, quality: int = 90, backend: str | None = None):
        if not 1 <= quality <= 100:
            raise EncodeError(f"JPEG quality must be 1..100, got {quality}")
        available = jpeg_backends()
        if backend is not None and backend not in available:
            raise EncodeError(f"JPEG backend {backend!r} is not installed here; available: {available}")
        self.quality = quality
        self.backend = backend or available[-1]

    def encode(self, frame: np.ndarray) -> bytes:
        frame = check_frame(frame)
        if frame.shape[2] == 4:  # JPEG has no alpha: keep it losslessly
            ok, buf = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGBA2BGRA))
        elif self.backend == "simplejpeg":
            import simplejpeg

            return bytes(simplejpeg.encode_jpeg(frame, quality=self.quality, colorspace="RGB",
                                                colorsubsampling="420"))
        else:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise EncodeError("OpenCV could not encode the frame")
        return buf.tobytes()

    def flush(self) -> list[bytes]:
        return []


class H264Encoder:
    """Streaming H.264: `encode(frame)` returns exactly one Annex-B access unit for that frame."""

    encoding = Encoding.H264

    def __init__(self, width: int, height: int, fps: int = FPS, crf: int = 18, gop: int = 50):
        if width % 2 or height % 2:
            raise EncodeError(f"H.264 yuv420p needs even width and height, got {width}x{height}")
        import av

        self.width, self.height = width, height
        ctx: Any = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = Fraction(1, fps)
        ctx.framerate = Fraction(fps, 1)
        ctx.gop_size = gop
        ctx.options = x264_options(crf, low_latency=True)
        self._ctx = ctx
        self._pts = 0

    def encode(self, frame: np.ndarray) -> bytes:
        frame = check_frame(frame, (3,))
        if frame.shape[:2] != (self.height, self.width):
            raise EncodeError(f"frame is {frame.shape[1]}x{frame.shape[0]}, the stream is {self.width}x{self.height}")
        import av

        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        vf.pts = self._pts
        self._pts += 1
        return b"".join(bytes(p) for p in self._ctx.encode(vf))

    def flush(self) -> list[bytes]:
        return [bytes(p) for p in self._ctx.encode(None)]


def make_encoder(encoding: int, width: int, height: int, jpeg_quality: int = 90, fps: int = FPS,
                 device: str = "cpu") -> FrameEncoder:
    """An encoder for a `ditto.v1.FrameEncoding` value (0 = JPEG). On a CUDA device with torchvision (the `gpu`
    extra), JPEG is encoded on the GPU; otherwise on the CPU."""
    if encoding in (0, Encoding.JPEG):
        from .gpu_post import GpuJpegEncoder, gpu_jpeg_available

        if gpu_jpeg_available(device):
            return GpuJpegEncoder(jpeg_quality or 90)
        return JpegEncoder(jpeg_quality or 90)
    if encoding == Encoding.RAW_RGB:
        return RawEncoder()
    if encoding == Encoding.H264:
        return H264Encoder(width, height, fps)
    raise EncodeError(f"unknown frame encoding {encoding}")

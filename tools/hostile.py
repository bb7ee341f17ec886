"""Hostile inputs and memory readings, for the hardening tests and the reliability benchmark: a `ditto serve` process
whose memory can be measured, inputs that are cheap to make (a few KB that expand to gigabytes), and memory readings
from /proc (psutil when installed)."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from ditto_app.cluster import ServeProcess, serve_process

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


# ------------------------------------------------------------------------------------------------ memory
def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_mb(pid: int) -> float:
    """Resident memory of a process now."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / MB
    except ImportError:
        return _status_kb(pid, "VmRSS") / 1024


def peak_mb(pid: int) -> float:
    """Peak resident memory since the last `reset_peak` (VmHWM)."""
    return _status_kb(pid, "VmHWM") / 1024


def reset_peak(pid: int) -> None:
    """Start a new peak measurement: writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class MemoryReading:
    before: float
    peak: float
    after: float

    @property
    def peak_growth(self) -> float:
        return self.peak - self.before

    @property
    def retained(self) -> float:
        return self.after - self.before


@contextlib.contextmanager
def measure(pid: int) -> Iterator[MemoryReading]:
    reading = MemoryReading(rss_mb(pid), 0.0, 0.0)
    reset_peak(pid)
    yield reading
    reading.peak = peak_mb(pid)
    reading.after = rss_mb(pid)


# ------------------------------------------------------------------------------------------------ a server process
@contextlib.contextmanager
def ditto_serve(tmp: Path, env: dict[str, str] | None = None, redis_url: str | None = None,
                timeout: float = 240) -> Iterator[ServeProcess]:
    """`ditto serve` (embedded, tiny synthetic weights; or the orchestrator alone with `redis_url`) as its own
    process, so its memory is its own."""
    from ditto_app.synthetic import ensure_synthetic

    ensure_synthetic("tiny")
    e = dict(os.environ, PYTHONUNBUFFERED="1", DITTO_TELEMETRY__LOG_LEVEL="info", DITTO_BUS__SLOTS="4",
             DITTO_MODEL__DEVICE="cpu")
    e.update(env or {})
    args = ["--redis", redis_url] if redis_url else ["--weights", "synthetic", "--profile", "tiny"]
    with serve_process(tmp / f"serve-{len(list(tmp.glob('serve-*.log')))}.log", args, e, timeout, 20) as server:
        yield server


def channel(address: str) -> grpc.aio.Channel:
    from ditto import rpc

    return grpc.aio.insecure_channel(address, options=rpc.channel_options())


# ------------------------------------------------------------------------------------------------ hostile inputs
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of width x height (all black): about 1 KB per 10 megapixels on the wire,
    width x height x 3 bytes once decoded to colour."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts)) + \
        _png_chunk(b"IEND", b"")


def static_video(frames: int, width: int = 1280, height: int = 720, fps: int = 25) -> bytes:
    """An H.264 MP4 of `frames` identical frames of the bundled portrait (a face, as registration requires), on
    black: tens of KB that decode to frames x width x height x 3 bytes."""
    import av
    import cv2
    from skimage import data

    buf = io.BytesIO()
    img = np.zeros((height, width, 3), np.uint8)
    side = min(height, width)
    img[(height - side) // 2:(height + side) // 2, (width - side) // 2:(width + side) // 2] = cv2.resize(
        data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "35"})
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        for _ in range(frames):
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def silent_flac(seconds: float, rate: int = 8000, strip_length: bool = False) -> bytes:
    """FLAC of `seconds` of silence (about 0.5 KB per minute). `strip_length` zeroes the total-samples field of
    STREAMINFO, as a streamed FLAC has: then the length is known only by decoding."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as c:
        s = c.add_stream("flac", rate=rate, layout="mono")
        block = rate * 10
        silence = np.zeros((1, block), np.int16)
        for i in range(int(seconds * rate) // block):
            f = av.AudioFrame.from_ndarray(silence, format="s16", layout="mono")
            f.sample_rate = rate
            f.pts = i * block
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = bytearray(buf.getvalue())
    if strip_length:
        # fLaC, block header (4), STREAMINFO: the 64 bits at byte 18 hold rate(20) channels(3) bps(5) samples(36)
        word = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
        data[18:26] = word.to_bytes(8, "big")
    return bytes(data)

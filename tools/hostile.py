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


def decoder_helpers(pid: int) -> set[int]:
    """The pids of process `pid`'s decoder helper processes (`python -m ditto.media.helper`), from /proc."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # gone meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state
        if parent == pid and b"ditto.media.helper" in cmdline:
            found.add(int(proc.name))
    return found


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


def huge_png(width: int, height: int, colour: bool = False) -> bytes:
    """A valid PNG of width x height (all black): 1-bit grayscale, about 1 KB per 10 megapixels on the wire; or
    `colour`, 8-bit RGB, about 3 KB per megapixel (and some seconds to make), which decoders that keep the file's
    own pixel format (FFmpeg) also expand to width x height x 3 bytes."""
    row = b"\0" * (1 + (3 * width if colour else (width + 7) // 8))  # filter byte + the row's bytes
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8 if colour else 1, 2 if colour else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts)) + \
        _png_chunk(b"IEND", b"")


def _portrait(height: int, width: int) -> np.ndarray:
    """The bundled portrait (scikit-image's astronaut: a face, as registration requires) in the middle of a black
    height x width RGB frame."""
    import cv2
    from skimage import data

    img = np.zeros((height, width, 3), np.uint8)
    side = min(height, width)
    img[(height - side) // 2:(height + side) // 2, (width - side) // 2:(width + side) // 2] = cv2.resize(
        data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    return img


def static_video(frames: int, width: int = 1280, height: int = 720, fps: int = 25) -> bytes:
    """An H.264 MP4 of `frames` identical frames of the bundled portrait on black: tens of KB that decode to
    frames x width x height x 3 bytes."""
    import av

    buf = io.BytesIO()
    img = _portrait(height, width)
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


def silent_flac(seconds: float, rate: int = 8000, strip_length: bool = False, layout: str = "mono") -> bytes:
    """FLAC of `seconds` of silence (about 0.5 KB per minute and channel). `strip_length` zeroes the total-samples
    field of STREAMINFO, as a streamed FLAC has: then the length is known only by decoding."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as c:
        s = c.add_stream("flac", rate=rate, layout=layout)
        channels = len(s.layout.channels)
        block = rate * 2
        silence = np.zeros((1, block * channels), np.int16)
        for i in range(int(seconds * rate) // block):
            f = av.AudioFrame.from_ndarray(silence, format="s16", layout=layout)
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


# the usual layout for each channel count (FFmpeg names)
LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def _tone(rate: int, seconds: float, channels: int) -> np.ndarray:
    """A 220 Hz tone, a little louder on each further channel, int16 [n, channels]."""
    t = np.arange(int(rate * seconds)) / rate
    x = 0.2 * np.sin(2 * np.pi * 220 * t)
    return (np.stack([x * (0.5 + 0.5 * c / channels) for c in range(channels)], 1) * 32767).astype("<i2")


def wav_without_layout(channels: int, rate: int = 16000, seconds: float = 1.0) -> bytes:
    """A plain PCM WAV (no channel mask, as Python's `wave` and many tools write it): FFmpeg sees "N channels"."""
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(_tone(rate, seconds, channels).tobytes())
    return buf.getvalue()


def encoded_audio(codec: str, container: str, layout: str, rate: int = 48000, seconds: float = 1.0) -> bytes:
    """A tone in `layout` encoded with `codec` (flac, libopus, aac, pcm_s16le, ...) into `container`."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as c:
        s = c.add_stream(codec, rate=rate, layout=layout)
        _encode_tone(c, s, layout, rate, seconds)
    return buf.getvalue()


def _encode_tone(container, stream, layout: str, rate: int, seconds: float) -> None:
    import av

    pcm = _tone(rate, seconds, len(stream.layout.channels))
    step = 960 if stream.codec_context.name == "libopus" else 1024
    for start in range(0, pcm.shape[0], step):
        f = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[start:start + step]).reshape(1, -1), format="s16",
                                       layout=layout)
        f.sample_rate, f.pts = rate, start
        for p in stream.encode(f):
            container.mux(p)
    for p in stream.encode():
        container.mux(p)


def video_with_audio(layout: str, audio_codec: str = "pcm_s16le", container: str = "matroska", frames: int = 3,
                     size: int = 256, rate: int = 48000) -> bytes:
    """A short H.264 video of the bundled portrait with an audio track in `layout` (what a phone's clip of a face
    carries)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as c:
        v = c.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        v.width, v.height, v.pix_fmt = size, size, "yuv420p"
        a = c.add_stream(audio_codec, rate=rate, layout=layout)
        portrait = _portrait(size, size)
        for i in range(frames):
            vf = av.VideoFrame.from_ndarray(portrait, format="rgb24")
            vf.pts = i
            for p in v.encode(vf):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        _encode_tone(c, a, layout, rate, frames / 25)
    return buf.getvalue()


def jpeg_with_icc_profile(width: int, height: int, profile_bytes: int, seed: int = 0, noise: int = 2) -> bytes:
    """A small JPEG of the bundled portrait carrying a colour profile of `profile_bytes` (APP2 segments; up to
    ~16 MB): tiny pixels, a large upload. Different `seed`s give different pictures (noise of +-`noise` levels on
    every pixel; more noise, a larger lossless copy)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = _portrait(height, width).astype(np.int16) + rng.integers(-noise, noise + 1, (height, width, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, icc_profile=rng.integers(0, 256, profile_bytes, dtype=np.uint8).tobytes())
    return buf.getvalue()


def decoder_fault(action: str = "abort") -> bytes:
    """Bytes that make a decoder helper fail on purpose (`action`: abort, hang, exit), when the server process was
    started with DITTO_TEST_DECODER_FAULTS=1 (test-only; see ditto.media.helper). Elsewhere: an unrecognised file."""
    from ditto.media.helper import FAULT_MARK

    return FAULT_MARK + action.encode() + b"\n" + b"\0" * 64

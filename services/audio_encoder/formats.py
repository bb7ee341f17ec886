"""Raw audio in, validated float mono out; whole files through PyAV.

Streaming input arrives as interleaved PCM16 or float32 chunks of any size. Every chunk is checked before anything
is changed, so a bad chunk raises `AudioError` and the session it was meant for carries on as if it never came.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ditto.media.audio import MAX_CHANNELS, MAX_RATE, MIN_RATE, mixdown
from ditto.media.errors import MediaError, MediaTooLong

SampleFormat = Literal["pcm_s16le", "float32le"]
SAMPLE_BYTES: dict[str, int] = {"pcm_s16le": 2, "float32le": 4}

# A streaming chunk longer than this is almost certainly a client bug (a whole file sent as one chunk, a wrong
# sample rate); refusing it bounds the memory and latency one push can cost the worker.
DEFAULT_MAX_CHUNK_SECONDS = 60.0
# Float samples beyond this are not audio in the nominal [-1, 1] range (e.g. PCM16 values sent as float32).
MAX_FLOAT_ABS = 64.0


class AudioError(ValueError):
    """Audio that cannot be used: says what is wrong and what to do. The session that received it is unchanged."""


class AudioTooLong(AudioError):
    """A file longer than the caller's limit, found from its header or while decoding (nothing past it decoded)."""

    def __init__(self, message: str, seconds: float, from_header: bool) -> None:
        super().__init__(message)
        self.seconds = seconds
        self.from_header = from_header


@dataclass(frozen=True)
class InputFormat:
    """How a stream's chunks are laid out: interleaved samples of `channels` channels at `sample_rate` Hz."""

    sample_format: SampleFormat = "pcm_s16le"
    sample_rate: int = 16000
    channels: int = 1
    max_chunk_seconds: float = DEFAULT_MAX_CHUNK_SECONDS

    def __post_init__(self) -> None:
        if self.sample_format not in SAMPLE_BYTES:
            raise AudioError(f"sample format {self.sample_format!r} is not supported; use 'pcm_s16le' or 'float32le'")
        if not MIN_RATE <= int(self.sample_rate) <= MAX_RATE:
            raise AudioError(f"sample rate {self.sample_rate} Hz is out of range; use {MIN_RATE}..{MAX_RATE} Hz")
        if not 1 <= int(self.channels) <= MAX_CHANNELS:
            raise AudioError(f"{self.channels} channels is out of range; use 1..{MAX_CHANNELS}")

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame (one sample of every channel)."""
        return SAMPLE_BYTES[self.sample_format] * self.channels

    def to_dict(self) -> dict:
        return {"sample_format": self.sample_format, "sample_rate": int(self.sample_rate),
                "channels": int(self.channels), "max_chunk_seconds": float(self.max_chunk_seconds)}


def decode_chunk(data: bytes | bytearray | memoryview | np.ndarray, fmt: InputFormat) -> np.ndarray:
    """One chunk -> float64 mono samples [n] at `fmt.sample_rate`.

    `data` is raw little-endian bytes in `fmt`, or an array: int16 (PCM16 values) or float32/float64 (nominal
    [-1, 1]), shaped [n] or [n, channels] (interleaved when flat). Raises AudioError for empty chunks, byte counts
    that are not whole sample frames, NaN/inf, samples far outside [-1, 1], or chunks longer than the limit.
    """
    if isinstance(data, np.ndarray):
        samples = _array_samples(data, fmt)
    else:
        buf = memoryview(data).cast("B")
        if buf.nbytes == 0:
            raise AudioError("empty audio chunk: send at least one sample frame, or end the stream")
        if buf.nbytes % fmt.frame_bytes:
            raise AudioError(
                f"chunk of {buf.nbytes} bytes is not a whole number of {fmt.sample_format} sample frames of "
                f"{fmt.channels} channel(s) ({fmt.frame_bytes} bytes each): check the declared format, and split "
                f"chunks on frame boundaries"
            )
        dtype = np.dtype("<i2") if fmt.sample_format == "pcm_s16le" else np.dtype("<f4")
        samples = np.frombuffer(buf, dtype=dtype).reshape(-1, fmt.channels)
    n = samples.shape[0]
    if n > fmt.max_chunk_seconds * fmt.sample_rate:
        raise AudioError(
            f"chunk of {n / fmt.sample_rate:.1f} s is longer than the {fmt.max_chunk_seconds:g} s limit for one "
            "streaming chunk: send audio in smaller chunks (e.g. 20-200 ms), or use the whole-file path"
        )
    x = samples.astype(np.float64)
    if samples.dtype.kind == "i":
        x /= 32768.0
    else:
        if not np.isfinite(x).all():
            raise AudioError("audio chunk contains NaN or infinite samples")
        peak = float(np.abs(x).max())
        if peak > MAX_FLOAT_ABS:
            raise AudioError(
                f"float audio peaks at {peak:g}, far outside the nominal [-1, 1] range: is it PCM16 declared as "
                "float32? Scale float samples to [-1, 1]"
            )
    return mixdown(x)


def _array_samples(data: np.ndarray, fmt: InputFormat) -> np.ndarray:
    """An array chunk as [n, channels], keeping int16 as int16 and floats as floats."""
    if data.size == 0:
        raise AudioError("empty audio chunk: send at least one sample frame, or end the stream")
    if data.dtype == np.int16:
        pass
    elif data.dtype in (np.float32, np.float64):
        pass
    else:
        raise AudioError(f"audio arrays must be int16, float32 or float64, got {data.dtype}")
    if data.ndim == 2:
        if data.shape[1] != fmt.channels:
            raise AudioError(f"audio array has {data.shape[1]} channels, the stream declared {fmt.channels}")
        return data
    if data.ndim != 1:
        raise AudioError(f"audio arrays must be [samples] or [samples, channels], got shape {data.shape}")
    if data.size % fmt.channels:
        raise AudioError(
            f"{data.size} interleaved samples are not a whole number of {fmt.channels}-channel frames"
        )
    return data.reshape(-1, fmt.channels)


# ---------------------------------------------------------------------------------------------------------------
# Whole files


@dataclass(frozen=True)
class DecodedFile:
    """A file's audio as interleaved float32 [n, channels] at its own rate: the exact input a client would stream."""

    samples: np.ndarray
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.sample_rate

    def input_format(self) -> InputFormat:
        return InputFormat("float32le", self.sample_rate, self.channels, max_chunk_seconds=float("inf"))

    def chunks(self, chunk_ms: float) -> Iterator[np.ndarray]:
        """The audio cut into chunks of `chunk_ms` ms of frames (at least one frame); 0 means one chunk."""
        n = self.samples.shape[0]
        step = n if chunk_ms <= 0 else max(1, int(round(chunk_ms * self.sample_rate / 1000.0)))
        for start in range(0, n, max(step, 1)):
            yield self.samples[start:start + step]


def decode_file(path: str | Path, max_seconds: float | None = None) -> DecodedFile:
    """Decode the first audio stream of a local file (wav, mp3, m4a, ogg, webm, ...) at its own rate and channels.

    The samples are interleaved float without changing rate or channel layout, so mixdown and resampling stay ours
    and the whole-file path equals the streaming path on the same samples (`ditto.media.audio.decode_audio`, in this
    process: the file is the user's own). With `max_seconds`, a file whose header says it is longer is refused
    before decoding, and decoding stops as soon as the running total passes the limit (`AudioTooLong`).
    """
    from ditto.media.audio import decode_audio

    try:
        decoded = decode_audio(Path(path), what=str(path), max_seconds=max_seconds)
    except MediaTooLong as err:
        raise AudioTooLong(str(err), err.seconds, err.from_header) from err
    except MediaError as err:
        raise AudioError(str(err)) from err
    return DecodedFile(decoded.samples, decoded.sample_rate)

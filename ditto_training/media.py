"""Video and audio I/O of data preparation (PyAV): 25 fps frame streams, the global face crop, 16 kHz WAV.

Frames are streamed, never held for a whole video: a 150 s 1080p clip is 3750 frames of 6 MB each.
"""

from __future__ import annotations

import os
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ditto.accel import atomic_path, partial_path
from ditto.media import writers
from ditto.pipeline import FPS

CROP_SIZE = 512
SAMPLE_RATE = 16000


class VideoError(ValueError):
    """A video that cannot be used for training; the message says why."""


@dataclass(frozen=True)
class VideoProbe:
    width: int
    height: int
    fps: float
    seconds: float
    has_audio: bool


def probe(path: Path) -> VideoProbe:
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoError(f"{path}: no video stream")
            vs = c.streams.video[0]
            fps = float(vs.average_rate or vs.guessed_rate or 0)
            seconds = float(vs.duration * vs.time_base) if vs.duration and vs.time_base else \
                (c.duration / 1e6 if c.duration else 0.0)
            return VideoProbe(vs.codec_context.width, vs.codec_context.height, fps, seconds, bool(c.streams.audio))
    except av.FFmpegError as err:
        raise VideoError(f"{path}: not a readable video ({err})") from err


def frames_25fps(path: Path) -> Iterator[np.ndarray]:
    """RGB uint8 frames at 25 fps: frame i is the source frame shown at time i/25 s (the last one starting at or
    before it), so 25 fps sources pass through unchanged and other rates are resampled by repeating or dropping."""
    import av

    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            out_index = 0
            prev: np.ndarray | None = None
            t0: float | None = None
            for frame in c.decode(stream):
                t = float(frame.time) if frame.time is not None else out_index / FPS
                t0 = t if t0 is None else t0
                t -= t0
                rgb = frame.to_ndarray(format="rgb24")
                # emit every output time this frame's predecessor covers
                while prev is not None and out_index / FPS < t - 1e-6:
                    yield prev
                    out_index += 1
                prev = rgb
            if prev is not None:
                yield prev
    except av.FFmpegError as err:
        raise VideoError(f"{path}: decoding failed ({err})") from err


def square_box_matrix(center: np.ndarray, side: float, size: int = CROP_SIZE) -> np.ndarray:
    """[2, 3] affine: the upright square (center, side) -> size x size (outside the frame is padded black, as the
    reference's ffmpeg crop + pad)."""
    s = size / side
    cx, cy = float(center[0]), float(center[1])
    return np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]], dtype=np.float32)


def crop_frame(frame: np.ndarray, m: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_AREA if m[0, 0] < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


class Mp4Writer(writers.Mp4Writer):
    """A cropped training video: H.264 yuv420p at 25 fps, CRF 18 (the reference's quality), no audio, written to a
    temporary name and renamed on close."""

    def __init__(self, path: Path, size: int = CROP_SIZE) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.final_path = path
        super().__init__(partial_path(path), size, size, fps=FPS, crf=18, preset="veryfast")

    def close(self) -> None:
        if self._out is None:
            return
        super().close()
        if self.frames == 0:
            self.path.unlink(missing_ok=True)
            raise VideoError(f"{self.final_path}: no frames to write")
        os.replace(self.path, self.final_path)

    def abort(self) -> None:
        try:
            if self._out is not None:
                self._out.close()
                self._out = None
        finally:
            self.path.unlink(missing_ok=True)


def read_frames(path: Path) -> Iterator[np.ndarray]:
    """Every frame of a (cropped, 25 fps) video as RGB uint8."""
    import av

    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def extract_wav(video: Path, wav: Path) -> float:
    """The first audio stream -> mono 16 kHz PCM16 WAV (the reference runs ffmpeg -ar 16000 -ac 1); returns seconds."""
    from services.audio_encoder.formats import AudioError, decode_file, mixdown
    from services.audio_encoder.resample import StreamResampler

    try:
        decoded = decode_file(video)
    except AudioError as err:
        raise VideoError(f"{video}: {err}") from err
    mono = mixdown(decoded.samples.astype(np.float64))
    if decoded.sample_rate != SAMPLE_RATE:
        rs = StreamResampler(decoded.sample_rate, SAMPLE_RATE)
        mono = np.concatenate([rs.process(mono), rs.flush()])
    pcm = (np.clip(mono, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with atomic_path(wav) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return len(pcm) / SAMPLE_RATE

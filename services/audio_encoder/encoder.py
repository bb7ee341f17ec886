"""One session's audio stream -> 25 fps HuBERT features, and batching of many sessions into one encoder call.

    raw chunk --decode_chunk--> float64 mono at the input rate --StreamResampler--> 16 kHz
              --WindowStream--> [n, 6480] windows --backend--> [n, 20, 1024] --pairs of frames 6..15--> [5n, 1024]

Every stage is chunk-size invariant, so the features of a stream do not depend on how its audio was cut. The
state between chunks (resampler tail, window tail, counters) is small and serialisable, so a worker can checkpoint a
session after each chunk and another worker can resume it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.audio_encoder.formats import AudioError, InputFormat, decode_chunk, decode_file
from services.audio_encoder.hubert import HubertBackend
from services.audio_encoder.resample import TARGET_RATE, StreamResampler
from services.audio_encoder.windows import FEATURE_DIM, FRAME_SAMPLES, WINDOW, WindowStream, features_from_encoding

Audio = bytes | bytearray | memoryview | np.ndarray
STATE_VERSION = 1
SAMPLES_PER_FRAME = FRAME_SAMPLES  # 640 at 16 kHz: one frame


class StreamingEncoder:
    """Features of one audio stream of unknown length. `push` returns the features each chunk completes (possibly
    none); `end` flushes the rest. A bad chunk raises AudioError and leaves the session exactly as before it."""

    def __init__(self, backend: HubertBackend | None, input_format: InputFormat | None = None) -> None:
        self.backend = backend
        self.format = input_format or InputFormat()
        self.resampler = StreamResampler(self.format.sample_rate, TARGET_RATE)
        self.windows = WindowStream()
        self.frames_out = 0   # features handed out so far = the session frame index of the next one

    # -- the two halves of a push, so many sessions can share one backend call ------------------------------------

    def feed(self, data: Audio) -> np.ndarray:
        """Validate and take a chunk; returns the windows it completes, [n, 6480] float32."""
        if self.windows.ended:
            raise AudioError("audio after the end of the stream: start a new session")
        mono = decode_chunk(data, self.format)  # raises before any state changes
        return self.windows.push(self.resampler.process(mono))

    def finish(self) -> np.ndarray:
        """End of audio: the remaining windows (resampler flushed, last window zero-padded)."""
        if self.windows.ended:
            return np.zeros((0, WINDOW), np.float32)
        tail = self.resampler.flush()
        windows = self.windows.push(tail)
        return np.concatenate([windows, self.windows.end()])

    def features(self, encoding: np.ndarray) -> np.ndarray:
        """Backend output for this session's windows -> features [5n, D]; advances the frame counter."""
        feats = features_from_encoding(encoding) if len(encoding) else np.zeros((0, FEATURE_DIM), np.float32)
        self.frames_out += feats.shape[0]
        return feats

    # -- one session on its own ---------------------------------------------------------------------------------

    def push(self, data: Audio) -> np.ndarray:
        """A chunk in, the features it completes out: [n, 1024] float32 (n a multiple of 5, often 0)."""
        return self._run(self.feed(data))

    def end(self) -> np.ndarray:
        return self._run(self.finish())

    def _run(self, windows: np.ndarray) -> np.ndarray:
        if not len(windows):
            return self.features(np.zeros((0, 20, FEATURE_DIM), np.float32))
        if self.backend is None:
            raise RuntimeError("this encoder has no backend; use encode_many() with a shared backend")
        return self.features(self.backend.encode_windows(windows))

    def real_frames(self) -> int:
        """The frames the audio itself covers: ceil(16 kHz samples / 640), the reference's num_f. The zero-padded
        last window yields a few more, which a session does not show."""
        return -(-self.resampler.output_length(self.resampler.consumed) // SAMPLES_PER_FRAME)

    def trim_final(self, final: np.ndarray) -> np.ndarray:
        """The features of the end-of-audio push (from `end()` or `encode_many(..., None)`), cut so that the stream
        ends with exactly `real_frames()`: what the service sends and what `ditto features` writes."""
        first = self.frames_out - len(final)
        return final[:max(0, self.real_frames() - first)]

    # -- state ---------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "format": self.format.to_dict(), "frames_out": self.frames_out,
                "resampler": self.resampler.state_dict(), "windows": self.windows.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("version", -1)) != STATE_VERSION:
            raise ValueError(f"encoder state version {state.get('version')} is not {STATE_VERSION}")
        fmt = InputFormat(**state["format"])
        if fmt != self.format:
            raise ValueError(f"encoder state is for input {fmt}, this session declared {self.format}")
        self.resampler.load_state_dict(state["resampler"])
        self.windows.load_state_dict(state["windows"])
        self.frames_out = int(state["frames_out"])

    def state_bytes(self) -> bytes:
        """The state as a compact .npz (two float tails plus JSON counters): what a worker checkpoints."""
        state = self.state_dict()
        meta = {"version": state["version"], "format": state["format"], "frames_out": state["frames_out"],
                "resampler": {k: v for k, v in state["resampler"].items() if k != "buffer"},
                "windows": {k: v for k, v in state["windows"].items() if k != "buffer"}}
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                 resampler=state["resampler"]["buffer"], windows=state["windows"]["buffer"])
        return buf.getvalue()

    @classmethod
    def from_state_bytes(cls, data: bytes, backend: HubertBackend | None) -> StreamingEncoder:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            meta["resampler"]["buffer"] = z["resampler"]
            meta["windows"]["buffer"] = z["windows"]
        enc = cls(backend, InputFormat(**meta["format"]))
        enc.load_state_dict(meta)
        return enc


def encode_many(backend: HubertBackend, items: Sequence[tuple[StreamingEncoder, Audio | None]]
                ) -> list[np.ndarray | AudioError]:
    """Push one chunk (or None = end of audio) into each of several sessions and encode all their ready windows in
    one backend call. A session whose chunk is bad gets its AudioError in its place; the others are unaffected."""
    prepared: list[np.ndarray | AudioError] = []
    for enc, data in items:
        try:
            prepared.append(enc.finish() if data is None else enc.feed(data))
        except AudioError as err:
            prepared.append(err)
    windows = [w for w in prepared if isinstance(w, np.ndarray)]
    total = np.concatenate(windows) if windows else np.zeros((0, WINDOW), np.float32)
    encoding = backend.encode_windows(total) if len(total) else np.zeros((0, 20, FEATURE_DIM), np.float32)
    out: list[np.ndarray | AudioError] = []
    pos = 0
    for (enc, _), w in zip(items, prepared, strict=True):
        if isinstance(w, AudioError):
            out.append(w)
            continue
        out.append(enc.features(encoding[pos:pos + len(w)]))
        pos += len(w)
    return out


def encode_file(path: str | Path, backend: HubertBackend) -> np.ndarray:
    """The offline path: a whole file (any PyAV format) through the same stream in one push. Equal, bit for bit, to
    streaming the same decoded samples in any chunking."""
    decoded = decode_file(path)
    enc = StreamingEncoder(backend, decoded.input_format())
    return np.concatenate([enc.push(decoded.samples), enc.end()])

"""The streaming HuBERT window state machine (docs/model.md §2.2, the reference's online convention).

16 kHz audio of unknown length is left-padded with 1920 zeros (3 past frames of 640 samples). Window k is
`padded[3200k, 3200k + 6480)`: it is emitted as soon as its last sample has arrived, and at the end of the stream
every window with `3200k < len(padded)` that is still missing is emitted zero-padded at the end. The encoder maps
each window to 20 frames at 50 Hz; frames 6..15 (the reference's [-14:-4]) averaged in pairs give the 5 features of
25 fps frames 5k..5k+4. Feature f covers audio samples [640f, 640f + 720).

The same 16 kHz samples give the same windows however they are split into pushes, and each window's features depend
on that window alone, so windows of many sessions can be encoded in one batch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ditto.pipeline import FPS

SAMPLE_RATE = 16000
FRAME_SAMPLES = SAMPLE_RATE // FPS      # 640: one frame
FRONT_PAD = 3 * FRAME_SAMPLES           # 1920: three past frames of silence before the first sample
WINDOW = 6480                           # (3 past + 5 current + 2 future) frames + 80 samples
HOP = 5 * FRAME_SAMPLES                 # 3200: five new frames per window
FRAMES_PER_WINDOW = 5
ENCODER_FRAMES = 20                     # (6480 - 400) // 320 + 1 HuBERT frames at 50 Hz
KEEP = slice(6, 16)                     # the reference's enc[-14:-4] for 20 frames
FEATURE_DIM = 1024

# windows [B, 6480] float32 -> HuBERT frames [B, 20, D] float32
HubertFn = Callable[[np.ndarray], np.ndarray]


def features_from_encoding(enc: np.ndarray) -> np.ndarray:
    """[B, 20, D] HuBERT frames -> [B * 5, D] features: frames 6..15, consecutive pairs averaged in float32."""
    if enc.ndim != 3 or enc.shape[1] != ENCODER_FRAMES:
        raise ValueError(f"HuBERT output must be [B, {ENCODER_FRAMES}, D] for {WINDOW}-sample windows, "
                         f"got {tuple(enc.shape)}")
    b, _, d = enc.shape
    kept = np.asarray(enc[:, KEEP], dtype=np.float32).reshape(b, FRAMES_PER_WINDOW, 2, d)
    return kept.mean(axis=2).reshape(b * FRAMES_PER_WINDOW, d)


def window_count(num_samples: int) -> int:
    """Windows in a finished stream of `num_samples` 16 kHz samples: ceil((L + 1920) / 3200)."""
    return -(-(num_samples + FRONT_PAD) // HOP)


class WindowStream:
    """Cuts a 16 kHz mono stream into the reference's online windows. Holds at most one window of samples."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.next_window = 0                           # index k of the next window to emit
        self.received = FRONT_PAD                      # samples of the padded signal seen so far
        self.base = 0                                  # padded index of buffer[0]
        self.buffer = np.zeros(FRONT_PAD, np.float32)  # padded[base : received]
        self.ended = False

    @property
    def audio_samples(self) -> int:
        return self.received - FRONT_PAD

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add 16 kHz samples; returns the windows now complete, [n, 6480] float32 (n may be 0)."""
        if self.ended:
            raise RuntimeError("the stream has ended; start a new session for more audio")
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.buffer = np.concatenate([self.buffer, x])
        self.received += x.size
        ready = 0
        while HOP * (self.next_window + ready) + WINDOW <= self.received:
            ready += 1
        return self._take(ready)

    def end(self) -> np.ndarray:
        """End of audio: the remaining windows (those starting before the end of the padded signal), zero-padded."""
        if self.ended:
            return np.zeros((0, WINDOW), np.float32)
        remaining = window_count(self.audio_samples) - self.next_window
        self.ended = True
        return self._take(max(remaining, 0))

    def _take(self, count: int) -> np.ndarray:
        out = np.zeros((count, WINDOW), np.float32)
        for i in range(count):
            start = HOP * (self.next_window + i) - self.base
            piece = self.buffer[start:start + WINDOW]
            out[i, :piece.size] = piece
        self.next_window += count
        drop = min(HOP * self.next_window - self.base, self.buffer.size)
        if drop > 0:
            self.buffer = self.buffer[drop:]
            self.base += drop
        return out

    def state_dict(self) -> dict:
        return {"next_window": self.next_window, "received": self.received, "base": self.base,
                "buffer": self.buffer.copy(), "ended": self.ended}

    def load_state_dict(self, state: dict) -> None:
        self.next_window, self.received = int(state["next_window"]), int(state["received"])
        self.base, self.ended = int(state["base"]), bool(state["ended"])
        self.buffer = np.asarray(state["buffer"], dtype=np.float32).copy()


def stream_features(audio16k: np.ndarray, hubert: HubertFn, push_sizes: list[int] | None = None) -> np.ndarray:
    """Features of a whole 16 kHz signal through the streaming windows (pushed whole, or in the given sizes)."""
    stream = WindowStream()
    windows = []
    pos = 0
    for n in push_sizes or [audio16k.size]:
        windows.append(stream.push(audio16k[pos:pos + n]))
        pos += n
    if pos < audio16k.size:
        windows.append(stream.push(audio16k[pos:]))
    windows.append(stream.end())
    w = np.concatenate(windows)
    if not len(w):
        return np.zeros((0, FEATURE_DIM), np.float32)
    return features_from_encoding(hubert(w))

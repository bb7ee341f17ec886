"""A streaming polyphase FIR resampler whose output does not depend on how the input is chunked.

General-purpose stream resamplers (soxr, libswresample) process internal blocks whose boundaries follow the
caller's chunks, so the same audio pushed in different chunk sizes can give slightly different samples. Features
must be bit-identical however a client cuts its audio, so this one is built to be: every output sample is one fixed
dot product of the filter phase with fixed input samples, accumulated tap by tap in the same order whichever push
computes it. The state is the unconsumed input tail plus two counters.

Rate change L/M (reduced): conceptually upsample by L (zero stuffing), low-pass with a Kaiser-windowed sinc `h`
designed by scipy at the upsampled rate, keep every M-th sample. With delay D = (len(h) - 1) / 2 the output is
zero-phase: output n sits at input time n·M/L, and
    y[n] = sum_j hp[p, j] · x[t // L - j],   t = n·M + D,  p = t mod L,  hp[p, j] = h[p + L·j].
Input before the stream start is zeros; at the end the input is continued with zeros and ceil(N·L/M) samples come
out in total for N samples in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

TARGET_RATE = 16000


@dataclass(frozen=True)
class FilterDesign:
    zero_crossings: int = 16  # sinc lobes on each side, counted at the lower of the two rates
    rolloff: float = 0.94     # pass band edge as a fraction of the lower Nyquist frequency
    kaiser_beta: float = 8.6  # about 80 dB stop band


@lru_cache(maxsize=16)
def polyphase_filter(up: int, down: int, design: FilterDesign = FilterDesign()) -> np.ndarray:
    """hp [up, K] float64: the anti-aliasing low-pass split into its `up` phases (taps in input-sample order)."""
    from scipy.signal import firwin

    wide = max(up, down)
    half = design.zero_crossings * wide
    h = firwin(2 * half + 1, design.rolloff / wide, window=("kaiser", design.kaiser_beta)) * up
    taps = math.ceil(h.size / up)
    h = np.concatenate([h, np.zeros(taps * up - h.size)])
    return np.ascontiguousarray(h.reshape(taps, up).T)  # hp[p, j] = h[p + up * j]


class StreamResampler:
    """Resample a mono float64 stream from `in_rate` to `out_rate`, chunk by chunk, chunk-size invariant."""

    BLOCK = 1 << 15  # outputs computed per vector pass; bounds the temporary memory of a long push

    def __init__(self, in_rate: int, out_rate: int = TARGET_RATE, design: FilterDesign = FilterDesign()) -> None:
        g = math.gcd(int(in_rate), int(out_rate))
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        self.up, self.down = self.out_rate // g, self.in_rate // g
        self.passthrough = self.up == self.down
        self.hp = polyphase_filter(self.up, self.down, design) if not self.passthrough else np.ones((1, 1))
        self.taps = self.hp.shape[1]
        # D: half the filter length (firwin got 2·D + 1 taps), in upsampled samples
        self.delay = 0 if self.passthrough else design.zero_crossings * max(self.up, self.down)
        self.reset()

    def reset(self) -> None:
        self.consumed = 0                        # input samples received so far
        self.produced = 0                        # output samples emitted so far
        self.base = -(self.taps - 1)             # absolute input index of buffer[0] (negative: pre-roll zeros)
        self.buffer = np.zeros(self.taps - 1)    # input tail still needed by future outputs

    # -- streaming -------------------------------------------------------------------------------------------------

    def process(self, x: np.ndarray) -> np.ndarray:
        """Push mono samples; returns every output sample whose inputs are now all known."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if self.passthrough:
            self.consumed += x.size
            self.produced += x.size
            return x.copy()
        self.buffer = np.concatenate([self.buffer, x])
        self.consumed += x.size
        # output n is ready when its newest input t // L has arrived: n·M + D <= L·N - 1
        ready = (self.up * self.consumed - 1 - self.delay) // self.down + 1
        return self._emit(max(ready, self.produced))

    def flush(self) -> np.ndarray:
        """End of stream: continue the input with zeros and emit the remaining ceil(N·L/M) - produced samples."""
        if self.passthrough:
            return np.zeros(0)
        total = -(-self.consumed * self.up // self.down)
        pad = self.delay // self.up + 2
        self.buffer = np.concatenate([self.buffer, np.zeros(pad)])
        return self._emit(max(total, self.produced))  # the stream is over: the padded tail is not undone

    def output_length(self, n_in: int) -> int:
        """Samples out in total for `n_in` samples in, once flushed."""
        return n_in if self.passthrough else -(-n_in * self.up // self.down)

    def _emit(self, end: int) -> np.ndarray:
        pieces = []
        for start in range(self.produced, end, self.BLOCK):
            n = np.arange(start, min(end, start + self.BLOCK), dtype=np.int64)
            t = n * self.down + self.delay
            phase = t % self.up
            top = t // self.up - self.base               # buffer index of x[t // L]
            coef = self.hp[phase]                        # [n, K]
            acc = np.zeros(n.size)
            for j in range(self.taps):                   # fixed order: the same sum whoever computes it
                acc += coef[:, j] * self.buffer[top - j]
            pieces.append(acc)
        self.produced = max(self.produced, end)
        # keep only what the next output still needs
        keep_from = (self.produced * self.down + self.delay) // self.up - (self.taps - 1)
        drop = max(0, min(keep_from - self.base, self.buffer.size))
        if drop:
            self.buffer = self.buffer[drop:]
            self.base += drop
        return np.concatenate(pieces) if pieces else np.zeros(0)

    # -- state -----------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"in_rate": self.in_rate, "out_rate": self.out_rate, "consumed": self.consumed,
                "produced": self.produced, "base": self.base, "buffer": self.buffer.copy()}

    def load_state_dict(self, state: dict) -> None:
        if (int(state["in_rate"]), int(state["out_rate"])) != (self.in_rate, self.out_rate):
            raise ValueError(f"resampler state is for {state['in_rate']} -> {state['out_rate']} Hz, this "
                             f"resampler converts {self.in_rate} -> {self.out_rate} Hz")
        self.consumed, self.produced = int(state["consumed"]), int(state["produced"])
        self.base = int(state["base"])
        self.buffer = np.asarray(state["buffer"], dtype=np.float64).copy()

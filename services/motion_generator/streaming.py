"""Audio-to-motion windowing: 80-frame windows, linear fusion, pose smoothing, conditioning-frame update.

See docs/model.md §3.6. `MotionStream` is the online state machine for audio of unknown length; it
does not run the model itself: `next_window()` says which window is ready, the caller samples it (possibly batched
with other sessions' windows) and hands the motion back to `complete()`, which returns the frames that became final.

Coordinates: feature row / motion frame `a` is absolute (0 = first silence pre-fill row); real frame g is a = g + O.
Where the reference loses frames (O < 40 drops the first V - O real frames; the end emits frames made from padding;
nothing when the audio is shorter than a window), the project emits every real frame exactly once, numbered from 0
(`emit="every_frame"`). `emit="reference"` emits exactly the reference online worker's frames instead, for parity
(docs/model.md §3.7, §9). Feeding the same features in any chunking yields the same frames: a window runs as soon
as its 80 rows exist, and the short last window only at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import numpy as np

SEQ = 80
MOTION_DIM = 265
POSE_DIMS = 202          # scale, pose logits and t: the smoothed (and fix_kp_cond-kept) dims
EmitMode = Literal["every_frame", "reference"]
EMIT_MODES: tuple[EmitMode, ...] = get_args(EmitMode)


@dataclass(frozen=True)
class StreamParams:
    overlap: int = 70                      # O; the online configuration's value
    smooth_k: int = 3                      # smo_k_d
    fix_kp_cond: int = 1                   # reset the conditioning frame to the source every K windows (0 = never)
    fix_kp_cond_dim: tuple[int, int] | None = (0, POSE_DIMS)
    online: bool = True                    # streaming fusion length min(O, V); offline uses O
    emit: EmitMode = "every_frame"         # which frames leave (online): every real frame once, or the reference's

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < SEQ:
            raise ValueError(f"overlap must be in 0..{SEQ - 1} frames, got {self.overlap}")
        if self.emit not in EMIT_MODES:
            raise ValueError(f"emit must be one of {', '.join(EMIT_MODES)}, got {self.emit!r}")

    @property
    def valid(self) -> int:                # V
        return SEQ - self.overlap

    @property
    def fuse(self) -> int:                 # F
        return min(self.overlap, self.valid) if self.online else self.overlap


def smooth(res: np.ndarray, s: int, e: int, k: int) -> None:
    """Box filter of width k over dims [0, 202) of frames [s, e), reading an unsmoothed copy, truncated at the ends."""
    if k <= 1:
        return
    hk = k // 2
    ref = res[:, :POSE_DIMS].copy()
    n = len(res)
    for i in range(max(s, 0), min(e, n)):
        res[i, :POSE_DIMS] = ref[max(0, i - hk):min(n, i + hk + 1)].sum(axis=0) / np.float32(
            min(n, i + hk + 1) - max(0, i - hk))


def next_kp_cond(res: np.ndarray, q: int, windows: int, source_motion: np.ndarray, p: StreamParams) -> np.ndarray:
    """The conditioning frame of the next window after `windows` windows: frame q of res (the one before the next
    window's start), or every fix_kp_cond windows the source motion keeping frame q's fix_kp_cond_dim dims."""
    if p.fix_kp_cond > 0 and windows % p.fix_kp_cond == 0:
        kp = source_motion.copy()
        if p.fix_kp_cond_dim is not None:
            ds, de = p.fix_kp_cond_dim
            kp[ds:de] = res[q, ds:de]
        return kp
    return res[q].copy()


def fuse_window(res: np.ndarray | None, pred: np.ndarray, p: StreamParams) -> tuple[np.ndarray, int, int]:
    """One window step (docs/model.md §3.6) -> (new res, smoothing start, smoothing end) with smoothing applied."""
    pred = np.asarray(pred, np.float32)
    if res is None:
        res = pred.copy()
        smooth(res, 0, SEQ, p.smooth_k)
        return res, 0, SEQ
    L, F, O = len(res), p.fuse, p.overlap
    alpha = (np.arange(F, dtype=np.float32) / np.float32(F))[:, None] if F else np.zeros((0, 1), np.float32)
    res = res.copy()
    if F:
        res[L - F:L] = res[L - F:L] * (np.float32(1) - alpha) + pred[O - F:O] * alpha
    res = np.concatenate([res, pred[O:]])
    smooth(res, L - F, L + 1, p.smooth_k)
    return res, L - F, L + 1


@dataclass
class Window:
    index: int               # window number w in this stream
    start: int              # absolute row of its first feature
    features: np.ndarray     # [80, 1024] (short last window padded by repeating its last row)
    cond_start: int          # session frame index of row 0 (start - O; negative = silence pre-fill, clamps to 0)
    final: bool


class MotionStream:
    """Online state machine of one session. All state is numpy arrays and ints (`state_dict`)."""

    def __init__(self, params: StreamParams, source_motion: np.ndarray, prefill: np.ndarray | None = None,
                 feature_dim: int = 1024) -> None:
        self.p = params
        self.source_motion = np.asarray(source_motion, np.float32).reshape(MOTION_DIM)
        self.kp_cond = self.source_motion.copy()
        O = params.overlap if params.online else 0
        self.pre = O
        if prefill is None:
            prefill = np.zeros((O, feature_dim), np.float32)
        prefill = np.asarray(prefill, np.float32).reshape(-1, feature_dim)
        if len(prefill) != O:
            raise ValueError(f"the silence pre-fill must have {O} feature rows (the overlap), got {len(prefill)}")
        self.feat = prefill.copy()           # rows [feat_off, feat_off + len)
        self.feat_off = 0
        self.n_feat = O                      # absolute number of feature rows received (incl. pre-fill)
        self.res: np.ndarray | None = None   # motion frames [res_off, res_off + len)
        self.res_off = 0
        self.local = 0                       # absolute start of the next window
        self.windows = 0                     # clip_idx
        self.emitted = O                     # absolute index of the next frame to emit
        self.ended = False
        self.d0: np.ndarray | None = None    # first window's frame 0 (relative-motion reference)

    # -- input ---------------------------------------------------------------------------------------------------

    def push(self, features: np.ndarray) -> None:
        if self.ended:
            raise RuntimeError("features pushed after the end of the stream")
        f = np.asarray(features, np.float32)
        if f.ndim != 2 or f.shape[1] != self.feat.shape[1]:
            raise ValueError(f"features must have shape [n, {self.feat.shape[1]}], got {f.shape}")
        self.feat = np.concatenate([self.feat, f])
        self.n_feat += len(f)

    def end(self) -> None:
        self.ended = True

    # -- windows -------------------------------------------------------------------------------------------------

    def next_window(self) -> Window | None:
        """The window that can run now, or None (wait for more features, or the stream is done)."""
        avail = self.n_feat - self.local
        if avail >= SEQ:
            final = False
        elif self.ended and avail > 0:   # the short last window (as the reference, whenever rows remain)
            final = True
        else:
            return None
        a = self.local - self.feat_off
        rows = self.feat[a:a + SEQ]
        if len(rows) < SEQ:
            rows = np.concatenate([rows, np.repeat(rows[-1:], SEQ - len(rows), axis=0)])
        return Window(self.windows, self.local, rows, self.local - self.pre, final)

    def complete(self, window: Window, pred: np.ndarray) -> tuple[int, np.ndarray]:
        """Fuse the sampled window -> (first real frame index, frames [m, 265]) that became final."""
        if window.index != self.windows or window.start != self.local:
            raise RuntimeError("windows must be completed in order")
        p = self.p
        res, _, _ = fuse_window(self.res, pred, p)
        self.res = res
        self.windows += 1
        L = self.res_off + len(res)                                  # absolute length of res
        q = L - p.overlap - 1 - self.res_off                         # frame before the next window
        self.kp_cond = next_kp_cond(res, q, self.windows, self.source_motion, p)
        if self.d0 is None:
            self.d0 = res[0].copy()
        self.local += p.valid
        if p.emit == "reference":
            upto = self._reference_upto(window, L)
        else:
            # frames before the next fusion region are final; at the end everything real is
            upto = self.n_feat if window.final else L - p.fuse
        if window.final:
            self.local = max(self.local, self.n_feat)
        upto = min(upto, L)
        first = self.emitted
        out = res[first - self.res_off:upto - self.res_off].copy() if upto > first else np.zeros((0, MOTION_DIM),
                                                                                                 np.float32)
        self.emitted = max(self.emitted, upto)
        self._trim()
        return first - self.pre, out

    def _reference_upto(self, window: Window, L: int) -> int:
        """The reference online worker's emission: its first window emits nothing and starts emission at frame
        80 - F; each later window emits V frames, the short last one as many as it had real feature rows (frames
        made from padding included, cut at the end of res)."""
        if window.index == 0:
            self.emitted = max(self.emitted, SEQ - self.p.fuse)
            return self.emitted
        return self.emitted + (self.n_feat - window.start if window.final else self.p.valid)

    def _trim(self) -> None:
        """Keep only what later windows read: features from the next window start; motion from the frame before
        the next window (the next conditioning frame; it also precedes the fusion region and its smoothing)."""
        if self.res is not None:
            keep_from = max(self.res_off + len(self.res) - self.p.overlap - 1, self.res_off)
            self.res = self.res[keep_from - self.res_off:]
            self.res_off = keep_from
        drop = min(self.local, self.n_feat) - self.feat_off
        if drop > 0:
            self.feat = self.feat[drop:]
            self.feat_off += drop

    def flush(self) -> tuple[int, np.ndarray]:
        """After the end, when no window is left: the real frames that are generated but not emitted yet."""
        if not self.ended or self.next_window() is not None:
            raise RuntimeError("flush() is for the end of the stream, after the last window")
        first = self.emitted
        if self.res is None or first >= self.n_feat or self.p.emit == "reference":
            return first - self.pre, np.zeros((0, MOTION_DIM), np.float32)
        out = self.res[first - self.res_off:self.n_feat - self.res_off].copy()
        self.emitted = self.n_feat
        return first - self.pre, out

    @property
    def done(self) -> bool:
        return (self.ended and self.next_window() is None
                and (self.emitted >= self.n_feat or self.p.emit == "reference"))

    # -- state ---------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {
            "kp_cond": self.kp_cond.copy(), "feat": self.feat.copy(), "feat_off": self.feat_off,
            "n_feat": self.n_feat, "res_off": self.res_off, "local": self.local, "windows": self.windows,
            "emitted": self.emitted, "ended": int(self.ended),
        }
        if self.res is not None:
            st["res"] = self.res.copy()
        if self.d0 is not None:
            st["d0"] = self.d0.copy()
        return st

    def load_state_dict(self, st: Mapping[str, Any]) -> None:
        self.kp_cond = np.asarray(st["kp_cond"], np.float32).copy()
        self.feat = np.asarray(st["feat"], np.float32).copy()
        for k in ("feat_off", "n_feat", "res_off", "local", "windows", "emitted"):
            setattr(self, k, int(st[k]))
        self.ended = bool(int(st["ended"]))
        self.res = np.asarray(st["res"], np.float32).copy() if "res" in st else None
        self.d0 = np.asarray(st["d0"], np.float32).copy() if "d0" in st else None


def offline_windows(sample: Callable[[np.ndarray, np.ndarray], np.ndarray], cond: np.ndarray,
                    source_motion: np.ndarray, params: StreamParams) -> np.ndarray:
    """The reference's offline windows over cond [n,1103] -> the fused, window-smoothed result (as long as the last
    window reaches, before the cut to n). `sample(kp_cond [265], cond [80,1103])` returns one window's motion."""
    p = replace(params, online=False)
    cond = np.asarray(cond, np.float32)
    source = np.asarray(source_motion, np.float32).reshape(MOTION_DIM)
    kp_cond = source.copy()
    res: np.ndarray | None = None
    windows = 0
    for start in range(0, len(cond), p.valid):
        c = cond[start:start + SEQ]
        if len(c) < SEQ:   # the condition row is repeated, after the condition was built
            c = np.concatenate([c, np.repeat(c[-1:], SEQ - len(c), axis=0)])
        res, _, _ = fuse_window(res, sample(kp_cond, c), p)
        windows += 1
        kp_cond = next_kp_cond(res, len(res) - p.overlap - 1, windows, source, p)
    if res is None:
        raise ValueError("offline motion needs at least one condition row")
    return res


def offline_motion(sample: Callable[[np.ndarray, np.ndarray], np.ndarray], cond: np.ndarray,
                   source_motion: np.ndarray, params: StreamParams) -> np.ndarray:
    """The reference's offline mode (docs/model.md §3.7): cond [n,1103] -> motion [n,265], the windows' result cut
    to n frames and smoothed once more over its whole length."""
    n = len(cond)
    res = offline_windows(sample, cond, source_motion, params)[:n].copy()
    smooth(res, 0, n, params.smooth_k)
    return res

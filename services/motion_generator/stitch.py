"""Motion stitch: generated 265-d motion + source motion + controls -> source and driving keypoints [21,3].

See docs/model.md §4. The output is the driving keypoints BEFORE the stitching MLP (the renderer
applies it). One deliberate difference from the reference (docs/model.md §9): `alpha_pitch/yaw/roll` are
always a gain on the angle in degrees; the reference scales the 66 logits when no `delta_*` is given.

Controls per frame (a dict; `overall` holds defaults merged into every frame):
    delta_pitch / delta_yaw / delta_roll   degrees added to the head angle
    alpha_pitch / alpha_yaw / alpha_roll   gain on the head angle
    delta_exp                              [63] added to the expression (per-keypoint offsets)
    vad_alpha                              < 1 pulls the whole expression toward the source (mouth closes)
    fade_alpha, fade_out_keys              fade toward the rest target (fade_type "d0" or "s")
    blink_now                              start a blink on this frame
    gaze_fix                               False turns the gaze correction off for this frame
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ditto.keypoints import bin66_to_degree, transform_keypoints
from ditto.pipeline import FPS

# 265-d motion layout (docs/model.md §3.1): key -> (start, stop)
MOTION_SLICES: dict[str, tuple[int, int]] = {
    "scale": (0, 1), "pitch": (1, 67), "yaw": (67, 133), "roll": (133, 199), "t": (199, 202), "exp": (202, 265),
}
MOTION_DIM = 265
SOURCE_KEYS = ("scale", "pitch", "yaw", "roll", "t", "exp", "kp")
ANGLES = ("pitch", "yaw", "roll")

LIP_KP = (6, 12, 14, 17, 19, 20)
EYE_KP = (11, 13, 15, 16, 18)

Info = dict[str, np.ndarray]


def kp_mask(kps: Sequence[int]) -> np.ndarray:
    m = np.zeros(63, np.float32)
    for k in kps:
        m[3 * k:3 * k + 3] = 1
    return m


def motion_to_info(row: np.ndarray) -> Info:
    """[265] -> dict of [1, size] arrays; scale gets +1 back."""
    row = np.asarray(row, np.float32).reshape(MOTION_DIM)
    info = {k: row[a:b].reshape(1, -1).copy() for k, (a, b) in MOTION_SLICES.items()}
    info["scale"] = info["scale"] + np.float32(1)
    return info


def info_to_motion(info: Mapping[str, np.ndarray]) -> np.ndarray:
    """dict -> [265] (kp excluded, scale stored minus 1)."""
    parts = [np.asarray(info[k], np.float32).reshape(-1) for k in MOTION_SLICES]
    parts[0] = parts[0] - np.float32(1)
    return np.concatenate(parts).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Blink schedules


def blink_schedule(n: int, blink_len: int, open_n: int | Sequence[int], draw: Callable[[], int] | None = None) -> \
        np.ndarray:
    """The reference's fixed-length schedule (docs/model.md §4.2): template row per frame, 0 on open-eye frames.
    open_n -1: no blinks; k > 0: every gap k; a list: gaps cycle; 0: gaps from `draw()` (60..100 frames)."""
    idx = np.zeros(n, np.int64)
    if not isinstance(open_n, Sequence) and open_n < 0:
        return idx
    gaps: list[int] | None = None
    if isinstance(open_n, Sequence):
        gaps = [int(g) for g in open_n]
    elif open_n > 0:
        gaps = [int(open_n)]
    if gaps is None and draw is None:
        raise ValueError("random blink gaps (open_n = 0) need a draw function")
    start = gaps[0] if gaps else draw()                  # type: ignore[misc]
    end = gaps[-1] if gaps else draw()                   # type: ignore[misc]
    max_i = n - max(end, blink_len)
    cur, j = start, 1
    while cur < max_i:
        idx[cur:cur + blink_len] = np.arange(blink_len)[: n - cur]
        if gaps:
            gap = gaps[j % len(gaps)]
            j += 1
        else:
            gap = draw()                                 # type: ignore[misc]
        cur += blink_len + gap
    return idx


class FixedBlinks:
    """A precomputed schedule, indexed cyclically (the reference's behaviour)."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = np.asarray(rows, np.int64)

    def row(self, frame: int) -> int:
        return int(self.rows[frame % len(self.rows)]) if len(self.rows) else 0


class StreamBlinks:
    """An endless, seeded schedule for streams of unknown length, so an idle face keeps blinking.

    Gap j is a pure function of (seed, j): the state to resume is the seed alone (plus forced blinks). Gaps are
    uniform in [0.8, 1.2] x the mean interval (default 3.2 s = the reference's 60..100 frames at 25 fps).
    """

    def __init__(self, blink_len: int, seed: int = 0, interval_s: float = 3.2, fps: float = FPS) -> None:
        self.blink_len = blink_len
        self.seed = int(seed)
        self.fps = fps
        self.set_interval(interval_s)
        self.forced: list[int] = []                       # frames where blink_now started a blink

    def set_interval(self, interval_s: float) -> None:
        self.interval_s = float(interval_s)
        mean = self.interval_s * self.fps
        self._lo, self._hi = int(round(0.8 * mean)), int(round(1.2 * mean))
        self._starts: list[int] = []

    def _gap(self, j: int) -> int:
        rng = np.random.Generator(np.random.PCG64([self.seed, 0xB11C, j]))
        return int(rng.integers(self._lo, self._hi + 1))

    def _start(self, j: int) -> int:
        while len(self._starts) <= j:
            prev = self._starts[-1] + self.blink_len if self._starts else 0
            self._starts.append(prev + self._gap(len(self._starts)))
        return self._starts[j]

    def force(self, frame: int) -> None:
        if frame not in self.forced:
            self.forced.append(frame)
            self.forced = self.forced[-8:]

    def row(self, frame: int) -> int:
        for f in self.forced:
            if 0 <= frame - f < self.blink_len:
                return frame - f
        if self.interval_s <= 0:
            return 0
        j = 0
        while self._start(j) + self.blink_len <= frame:
            j += 1
        s = self._start(j)
        return frame - s if s <= frame else 0


# ---------------------------------------------------------------------------------------------------------------
# Stitch


@dataclass
class StitchSettings:
    is_image: bool = True
    use_d_keys: tuple[str, ...] | dict[str, float] | None = None   # None: image (exp,pitch,yaw,roll,t), video (exp)
    relative_d: bool = True
    drive_eye: bool | None = None                                   # None: True for images, False for videos
    blink_template: np.ndarray | None = None                        # [T_b, 63]; row 0 = open eyes
    fade_type: str = ""                                             # "", "d0" or "s"
    fade_out_keys: tuple[str, ...] = ("exp",)
    overall: dict[str, Any] = field(default_factory=dict)

    def keys(self) -> dict[str, float]:
        keys = self.use_d_keys
        if keys is None:
            keys = ("exp", "pitch", "yaw", "roll", "t") if self.is_image else ("exp",)
        return dict(keys) if isinstance(keys, Mapping) else {k: 1.0 for k in keys}


def _copy(info: Mapping[str, np.ndarray]) -> Info:
    return {k: np.array(v, dtype=np.float32, copy=True) for k, v in info.items()}


class MotionStitch:
    """Per-frame stitch. `source` holds one info dict per source frame ([1, size] arrays, keys `SOURCE_KEYS`)."""

    def __init__(self, source: Sequence[Mapping[str, np.ndarray]], settings: StitchSettings | None = None,
                 blinks: FixedBlinks | StreamBlinks | None = None) -> None:
        if not source:
            raise ValueError("motion stitch needs at least one source frame")
        self.source = [_copy(s) for s in source]
        self.settings = st = settings or StitchSettings(is_image=len(source) == 1)
        self.keys = st.keys()
        self.drive_eye = st.is_image if st.drive_eye is None else st.drive_eye
        self.template = None if st.blink_template is None else np.asarray(st.blink_template, np.float32)
        has_tpl = self.template is not None
        lip, eye = kp_mask(LIP_KP), kp_mask(EYE_KP)
        a1 = lip + (eye if self.drive_eye and not has_tpl else 0)
        a2: np.ndarray | float = eye if (self.drive_eye and has_tpl) else 0.0
        self.A1 = (a1 * (1 - a2)).astype(np.float32)
        self.A2 = ((1 - a1) + a1 * a2).astype(np.float32)
        self.A3 = np.broadcast_to(np.float32(a2), (63,)).astype(np.float32)
        self.blinks = blinks
        self._x_s_cache: dict[int, np.ndarray] = {}
        # per-session state (see state_dict)
        self.d0: Info | None = None
        self.fade_target: Info | None = None
        self.pose_s: tuple[float, float] | None = None
        if st.is_image:
            s0 = self.source[0]
            self.pose_s = (float(bin66_to_degree(s0["yaw"])[0]), float(bin66_to_degree(s0["pitch"])[0]))

    # -- state ---------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("d0", "fade_target"):
            val = getattr(self, name)
            if val is not None:
                out.update({f"{name}.{k}": v.copy() for k, v in val.items()})
        if self.pose_s is not None:
            out["pose_s"] = np.array(self.pose_s, np.float64)
        if isinstance(self.blinks, StreamBlinks):
            out["blink_forced"] = np.array(self.blinks.forced, np.int64)
            out["blink_interval_s"] = np.float64(self.blinks.interval_s)
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in ("d0", "fade_target"):
            keys = {k.split(".", 1)[1]: np.asarray(v, np.float32) for k, v in state.items()
                    if k.startswith(name + ".")}
            setattr(self, name, keys or None)
        if "pose_s" in state:
            p = np.asarray(state["pose_s"], np.float64)
            self.pose_s = (float(p[0]), float(p[1]))
        if isinstance(self.blinks, StreamBlinks) and "blink_forced" in state:
            self.blinks.set_interval(float(state["blink_interval_s"]))
            self.blinks.forced = [int(f) for f in np.asarray(state["blink_forced"])]

    def set_d0(self, motion_row: np.ndarray) -> None:
        """The relative-motion reference (streaming sets it to the first window's frame 0)."""
        self.d0 = motion_to_info(motion_row)

    def source_keypoints(self, src_idx: int) -> np.ndarray:
        if src_idx not in self._x_s_cache:
            self._x_s_cache[src_idx] = transform_keypoints(self.source[src_idx])
        return self._x_s_cache[src_idx]

    # -- one frame -----------------------------------------------------------------------------------------------

    def __call__(self, motion_row: np.ndarray, frame: int, ctrl: Mapping[str, Any] | None = None,
                 src_idx: int = 0) -> tuple[np.ndarray, np.ndarray, Info]:
        """motion_row [265] of session frame `frame` -> (x_s [1,21,3], x_d [1,21,3] before stitching, x_d info)."""
        st = self.settings
        c = dict(st.overall)
        c.update(ctrl or {})
        x_s = self.source[src_idx]
        x_d = motion_to_info(motion_row)

        # relative motion against d0, then source keys for everything not driven
        if st.relative_d and self.d0 is None:
            self.d0 = _copy(x_d)
        if self.d0 is not None:
            for k in x_d:
                x_d[k] = x_s[k] + (x_d[k] - self.d0[k]) * np.float32(self.keys.get(k, 1.0))
        elif isinstance(st.use_d_keys, Mapping):
            for k, f in self.keys.items():
                x_d[k] = x_d[k] * np.float32(f)
        for k in SOURCE_KEYS:
            if k not in x_d or k not in self.keys:
                x_d[k] = x_s[k].copy()

        # lips from the model; eyes from the model, source + blink template, or source; the rest from the source
        if self.template is not None and self.drive_eye and self.blinks is not None:
            if c.get("blink_now") and isinstance(self.blinks, StreamBlinks):
                self.blinks.force(frame)
            delta = self.template[self.blinks.row(frame) % len(self.template)][None]
        else:
            delta = np.zeros((1, 63), np.float32)
        x_d["exp"] = x_d["exp"] * self.A1 + x_s["exp"] * self.A2 + delta * self.A3

        vad = float(c.get("vad_alpha", 1.0))
        if vad < 1:
            a = np.float32(vad)
            x_d["exp"] = x_d["exp"] * a + x_s["exp"] * (np.float32(1) - a)

        # head pose: degrees + delta, then the gain on the angle
        for ang in ANGLES:
            delta_a, alpha_a = c.get(f"delta_{ang}"), c.get(f"alpha_{ang}")
            if delta_a is None and alpha_a is None:
                continue
            deg = bin66_to_degree(x_d[ang]).reshape(1)
            if delta_a is not None:
                deg = deg + np.float32(delta_a)
            if alpha_a is not None:
                deg = deg * np.float32(alpha_a)
            x_d[ang] = deg.astype(np.float32)
        if c.get("delta_exp") is not None:
            x_d["exp"] = x_d["exp"] + np.asarray(c["delta_exp"], np.float32).reshape(1, 63)

        # fades toward the first driving frame ("d0") or the source ("s")
        if st.fade_type == "d0" and self.fade_target is None:
            self.fade_target = _copy(x_d)
        if c.get("fade_alpha") is not None and st.fade_type in ("d0", "s"):
            target = x_s if st.fade_type == "s" else self.fade_target
            a = np.float32(c["fade_alpha"])
            assert target is not None
            for k in c.get("fade_out_keys") or st.fade_out_keys:
                if k != "kp":
                    x_d[k] = x_d[k] * a + target[k] * (np.float32(1) - a)

        # gaze correction: keep the eyes on the camera when the head turns
        if self.drive_eye and c.get("gaze_fix", True):
            yaw_d = float(bin66_to_degree(x_d["yaw"]).reshape(-1)[0])
            pitch_d = float(bin66_to_degree(x_d["pitch"]).reshape(-1)[0])
            if self.pose_s is None:
                self.pose_s = (yaw_d, pitch_d)
            dx = 0.26 * (yaw_d - self.pose_s[0])
            dy = 0.28 * (pitch_d - self.pose_s[1])
            exp = x_d["exp"]
            exp[0, 33] += np.float32(0.0007 * dx if dx > 0 else 0.001 * dx)
            exp[0, 45] += np.float32(0.001 * dx if dx > 0 else 0.0007 * dx)
            exp[0, 34] += np.float32(-0.001 * dy)
            exp[0, 46] += np.float32(-0.001 * dy)

        x_s_kp = self.source_keypoints(src_idx) if st.is_image else transform_keypoints(x_s)
        return x_s_kp, transform_keypoints(x_d), x_d

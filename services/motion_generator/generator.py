"""Motion generator runtime: sessions (features in, keypoints out) stepped together in batched model calls.

    gen = MotionGenerator(open_backend("synthetic", "tiny"))
    session = gen.session(avatar, SessionSettings(emotion=3))
    batch = session.push(features)            # KeypointBatch of the frames that became final
    ...
    last = session.end()                      # the remaining real frames
    state = session.state_dict()              # small, serialisable; MotionSession.from_state(...) resumes

`MotionGenerator.step_many(sessions)` runs at most one ready window of every given session in ONE batched forward
per diffusion step (sessions grouped by step count and eta). The noise of window w of a session is drawn from
PCG64([seed, 1, w]) and its per-step noises from PCG64([seed, 2, steps]) (drawn once per step count and reused, as
the reference does), so a session's frames do not depend on batching, chunking or worker restarts. The parity tests
replace that noise with the reference's stored draws (`MotionGenerator(..., noise=...)`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from .condition import ConditionBuilder, EmotionSpec, mirror_index
from .controls import ControlTimeline
from .diffusion import ddim_sample, step_constants
from .models import MotionBackend
from .stitch import MotionStitch, StitchSettings, StreamBlinks, info_to_motion
from .streaming import SEQ, EmitMode, MotionStream, StreamParams, Window, offline_motion

MOTION_KEYS = ("scale", "pitch", "yaw", "roll", "t", "exp", "kp")
KEY_SIZES = {"scale": 1, "pitch": 66, "yaw": 66, "roll": 66, "t": 3, "exp": 63, "kp": 63}


def default_blink_template(length: int = 15, amplitude: float = 0.012) -> np.ndarray:
    """A generic blink [length, 63]: the eye keypoints move down and back (row 0 = open eyes, no offset).
    The official configuration ships its own template; pass it as `SessionSettings.blink_template`."""
    tpl = np.zeros((length, 63), np.float32)
    phase = np.sin(np.linspace(0, np.pi, length)) ** 2                 # 0 -> 1 -> 0
    for kp in (11, 13, 15, 16, 18):
        tpl[:, 3 * kp + 1] = amplitude * phase
    tpl[0] = 0
    return tpl


@dataclass
class AvatarMotion:
    """Motion facts of a registered avatar: per source frame motion info ([n, size] arrays), eye features."""

    info: dict[str, np.ndarray]
    eye_open: np.ndarray          # [n, 2]
    eye_ball: np.ndarray          # [n, 6]
    is_video: bool = False

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], is_video: bool = False) -> AvatarMotion:
        missing = [k for k in (*MOTION_KEYS, "eye_open", "eye_ball") if k not in arrays]
        if missing:
            raise ValueError(f"avatar motion info lacks {', '.join(missing)} (needs {', '.join(MOTION_KEYS)}, "
                             "eye_open, eye_ball)")
        info = {k: np.asarray(arrays[k], np.float32).reshape(-1, KEY_SIZES[k]) for k in MOTION_KEYS}
        n = len(info["kp"])
        bad = [f"{k} {v.shape}" for k, v in info.items() if len(v) != n]
        if n == 0 or bad:
            raise ValueError(f"avatar motion info needs the same number (>0) of source frames in every key: {bad}")
        return cls(info, np.asarray(arrays["eye_open"], np.float32).reshape(-1, 2),
                   np.asarray(arrays["eye_ball"], np.float32).reshape(-1, 6), is_video)

    @property
    def n_frames(self) -> int:
        return len(self.info["kp"])

    def frame(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i:i + 1] for k, v in self.info.items()}


@dataclass
class SessionSettings:
    steps: int = 10
    overlap: int = 70
    seed: int = 0
    eta: float = 1.0
    emotion: EmotionSpec = None
    controls: dict[str, Any] = field(default_factory=dict)        # overall controls
    blink_template: np.ndarray | None = None                       # None: default_blink_template()
    blink_interval_s: float = 3.2                                  # 0 = no automatic blinks
    fade_type: str = "d0"
    use_d_keys: tuple[str, ...] | dict[str, float] | None = None
    relative_d: bool = True
    drive_eye: bool | None = None
    smooth_k: int = 3
    fix_kp_cond: int = 1
    fix_kp_cond_dim: tuple[int, int] | None = (0, 202)
    v_min_max: np.ndarray | None = None                            # [2, 265] clip of emitted motion
    prefill: np.ndarray | None = None                              # [overlap, 1024] silence features
    emit: EmitMode = "every_frame"                                 # "reference": the reference's online frames

    def __post_init__(self) -> None:
        step_constants(self.steps, self.eta)                       # validates the step count
        self.stream_params()                                       # validates the overlap and emit

    @classmethod
    def reference(cls, **overrides: Any) -> SessionSettings:
        """The reference code's own defaults (docs/model.md §3.7): overlap 10, the conditioning frame never reset,
        50 steps, and its online worker's choice of emitted frames. The service's defaults are the reference's
        shipped online configuration (overlap 70, reset every window, 10 steps) and emit every real frame."""
        return cls(**{"steps": 50, "overlap": 10, "fix_kp_cond": 0, "fix_kp_cond_dim": None, "emit": "reference",
                      **overrides})

    def stream_params(self, online: bool = True) -> StreamParams:
        return StreamParams(self.overlap, self.smooth_k, self.fix_kp_cond, self.fix_kp_cond_dim, online, self.emit)


@dataclass
class KeypointBatch:
    first_frame: int
    x_s: np.ndarray               # [m, 21, 3]
    x_d: np.ndarray               # [m, 21, 3] before the stitching network
    source_index: np.ndarray      # [m] source frame used per output frame
    motion: np.ndarray            # [m, 265] generated motion (after clipping)

    def __len__(self) -> int:
        return len(self.x_d)

    @classmethod
    def empty(cls, first_frame: int) -> KeypointBatch:
        z = np.zeros((0, 21, 3), np.float32)
        return cls(first_frame, z, z.copy(), np.zeros(0, np.int64), np.zeros((0, 265), np.float32))

    @classmethod
    def concat(cls, parts: Sequence[KeypointBatch], first_frame: int) -> KeypointBatch:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(first_frame)
        return cls(parts[0].first_frame, np.concatenate([p.x_s for p in parts]),
                   np.concatenate([p.x_d for p in parts]), np.concatenate([p.source_index for p in parts]),
                   np.concatenate([p.motion for p in parts]))


@lru_cache(maxsize=32)
def _step_noise(seed: int, steps: int) -> np.ndarray:
    n = len(step_constants(steps).sigma)
    rng = np.random.Generator(np.random.PCG64([seed, 2, steps]))
    return rng.standard_normal((n, SEQ, 265)).astype(np.float32)


def _window_noise(seed: int, window: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64([seed, 1, window]))
    return rng.standard_normal((SEQ, 265)).astype(np.float32)


class SamplerNoise(Protocol):
    """Where the sampler's noise comes from: window w's initial x_T [80,265], and the S - 1 step noises
    [S-1,80,265] of a step count, which every window of the session reuses (as the reference does)."""

    def initial(self, seed: int, window: int) -> np.ndarray: ...

    def steps(self, seed: int, steps: int) -> np.ndarray: ...


class SeededNoise:
    """The service's noise: PCG64 keyed by the session seed and the window number / step count (docs/model.md §3.5),
    so frames do not depend on batching, chunking or which worker ran a window."""

    def initial(self, seed: int, window: int) -> np.ndarray:
        return _window_noise(seed, window)

    def steps(self, seed: int, steps: int) -> np.ndarray:
        return _step_noise(seed, steps)


class MotionSession:
    """One stream: features [n,1024] in, keypoint frames out. Not thread-safe; one worker drives it."""

    def __init__(self, generator: MotionGenerator, avatar: AvatarMotion, settings: SessionSettings | None = None,
                 session_id: str = "") -> None:
        self.generator = generator
        self.avatar = avatar
        self.settings = s = settings or SessionSettings()
        self.session_id = session_id
        self.conditions = ConditionBuilder(avatar.eye_open, avatar.eye_ball, avatar.info["kp"][0], s.emotion)
        self.timeline = ControlTimeline()
        self.timeline.set_overall(s.controls)
        self.stream = MotionStream(s.stream_params(), info_to_motion(avatar.frame(0)), s.prefill)
        template = default_blink_template() if s.blink_template is None else np.asarray(s.blink_template)
        is_image = not avatar.is_video
        self.blinks = StreamBlinks(len(template), s.seed, s.blink_interval_s)
        self.stitch = MotionStitch(
            [avatar.frame(i) for i in range(avatar.n_frames)],
            StitchSettings(is_image=is_image, use_d_keys=s.use_d_keys, relative_d=s.relative_d,
                           drive_eye=s.drive_eye, blink_template=template, fade_type=s.fade_type),
            self.blinks)

    # -- public API ----------------------------------------------------------------------------------------------

    def push(self, features: np.ndarray) -> KeypointBatch:
        """Add features; run every window they complete; return the frames that became final."""
        self.stream.push(features)
        return self.generator.run([self])[0]

    def end(self) -> KeypointBatch:
        """End of audio: run the last window and flush exactly the remaining real frames."""
        self.stream.end()
        out = self.generator.run([self])[0]
        return KeypointBatch.concat([out, self.flush()], out.first_frame)

    def flush(self) -> KeypointBatch:
        """After the end and the last window: the real frames generated but not emitted yet."""
        first, rows = self.stream.flush()
        return self._frames(first, rows)

    def set_emotion(self, emotion: EmotionSpec) -> None:
        """Change the emotion from the next window on (frames not generated yet)."""
        self.conditions.set_emotion(emotion)

    def control(self, ctrl: Mapping[str, Any], start: int | None = None, end: int | None = None) -> None:
        """Overall controls (no start) or a time-coded span [start, end) of frames."""
        if start is None:
            self.timeline.set_overall(ctrl)
        else:
            self.timeline.add_span(start, end, ctrl)
        if "blink_interval_s" in ctrl:
            self.blinks.set_interval(float(ctrl["blink_interval_s"]))

    @property
    def next_frame(self) -> int:
        return self.stream.emitted - self.stream.pre

    @property
    def look_ahead_frames(self) -> int:
        """Feature frames beyond a frame needed before it is emitted (worst case in a block)."""
        return self.stream.p.fuse + self.stream.p.valid - 1         # 19 for overlap 70 (docs/model.md §3.6)

    # -- steps driven by the generator ---------------------------------------------------------------------------

    def ready_window(self) -> tuple[Window, np.ndarray, np.ndarray] | None:
        """(window, cond_frame [265], cond [80,1103]) when a window can run now."""
        w = self.stream.next_window()
        if w is None:
            return None
        frames = np.maximum(np.arange(w.cond_start, w.cond_start + SEQ), 0)
        emo = self.conditions.emotion_rows(frames).copy()
        for i, f in enumerate(frames):
            e = self.timeline.at(int(f)).get("emotion")
            if e is not None:
                rows = np.asarray(e, np.float32).reshape(-1, 8)
                emo[i] = rows[int(f) % len(rows)]
        cond = self.conditions(w.features, w.cond_start, emo)
        return w, self.stream.kp_cond.copy(), cond

    def finish_window(self, window: Window, motion: np.ndarray) -> KeypointBatch:
        first, rows = self.stream.complete(window, motion)
        if window.index == 0 and self.settings.relative_d and self.stream.d0 is not None:
            self.stitch.set_d0(self._clip(self.stream.d0[None])[0])
        return self._frames(first, rows)

    def _clip(self, rows: np.ndarray) -> np.ndarray:
        mm = self.settings.v_min_max
        return rows if mm is None else np.clip(rows, mm[0], mm[1]).astype(np.float32)

    def _frames(self, first: int, rows: np.ndarray) -> KeypointBatch:
        if not len(rows):
            return KeypointBatch.empty(first)
        rows = self._clip(rows)
        xs, xd, src = [], [], []
        for i, row in enumerate(rows):
            g = first + i
            si = mirror_index(g, self.avatar.n_frames)
            ctrl = self.timeline.at(g)
            if "blink_interval_s" in ctrl:
                self.blinks.set_interval(float(ctrl["blink_interval_s"]))
            x_s, x_d, _ = self.stitch(row, g, ctrl, si)
            xs.append(x_s[0])
            xd.append(x_d[0])
            src.append(si)
        self.timeline.prune(first + len(rows))
        return KeypointBatch(first, np.stack(xs), np.stack(xd), np.array(src, np.int64), rows)

    # -- state ---------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume after a worker loss: numpy arrays, ints and one JSON string."""
        st: dict[str, Any] = {f"stream.{k}": v for k, v in self.stream.state_dict().items()}
        st.update({f"stitch.{k}": v for k, v in self.stitch.state_dict().items()})
        st["emotion"] = self.conditions.emotion.copy()
        st["timeline"] = self.timeline.to_json()
        return st

    def load_state_dict(self, st: Mapping[str, Any]) -> None:
        self.stream.load_state_dict({k[7:]: v for k, v in st.items() if k.startswith("stream.")})
        self.stitch.load_state_dict({k[7:]: v for k, v in st.items() if k.startswith("stitch.")})
        self.conditions.set_emotion(np.asarray(st["emotion"], np.float32))
        self.timeline = ControlTimeline.from_json(str(st["timeline"]))

    @classmethod
    def from_state(cls, generator: MotionGenerator, avatar: AvatarMotion, settings: SessionSettings,
                   state: Mapping[str, Any], session_id: str = "") -> MotionSession:
        s = cls(generator, avatar, settings, session_id)
        s.load_state_dict(state)
        return s


class MotionGenerator:
    """Owns one model backend and steps many sessions in batched forwards."""

    def __init__(self, backend: MotionBackend, max_batch: int = 64, noise: SamplerNoise | None = None) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self.noise: SamplerNoise = noise or SeededNoise()
        self.windows_run = 0      # windows sampled
        self.batches_run = 0      # batched sampler calls

    def session(self, avatar: AvatarMotion, settings: SessionSettings | None = None,
                session_id: str = "") -> MotionSession:
        return MotionSession(self, avatar, settings, session_id)

    def sample(self, cond_frame: np.ndarray, cond: np.ndarray, steps: int, eta: float, x_T: np.ndarray,
               step_noise: np.ndarray) -> np.ndarray:
        """A batch of windows [B,...] -> motion [B,80,265]."""
        return ddim_sample(self.backend.one_step, cond_frame, cond, steps, x_T, step_noise, eta)

    def step_many(self, sessions: Sequence[MotionSession]) -> list[KeypointBatch]:
        """Run one ready window of each session (batched) -> the frames each session emitted (maybe none)."""
        out = [KeypointBatch.empty(s.next_frame) for s in sessions]
        ready = [(i, r) for i, s in enumerate(sessions) if (r := s.ready_window()) is not None]
        groups: dict[tuple[int, float], list[tuple[int, Any]]] = {}
        for i, r in ready:
            groups.setdefault((sessions[i].settings.steps, sessions[i].settings.eta), []).append((i, r))
        for (steps, eta), items in groups.items():
            for b0 in range(0, len(items), self.max_batch):
                chunk = items[b0:b0 + self.max_batch]
                cond_frame = np.stack([r[1] for _, r in chunk])
                cond = np.stack([r[2] for _, r in chunk])
                x_T = np.stack([self.noise.initial(sessions[i].settings.seed, r[0].index) for i, r in chunk])
                noise = np.stack([self.noise.steps(sessions[i].settings.seed, steps) for i, _ in chunk], axis=1)
                motion = self.sample(cond_frame, cond, steps, eta, x_T, noise)
                self.windows_run += len(chunk)
                self.batches_run += 1
                for j, (i, r) in enumerate(chunk):
                    out[i] = sessions[i].finish_window(r[0], motion[j])
        return out

    def offline(self, avatar: AvatarMotion, features: np.ndarray, settings: SessionSettings | None = None,
                mode: str = "stream") -> KeypointBatch:
        """A whole utterance at once. mode "stream" (default) runs the streaming machine over all features, so a
        file gives exactly the frames a live stream gives; "reference" is the reference's offline mode (fusion
        over O frames, windows every V, last window padded by its last condition row, a final smoothing pass)."""
        s = self.session(avatar, settings)
        if mode == "stream":
            return KeypointBatch.concat([s.push(features), s.end()], 0)
        if mode != "reference":
            raise ValueError(f"unknown offline mode {mode!r}; use 'stream' or 'reference'")
        st = s.settings
        feats = np.asarray(features, np.float32)
        frames = np.arange(len(feats))
        emo = s.conditions.emotion_rows(frames).copy()
        for i in frames:
            e = s.timeline.at(int(i)).get("emotion")
            if e is not None:
                rows = np.asarray(e, np.float32).reshape(-1, 8)
                emo[i] = rows[int(i) % len(rows)]
        cond = s.conditions(feats, 0, emo)
        counter = iter(range(1 << 30))

        def sample(kp_cond: np.ndarray, c: np.ndarray) -> np.ndarray:
            w = next(counter)
            noise = self.noise.steps(st.seed, st.steps)[:, None]
            x_T = self.noise.initial(st.seed, w)[None]
            return self.sample(kp_cond[None], c[None], st.steps, st.eta, x_T, noise)[0]

        motion = offline_motion(sample, cond, info_to_motion(avatar.frame(0)), st.stream_params(online=False))
        return s._frames(0, motion)

    def run(self, sessions: Sequence[MotionSession]) -> list[KeypointBatch]:
        """Step until no session has a ready window; all frames per session, in order."""
        parts: list[list[KeypointBatch]] = [[] for _ in sessions]
        firsts = [s.next_frame for s in sessions]
        while True:
            active = [i for i, s in enumerate(sessions) if s.stream.next_window() is not None]
            if not active:
                break
            res = self.step_many([sessions[i] for i in active])
            for i, b in zip(active, res, strict=True):
                parts[i].append(b)
        return [KeypointBatch.concat(p, f) for p, f in zip(parts, firsts, strict=True)]

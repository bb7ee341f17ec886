"""Golden parity of the windowing around the MotionDiT (tests/golden/audio2motion_stream): 80-frame windows, the
overlap blend, the conditioning frame carried from window to window, the pose smoothing (twice offline), the padding
of the last window, the clip, and which frames the online mode emits.

The reference ran its offline loop and its online worker with golden-init weights, its code defaults (overlap 10, no
conditioning-frame reset, 50 DDIM steps; `SessionSettings.reference()` here) and stored noise. Two levels:
- the windowing alone: the reference's own per-window samples fed through our windowing give its motion (no model);
- the whole generator: the stored conditions' features and the stored noise through our sessions, sampler and
  windowing, against every output and debug array (one run per mode, ~40 s each on one CPU thread).
Tolerance: the case's, scaled error <= 1e-3 (index arrays exact)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from ditto.weights import Generated, load_weights
from services.motion_generator.dit import MotionDecoder, MotionDiTConfig
from services.motion_generator.generator import AvatarMotion, KeypointBatch, MotionGenerator, SessionSettings
from services.motion_generator.models import TorchBackend
from services.motion_generator.stitch import MOTION_SLICES, info_to_motion
from services.motion_generator.streaming import SEQ, MotionStream, Window, offline_motion, offline_windows
from tests.conftest import golden_case, scaled_error
from tests.motion.helpers import drive_stream

CASE = "audio2motion_stream"
TOL = 1e-3
CHUNK = 5          # the reference's online worker receives 5 feature rows per audio chunk
SCALE_ONE = np.eye(1, 265, dtype=np.float32)[0]     # x_d_info stores scale, the motion scale - 1


def case() -> dict[str, np.ndarray]:
    return golden_case(CASE)[1]


def source_avatar(io: dict[str, np.ndarray]) -> AvatarMotion:
    keys = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")
    return AvatarMotion.from_arrays({**{k: io[f"xs_{k}"] for k in keys}, "eye_open": io["eye_open"],
                                     "eye_ball": io["eye_ball"]})


def reference_settings(io: dict[str, np.ndarray], **overrides) -> SessionSettings:
    """The case's configuration: the reference's defaults, emotion label 4, its clip and its online pre-fill."""
    return SessionSettings.reference(emotion=4, v_min_max=io["v_min_max_for_clip"],
                                     prefill=io["hubert_prefix_online"], **overrides)


def padded(rows: np.ndarray) -> np.ndarray:
    return np.concatenate([rows, np.repeat(rows[-1:], SEQ - len(rows), axis=0)]) if len(rows) < SEQ else rows


@dataclass
class Replay:
    """What our windowing did with given window samples: per window its start, conditioning frame and valid length
    (V, or the short last window's real rows); the emitted chunks (first frame, rows) and d0."""

    starts: list[int]
    kp_cond: list[np.ndarray]
    valid: list[int]
    chunks: list[tuple[int, np.ndarray]]
    d0: np.ndarray

    @property
    def motion(self) -> np.ndarray:
        return np.concatenate([rows for _, rows in self.chunks])


def replay_online(io: dict[str, np.ndarray], raw: np.ndarray, emit: str) -> Replay:
    """Our streaming machine fed the case's features 5 rows at a time, sampling window w as raw[w]."""
    stream = MotionStream(reference_settings(io, emit=emit).stream_params(), info_to_motion(source_avatar(io).frame(0)),
                          io["hubert_prefix_online"])
    rep = Replay([], [], [], [], np.zeros(0))

    def sample(w: Window) -> np.ndarray:
        rep.starts.append(w.start)
        rep.kp_cond.append(stream.kp_cond.copy())
        rep.valid.append(stream.n_feat - w.start if w.final else stream.p.valid)
        return raw[w.index]

    rep.chunks = drive_stream(stream, io["hubert"], CHUNK, sample)
    assert stream.d0 is not None
    rep.d0 = stream.d0
    return rep


def window_sampler(raw: np.ndarray, seen: list[tuple[np.ndarray, np.ndarray]]) -> Callable[..., np.ndarray]:
    """An offline `sample(kp_cond, cond)` that returns raw[w] for window w and keeps what it was given."""
    def sample(kp_cond: np.ndarray, cond: np.ndarray) -> np.ndarray:
        seen.append((kp_cond.copy(), cond.copy()))
        return raw[len(seen) - 1]
    return sample


def check_offline_windows(io: dict[str, np.ndarray], raw: np.ndarray) -> np.ndarray:
    """Our offline windowing on the window samples `raw`: the reference's windows, conditioning frames, result
    before and after the final smoothing -> our unclipped offline motion."""
    params = reference_settings(io).stream_params(online=False)
    source = info_to_motion(source_avatar(io).frame(0))
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    before = offline_windows(window_sampler(raw, seen), io["aud_cond"], source, params)
    assert scaled_error(before, io["offline_res_before_final_smo"]) <= TOL
    for w, (kp, cond) in enumerate(seen):
        assert scaled_error(kp, io["offline_kp_cond"][w]) <= TOL, w
        start = int(io["offline_win_start"][w])      # the window's rows, the short last one padded after the condition
        assert np.array_equal(cond, padded(io["aud_cond"][start:start + SEQ])), w
    assert len(seen) == len(io["offline_win_start"])
    motion = offline_motion(window_sampler(raw, []), io["aud_cond"], source, params)
    assert scaled_error(motion, io["motion_offline"]) <= TOL
    return motion


def check_online_windows(io: dict[str, np.ndarray], raw: np.ndarray) -> np.ndarray:
    """Our online windowing on the window samples `raw`, with the reference's choice of frames and with ours ->
    our unclipped online motion (the reference's frames)."""
    ref = replay_online(io, raw, emit="reference")
    np.testing.assert_array_equal(ref.starts, io["online_win_start"])
    np.testing.assert_array_equal(ref.valid, io["online_real_len"])
    for w, kp in enumerate(ref.kp_cond):
        assert scaled_error(kp, io["online_kp_cond"][w]) <= TOL, w
    assert scaled_error(ref.d0, io["online_d0_input"]) <= TOL
    # window 0 emits nothing; then 70, 70, 50 frames, the first being real frame 60
    assert [len(rows) for _, rows in ref.chunks] == list(io["online_emit_len"]) and ref.chunks[0][0] == 60
    assert scaled_error(ref.motion, io["motion_online"]) <= TOL
    # the service's choice: every real frame once, from frame 0, with the same values where both emit
    ours = replay_online(io, raw, emit="every_frame")
    assert ours.chunks[0][0] == 0 and len(ours.motion) == len(io["hubert"])
    np.testing.assert_array_equal(ours.motion[60:], ref.motion)
    return ref.motion


@pytest.mark.golden
def test_audio2motion_stream_windowing_replays_the_reference_windows() -> None:
    io = case()
    source = info_to_motion(source_avatar(io).frame(0))
    np.testing.assert_array_equal(source, io["offline_kp_cond"][0])
    np.testing.assert_array_equal(source, io["online_kp_cond"][0])
    check_offline_windows(io, io["offline_raw"])
    check_online_windows(io, io["online_raw"])


# ---- the whole generator: sessions, conditions, sampler with the stored noise, windowing --------------------------

@dataclass
class StoredNoise:
    """The reference's draws instead of the seeded ones: window w starts from x_T[w]; the 49 step noises of
    LMDM.setup(50) are shared by every window."""

    x_T: np.ndarray          # [windows, 1, 80, 265]
    step_noise: np.ndarray   # [steps - 1, 1, 80, 265]

    def initial(self, seed: int, window: int) -> np.ndarray:
        return self.x_T[window, 0]

    def steps(self, seed: int, steps: int) -> np.ndarray:
        assert steps - 1 == len(self.step_noise), f"the case stores the noises of {len(self.step_noise) + 1} steps"
        return self.step_noise[:, 0]


class RecordingGenerator(MotionGenerator):
    """Keeps each sampled window's conditioning frame, condition and motion (the case's debug arrays)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.windows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def sample(self, cond_frame, cond, steps, eta, x_T, step_noise):
        motion = super().sample(cond_frame, cond, steps, eta, x_T, step_noise)
        self.windows += [(cond_frame[b].copy(), cond[b].copy(), motion[b].copy()) for b in range(len(motion))]
        return motion


@dataclass
class Run:
    frames: KeypointBatch
    kp_cond: np.ndarray     # [windows, 265]
    cond: np.ndarray        # [windows, 80, 1103]
    raw: np.ndarray         # [windows, 80, 265]
    d0: np.ndarray | None = None


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, Run]]:
    io = case()
    model = MotionDecoder(MotionDiTConfig.full())
    load_weights(model, Generated(int(golden_case(CASE)[0]["seed"])))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)       # module fixtures run before the per-test one-thread fixture (tests/motion)
    try:
        out = {}
        for mode in ("offline", "online"):
            gen = RecordingGenerator(TorchBackend(model), noise=StoredNoise(io["x_T"], io["step_noise"]))
            if mode == "offline":
                frames = gen.offline(source_avatar(io), io["hubert"], reference_settings(io), mode="reference")
                d0 = None
            else:
                session = gen.session(source_avatar(io), reference_settings(io))
                feats = io["hubert"]
                parts = [session.push(feats[i:i + CHUNK]) for i in range(0, len(feats), CHUNK)]
                frames = KeypointBatch.concat([*parts, session.end()], 0)
                assert session.stitch.d0 is not None
                d0 = np.concatenate([session.stitch.d0[k].reshape(-1) for k in MOTION_SLICES])
            kp, cond, raw = (np.stack(a) for a in zip(*gen.windows, strict=True))
            out[mode] = Run(frames, kp, cond, raw, d0)
        yield out
    finally:
        torch.set_num_threads(threads)


def check_run(io: dict[str, np.ndarray], run: Run, mode: str) -> None:
    """The run's per-window arrays against the reference's: condition (exact up to float32), conditioning frame,
    sampled window; then the emitted frames, clipped, against the reference's x_d_info."""
    starts = io[f"{mode}_win_start"]
    conds = io["aud_cond" if mode == "offline" else "aud_cond_online"]
    assert len(run.raw) == len(starts)
    for w, start in enumerate(starts):
        assert scaled_error(run.cond[w], padded(conds[start:start + SEQ])) <= 1e-6, w
        assert scaled_error(run.kp_cond[w], io[f"{mode}_kp_cond"][w]) <= TOL, w
        assert scaled_error(run.raw[w], io[f"{mode}_raw"][w]) <= TOL, w
    assert scaled_error(run.frames.motion + SCALE_ONE, io[f"x_d_info_{mode}"]) <= TOL


@pytest.mark.golden
def test_audio2motion_stream_offline(runs: dict[str, Run]) -> None:
    io, run = case(), runs["offline"]
    check_run(io, run, "offline")
    assert run.frames.first_frame == 0 and len(run.frames) == len(io["hubert"])
    motion = check_offline_windows(io, run.raw)           # our windowing of our samples: the unclipped motion
    lo, hi = io["v_min_max_for_clip"]
    np.testing.assert_array_equal(run.frames.motion, np.clip(motion, lo, hi))


@pytest.mark.golden
def test_audio2motion_stream_online(runs: dict[str, Run]) -> None:
    io, run = case(), runs["online"]
    check_run(io, run, "online")
    assert run.frames.first_frame == 60 and len(run.frames) == len(io["motion_online"])
    assert run.d0 is not None and scaled_error(run.d0, io["online_d0"]) <= TOL
    motion = check_online_windows(io, run.raw)
    lo, hi = io["v_min_max_for_clip"]
    np.testing.assert_array_equal(run.frames.motion, np.clip(motion, lo, hi))

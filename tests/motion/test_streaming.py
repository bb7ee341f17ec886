"""Streaming: chunk invariance, exact real-frame count, resume from state, batched == unbatched, window logic."""

from __future__ import annotations

import numpy as np
import pytest

from services.motion_generator.generator import KeypointBatch, SessionSettings
from services.motion_generator.streaming import MotionStream, StreamParams, fuse_window, offline_motion, smooth
from tests.motion.helpers import avatar, features, tiny_generator


def _run(chunks: list[int], feats: np.ndarray, settings: SessionSettings | None = None) -> KeypointBatch:
    s = tiny_generator().session(avatar(), settings or SessionSettings(seed=5))
    parts, pos = [], 0
    for c in chunks:
        parts.append(s.push(feats[pos:pos + c]))
        pos += c
    parts.append(s.end())
    return KeypointBatch.concat(parts, 0)


@pytest.mark.parametrize("n_real", [7, 45, 133])
def test_chunk_invariance_and_exact_frame_count(n_real: int) -> None:
    feats = features(n_real)
    whole = _run([n_real], feats)
    assert len(whole) == n_real and whole.first_frame == 0
    rng = np.random.default_rng(n_real)
    sizes, left = [], n_real
    while left:
        sizes.append(int(min(left, rng.integers(1, 17))))
        left -= sizes[-1]
    chunked = _run(sizes, feats)
    np.testing.assert_array_equal(chunked.x_d, whole.x_d)
    np.testing.assert_array_equal(chunked.motion, whole.motion)
    fives = _run([5] * (n_real // 5) + ([n_real % 5] if n_real % 5 else []), feats)
    np.testing.assert_array_equal(fives.x_d, whole.x_d)


def test_frames_leave_with_the_look_ahead() -> None:
    s = tiny_generator().session(avatar(), SessionSettings(seed=1))
    assert s.look_ahead_frames == 19
    feats = features(60)
    got = 0
    for i in range(0, 60, 5):
        b = s.push(feats[i:i + 5])
        assert b.first_frame == got or len(b) == 0
        got += len(b)
        # every real frame f with f + 19 < features so far is out, in blocks of 10
        have = i + 5
        assert got == max(0, (have - 10) // 10 * 10)
    rest = s.end()
    assert got + len(rest) == 60


@pytest.mark.parametrize("overlap", [10, 40, 70])
def test_every_real_frame_once_for_any_overlap(overlap: int) -> None:
    b = _run([23] * 6, features(138), SessionSettings(seed=2, overlap=overlap))
    assert len(b) == 138 and b.first_frame == 0
    assert np.all(np.isfinite(b.x_d))


def test_resume_from_state_gives_identical_frames() -> None:
    feats = features(97)
    ref = _run([9] * 10 + [7], feats)
    gen = tiny_generator()
    settings = SessionSettings(seed=5)
    a = gen.session(avatar(), settings)
    parts = [a.push(feats[:9 * 4])]
    a.control({"delta_yaw": 5.0}, start=50, end=60)
    state = a.state_dict()
    for k, v in state.items():                                   # numpy arrays, ints or one JSON string
        assert isinstance(v, np.ndarray | int | str | np.floating), k
    size = sum(v.nbytes if isinstance(v, np.ndarray) else 8 for v in state.values())
    assert size < 512 * 1024
    b = type(a).from_state(gen, avatar(), settings, {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                                     for k, v in state.items()})
    for i in range(4, 10):
        parts.append(b.push(feats[9 * i:9 * i + 9]))
    parts.append(b.push(feats[90:]))
    parts.append(b.end())
    resumed = KeypointBatch.concat(parts, 0)
    # the same stream without interruption, with the same control
    c = gen.session(avatar(), settings)
    parts2 = [c.push(feats[:36])]
    c.control({"delta_yaw": 5.0}, start=50, end=60)
    parts2 += [c.push(feats[36:]), c.end()]
    straight = KeypointBatch.concat(parts2, 0)
    np.testing.assert_array_equal(resumed.x_d, straight.x_d)
    assert not np.array_equal(straight.x_d[50:60], ref.x_d[50:60])      # the control did something
    np.testing.assert_array_equal(straight.x_d[:50], ref.x_d[:50])


def test_batched_equals_unbatched() -> None:
    gen = tiny_generator()
    feats = [features(90, seed=s) for s in (1, 2, 3)]
    settings = [SessionSettings(seed=s, emotion=s) for s in (1, 2, 3)]
    alone = [_run([90], f, st) for f, st in zip(feats, settings, strict=True)]
    sessions = [gen.session(avatar(), st) for st in settings]
    for s, f in zip(sessions, feats, strict=True):
        s.stream.push(f)
        s.stream.end()
    windows, batches = gen.windows_run, gen.batches_run
    out = gen.run(sessions)
    assert gen.windows_run - windows == 3 * 10                     # 9 full windows + the short last one each
    assert gen.batches_run - batches == 10                         # ... three sessions in every forward
    for s, o, ref in zip(sessions, out, alone, strict=True):
        full = KeypointBatch.concat([o, s.flush()], 0)
        # float32 GEMMs of another batch size sum in another order; 10 chained windows amplify it to ~3e-5
        np.testing.assert_allclose(full.x_d, ref.x_d, rtol=1e-4, atol=1e-4)


def test_window_fusion_and_smoothing_rules() -> None:
    p = StreamParams(overlap=10, online=False)
    a = np.arange(80 * 265, dtype=np.float32).reshape(80, 265) / 1000
    res, s, e = fuse_window(None, a, p)
    assert (s, e) == (0, 80)
    res2, s2, e2 = fuse_window(res, a + 1, p)
    assert len(res2) == 150 and (s2, e2) == (70, 81)
    # first fused frame keeps the old value (alpha 0); exp dims are never smoothed
    np.testing.assert_array_equal(res2[70, 202:], res[70, 202:])
    np.testing.assert_allclose(res2[75, 202:], res[75, 202:] * 0.5 + (a[5, 202:] + 1) * 0.5, rtol=1e-6)
    x = np.zeros((5, 265), np.float32)
    x[2, :] = 3
    smooth(x, 0, 5, 3)
    np.testing.assert_allclose(x[1:4, 0], 1.0)
    assert x[2, 210] == 3
    # offline: n frames out, window count as the reference
    calls = []
    out = offline_motion(lambda kp, c: calls.append(1) or np.ones((80, 265), np.float32), np.zeros((200, 1103)),
                         np.zeros(265), StreamParams(overlap=10))
    assert out.shape == (200, 265) and len(calls) == 3


def test_stream_rejects_bad_input() -> None:
    st = MotionStream(StreamParams(), np.zeros(265))
    with pytest.raises(ValueError, match=r"\[n, 1024\]"):
        st.push(np.zeros((3, 512)))
    st.end()
    with pytest.raises(RuntimeError, match="after the end"):
        st.push(np.zeros((3, 1024)))
    with pytest.raises(ValueError, match="overlap"):
        StreamParams(overlap=80)


def test_offline_modes() -> None:
    gen = tiny_generator()
    feats = features(75)
    settings = SessionSettings(seed=5)
    whole = gen.offline(avatar(), feats, settings)
    np.testing.assert_array_equal(whole.x_d, _run([75], feats).x_d)           # a file = a live stream
    ref = gen.offline(avatar(), feats, SessionSettings(seed=5, overlap=10, fix_kp_cond=0), mode="reference")
    assert len(ref) == 75 and np.all(np.isfinite(ref.x_d))
    assert not np.allclose(ref.motion, whole.motion)
    with pytest.raises(ValueError, match="offline mode"):
        gen.offline(avatar(), feats, settings, mode="fast")

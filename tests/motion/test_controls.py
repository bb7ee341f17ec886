"""Every motion control has an effect, in the right direction; idle (silence) keeps blinking and moving."""

from __future__ import annotations

import numpy as np
import pytest

from ditto.keypoints import bin66_to_degree
from services.motion_generator.controls import ControlTimeline
from services.motion_generator.generator import KeypointBatch, SessionSettings, default_blink_template
from services.motion_generator.stitch import (
    EYE_KP,
    LIP_KP,
    FixedBlinks,
    MotionStitch,
    StitchSettings,
    StreamBlinks,
    info_to_motion,
)
from tests.motion.helpers import avatar, features, tiny_generator


def _setup(**kw):
    av = avatar()
    src = av.frame(0)
    rng = np.random.default_rng(1)
    row = info_to_motion(src) + np.concatenate([np.zeros(1), rng.standard_normal(198), 0.02 * rng.standard_normal(3),
                                                0.01 * rng.standard_normal(63)]).astype(np.float32)
    settings = StitchSettings(is_image=True, **kw)
    return src, row, settings


def _deg(v: np.ndarray) -> float:
    return float(bin66_to_degree(np.asarray(v)).reshape(-1)[0])


def _run(settings, src, row, ctrl, blinks=None, frame: int = 5):
    ms = MotionStitch([src], settings, blinks)
    ms.set_d0(info_to_motion(src))                       # d0 = source: the relative motion is the raw offset
    return ms(row, frame, ctrl)


@pytest.mark.parametrize("angle", ["pitch", "yaw", "roll"])
def test_delta_and_alpha_of_head_angles(angle: str) -> None:
    src, row, st = _setup()
    _, base_kp, base = _run(st, src, row, {})
    _, up_kp, up = _run(st, src, row, {f"delta_{angle}": 10.0})
    assert _deg(up[angle]) == pytest.approx(_deg(base[angle]) + 10, abs=1e-4)
    assert not np.allclose(up_kp, base_kp)
    _, _, half = _run(st, src, row, {f"alpha_{angle}": 0.5})
    assert _deg(half[angle]) == pytest.approx(0.5 * _deg(base[angle]), abs=1e-4)   # a gain on the angle
    _, _, both = _run(st, src, row, {f"delta_{angle}": 4.0, f"alpha_{angle}": 2.0})
    assert _deg(both[angle]) == pytest.approx(2 * (_deg(base[angle]) + 4), abs=1e-3)


def test_expression_controls() -> None:
    src, row, st = _setup()
    _, _, base = _run(st, src, row, {})
    delta = np.linspace(-0.01, 0.01, 63).astype(np.float32)
    _, _, moved = _run(st, src, row, {"delta_exp": delta, "gaze_fix": False})
    _, _, base_nogaze = _run(st, src, row, {"gaze_fix": False})
    np.testing.assert_allclose(moved["exp"][0] - base_nogaze["exp"][0], delta, atol=1e-6)
    lips = np.array([3 * k + a for k in LIP_KP for a in range(3)])
    d_base = np.abs(base["exp"][0, lips] - src["exp"][0, lips]).sum()
    _, _, half = _run(st, src, row, {"vad_alpha": 0.5})
    _, _, shut = _run(st, src, row, {"vad_alpha": 0.0})
    d_half = np.abs(half["exp"][0, lips] - src["exp"][0, lips]).sum()
    d_shut = np.abs(shut["exp"][0, lips] - src["exp"][0, lips]).sum()
    assert d_shut < 1e-6 < d_half < d_base                                      # mouth closes toward the source


def test_fade_to_source() -> None:
    src, row, st = _setup(fade_type="s")
    _, _, full = _run(st, src, row, {"fade_alpha": 1.0, "gaze_fix": False})
    _, _, half = _run(st, src, row, {"fade_alpha": 0.5, "gaze_fix": False})
    _, _, rest = _run(st, src, row, {"fade_alpha": 0.0, "gaze_fix": False})
    np.testing.assert_allclose(rest["exp"], src["exp"], atol=1e-7)
    np.testing.assert_allclose(half["exp"], 0.5 * (full["exp"] + src["exp"]), atol=1e-6)


def test_which_parts_drive_and_eye_masks() -> None:
    src, row, st = _setup(use_d_keys=("exp",))
    _, _, only_exp = _run(st, src, row, {})
    np.testing.assert_array_equal(only_exp["yaw"], src["yaw"])                 # pose stays the source's
    eyes = np.array([3 * k + a for k in EYE_KP for a in range(3)])
    src2, row2, st_eye = _setup(drive_eye=True)
    _, _, driven = _run(st_eye, src2, row2, {"gaze_fix": False})
    assert not np.allclose(driven["exp"][0, eyes], src2["exp"][0, eyes])       # model drives the eyes
    _, _, fixed = _run(_setup(drive_eye=False)[2], src2, row2, {})
    np.testing.assert_array_equal(fixed["exp"][0, eyes], src2["exp"][0, eyes])  # eyes stay the source's
    others = np.setdiff1d(np.arange(63), np.r_[eyes, [3 * k + a for k in LIP_KP for a in range(3)]])
    np.testing.assert_array_equal(fixed["exp"][0, others], src2["exp"][0, others])


def test_gaze_fix_follows_head_turn() -> None:
    src, row, st = _setup()
    _, _, on = _run(st, src, row, {"delta_yaw": 20.0})
    _, _, off = _run(st, src, row, {"delta_yaw": 20.0, "gaze_fix": False})
    assert on["exp"][0, 33] > off["exp"][0, 33] and on["exp"][0, 45] > off["exp"][0, 45]   # yaw right -> eyes x+


def test_blink_template_schedule_and_blink_now() -> None:
    tpl = default_blink_template()
    src, row, st = _setup(blink_template=tpl)
    eyes = np.array([3 * k + 1 for k in EYE_KP])
    _, _, open_ = _run(st, src, row, {}, FixedBlinks(np.zeros(30, np.int64)), frame=3)
    _, _, mid = _run(st, src, row, {}, FixedBlinks(np.full(30, 7)), frame=3)
    np.testing.assert_allclose(mid["exp"][0, eyes] - open_["exp"][0, eyes], tpl[7, eyes], atol=1e-6)
    blinks = StreamBlinks(len(tpl), seed=0, interval_s=0)                      # no automatic blinks
    ms = MotionStitch([src], st, blinks)
    ms.set_d0(info_to_motion(src))
    rows = [ms(row, f, {"blink_now": f == 10})[2]["exp"][0, eyes] for f in range(30)]
    moved = [f for f in range(30) if not np.allclose(rows[f], rows[0])]
    assert moved and moved[0] == 11 and max(moved) < 10 + len(tpl)


def test_stream_blinks_keep_coming_and_are_seeded() -> None:
    a, b = StreamBlinks(15, seed=3), StreamBlinks(15, seed=3)
    rows = np.array([a.row(f) for f in range(2500)])
    starts = np.flatnonzero(rows == 1)
    assert len(starts) >= 20                                                   # ~every 3.2 s for 100 s
    gaps = np.diff(starts) - 15
    assert gaps.min() >= 60 - 1 and gaps.max() <= 100
    assert [b.row(f) for f in range(2500)] == rows.tolist()
    c = StreamBlinks(15, seed=4)
    assert [c.row(f) for f in range(2500)] != rows.tolist()


def test_timeline_precedence_and_serialisation() -> None:
    tl = ControlTimeline()
    tl.set_overall({"delta_pitch": 2.0})
    tl.add_span(10, 20, {"delta_pitch": -3.0, "emotion": 3})
    tl.add_span(15, 0, {"alpha_yaw": 0.5})                                     # 0 = open-ended
    tl.set_frame(12, {"delta_pitch": 7.0})
    assert tl.at(5) == {"delta_pitch": 2.0}
    assert tl.at(12)["delta_pitch"] == 7.0 and tl.at(11)["delta_pitch"] == -3.0
    assert tl.at(100) == {"delta_pitch": 2.0, "alpha_yaw": 0.5}
    back = ControlTimeline.from_json(tl.to_json())
    assert all(back.at(f) == tl.at(f) for f in range(0, 40))
    with pytest.raises(ValueError, match="unknown motion control"):
        tl.set_overall({"delta_zoom": 1.0})
    with pytest.raises(ValueError, match="63 values"):
        tl.set_frame(1, {"delta_exp": [0.0] * 5})


def test_time_coded_controls_and_emotion_change_in_a_session() -> None:
    feats = features(60)
    gen = tiny_generator()

    def run(configure) -> KeypointBatch:
        s = gen.session(avatar(), SessionSettings(seed=9, emotion=4))
        configure(s)
        return KeypointBatch.concat([s.push(feats), s.end()], 0)

    ref = run(lambda s: None)
    turned = run(lambda s: s.control({"delta_yaw": 15.0}, start=20, end=30))
    np.testing.assert_array_equal(turned.x_d[:20], ref.x_d[:20])
    assert not np.allclose(turned.x_d[20:30], ref.x_d[20:30])
    np.testing.assert_array_equal(turned.x_d[30:], ref.x_d[30:])
    happy = run(lambda s: s.control({"emotion": 3}, start=30))
    assert np.array_equal(happy.motion[:10], ref.motion[:10])
    assert not np.allclose(happy.motion[30:], ref.motion[30:])
    s = gen.session(avatar(), SessionSettings(seed=9, emotion=4))
    first = s.push(feats[:30])
    s.set_emotion("sad")                                                       # mid-session, new windows only
    rest = KeypointBatch.concat([s.push(feats[30:]), s.end()], len(first))
    np.testing.assert_array_equal(first.x_d, ref.x_d[:len(first)])
    assert not np.allclose(rest.motion, ref.motion[len(first):])


def test_idle_silence_looks_alive() -> None:
    s = tiny_generator().session(avatar(), SessionSettings(seed=1))
    silence = np.zeros((250, 1024), np.float32)                                # 10 s of idle features
    out = KeypointBatch.concat([s.push(silence[i:i + 25]) for i in range(0, 250, 25)], 0)
    assert len(out) >= 200
    rows = [s.blinks.row(f) for f in range(len(out))]
    assert sum(1 for r in rows if r == 1) >= 2                                 # blinks keep coming
    eyes = [3 * k + 1 for k in EYE_KP]
    blink_frames = [f for f, r in enumerate(rows) if r == 7]
    open_frames = [f for f, r in enumerate(rows) if r == 0]
    eye_y = out.x_d[:, [k for k in EYE_KP], 1]
    assert np.abs(eye_y[blink_frames].mean() - eye_y[open_frames].mean()) > 1e-3
    head = out.x_d[:, :, :2].reshape(len(out), -1)
    assert np.std(head, axis=0).max() > 1e-3                                   # small motion, not frozen
    assert len(eyes) == 5

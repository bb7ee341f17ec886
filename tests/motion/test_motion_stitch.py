"""Golden parity of motion stitch (motion_stitch case) and the blink schedules.

Frames 10-14 carry `alpha_pitch` without `delta_pitch`: the reference scales the 66 logits there, the project applies
every alpha as a gain on the angle (docs/model.md §9). Those frames are checked against the angle-gain
definition, derived from the stored pre-transform values; every other frame is compared as stored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditto.keypoints import bin66_to_degree, transform_keypoints
from ditto.weights import golden_state_dict
from services.motion_generator.stitch import FixedBlinks, MotionStitch, StitchSettings, blink_schedule
from tests.conftest import golden_case

ANGLE_GAIN_FRAMES = range(10, 15)


def _source(io: dict) -> dict:
    return {k: io[f"xs_{k}"] for k in ("scale", "pitch", "yaw", "roll", "t", "exp", "kp")}


def _ctrl(case: dict) -> dict[int, dict]:
    out = {}
    for f, c in case["ctrl_info_after_setup_Nd"].items():
        out[int(f)] = {k: (np.asarray(v, np.float32) if k == "delta_exp" else v) for k, v in c.items()}
    return out


def _stitcher(case: dict, io: dict):
    from services.renderer.networks.stitching_network import StitchingNetwork

    net = StitchingNetwork()
    net.load_state_dict(golden_state_dict(net, case["seed"]))
    return net.eval()


def _angle_gain_expected(io: dict, fade: str, f: int, pitch_s: float) -> np.ndarray:
    """x_d before stitching for a frame whose pitch carries alpha = 0.8 as an angle gain."""
    logits_ref = io[f"xd_pre_pose_logits_{fade}"][f, 0]                    # 0.8 * mixed logits (reference)
    deg_ref = float(bin66_to_degree(logits_ref[None])[0])
    deg_new = float(np.float32(bin66_to_degree((logits_ref / np.float32(0.8))[None])[0]) * np.float32(0.8))
    exp = io[f"xd_pre_exp_{fade}"][f].copy()
    for i in (34, 46):                                                      # gaze fix follows the new pitch
        exp[i] += np.float32(-0.001 * 0.28 * (deg_new - pitch_s)) - np.float32(-0.001 * 0.28 * (deg_ref - pitch_s))
    pose = io[f"xd_pre_pose_deg_{fade}"][f]
    info = {"scale": io[f"xd_pre_scale_{fade}"][f][None], "t": io[f"xd_pre_t_{fade}"][f][None], "exp": exp[None],
            "pitch": np.array([deg_new], np.float32), "yaw": pose[1:2], "roll": pose[2:3], "kp": io["xs_kp"]}
    return transform_keypoints(info)[0]


@pytest.mark.golden
@pytest.mark.parametrize("fade", ["d0", "s"])
def test_motion_stitch(fade: str) -> None:
    case, io, _ = golden_case("motion_stitch")
    sched = blink_schedule(30, 15, 4)
    np.testing.assert_array_equal(sched, io["blink_idx"])
    settings = StitchSettings(is_image=True, blink_template=io["delta_eye_arr"], fade_type=fade,
                              overall={"delta_roll": 1.5})
    ms = MotionStitch([_source(io)], settings, FixedBlinks(sched))
    ctrl = _ctrl(case)
    x_s, pre = None, []
    for f in range(30):
        x_s, x_d, _ = ms(io["x_d_arr"][f], f, ctrl.get(f, {}))
        pre.append(x_d[0])
    pre_arr = np.stack(pre)
    assert x_s is not None and np.max(np.abs(x_s - io["x_s"])) <= 1e-5
    pitch_s = float(bin66_to_degree(io["xs_pitch"])[0])
    net = _stitcher(case, io)
    with torch.no_grad():
        stitched = net(torch.from_numpy(np.repeat(x_s, 30, 0)), torch.from_numpy(pre_arr)).numpy()
    for f in range(30):
        if f in ANGLE_GAIN_FRAMES:
            want = _angle_gain_expected(io, fade, f, pitch_s)
            assert np.max(np.abs(pre_arr[f] - want)) <= 1e-4, f
            # and it really differs from the reference's logit scaling
            assert np.max(np.abs(pre_arr[f] - io[f"x_d_prestitch_{fade}"][f])) > 1e-4
        else:
            assert np.max(np.abs(pre_arr[f] - io[f"x_d_prestitch_{fade}"][f])) <= 1e-4, f
            assert np.max(np.abs(stitched[f] - io[f"x_d_{fade}"][f])) <= 1e-4, f


@pytest.mark.golden
def test_motion_stitch_blink_schedules() -> None:
    _, io, _ = golden_case("motion_stitch")
    np.testing.assert_array_equal(blink_schedule(120, 15, 7), io["blink_sched_fixed7_N120"])
    np.testing.assert_array_equal(blink_schedule(200, 15, [20, 30, 40]), io["blink_sched_list_N200"])
    np.testing.assert_array_equal(blink_schedule(50, 15, -1), io["blink_sched_none_N50"])
    draws = iter([61, 97, 70, 88, 64, 100, 60, 79])
    np.testing.assert_array_equal(blink_schedule(400, 15, 0, lambda: next(draws)), io["blink_sched_random_N400"])

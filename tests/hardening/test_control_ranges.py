"""Control values: every control has a documented range; a value outside it is refused with INVALID_ARGUMENT naming
the field and the range, in the SessionConfig and in a ControlUpdate mid-session, and the server goes on serving.
Values at the edges of the ranges run."""

from __future__ import annotations

import asyncio

import grpc
import hardening_helpers  # noqa: F401 - puts tests/serving on the path
from serving_helpers import chunks, collect, config, embedded_service, frames_of, portrait_png, requests, speech_pcm16

from ditto_client.v1 import avatar_pb2, common_pb2

C = common_pb2.MotionControls

# (controls, what the message must name)
OUT_OF_RANGE = [
    (C(delta_pitch=1e30), ["delta_pitch", "-90..90"]),
    (C(alpha_yaw=3e38), ["alpha_yaw", "0..4"]),
    (C(fade_alpha=-1e9), ["fade_alpha", "0..1"]),
    (C(vad_alpha=1e9), ["vad_alpha", "0..1"]),
    (C(blink_interval_s=3e38), ["blink_interval_s", "0..60"]),
    (C(delta_exp=[3e38] * 63), ["delta_exp[0]", "-1..1"]),
    (C(emotion=common_pb2.EmotionControl(probabilities=[3e38] * 8)), ["emotion.probabilities[0]", "0..1"]),
    (C(emotion=common_pb2.EmotionControl(labels=[99])), ["emotion.labels", "99", "1..8"]),
]


async def _refused(stub, cfg, extra=()) -> tuple[grpc.StatusCode, str]:
    _, code, details = await asyncio.wait_for(
        collect(stub, requests(cfg, chunks(speech_pcm16(0.4)), extra=extra)), 120)
    return code, details


async def test_out_of_range_controls_are_refused_naming_field_and_range():
    async with embedded_service() as (stub, _):
        avatar_id = (await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=portrait_png()))).avatar_id
        for controls, names in OUT_OF_RANGE:
            code, details = await _refused(stub, config(avatar_id, controls=controls))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (controls, code, details)
            assert all(n in details for n in names), (names, details)
            # the same values in a ControlUpdate of a running session
            update = avatar_pb2.ConverseRequest(control=avatar_pb2.ControlUpdate(overall=controls))
            code, details = await _refused(stub, config(avatar_id), extra=[update])
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (controls, code, details)
            assert all(n in details for n in names), (names, details)
        # a timed control at frame 2^63-1: beyond any session
        far = avatar_pb2.ConverseRequest(control=avatar_pb2.ControlUpdate(controls=[common_pb2.TimedControl(
            start_frame=2**63 - 1, controls=C(delta_yaw=5))]))
        code, details = await _refused(stub, config(avatar_id), extra=[far])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "start_frame" in details and "0..90000" in details
        # the DDIM step count is bounded by the server's setting
        code, details = await _refused(stub, config(avatar_id, sampling_steps=1000))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "sampling_steps" in details and "1..50" in details and "DITTO_MAX_SAMPLING_STEPS" in details
        # the server goes on serving, and values at the edges of every range run
        edge = C(delta_pitch=-90, delta_yaw=90, delta_roll=90, alpha_pitch=0, alpha_yaw=4, alpha_roll=4,
                 vad_alpha=0, fade_alpha=1, blink_interval_s=60, delta_exp=[1.0] * 63,
                 emotion=common_pb2.EmotionControl(labels=[8]))
        responses, code, details = await asyncio.wait_for(collect(stub, requests(
            config(avatar_id, controls=edge, sampling_steps=50), chunks(speech_pcm16(0.4)))), 300)
        assert code == grpc.StatusCode.OK, details
        assert len(frames_of(responses)) == 10

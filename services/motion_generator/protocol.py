"""ditto.v1 messages -> the motion stage's Python settings (shared by the gRPC server and the bus handler)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ditto import codec
from ditto_client.v1 import common_pb2
from services.motion_generator.generator import AvatarMotion, SessionSettings

_FLOAT_FIELDS = ("delta_pitch", "delta_yaw", "delta_roll", "alpha_pitch", "alpha_yaw", "alpha_roll", "vad_alpha",
                 "fade_alpha", "blink_interval_s")


def emotion_from_proto(msg: common_pb2.EmotionControl) -> np.ndarray | list[int] | None:
    """Labels (1..8 in the proto, 0 = unspecified) -> label indices 0..7; or 8 probabilities; None = unset."""
    if msg.probabilities:
        p = np.asarray(msg.probabilities, np.float32)
        return (p / p.sum())[None]
    for v in msg.labels:
        if not 0 <= int(v) <= 8:
            raise ValueError(f"emotion.labels holds {int(v)}; use 1..8 (EMOTION_ANGRY..EMOTION_CONTEMPT) or 0 "
                             "(unspecified = Neutral)")
    labels = [int(v) - 1 if v else 4 for v in msg.labels]  # unspecified means Neutral (index 4)
    return labels or None


def controls_from_proto(msg: common_pb2.MotionControls) -> dict[str, Any]:
    out: dict[str, Any] = {f: float(getattr(msg, f)) for f in _FLOAT_FIELDS if msg.HasField(f)}
    if msg.delta_exp:
        out["delta_exp"] = list(msg.delta_exp)
    if msg.HasField("emotion"):
        emo = emotion_from_proto(msg.emotion)
        if emo is not None:
            out["emotion"] = emo
    if msg.HasField("blink_now"):
        out["blink_now"] = bool(msg.blink_now)
    if msg.HasField("gaze_fix"):
        out["gaze_fix"] = bool(msg.gaze_fix)
    return out


def avatar_from_proto(msg: common_pb2.AvatarMotionInfo) -> AvatarMotion:
    return AvatarMotion.from_arrays(codec.unnamed(msg.tensors), is_video=msg.is_video)


def settings_from_proto(steps: int, overlap: int, seed: int, emotion: common_pb2.EmotionControl,
                        controls: common_pb2.MotionControls) -> SessionSettings:
    overall = controls_from_proto(controls)
    s = SessionSettings(steps=steps or 10, overlap=overlap or 70, seed=seed,
                        emotion=emotion_from_proto(emotion), controls=overall)
    if controls.HasField("drive_eye"):
        s.drive_eye = bool(controls.drive_eye)
    if controls.HasField("blink_interval_s"):
        s.blink_interval_s = float(controls.blink_interval_s)
    return s

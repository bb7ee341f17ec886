"""What a client may send, checked at the door: ids and names, the audio format, the session's configuration and
every control against its documented range. A value outside is refused with INVALID_ARGUMENT naming the field and
what to send instead, so a bad value is the client's error and never a stage's."""

from __future__ import annotations

import grpc
import numpy as np

from ditto_client.v1 import avatar_pb2, common_pb2
from services.orchestrator.errors import ApiError

SAMPLE_BYTES = {common_pb2.SAMPLE_FORMAT_PCM_S16LE: 2, common_pb2.SAMPLE_FORMAT_FLOAT32LE: 4}


MAX_ID_CHARS = 128  # ids are 32 hex characters; anything far longer is not one of ours
MAX_NAME_CHARS = 255  # file names, as a file system allows


def check_id(value: str, field_name: str) -> None:
    """An id longer than any the service hands out is refused, naming its length only: a reply's message travels
    in gRPC metadata, and echoing megabytes there would turn the answer into RESOURCE_EXHAUSTED."""
    if len(value) > MAX_ID_CHARS:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"{field_name} has {len(value)} characters; ids are at most {MAX_ID_CHARS} (use the id "
                       "the service returned)")


def check_name(value: str, field_name: str) -> None:
    if len(value) > MAX_NAME_CHARS:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"{field_name} has {len(value)} characters; at most {MAX_NAME_CHARS}")


def validate_audio_format(fmt: common_pb2.AudioFormat) -> None:
    if fmt.sample_format not in SAMPLE_BYTES:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       "audio_format.sample_format must be PCM_S16LE or FLOAT32LE")
    if not 8000 <= fmt.sample_rate_hz <= 192000:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"audio_format.sample_rate_hz {fmt.sample_rate_hz} is outside 8000..192000")
    if not 1 <= fmt.channels <= 8:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"audio_format.channels {fmt.channels} is outside 1..8")


# Documented ranges of every control (README "Controls"); a value outside is refused, naming the field and range.
CONTROL_RANGES: dict[str, tuple[float, float]] = {
    "delta_pitch": (-90.0, 90.0), "delta_yaw": (-90.0, 90.0), "delta_roll": (-90.0, 90.0),
    "alpha_pitch": (0.0, 4.0), "alpha_yaw": (0.0, 4.0), "alpha_roll": (0.0, 4.0),
    "vad_alpha": (0.0, 1.0), "fade_alpha": (0.0, 1.0), "blink_interval_s": (0.0, 60.0),
}
DELTA_EXP_RANGE = (-1.0, 1.0)
EMOTION_PROBABILITY_RANGE = (0.0, 1.0)
EMOTION_LABELS = range(0, 9)  # proto enum values: 0 = unspecified (Neutral), 1..8 = Angry..Contempt


def range_error(field_name: str, value: float, lo: float, hi: float) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                    f"{field_name} = {value:g} is outside its range {lo:g}..{hi:g}")


def validate_controls(c: common_pb2.MotionControls, where: str) -> None:
    if len(c.delta_exp) not in (0, 63):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"{where}.delta_exp has {len(c.delta_exp)} values; give 63 (21 keypoints x 3) or none")
    values = [getattr(c, f) for f in CONTROL_RANGES if c.HasField(f)] + list(c.delta_exp)
    if not np.all(np.isfinite(np.asarray(values, dtype=np.float64))):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{where} holds a NaN or infinite value")
    for name, (lo, hi) in CONTROL_RANGES.items():
        if c.HasField(name) and not lo <= getattr(c, name) <= hi:
            raise range_error(f"{where}.{name}", getattr(c, name), lo, hi)
    if c.delta_exp:
        exp = np.asarray(c.delta_exp, dtype=np.float64)
        lo, hi = DELTA_EXP_RANGE
        bad = np.flatnonzero((exp < lo) | (exp > hi))
        if bad.size:
            raise range_error(f"{where}.delta_exp[{bad[0]}]", float(exp[bad[0]]), lo, hi)
    e = c.emotion
    for label in e.labels:
        if label not in EMOTION_LABELS:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{where}.emotion.labels holds {label}; use 1..8 (EMOTION_ANGRY..EMOTION_CONTEMPT) "
                           "or 0 (unspecified = Neutral)")
    if len(e.probabilities) not in (0, 8):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{where}.emotion.probabilities needs 8 values")
    if e.probabilities:
        p = np.asarray(e.probabilities, dtype=np.float64)
        if not np.all(np.isfinite(p)):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{where}.emotion.probabilities holds a NaN or "
                           "infinite value")
        lo, hi = EMOTION_PROBABILITY_RANGE
        bad = np.flatnonzero((p < lo) | (p > hi))
        if bad.size:
            raise range_error(f"{where}.emotion.probabilities[{bad[0]}]", float(p[bad[0]]), lo, hi)
        if p.sum() <= 0:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{where}.emotion.probabilities must sum above 0")


def validate_output(o: common_pb2.OutputOptions) -> None:
    """Output options are checked at the door, so a bad value is the client's INVALID_ARGUMENT, not a stage error."""
    if o.encoding not in common_pb2.FrameEncoding.values():
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"output.encoding {o.encoding} is not a FrameEncoding")
    if o.background not in common_pb2.Background.values():
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"output.background {o.background} is not a Background")
    if o.jpeg_quality > 100:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"output.jpeg_quality {o.jpeg_quality} is outside 1..100 (0 = default 90)")
    if o.background == common_pb2.BACKGROUND_TRANSPARENT and o.encoding == common_pb2.FRAME_ENCODING_H264:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       "a transparent background needs RAW_RGB or JPEG frames, not H264")


def validate_config(c: avatar_pb2.SessionConfig, max_sampling_steps: int = 50) -> None:
    check_id(c.avatar_id, "config.avatar_id")
    validate_audio_format(c.audio_format)
    validate_output(c.output)
    validate_controls(c.controls, "config.controls")
    if c.HasField("emotion"):
        validate_controls(common_pb2.MotionControls(emotion=c.emotion), "config")
    if c.idle_policy not in avatar_pb2.IdlePolicy.values():
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"config.idle_policy {c.idle_policy} is not an IdlePolicy")
    if c.overlap and c.overlap >= 80:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "config.overlap must be below 80 frames")
    if c.sampling_steps > max_sampling_steps:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"config.sampling_steps = {c.sampling_steps} is outside its range 1..{max_sampling_steps} "
                       "(0 = the server default; the limit is DITTO_MAX_SAMPLING_STEPS)")
    if c.seed < 0:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"config.seed {c.seed} is negative; give 0 (random) "
                       "or a positive seed")

# Generated from protos/ditto/v1 by `make protos` (tools/gen_protos.py). Do not edit.
from . import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MotionConfig(_message.Message):
    __slots__ = ("avatar", "emotion", "controls", "sampling_steps", "overlap", "seed")
    AVATAR_FIELD_NUMBER: _ClassVar[int]
    EMOTION_FIELD_NUMBER: _ClassVar[int]
    CONTROLS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_STEPS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    avatar: _common_pb2.AvatarMotionInfo
    emotion: _common_pb2.EmotionControl
    controls: _common_pb2.MotionControls
    sampling_steps: int
    overlap: int
    seed: int
    def __init__(self, avatar: _Optional[_Union[_common_pb2.AvatarMotionInfo, _Mapping]] = ..., emotion: _Optional[_Union[_common_pb2.EmotionControl, _Mapping]] = ..., controls: _Optional[_Union[_common_pb2.MotionControls, _Mapping]] = ..., sampling_steps: _Optional[int] = ..., overlap: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("config", "features", "control", "end")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    config: MotionConfig
    features: _common_pb2.FeatureChunk
    control: _common_pb2.TimedControl
    end: _common_pb2.EndOfStream
    def __init__(self, config: _Optional[_Union[MotionConfig, _Mapping]] = ..., features: _Optional[_Union[_common_pb2.FeatureChunk, _Mapping]] = ..., control: _Optional[_Union[_common_pb2.TimedControl, _Mapping]] = ..., end: _Optional[_Union[_common_pb2.EndOfStream, _Mapping]] = ...) -> None: ...

class GenerateStarted(_message.Message):
    __slots__ = ("look_ahead_frames", "backend")
    LOOK_AHEAD_FRAMES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    look_ahead_frames: int
    backend: str
    def __init__(self, look_ahead_frames: _Optional[int] = ..., backend: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("started", "frames", "final")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    started: GenerateStarted
    frames: _common_pb2.KeypointFrames
    final: _common_pb2.Status
    def __init__(self, started: _Optional[_Union[GenerateStarted, _Mapping]] = ..., frames: _Optional[_Union[_common_pb2.KeypointFrames, _Mapping]] = ..., final: _Optional[_Union[_common_pb2.Status, _Mapping]] = ...) -> None: ...

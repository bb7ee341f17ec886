# Generated from protos/ditto/v1 by `make protos` (tools/gen_protos.py). Do not edit.
from . import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncodeConfig(_message.Message):
    __slots__ = ("format",)
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    format: _common_pb2.AudioFormat
    def __init__(self, format: _Optional[_Union[_common_pb2.AudioFormat, _Mapping]] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("config", "audio", "end")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    config: EncodeConfig
    audio: bytes
    end: _common_pb2.EndOfStream
    def __init__(self, config: _Optional[_Union[EncodeConfig, _Mapping]] = ..., audio: _Optional[bytes] = ..., end: _Optional[_Union[_common_pb2.EndOfStream, _Mapping]] = ...) -> None: ...

class EncodeStarted(_message.Message):
    __slots__ = ("feature_dim", "fps", "backend")
    FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    feature_dim: int
    fps: int
    backend: str
    def __init__(self, feature_dim: _Optional[int] = ..., fps: _Optional[int] = ..., backend: _Optional[str] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("started", "features", "final")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    started: EncodeStarted
    features: _common_pb2.FeatureChunk
    final: _common_pb2.Status
    def __init__(self, started: _Optional[_Union[EncodeStarted, _Mapping]] = ..., features: _Optional[_Union[_common_pb2.FeatureChunk, _Mapping]] = ..., final: _Optional[_Union[_common_pb2.Status, _Mapping]] = ...) -> None: ...

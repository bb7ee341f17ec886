# Generated from protos/ditto/v1 by `make protos` (tools/gen_protos.py). Do not edit.
from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_KIND_UNSPECIFIED: _ClassVar[EntryKind]
    ENTRY_KIND_START: _ClassVar[EntryKind]
    ENTRY_KIND_DATA: _ClassVar[EntryKind]
    ENTRY_KIND_CONTROL: _ClassVar[EntryKind]
    ENTRY_KIND_END: _ClassVar[EntryKind]
    ENTRY_KIND_INTERRUPT: _ClassVar[EntryKind]
    ENTRY_KIND_CLOSE: _ClassVar[EntryKind]
    ENTRY_KIND_ERROR: _ClassVar[EntryKind]
ENTRY_KIND_UNSPECIFIED: EntryKind
ENTRY_KIND_START: EntryKind
ENTRY_KIND_DATA: EntryKind
ENTRY_KIND_CONTROL: EntryKind
ENTRY_KIND_END: EntryKind
ENTRY_KIND_INTERRUPT: EntryKind
ENTRY_KIND_CLOSE: EntryKind
ENTRY_KIND_ERROR: EntryKind

class StreamEntry(_message.Message):
    __slots__ = ("session_id", "epoch", "seq", "kind", "trace_context", "tensors", "meta", "tenant_id", "created_unix_ms", "route")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class RouteEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    epoch: int
    seq: int
    kind: EntryKind
    trace_context: _containers.ScalarMap[str, str]
    tensors: _containers.RepeatedCompositeFieldContainer[_common_pb2.NamedTensor]
    meta: bytes
    tenant_id: str
    created_unix_ms: int
    route: _containers.ScalarMap[str, str]
    def __init__(self, session_id: _Optional[str] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ..., kind: _Optional[_Union[EntryKind, str]] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., tensors: _Optional[_Iterable[_Union[_common_pb2.NamedTensor, _Mapping]]] = ..., meta: _Optional[bytes] = ..., tenant_id: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., route: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StageCheckpoint(_message.Message):
    __slots__ = ("epoch", "next_seq", "out_seq", "state")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQ_FIELD_NUMBER: _ClassVar[int]
    OUT_SEQ_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    next_seq: int
    out_seq: int
    state: bytes
    def __init__(self, epoch: _Optional[int] = ..., next_seq: _Optional[int] = ..., out_seq: _Optional[int] = ..., state: _Optional[bytes] = ...) -> None: ...

class SessionSpec(_message.Message):
    __slots__ = ("avatar_id", "tenant_id", "audio_format", "emotion", "controls", "sampling_steps", "overlap", "seed", "output", "avatar", "offline")
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FORMAT_FIELD_NUMBER: _ClassVar[int]
    EMOTION_FIELD_NUMBER: _ClassVar[int]
    CONTROLS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_STEPS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    AVATAR_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    tenant_id: str
    audio_format: _common_pb2.AudioFormat
    emotion: _common_pb2.EmotionControl
    controls: _common_pb2.MotionControls
    sampling_steps: int
    overlap: int
    seed: int
    output: _common_pb2.OutputOptions
    avatar: _common_pb2.AvatarMotionInfo
    offline: bool
    def __init__(self, avatar_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., audio_format: _Optional[_Union[_common_pb2.AudioFormat, _Mapping]] = ..., emotion: _Optional[_Union[_common_pb2.EmotionControl, _Mapping]] = ..., controls: _Optional[_Union[_common_pb2.MotionControls, _Mapping]] = ..., sampling_steps: _Optional[int] = ..., overlap: _Optional[int] = ..., seed: _Optional[int] = ..., output: _Optional[_Union[_common_pb2.OutputOptions, _Mapping]] = ..., avatar: _Optional[_Union[_common_pb2.AvatarMotionInfo, _Mapping]] = ..., offline: _Optional[bool] = ...) -> None: ...

class ControlSpec(_message.Message):
    __slots__ = ("timed", "overall", "has_overall")
    TIMED_FIELD_NUMBER: _ClassVar[int]
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    HAS_OVERALL_FIELD_NUMBER: _ClassVar[int]
    timed: _containers.RepeatedCompositeFieldContainer[_common_pb2.TimedControl]
    overall: _common_pb2.MotionControls
    has_overall: bool
    def __init__(self, timed: _Optional[_Iterable[_Union[_common_pb2.TimedControl, _Mapping]]] = ..., overall: _Optional[_Union[_common_pb2.MotionControls, _Mapping]] = ..., has_overall: _Optional[bool] = ...) -> None: ...

class FrameMeta(_message.Message):
    __slots__ = ("index", "width", "height", "encoding", "idle")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    index: int
    width: int
    height: int
    encoding: _common_pb2.FrameEncoding
    idle: bool
    def __init__(self, index: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., encoding: _Optional[_Union[_common_pb2.FrameEncoding, str]] = ..., idle: _Optional[bool] = ...) -> None: ...

class AudioMeta(_message.Message):
    __slots__ = ("idle", "first_sample")
    IDLE_FIELD_NUMBER: _ClassVar[int]
    FIRST_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    idle: bool
    first_sample: int
    def __init__(self, idle: _Optional[bool] = ..., first_sample: _Optional[int] = ...) -> None: ...

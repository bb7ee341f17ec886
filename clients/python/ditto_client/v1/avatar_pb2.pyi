# Generated from protos/ditto/v1 by `make protos` (tools/gen_protos.py). Do not edit.
from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IdlePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IDLE_POLICY_UNSPECIFIED: _ClassVar[IdlePolicy]
    IDLE_POLICY_ALIVE: _ClassVar[IdlePolicy]
    IDLE_POLICY_FREEZE: _ClassVar[IdlePolicy]
IDLE_POLICY_UNSPECIFIED: IdlePolicy
IDLE_POLICY_ALIVE: IdlePolicy
IDLE_POLICY_FREEZE: IdlePolicy

class GetAvatarRequest(_message.Message):
    __slots__ = ("avatar_id",)
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    def __init__(self, avatar_id: _Optional[str] = ...) -> None: ...

class DeleteAvatarResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "avatar_id", "frames_sent", "audio_seconds", "epoch", "active")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SENT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    avatar_id: str
    frames_sent: int
    audio_seconds: float
    epoch: int
    active: bool
    def __init__(self, session_id: _Optional[str] = ..., avatar_id: _Optional[str] = ..., frames_sent: _Optional[int] = ..., audio_seconds: _Optional[float] = ..., epoch: _Optional[int] = ..., active: _Optional[bool] = ...) -> None: ...

class RegisterAvatarRequest(_message.Message):
    __slots__ = ("media", "filename", "crop")
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    media: bytes
    filename: str
    crop: _common_pb2.CropOptions
    def __init__(self, media: _Optional[bytes] = ..., filename: _Optional[str] = ..., crop: _Optional[_Union[_common_pb2.CropOptions, _Mapping]] = ...) -> None: ...

class RegisterAvatarResponse(_message.Message):
    __slots__ = ("avatar_id", "width", "height", "source_frames", "already_registered", "face")
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_REGISTERED_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    width: int
    height: int
    source_frames: int
    already_registered: bool
    face: _common_pb2.FaceReport
    def __init__(self, avatar_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., source_frames: _Optional[int] = ..., already_registered: _Optional[bool] = ..., face: _Optional[_Union[_common_pb2.FaceReport, _Mapping]] = ...) -> None: ...

class SessionConfig(_message.Message):
    __slots__ = ("avatar_id", "audio_format", "output", "emotion", "controls", "idle_policy", "sampling_steps", "max_duration_s", "idle_timeout_s", "seed", "overlap")
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    EMOTION_FIELD_NUMBER: _ClassVar[int]
    CONTROLS_FIELD_NUMBER: _ClassVar[int]
    IDLE_POLICY_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    audio_format: _common_pb2.AudioFormat
    output: _common_pb2.OutputOptions
    emotion: _common_pb2.EmotionControl
    controls: _common_pb2.MotionControls
    idle_policy: IdlePolicy
    sampling_steps: int
    max_duration_s: int
    idle_timeout_s: int
    seed: int
    overlap: int
    def __init__(self, avatar_id: _Optional[str] = ..., audio_format: _Optional[_Union[_common_pb2.AudioFormat, _Mapping]] = ..., output: _Optional[_Union[_common_pb2.OutputOptions, _Mapping]] = ..., emotion: _Optional[_Union[_common_pb2.EmotionControl, _Mapping]] = ..., controls: _Optional[_Union[_common_pb2.MotionControls, _Mapping]] = ..., idle_policy: _Optional[_Union[IdlePolicy, str]] = ..., sampling_steps: _Optional[int] = ..., max_duration_s: _Optional[int] = ..., idle_timeout_s: _Optional[int] = ..., seed: _Optional[int] = ..., overlap: _Optional[int] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("data", "controls")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTROLS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    controls: _containers.RepeatedCompositeFieldContainer[_common_pb2.TimedControl]
    def __init__(self, data: _Optional[bytes] = ..., controls: _Optional[_Iterable[_Union[_common_pb2.TimedControl, _Mapping]]] = ...) -> None: ...

class ControlUpdate(_message.Message):
    __slots__ = ("controls", "overall")
    CONTROLS_FIELD_NUMBER: _ClassVar[int]
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    controls: _containers.RepeatedCompositeFieldContainer[_common_pb2.TimedControl]
    overall: _common_pb2.MotionControls
    def __init__(self, controls: _Optional[_Iterable[_Union[_common_pb2.TimedControl, _Mapping]]] = ..., overall: _Optional[_Union[_common_pb2.MotionControls, _Mapping]] = ...) -> None: ...

class Interrupt(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EndOfAudio(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KeepAlive(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConverseRequest(_message.Message):
    __slots__ = ("config", "audio", "control", "interrupt", "end_of_audio", "keep_alive")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    END_OF_AUDIO_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_FIELD_NUMBER: _ClassVar[int]
    config: SessionConfig
    audio: AudioChunk
    control: ControlUpdate
    interrupt: Interrupt
    end_of_audio: EndOfAudio
    keep_alive: KeepAlive
    def __init__(self, config: _Optional[_Union[SessionConfig, _Mapping]] = ..., audio: _Optional[_Union[AudioChunk, _Mapping]] = ..., control: _Optional[_Union[ControlUpdate, _Mapping]] = ..., interrupt: _Optional[_Union[Interrupt, _Mapping]] = ..., end_of_audio: _Optional[_Union[EndOfAudio, _Mapping]] = ..., keep_alive: _Optional[_Union[KeepAlive, _Mapping]] = ...) -> None: ...

class SessionStarted(_message.Message):
    __slots__ = ("session_id", "fps", "width", "height", "encoding", "audio_look_ahead_ms", "audio_read_ahead_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    AUDIO_LOOK_AHEAD_MS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_READ_AHEAD_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    fps: int
    width: int
    height: int
    encoding: _common_pb2.FrameEncoding
    audio_look_ahead_ms: int
    audio_read_ahead_ms: int
    def __init__(self, session_id: _Optional[str] = ..., fps: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., encoding: _Optional[_Union[_common_pb2.FrameEncoding, str]] = ..., audio_look_ahead_ms: _Optional[int] = ..., audio_read_ahead_ms: _Optional[int] = ...) -> None: ...

class VideoFrame(_message.Message):
    __slots__ = ("index", "pts_ms", "data", "width", "height", "encoding", "epoch", "idle")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PTS_MS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    index: int
    pts_ms: int
    data: bytes
    width: int
    height: int
    encoding: _common_pb2.FrameEncoding
    epoch: int
    idle: bool
    def __init__(self, index: _Optional[int] = ..., pts_ms: _Optional[int] = ..., data: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., encoding: _Optional[_Union[_common_pb2.FrameEncoding, str]] = ..., epoch: _Optional[int] = ..., idle: _Optional[bool] = ...) -> None: ...

class LagEvent(_message.Message):
    __slots__ = ("lag_ms", "delivered_fps")
    LAG_MS_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FPS_FIELD_NUMBER: _ClassVar[int]
    lag_ms: float
    delivered_fps: float
    def __init__(self, lag_ms: _Optional[float] = ..., delivered_fps: _Optional[float] = ...) -> None: ...

class InterruptedEvent(_message.Message):
    __slots__ = ("last_frame_index", "last_pts_ms", "new_epoch")
    LAST_FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_PTS_MS_FIELD_NUMBER: _ClassVar[int]
    NEW_EPOCH_FIELD_NUMBER: _ClassVar[int]
    last_frame_index: int
    last_pts_ms: int
    new_epoch: int
    def __init__(self, last_frame_index: _Optional[int] = ..., last_pts_ms: _Optional[int] = ..., new_epoch: _Optional[int] = ...) -> None: ...

class WarningEvent(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("lag", "interrupted", "warning")
    LAG_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    lag: LagEvent
    interrupted: InterruptedEvent
    warning: WarningEvent
    def __init__(self, lag: _Optional[_Union[LagEvent, _Mapping]] = ..., interrupted: _Optional[_Union[InterruptedEvent, _Mapping]] = ..., warning: _Optional[_Union[WarningEvent, _Mapping]] = ...) -> None: ...

class FinalStatus(_message.Message):
    __slots__ = ("status", "frames_sent", "audio_seconds")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SENT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.Status
    frames_sent: int
    audio_seconds: float
    def __init__(self, status: _Optional[_Union[_common_pb2.Status, _Mapping]] = ..., frames_sent: _Optional[int] = ..., audio_seconds: _Optional[float] = ...) -> None: ...

class ConverseResponse(_message.Message):
    __slots__ = ("started", "frame", "event", "final")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    started: SessionStarted
    frame: VideoFrame
    event: SessionEvent
    final: FinalStatus
    def __init__(self, started: _Optional[_Union[SessionStarted, _Mapping]] = ..., frame: _Optional[_Union[VideoFrame, _Mapping]] = ..., event: _Optional[_Union[SessionEvent, _Mapping]] = ..., final: _Optional[_Union[FinalStatus, _Mapping]] = ...) -> None: ...

class RenderRequest(_message.Message):
    __slots__ = ("avatar_id", "audio", "audio_filename", "emotion", "controls", "timed_controls", "sampling_steps", "seed", "background")
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FILENAME_FIELD_NUMBER: _ClassVar[int]
    EMOTION_FIELD_NUMBER: _ClassVar[int]
    CONTROLS_FIELD_NUMBER: _ClassVar[int]
    TIMED_CONTROLS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    audio: bytes
    audio_filename: str
    emotion: _common_pb2.EmotionControl
    controls: _common_pb2.MotionControls
    timed_controls: _containers.RepeatedCompositeFieldContainer[_common_pb2.TimedControl]
    sampling_steps: int
    seed: int
    background: _common_pb2.Background
    def __init__(self, avatar_id: _Optional[str] = ..., audio: _Optional[bytes] = ..., audio_filename: _Optional[str] = ..., emotion: _Optional[_Union[_common_pb2.EmotionControl, _Mapping]] = ..., controls: _Optional[_Union[_common_pb2.MotionControls, _Mapping]] = ..., timed_controls: _Optional[_Iterable[_Union[_common_pb2.TimedControl, _Mapping]]] = ..., sampling_steps: _Optional[int] = ..., seed: _Optional[int] = ..., background: _Optional[_Union[_common_pb2.Background, str]] = ...) -> None: ...

class RenderProgress(_message.Message):
    __slots__ = ("frames_done", "frames_total")
    FRAMES_DONE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    frames_done: int
    frames_total: int
    def __init__(self, frames_done: _Optional[int] = ..., frames_total: _Optional[int] = ...) -> None: ...

class RenderResponse(_message.Message):
    __slots__ = ("progress", "mp4_chunk", "final")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MP4_CHUNK_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    progress: RenderProgress
    mp4_chunk: bytes
    final: FinalStatus
    def __init__(self, progress: _Optional[_Union[RenderProgress, _Mapping]] = ..., mp4_chunk: _Optional[bytes] = ..., final: _Optional[_Union[FinalStatus, _Mapping]] = ...) -> None: ...

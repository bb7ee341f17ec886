# Generated from protos/ditto/v1 by `make protos` (tools/gen_protos.py). Do not edit.
from . import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ForgetAvatarRequest(_message.Message):
    __slots__ = ("avatar_id",)
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    def __init__(self, avatar_id: _Optional[str] = ...) -> None: ...

class ForgetAvatarResponse(_message.Message):
    __slots__ = ("held",)
    HELD_FIELD_NUMBER: _ClassVar[int]
    held: bool
    def __init__(self, held: _Optional[bool] = ...) -> None: ...

class RegisterSourceRequest(_message.Message):
    __slots__ = ("media", "filename", "crop", "tenant_id")
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    media: bytes
    filename: str
    crop: _common_pb2.CropOptions
    tenant_id: str
    def __init__(self, media: _Optional[bytes] = ..., filename: _Optional[str] = ..., crop: _Optional[_Union[_common_pb2.CropOptions, _Mapping]] = ..., tenant_id: _Optional[str] = ...) -> None: ...

class RegisterSourceResponse(_message.Message):
    __slots__ = ("avatar_id", "width", "height", "source_frames", "motion_info", "already_registered", "face")
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MOTION_INFO_FIELD_NUMBER: _ClassVar[int]
    ALREADY_REGISTERED_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    width: int
    height: int
    source_frames: int
    motion_info: _common_pb2.AvatarMotionInfo
    already_registered: bool
    face: _common_pb2.FaceReport
    def __init__(self, avatar_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., source_frames: _Optional[int] = ..., motion_info: _Optional[_Union[_common_pb2.AvatarMotionInfo, _Mapping]] = ..., already_registered: _Optional[bool] = ..., face: _Optional[_Union[_common_pb2.FaceReport, _Mapping]] = ...) -> None: ...

class RenderConfig(_message.Message):
    __slots__ = ("avatar_id", "output")
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    output: _common_pb2.OutputOptions
    def __init__(self, avatar_id: _Optional[str] = ..., output: _Optional[_Union[_common_pb2.OutputOptions, _Mapping]] = ...) -> None: ...

class RenderFramesRequest(_message.Message):
    __slots__ = ("config", "keypoints", "end")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    config: RenderConfig
    keypoints: _common_pb2.KeypointFrames
    end: _common_pb2.EndOfStream
    def __init__(self, config: _Optional[_Union[RenderConfig, _Mapping]] = ..., keypoints: _Optional[_Union[_common_pb2.KeypointFrames, _Mapping]] = ..., end: _Optional[_Union[_common_pb2.EndOfStream, _Mapping]] = ...) -> None: ...

class RenderedFrame(_message.Message):
    __slots__ = ("index", "data", "width", "height", "encoding")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: bytes
    width: int
    height: int
    encoding: _common_pb2.FrameEncoding
    def __init__(self, index: _Optional[int] = ..., data: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., encoding: _Optional[_Union[_common_pb2.FrameEncoding, str]] = ...) -> None: ...

class RenderFramesResponse(_message.Message):
    __slots__ = ("frame", "final")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    frame: RenderedFrame
    final: _common_pb2.Status
    def __init__(self, frame: _Optional[_Union[RenderedFrame, _Mapping]] = ..., final: _Optional[_Union[_common_pb2.Status, _Mapping]] = ...) -> None: ...

# Generated from protos/ditto/v1 by `make protos` (tools/gen_protos.py). Do not edit.
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
    DTYPE_INT16: _ClassVar[DType]
    DTYPE_BOOL: _ClassVar[DType]

class SampleFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLE_FORMAT_UNSPECIFIED: _ClassVar[SampleFormat]
    SAMPLE_FORMAT_PCM_S16LE: _ClassVar[SampleFormat]
    SAMPLE_FORMAT_FLOAT32LE: _ClassVar[SampleFormat]

class Emotion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EMOTION_UNSPECIFIED: _ClassVar[Emotion]
    EMOTION_ANGRY: _ClassVar[Emotion]
    EMOTION_DISGUST: _ClassVar[Emotion]
    EMOTION_FEAR: _ClassVar[Emotion]
    EMOTION_HAPPY: _ClassVar[Emotion]
    EMOTION_NEUTRAL: _ClassVar[Emotion]
    EMOTION_SAD: _ClassVar[Emotion]
    EMOTION_SURPRISE: _ClassVar[Emotion]
    EMOTION_CONTEMPT: _ClassVar[Emotion]

class FrameEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_ENCODING_UNSPECIFIED: _ClassVar[FrameEncoding]
    FRAME_ENCODING_RAW_RGB: _ClassVar[FrameEncoding]
    FRAME_ENCODING_JPEG: _ClassVar[FrameEncoding]
    FRAME_ENCODING_H264: _ClassVar[FrameEncoding]

class Background(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKGROUND_UNSPECIFIED: _ClassVar[Background]
    BACKGROUND_ORIGINAL: _ClassVar[Background]
    BACKGROUND_TRANSPARENT: _ClassVar[Background]
    BACKGROUND_GREEN: _ClassVar[Background]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_INT64: DType
DTYPE_UINT8: DType
DTYPE_INT32: DType
DTYPE_FLOAT64: DType
DTYPE_INT16: DType
DTYPE_BOOL: DType
SAMPLE_FORMAT_UNSPECIFIED: SampleFormat
SAMPLE_FORMAT_PCM_S16LE: SampleFormat
SAMPLE_FORMAT_FLOAT32LE: SampleFormat
EMOTION_UNSPECIFIED: Emotion
EMOTION_ANGRY: Emotion
EMOTION_DISGUST: Emotion
EMOTION_FEAR: Emotion
EMOTION_HAPPY: Emotion
EMOTION_NEUTRAL: Emotion
EMOTION_SAD: Emotion
EMOTION_SURPRISE: Emotion
EMOTION_CONTEMPT: Emotion
FRAME_ENCODING_UNSPECIFIED: FrameEncoding
FRAME_ENCODING_RAW_RGB: FrameEncoding
FRAME_ENCODING_JPEG: FrameEncoding
FRAME_ENCODING_H264: FrameEncoding
BACKGROUND_UNSPECIFIED: Background
BACKGROUND_ORIGINAL: Background
BACKGROUND_TRANSPARENT: Background
BACKGROUND_GREEN: Background

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class AudioFormat(_message.Message):
    __slots__ = ("sample_format", "sample_rate_hz", "channels")
    SAMPLE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    sample_format: SampleFormat
    sample_rate_hz: int
    channels: int
    def __init__(self, sample_format: _Optional[_Union[SampleFormat, str]] = ..., sample_rate_hz: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class EmotionControl(_message.Message):
    __slots__ = ("labels", "probabilities")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[Emotion]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, labels: _Optional[_Iterable[_Union[Emotion, str]]] = ..., probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class MotionControls(_message.Message):
    __slots__ = ("delta_pitch", "delta_yaw", "delta_roll", "alpha_pitch", "alpha_yaw", "alpha_roll", "delta_exp", "vad_alpha", "fade_alpha", "emotion", "drive_eye", "blink_now", "blink_interval_s", "gaze_fix")
    DELTA_PITCH_FIELD_NUMBER: _ClassVar[int]
    DELTA_YAW_FIELD_NUMBER: _ClassVar[int]
    DELTA_ROLL_FIELD_NUMBER: _ClassVar[int]
    ALPHA_PITCH_FIELD_NUMBER: _ClassVar[int]
    ALPHA_YAW_FIELD_NUMBER: _ClassVar[int]
    ALPHA_ROLL_FIELD_NUMBER: _ClassVar[int]
    DELTA_EXP_FIELD_NUMBER: _ClassVar[int]
    VAD_ALPHA_FIELD_NUMBER: _ClassVar[int]
    FADE_ALPHA_FIELD_NUMBER: _ClassVar[int]
    EMOTION_FIELD_NUMBER: _ClassVar[int]
    DRIVE_EYE_FIELD_NUMBER: _ClassVar[int]
    BLINK_NOW_FIELD_NUMBER: _ClassVar[int]
    BLINK_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    GAZE_FIX_FIELD_NUMBER: _ClassVar[int]
    delta_pitch: float
    delta_yaw: float
    delta_roll: float
    alpha_pitch: float
    alpha_yaw: float
    alpha_roll: float
    delta_exp: _containers.RepeatedScalarFieldContainer[float]
    vad_alpha: float
    fade_alpha: float
    emotion: EmotionControl
    drive_eye: bool
    blink_now: bool
    blink_interval_s: float
    gaze_fix: bool
    def __init__(self, delta_pitch: _Optional[float] = ..., delta_yaw: _Optional[float] = ..., delta_roll: _Optional[float] = ..., alpha_pitch: _Optional[float] = ..., alpha_yaw: _Optional[float] = ..., alpha_roll: _Optional[float] = ..., delta_exp: _Optional[_Iterable[float]] = ..., vad_alpha: _Optional[float] = ..., fade_alpha: _Optional[float] = ..., emotion: _Optional[_Union[EmotionControl, _Mapping]] = ..., drive_eye: _Optional[bool] = ..., blink_now: _Optional[bool] = ..., blink_interval_s: _Optional[float] = ..., gaze_fix: _Optional[bool] = ...) -> None: ...

class TimedControl(_message.Message):
    __slots__ = ("start_frame", "end_frame", "controls")
    START_FRAME_FIELD_NUMBER: _ClassVar[int]
    END_FRAME_FIELD_NUMBER: _ClassVar[int]
    CONTROLS_FIELD_NUMBER: _ClassVar[int]
    start_frame: int
    end_frame: int
    controls: MotionControls
    def __init__(self, start_frame: _Optional[int] = ..., end_frame: _Optional[int] = ..., controls: _Optional[_Union[MotionControls, _Mapping]] = ...) -> None: ...

class OutputOptions(_message.Message):
    __slots__ = ("encoding", "background", "jpeg_quality", "paste_back")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    PASTE_BACK_FIELD_NUMBER: _ClassVar[int]
    encoding: FrameEncoding
    background: Background
    jpeg_quality: int
    paste_back: bool
    def __init__(self, encoding: _Optional[_Union[FrameEncoding, str]] = ..., background: _Optional[_Union[Background, str]] = ..., jpeg_quality: _Optional[int] = ..., paste_back: _Optional[bool] = ...) -> None: ...

class CropOptions(_message.Message):
    __slots__ = ("scale", "vx_ratio", "vy_ratio", "rotate", "box", "max_size", "max_frames")
    SCALE_FIELD_NUMBER: _ClassVar[int]
    VX_RATIO_FIELD_NUMBER: _ClassVar[int]
    VY_RATIO_FIELD_NUMBER: _ClassVar[int]
    ROTATE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    scale: float
    vx_ratio: float
    vy_ratio: float
    rotate: bool
    box: CropBox
    max_size: int
    max_frames: int
    def __init__(self, scale: _Optional[float] = ..., vx_ratio: _Optional[float] = ..., vy_ratio: _Optional[float] = ..., rotate: _Optional[bool] = ..., box: _Optional[_Union[CropBox, _Mapping]] = ..., max_size: _Optional[int] = ..., max_frames: _Optional[int] = ...) -> None: ...

class CropBox(_message.Message):
    __slots__ = ("x0", "y0", "x1", "y1")
    X0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    x0: float
    y0: float
    x1: float
    y1: float
    def __init__(self, x0: _Optional[float] = ..., y0: _Optional[float] = ..., x1: _Optional[float] = ..., y1: _Optional[float] = ...) -> None: ...

class CropSquare(_message.Message):
    __slots__ = ("center_x", "center_y", "size", "rotation_deg")
    CENTER_X_FIELD_NUMBER: _ClassVar[int]
    CENTER_Y_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ROTATION_DEG_FIELD_NUMBER: _ClassVar[int]
    center_x: float
    center_y: float
    size: float
    rotation_deg: float
    def __init__(self, center_x: _Optional[float] = ..., center_y: _Optional[float] = ..., size: _Optional[float] = ..., rotation_deg: _Optional[float] = ...) -> None: ...

class FaceReport(_message.Message):
    __slots__ = ("face_models", "models", "faces_found", "face_box", "crop", "eye_open", "person_matte", "warnings")
    FACE_MODELS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    FACES_FOUND_FIELD_NUMBER: _ClassVar[int]
    FACE_BOX_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    EYE_OPEN_FIELD_NUMBER: _ClassVar[int]
    PERSON_MATTE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    face_models: str
    models: _containers.RepeatedScalarFieldContainer[str]
    faces_found: int
    face_box: CropBox
    crop: CropSquare
    eye_open: _containers.RepeatedScalarFieldContainer[float]
    person_matte: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, face_models: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., faces_found: _Optional[int] = ..., face_box: _Optional[_Union[CropBox, _Mapping]] = ..., crop: _Optional[_Union[CropSquare, _Mapping]] = ..., eye_open: _Optional[_Iterable[float]] = ..., person_matte: _Optional[bool] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class FeatureChunk(_message.Message):
    __slots__ = ("first_frame", "features", "idle")
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    first_frame: int
    features: Tensor
    idle: bool
    def __init__(self, first_frame: _Optional[int] = ..., features: _Optional[_Union[Tensor, _Mapping]] = ..., idle: _Optional[bool] = ...) -> None: ...

class KeypointFrames(_message.Message):
    __slots__ = ("first_frame", "x_source", "x_driving", "source_frame_index", "idle")
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    X_SOURCE_FIELD_NUMBER: _ClassVar[int]
    X_DRIVING_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    first_frame: int
    x_source: Tensor
    x_driving: Tensor
    source_frame_index: _containers.RepeatedScalarFieldContainer[int]
    idle: bool
    def __init__(self, first_frame: _Optional[int] = ..., x_source: _Optional[_Union[Tensor, _Mapping]] = ..., x_driving: _Optional[_Union[Tensor, _Mapping]] = ..., source_frame_index: _Optional[_Iterable[int]] = ..., idle: _Optional[bool] = ...) -> None: ...

class AvatarMotionInfo(_message.Message):
    __slots__ = ("avatar_id", "tensors", "is_video")
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    IS_VIDEO_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    is_video: bool
    def __init__(self, avatar_id: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., is_video: _Optional[bool] = ...) -> None: ...

class EndOfStream(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

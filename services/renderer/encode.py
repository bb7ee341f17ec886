"""Frame encoders (raw RGB, JPEG, H.264 access units) and an MP4 writer with the original audio (docs/model.md §7.4).

- `RawEncoder`: the pixels as they are (RGB or RGBA, C order).
- `JpegEncoder`: one JPEG per frame (OpenCV, quality 1..100). RGBA frames are encoded as PNG, since JPEG has no
  alpha channel.
- `H264Encoder`: one Annex-B access unit per frame with no frame delay (x264 `zerolatency`, no B-frames),
  yuv420p, CRF 18 as the reference's writer. The first unit carries SPS/PPS and an IDR.
- `Mp4Writer`: H.264 (yuv420p, CRF 18, 25 fps) plus an audio track, in one MP4. The track is AAC made by
  `ditto.media.audio` (at a rate and layout AAC takes, whatever the source's), copied in as it is.
- `WebmAlphaWriter`: the same for RGBA frames: VP9 with its alpha plane (yuva420p) plus the audio as Opus, in a WebM
  (the transparent video that browsers, OBS and editors read). The Opus is made from that same AAC track, our own
  bytes: the client's file is never decoded in the serving process.
"""

from __future__ import annotations

import enum
import io
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol, cast

# PyAV (FFmpeg) is imported where an H.264 stream or an MP4 is made, not here: a process that serves JPEG or raw
# frames never loads FFmpeg's libraries, and the GPU check's offline kit (tools/gpu_kit.py) can leave PyAV out.
import cv2
import numpy as np

from ditto.pipeline import FPS


class Encoding(enum.IntEnum):
    """Frame encodings (values as in `ditto.v1.FrameEncoding`; 0 means JPEG)."""

    RAW_RGB = 1
    JPEG = 2
    H264 = 3


class FrameEncoder(Protocol):
    encoding: Encoding

    def encode(self, frame: np.ndarray) -> bytes: ...

    def flush(self) -> list[bytes]: ...


class EncodeError(ValueError):
    """A frame cannot be encoded (wrong shape or dtype); the message says what was expected."""


def _check_frame(frame: np.ndarray, channels: tuple[int, ...] = (3, 4)) -> np.ndarray:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] not in channels:
        raise EncodeError(f"expected a uint8 [H, W, {'|'.join(map(str, channels))}] frame, "
                          f"got {frame.dtype} {tuple(frame.shape)}")
    return np.ascontiguousarray(frame)


class RawEncoder:
    encoding = Encoding.RAW_RGB

    def encode(self, frame: np.ndarray) -> bytes:
        return _check_frame(frame).tobytes()

    def flush(self) -> list[bytes]:
        return []


def jpeg_backends() -> list[str]:
    """JPEG encoders available here: "opencv" (OpenCV's libjpeg-turbo, after an RGB -> BGR copy) and "simplejpeg"
    (libjpeg-turbo taking RGB as it is) when installed."""
    names = ["opencv"]
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        pass
    else:
        names.append("simplejpeg")
    return names


class JpegEncoder:
    """JPEG, 4:2:0 chroma (as OpenCV's default), through libjpeg-turbo. The default backend is simplejpeg when
    installed: the same library as OpenCV's build, minus the RGB -> BGR copy OpenCV needs (bench/results/
    postprocess.json has the CPU milliseconds of each)."""

    encoding = Encoding.JPEG

    def __init__(self, quality: int = 90, backend: str | None = None):
        if not 1 <= quality <= 100:
            raise EncodeError(f"JPEG quality must be 1..100, got {quality}")
        available = jpeg_backends()
        if backend is not None and backend not in available:
            raise EncodeError(f"JPEG backend {backend!r} is not installed here; available: {available}")
        self.quality = quality
        self.backend = backend or available[-1]

    def encode(self, frame: np.ndarray) -> bytes:
        frame = _check_frame(frame)
        if frame.shape[2] == 4:  # JPEG has no alpha: keep it losslessly
            ok, buf = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGBA2BGRA))
        elif self.backend == "simplejpeg":
            import simplejpeg

            return bytes(simplejpeg.encode_jpeg(frame, quality=self.quality, colorspace="RGB",
                                                colorsubsampling="420"))
        else:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise EncodeError("OpenCV could not encode the frame")
        return buf.tobytes()

    def flush(self) -> list[bytes]:
        return []


def _x264_options(crf: int, low_latency: bool) -> dict[str, str]:
    opts = {"crf": str(crf), "preset": "veryfast" if low_latency else "medium"}
    if low_latency:
        opts.update(tune="zerolatency", bframes="0", **{"x264-params": "repeat-headers=1"})
    return opts


class H264Encoder:
    """Streaming H.264: `encode(frame)` returns exactly one Annex-B access unit for that frame."""

    encoding = Encoding.H264

    def __init__(self, width: int, height: int, fps: int = FPS, crf: int = 18, gop: int = 50):
        if width % 2 or height % 2:
            raise EncodeError(f"H.264 yuv420p needs even width and height, got {width}x{height}")
        import av

        self.width, self.height = width, height
        ctx: Any = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = Fraction(1, fps)
        ctx.framerate = Fraction(fps, 1)
        ctx.gop_size = gop
        ctx.options = _x264_options(crf, low_latency=True)
        self._ctx = ctx
        self._pts = 0

    def encode(self, frame: np.ndarray) -> bytes:
        frame = _check_frame(frame, (3,))
        if frame.shape[:2] != (self.height, self.width):
            raise EncodeError(f"frame is {frame.shape[1]}x{frame.shape[0]}, the stream is {self.width}x{self.height}")
        import av

        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        vf.pts = self._pts
        self._pts += 1
        return b"".join(bytes(p) for p in self._ctx.encode(vf))

    def flush(self) -> list[bytes]:
        return [bytes(p) for p in self._ctx.encode(None)]


def make_encoder(encoding: int, width: int, height: int, jpeg_quality: int = 90, fps: int = FPS,
                 device: str = "cpu") -> FrameEncoder:
    """An encoder for a `ditto.v1.FrameEncoding` value (0 = JPEG). On a CUDA device with torchvision (the `gpu`
    extra), JPEG is encoded on the GPU; otherwise on the CPU."""
    if encoding in (0, Encoding.JPEG):
        from .gpu_post import GpuJpegEncoder, gpu_jpeg_available

        if gpu_jpeg_available(device):
            return GpuJpegEncoder(jpeg_quality or 90)
        return JpegEncoder(jpeg_quality or 90)
    if encoding == Encoding.RAW_RGB:
        return RawEncoder()
    if encoding == Encoding.H264:
        return H264Encoder(width, height, fps)
    raise EncodeError(f"unknown frame encoding {encoding}")


class Mp4Writer:
    """Writes RGB frames as H.264 into an MP4 and, on `close()`, the audio track. `audio_track` is an M4A of AAC
    made by `ditto.media.audio` (a Render job's decoder helper makes it from the client's file); `audio`, a path or
    the bytes of a file on this machine, is turned into one here. Use as a context manager."""

    container, video_codec, pix_fmt, frame_format = "mp4", "libx264", "yuv420p", "rgb24"

    def __init__(self, path: str | Path, width: int, height: int, fps: int = FPS, crf: int = 18,
                 audio: str | Path | bytes | None = None, audio_track: bytes | None = None):
        if width % 2 or height % 2:
            raise EncodeError(f"{self.video_codec} {self.pix_fmt} needs even width and height, got {width}x{height}")
        import av

        if audio is not None and audio_track is None:
            audio_track = _local_aac_track(audio)
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self._out: Any = av.open(str(self.path), mode="w", format=self.container)
        self._video: Any = cast(Any, self._out.add_stream(self.video_codec, rate=fps))  # a video stream
        self._video.width, self._video.height, self._video.pix_fmt = width, height, self.pix_fmt
        self._video.codec_context.options = self._video_options(crf)
        self._audio_in: Any = None
        self._audio: Any = None
        if audio_track:
            self._audio_in = av.open(io.BytesIO(audio_track), mode="r")
            # every stream is declared before the first packet is written; the audio is muxed at close()
            self._audio = self._add_audio_stream(self._audio_in.streams.audio[0])
        self.frames = 0

    def _video_options(self, crf: int) -> dict[str, str]:
        return _x264_options(crf, low_latency=False)

    def _add_audio_stream(self, template: Any) -> Any:
        return self._out.add_stream_from_template(template)  # the AAC packets are copied as they are

    def write(self, frame: np.ndarray) -> None:
        frame = _check_frame(frame, (4,) if self.frame_format == "rgba" else (3,))
        if frame.shape[:2] != (self.height, self.width):
            raise EncodeError(f"frame is {frame.shape[1]}x{frame.shape[0]}, the video is {self.width}x{self.height}")
        import av

        vf = av.VideoFrame.from_ndarray(frame, format=self.frame_format)
        vf.pts = self.frames
        vf.time_base = Fraction(1, self.fps)
        for packet in self._video.encode(vf):
            self._out.mux(packet)
        self.frames += 1

    def _mux_audio(self) -> None:
        for packet in self._audio_in.demux(self._audio_in.streams.audio[0]):
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            packet.stream = self._audio
            self._out.mux(packet)

    def close(self) -> None:
        if self._out is None:
            return
        for packet in self._video.encode(None):
            self._out.mux(packet)
        if self._audio is not None:
            self._mux_audio()
            self._audio_in.close()
        self._out.close()
        self._out = None

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WebmAlphaWriter(Mp4Writer):
    """RGBA frames as VP9 with alpha into a WebM, and the audio track re-encoded as Opus (48 kHz)."""

    container, video_codec, pix_fmt, frame_format = "webm", "libvpx-vp9", "yuva420p", "rgba"

    def _video_options(self, crf: int) -> dict[str, str]:
        # constant quality (b=0 with a CRF); libvpx's realtime speed 8 keeps a CPU render from waiting on the encoder
        return {"crf": str(max(crf, 24)), "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}

    def _add_audio_stream(self, template: Any) -> Any:
        stream = self._out.add_stream("libopus", rate=48000)  # the rate Opus takes; the resampler converts
        stream.layout = "stereo" if template.channels > 1 else "mono"
        return stream

    def _mux_audio(self) -> None:
        import av

        # the AAC track is decoded (it is our own encoder's output) and re-chunked into Opus frames
        resampler = av.AudioResampler(format=self._audio.format.name, layout=self._audio.layout.name,
                                      rate=self._audio.rate, frame_size=self._audio.codec_context.frame_size or 960)
        for frame in self._audio_in.decode(audio=0):
            frame.pts = None
            for rf in resampler.resample(frame):
                self._out.mux(self._audio.encode(rf))
        for rf in resampler.resample(None):
            self._out.mux(self._audio.encode(rf))
        self._out.mux(self._audio.encode(None))


def _local_aac_track(audio: str | Path | bytes) -> bytes:
    """The AAC track of a file on this machine (the `ditto converse` and training tools' own files)."""
    from ditto.media.audio import aac_track
    from ditto.media.errors import MediaError

    try:
        return aac_track(audio)
    except MediaError as err:
        raise EncodeError(f"cannot read the audio ({err})") from err

"""Video files with their audio: `Mp4Writer` (H.264 + AAC in an MP4) and `WebmAlphaWriter` (VP9 with alpha + Opus in
a WebM), for whatever writes a whole video: a Render job in the orchestrator, `ditto converse`, data preparation.

- `Mp4Writer`: H.264 (yuv420p, CRF 18, `ditto.pipeline.FPS`) plus an audio track, in one MP4. The track is AAC made by
  `ditto.media.audio` (at a rate and layout AAC takes, whatever the source's), copied in as it is.
- `WebmAlphaWriter`: the same for RGBA frames: VP9 with its alpha plane (yuva420p) plus the audio as Opus, in a WebM
  (the transparent video that browsers, OBS and editors read). The Opus is made from that same AAC track, our own
  bytes: the client's file is never decoded in the serving process.

PyAV (FFmpeg) is imported where a file is written, not here.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import numpy as np

from ditto.media.errors import MediaError
from ditto.pipeline import FPS


class EncodeError(ValueError):
    """A frame cannot be encoded (wrong shape or dtype); the message says what was expected."""


def check_frame(frame: np.ndarray, channels: tuple[int, ...] = (3, 4)) -> np.ndarray:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] not in channels:
        raise EncodeError(f"expected a uint8 [H, W, {'|'.join(map(str, channels))}] frame, "
                          f"got {frame.dtype} {tuple(frame.shape)}")
    return np.ascontiguousarray(frame)


def x264_options(crf: int, low_latency: bool) -> dict[str, str]:
    opts = {"crf": str(crf), "preset": "veryfast" if low_latency else "medium"}
    if low_latency:
        opts.update(tune="zerolatency", bframes="0", **{"x264-params": "repeat-headers=1"})
    return opts


class Mp4Writer:
    """Writes RGB frames as H.264 into an MP4 and, on `close()`, the audio track. `audio_track` is an M4A of AAC
    made by `ditto.media.audio` (a Render job's decoder helper makes it from the client's file); `audio`, a path or
    the bytes of a file on this machine, is turned into one here. Use as a context manager."""

    container, video_codec, pix_fmt, frame_format = "mp4", "libx264", "yuv420p", "rgb24"

    def __init__(self, path: str | Path, width: int, height: int, fps: int = FPS, crf: int = 18,
                 audio: str | Path | bytes | None = None, audio_track: bytes | None = None,
                 preset: str | None = None):
        if width % 2 or height % 2:
            raise EncodeError(f"{self.video_codec} {self.pix_fmt} needs even width and height, got {width}x{height}")
        import av

        if audio is not None and audio_track is None:
            audio_track = _local_aac_track(audio)
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self.preset = preset  # x264's speed/size trade-off; None: "medium"
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
        opts = x264_options(crf, low_latency=False)
        if self.preset:
            opts["preset"] = self.preset
        return opts

    def _add_audio_stream(self, template: Any) -> Any:
        return self._out.add_stream_from_template(template)  # the AAC packets are copied as they are

    def write(self, frame: np.ndarray) -> None:
        frame = check_frame(frame, (4,) if self.frame_format == "rgba" else (3,))
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

    try:
        return aac_track(audio)
    except MediaError as err:
        raise EncodeError(f"cannot read the audio ({err})") from err

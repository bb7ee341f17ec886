"""Audio files to samples, resampled while they are decoded.

FFmpeg's resampler (swresample) converts every decoded frame straight to what the caller needs: packed (interleaved)
float at the wanted rate, then a plain channel mean when mono is asked for. So what a decode holds is what it
produces (seconds x output rate x output channels x 4 bytes), never the source at its own rate, and no planar
multi-channel frame is ever turned into an array (PyAV 18 crashes converting an 8-channel planar frame).

`aac=True` makes, in the same pass, the audio track of an MP4: AAC at a rate AAC can encode (at most 48 kHz, never
above the source's) in mono or stereo, muxed into a small M4A that an MP4 writer copies as it is.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ditto.media.errors import MediaError, MediaTooLong
from ditto.media.sniff import AUDIO_NAMES, sniff

MIN_RATE, MAX_RATE = 8000, 192000
MAX_CHANNELS = 8
SPEECH_RATE = 16000  # what the audio encoder's features are computed from
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)  # AAC's rates, up to 48 kHz
AAC_BIT_RATE = 128_000


@dataclass
class DecodedAudio:
    samples: np.ndarray        # float32 [n, channels], interleaved, at `sample_rate`
    sample_rate: int
    source_rate: int
    source_channels: int
    aac_track: bytes = b""     # an M4A of the audio as AAC, when asked for

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def aac_rate(rate: int) -> int:
    """The AAC rate for a source at `rate`: the highest AAC rate not above it, capped at 48 kHz (AAC cannot encode
    above 96 kHz; speech gains nothing above 48)."""
    fitting = [r for r in AAC_RATES if r <= rate]
    return fitting[-1] if fitting else AAC_RATES[0]


def mixdown(x: np.ndarray) -> np.ndarray:
    """[n, C] -> [n], the plain channel mean. Summed channel by channel so every sample's value depends only on
    that sample frame, never on how many frames came in the same chunk."""
    mono = x[:, 0].copy()
    for c in range(1, x.shape[1]):
        mono += x[:, c]
    if x.shape[1] > 1:
        mono /= x.shape[1]
    return mono


def _open(source: bytes | str | Path, what: str) -> Any:
    """A container for `source`: a client's bytes are opened by the demuxer their magic bytes name (and refused
    when they name none); a local path is probed by FFmpeg as any file."""
    import av

    try:
        if isinstance(source, bytes | bytearray):
            kind = sniff(source)
            if kind is None or not kind.audio:
                raise MediaError(f"{what} is not an audio file this service reads ({AUDIO_NAMES}): its first bytes "
                                 "match none of them")
            return av.open(io.BytesIO(source), mode="r", format=kind.demuxer)
        path = Path(source)
        if not path.is_file():
            raise MediaError(f"{what}: no such audio file")
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as err:
        raise MediaError(f"{what}: cannot open as an audio file ({err}); use {AUDIO_NAMES}") from err


def _header_seconds(container: Any, stream: Any) -> float | None:
    import av

    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


class _AacTrack:
    """AAC frames of 1024 samples in fltp, muxed into an in-memory M4A as they are encoded."""

    def __init__(self, source_rate: int, channels: int) -> None:
        import av

        self.buf = io.BytesIO()
        self.out: Any = av.open(self.buf, mode="w", format="mp4")
        layout = "mono" if channels == 1 else "stereo"
        self.stream: Any = self.out.add_stream("aac", rate=aac_rate(source_rate), layout=layout)
        self.stream.bit_rate = AAC_BIT_RATE
        self.resampler = av.AudioResampler(format="fltp", layout=layout, rate=self.stream.rate,
                                           frame_size=self.stream.codec_context.frame_size or 1024)

    def add(self, frame: Any) -> None:
        for resampled in self.resampler.resample(frame):
            self._encode(resampled)

    def _encode(self, frame: Any) -> None:
        for packet in self.stream.encode(frame):
            self.out.mux(packet)

    def finish(self) -> bytes:
        for resampled in self.resampler.resample(None):
            self._encode(resampled)
        self._encode(None)
        self.out.close()
        return self.buf.getvalue()


def decode_audio(source: bytes | str | Path, *, what: str = "the audio", rate: int | None = None, mono: bool = False,
                 max_seconds: float | None = None, aac: bool = False) -> DecodedAudio:
    """The first audio stream of `source` (a client's bytes, or a local file) as float32 [n, channels].

    `rate`: resample to it while decoding (None keeps the source's); `mono`: the plain channel mean (else the
    source's channels, interleaved). With `max_seconds`, a file whose header says it is longer is refused before
    decoding, and decoding stops as soon as the output passes the limit (`MediaTooLong`).
    """
    import av

    container = _open(source, what)
    with container:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise MediaError(f"{what}: the file has no audio stream")
        stream = streams[0]
        stream.codec_context.thread_count = 1
        header_rate, header_channels = stream.codec_context.sample_rate, stream.codec_context.channels
        if header_rate and not MIN_RATE <= header_rate <= MAX_RATE:
            raise MediaError(f"{what}: sample rate {header_rate} Hz is out of range ({MIN_RATE}..{MAX_RATE} Hz)")
        if header_channels > MAX_CHANNELS:
            raise MediaError(f"{what} has {header_channels} channels; use 1..{MAX_CHANNELS}")
        if max_seconds is not None:
            header_s = _header_seconds(container, stream)
            if header_s is not None and header_s > max_seconds:
                raise MediaTooLong(f"{what} lasts {header_s:.0f} s (from its header), above the limit of "
                                   f"{max_seconds:g} s", header_s, True)
        # one growing buffer (glibc grows a large one in place with mremap): what a decode holds is the output,
        # once, never a list of pieces plus their concatenation
        out_bytes = bytearray()
        width = 0
        total = 0
        resampler: Any = None
        shape: tuple[str, int] | None = None  # (layout, rate) the resampler was made for
        out_rate = source_rate = channels = 0
        track: _AacTrack | None = None

        def take(frames: list) -> None:
            nonlocal total, width
            for out in frames:
                x = out.to_ndarray().reshape(-1, channels)  # packed: [1, n * channels] -> [n, channels]
                if mono and channels > 1:
                    x = mixdown(x)[:, None]
                width = x.shape[1]
                if not np.isfinite(x).all():
                    raise MediaError(f"{what}: decoded audio contains NaN or infinite samples")
                out_bytes.extend(np.ascontiguousarray(x, dtype=np.float32).data.cast("B"))
                total += x.shape[0]
            if max_seconds is not None and total > max_seconds * out_rate:
                raise MediaTooLong(f"{what} lasts more than the limit of {max_seconds:g} s", total / out_rate, False)

        try:
            for frame in container.decode(stream):
                frame_shape = (frame.layout.name, frame.sample_rate)
                if shape != frame_shape:
                    if shape is not None and (not mono or rate is None):
                        raise MediaError(f"{what} changes its channel layout or rate mid-stream; convert it to one "
                                         "format first")
                    if resampler is not None:
                        take(resampler.resample(None))
                    if shape is None:
                        source_rate, out_rate = frame.sample_rate, rate or frame.sample_rate
                        if not MIN_RATE <= source_rate <= MAX_RATE:
                            raise MediaError(f"{what}: sample rate {source_rate} Hz is out of range "
                                             f"({MIN_RATE}..{MAX_RATE} Hz)")
                    channels = len(frame.layout.channels)
                    if channels > MAX_CHANNELS:
                        raise MediaError(f"{what} has {channels} channels; use 1..{MAX_CHANNELS}")
                    # packed float, the frame's own layout: the mixdown stays a plain mean whatever the layout
                    resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=out_rate)
                    shape = frame_shape
                    if aac and track is None:
                        track = _AacTrack(source_rate, channels)
                frame.pts = None  # resamplers count samples themselves
                take(resampler.resample(frame))
                if track is not None:
                    track.add(frame)
            if resampler is not None:
                take(resampler.resample(None))
            aac_bytes = track.finish() if track is not None else b""
        except MediaError:
            raise
        except (av.error.FFmpegError, ValueError) as err:  # ValueError: PyAV refusing a frame its setup does not fit
            raise MediaError(f"{what}: cannot decode the audio ({err}); the codec may be unsupported or the file "
                             "damaged") from err
    if total == 0:
        raise MediaError(f"{what}: the audio stream holds no samples")
    return DecodedAudio(np.frombuffer(out_bytes, dtype=np.float32).reshape(-1, width), out_rate, source_rate,
                        header_channels or channels, aac_bytes)


def aac_track(source: bytes | str | Path, what: str = "the audio") -> bytes:
    """Only the AAC track of `source` (an M4A), for an MP4 writer; decodes at 8 kHz mono alongside, a small cost."""
    return decode_audio(source, what=what, rate=MIN_RATE, mono=True, aac=True).aac_track


def decode_for_render(audio: bytes, what: str = "the audio", max_seconds: float | None = None) -> DecodedAudio:
    """A Render job's file: 16 kHz mono float for the features and the AAC track of the MP4, in one pass."""
    return decode_audio(audio, what=what, rate=SPEECH_RATE, mono=True, max_seconds=max_seconds, aac=True)

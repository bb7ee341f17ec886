"""Portraits and video avatars from a client's bytes: checked from their headers, decoded a frame at a time and
scaled while decoding, and re-encoded into the normalised copy that is stored.

These functions run where the pool puts them (a helper process, `ditto.media.pool`), since they hand client bytes to
native decoders. Every size is checked against `MediaLimits` before pixels are decoded, so a small file that expands
to gigabytes is refused from its header; the helper's memory limit catches what a header does not tell.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ditto.media.errors import MediaError
from ditto.media.sniff import IMAGE_NAMES, VIDEO_NAMES, Sniffed, sniff
from ditto.pipeline import FPS  # a video source is normalised to the frame rate the service makes

DEFAULT_MAX_SIZE = 1920  # the long side a source is scaled down to (CropOptions.max_size 0 means this)
NORMALISED_CRF = 18  # as the output writer: visually lossless for a source the avatar is built from


@dataclass(frozen=True)
class MediaLimits:
    """What one avatar may cost, checked from headers before anything is decoded (`ditto.config.MediaSettings`
    holds the configured values)."""

    max_image_pixels: int = 16_000_000
    max_video_frames: int = 100
    max_video_s: float = 60.0


@dataclass
class DecodedVisual:
    frames: list[np.ndarray]  # RGB uint8 [H, W, 3], long side at most max_size, even sides
    is_video: bool


@dataclass(frozen=True)
class NormalisedMedia:
    """The copy of an avatar's media that is stored and that every renderer builds the avatar from: the decoded
    frames (after the size limit) re-encoded, with no metadata, colour profile or audio of the upload."""

    media: bytes
    filename: str   # "avatar.png" or "avatar.mp4"
    width: int
    height: int
    frames: int


def check_pixels(width: int, height: int, what: str, limits: MediaLimits) -> None:
    if width * height > limits.max_image_pixels:
        raise MediaError(f"{what} is {width}x{height} = {width * height / 1e6:.1f} megapixels, above the limit of "
                         f"{limits.max_image_pixels / 1e6:g} megapixels (DITTO_MEDIA__MAX_IMAGE_PIXELS); send a "
                         "smaller picture (a portrait needs about 1 megapixel)")


def limit_size(frame: np.ndarray, max_size: int = DEFAULT_MAX_SIZE) -> np.ndarray:
    """Resize so the long side is at most `max_size` (bilinear), then drop the last row/column of odd sides."""
    import cv2

    h, w = frame.shape[:2]
    if max_size > 0 and max(h, w) > max_size:
        if h > w:
            new_h, new_w = max_size, int(round(w * max_size / h))
        else:
            new_w, new_h = max_size, int(round(h * max_size / w))
        frame = cv2.resize(frame, (new_w, new_h))
        h, w = new_h, new_w
    return np.ascontiguousarray(frame[: h - h % 2, : w - w % 2])


def scaled_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """`limit_size`'s target size (before its even-side trim)."""
    if max_size <= 0 or max(width, height) <= max_size:
        return width, height
    if height > width:
        return int(round(width * max_size / height)), max_size
    return max_size, int(round(height * max_size / width))


def _kind(media: bytes, what: str) -> Sniffed:
    if not media:
        raise MediaError(f"{what} is empty (0 bytes)")
    kind = sniff(media)
    if kind is None or not (kind.family == "image" or kind.video):
        raise MediaError(f"{what} is neither a readable image ({IMAGE_NAMES}) nor a video ({VIDEO_NAMES}): its "
                         "first bytes match none of them")
    return kind


def _image_size(media: bytes, what: str, limits: MediaLimits) -> tuple[int, int]:
    """The image's size from its header (Pillow reads no pixel to tell it), checked against the limit."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(media)) as im:
                width, height = im.size
    except Image.DecompressionBombError as err:  # Pillow's own, far higher, bound
        raise MediaError(f"{what} is above the limit of {limits.max_image_pixels / 1e6:g} megapixels "
                         f"(DITTO_MEDIA__MAX_IMAGE_PIXELS): {err}") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise MediaError(f"{what} is not a readable image: its header is damaged ({err})") from err
    check_pixels(width, height, what, limits)
    return width, height


def _image_bgr(media: bytes, what: str, limits: MediaLimits) -> np.ndarray:
    import cv2

    _image_size(media, what, limits)
    bgr = cv2.imdecode(np.frombuffer(media, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise MediaError(f"{what} is not a readable image: its pixels cannot be decoded (damaged or truncated)")
    return bgr


def _video_frames(media: bytes, kind: Sniffed, what: str, max_frames: int, max_size: int,
                  limits: MediaLimits) -> Iterator[np.ndarray]:
    """The first `max_frames` frames as RGB, scaled down to `max_size` while decoding (swscale, one frame at a
    time); the rest of the file is never decoded."""
    import av

    try:
        with av.open(io.BytesIO(media), mode="r", format=kind.demuxer) as container:
            if not container.streams.video:
                raise MediaError(f"{what} has no video stream and is not an image")
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # a helper decodes one file on one core: the pool is the parallelism
            width, height = stream.codec_context.width, stream.codec_context.height
            check_pixels(width, height, what, limits)
            seconds = None
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            if seconds is not None and seconds > limits.max_video_s:
                raise MediaError(f"{what} lasts {seconds:.1f} s, above the limit of {limits.max_video_s:g} s for a "
                                 "video avatar (DITTO_MEDIA__MAX_VIDEO_S); trim it to a short loop")
            kept = 0
            for frame in container.decode(stream):
                # a stream may change size mid-way: check every frame against the pixel limit, not only the header
                check_pixels(frame.width, frame.height, what, limits)
                target = scaled_size(frame.width, frame.height, max_size)
                yield limit_size(frame.to_ndarray(format="rgb24", width=target[0], height=target[1]), max_size)
                kept += 1
                if kept >= max_frames:
                    break
    except av.error.FFmpegError as err:
        raise MediaError(f"{what} is not a readable video ({VIDEO_NAMES}): {err}") from err


def _kept(max_frames: int, limits: MediaLimits) -> int:
    return min(max_frames, limits.max_video_frames) if max_frames else limits.max_video_frames


def decode_frames(media: bytes, what: str = "the source", max_size: int = DEFAULT_MAX_SIZE, max_frames: int = 0,
                  limits: MediaLimits | None = None) -> DecodedVisual:
    """An image or a short video -> RGB frames (long side at most `max_size`, even sides). Videos keep their first
    `max_frames` frames (0 = as many as `limits` allow)."""
    import cv2

    limits = limits or MediaLimits()
    kind = _kind(media, what)
    if kind.family == "image":
        frames = [limit_size(cv2.cvtColor(_image_bgr(media, what, limits), cv2.COLOR_BGR2RGB), max_size)]
        is_video = False
    else:
        frames = list(_video_frames(media, kind, what, _kept(max_frames, limits), max_size, limits))
        is_video = len(frames) > 1
    if not frames:
        raise MediaError(f"{what} contains no decodable video frame")
    if min(frames[0].shape[:2]) < 2:
        raise MediaError(f"{what} is too small ({frames[0].shape[1]}x{frames[0].shape[0]})")
    return DecodedVisual(frames, is_video)


def normalise(media: bytes, what: str = "the source", max_size: int = DEFAULT_MAX_SIZE, max_frames: int = 0,
              limits: MediaLimits | None = None) -> NormalisedMedia:
    """The copy to store: an image becomes a PNG of its decoded pixels after the size limit (lossless, so the
    avatar is the one the upload gives); a video becomes an H.264 MP4 of the frames kept, made while they are
    decoded. Colour profiles, EXIF and other metadata, extra streams and audio are not carried over."""
    import cv2

    limits = limits or MediaLimits()
    kind = _kind(media, what)
    if kind.family == "image":
        bgr = limit_size(_image_bgr(media, what, limits), max_size)
        if min(bgr.shape[:2]) < 2:
            raise MediaError(f"{what} is too small ({bgr.shape[1]}x{bgr.shape[0]})")
        ok, png = cv2.imencode(".png", bgr)
        if not ok:
            raise MediaError(f"{what} could not be re-encoded")
        return NormalisedMedia(png.tobytes(), "avatar.png", bgr.shape[1], bgr.shape[0], 1)
    frames = _video_frames(media, kind, what, _kept(max_frames, limits), max_size, limits)
    first = next(frames, None)
    if first is None:
        raise MediaError(f"{what} contains no decodable video frame")
    if min(first.shape[:2]) < 2:
        raise MediaError(f"{what} is too small ({first.shape[1]}x{first.shape[0]})")
    second = next(frames, None)
    if second is None:  # a one-frame video is a picture
        ok, png = cv2.imencode(".png", cv2.cvtColor(first, cv2.COLOR_RGB2BGR))
        return NormalisedMedia(png.tobytes(), "avatar.png", first.shape[1], first.shape[0], 1)
    return _h264(first, second, frames)


def _h264(first: np.ndarray, second: np.ndarray, rest: Iterator[np.ndarray]) -> NormalisedMedia:
    import av

    height, width = first.shape[:2]
    buf = io.BytesIO()
    count = 0
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"crf": str(NORMALISED_CRF), "preset": "veryfast", "threads": "1"}
        for frame in itertools.chain((first, second), rest):
            if frame.shape[:2] != (height, width):  # a stream that changed size: keep the first size
                import cv2

                frame = cv2.resize(frame, (width, height))
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = count, Fraction(1, FPS)
            for packet in stream.encode(vf):
                out.mux(packet)
            count += 1
        for packet in stream.encode(None):
            out.mux(packet)
    return NormalisedMedia(buf.getvalue(), "avatar.mp4", width, height, count)

"""Untrusted media, decoded safely: images, short videos and audio files that clients send.

- `sniff`: what a file is, from its first bytes (never from its name), and the one FFmpeg demuxer allowed to read it.
- `visual`: portraits and video avatars: header checks against `MediaLimits`, frames scaled while decoding, and the
  normalised copy that is stored (decoded pixels re-encoded, metadata and audio dropped).
- `audio`: audio files to the samples the service needs (16 kHz mono for the features, any rate and layout kept for
  local tools) and the AAC track of an MP4; resampling happens while decoding, so memory follows what is produced.
- `pool`: a small pool of helper processes where the native decoders (FFmpeg, libpng, libjpeg, ...) run under a
  memory limit and a time limit; a crash or a limit breach fails that one call (`DecodeFailed`, a `MediaError`) and
  the helper is replaced.

Importing this package loads neither PyAV nor OpenCV: the decoders are imported where they run.
"""

from ditto.media.errors import DecodeFailed, DecoderCrashed, DecodeTimeout, DecodeTooLarge, MediaError, MediaTooLong
from ditto.media.sniff import Sniffed, sniff

__all__ = ["DecodeFailed", "DecodeTimeout", "DecodeTooLarge", "DecoderCrashed", "MediaError", "MediaTooLong",
           "Sniffed", "sniff", "short"]


def short(text: str, limit: int = 48) -> str:
    """A client-given name or id as it may appear in a message: at most `limit` characters. A reply's message
    travels in gRPC metadata, whose size is bounded; echoing a 4 MiB id would turn NOT_FOUND into
    RESOURCE_EXHAUSTED."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"

"""What can go wrong with a client's media. Every one of these is the client's INVALID_ARGUMENT, with a message that
says what to send instead; none of them is a server fault."""

from __future__ import annotations


class MediaError(ValueError):
    """Bytes that are not usable media: unrecognised, damaged, or above a limit (the message names it)."""


class MediaTooLong(MediaError):
    """Audio or video longer than the caller's limit, found from its header or while decoding (nothing past the
    limit is decoded)."""

    def __init__(self, message: str, seconds: float, from_header: bool) -> None:
        super().__init__(message)
        self.seconds = seconds
        self.from_header = from_header


class DecodeFailed(MediaError):
    """The decoder's helper process could not finish this file: it crashed, ran out of its memory limit or of its
    time limit. The helper is replaced; nothing else is affected."""


class DecoderCrashed(DecodeFailed):
    pass


class DecodeTooLarge(DecodeFailed):
    pass


class DecodeTimeout(DecodeFailed):
    pass

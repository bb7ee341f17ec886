"""What a media file is, told by its first bytes. The file name a client sends is never used to pick a decoder: a
PNG called `bomb.mp4` is a PNG, and gets the PNG header check.

Each recognised format maps to the one FFmpeg demuxer allowed to open it (containers), or to the image decoders
(Pillow for the header, OpenCV for the pixels). Anything else is refused before a native decoder sees it, which also
keeps FFmpeg's long list of rarely used demuxers out of reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["image", "container"]


@dataclass(frozen=True)
class Sniffed:
    name: str           # "png", "jpeg", "mp4", "wav", ...
    family: Family      # images are decoded by OpenCV; containers by FFmpeg through `demuxer`
    demuxer: str = ""   # the FFmpeg input format for containers
    video: bool = False  # may hold a video stream (an avatar)
    audio: bool = False  # may hold an audio stream (a Render file)


IMAGES = {
    "png": Sniffed("png", "image"),
    "jpeg": Sniffed("jpeg", "image"),
    "webp": Sniffed("webp", "image"),
    "bmp": Sniffed("bmp", "image"),
    "tiff": Sniffed("tiff", "image"),
}
CONTAINERS = {
    "mp4": Sniffed("mp4", "container", "mov", video=True, audio=True),      # also mov, m4a, 3gp
    "matroska": Sniffed("matroska", "container", "matroska", video=True, audio=True),  # also webm, mka
    "avi": Sniffed("avi", "container", "avi", video=True, audio=True),
    "gif": Sniffed("gif", "container", "gif", video=True),
    "ogg": Sniffed("ogg", "container", "ogg", audio=True),                  # Opus, Vorbis, FLAC in Ogg
    "wav": Sniffed("wav", "container", "wav", audio=True),
    "flac": Sniffed("flac", "container", "flac", audio=True),
    "mp3": Sniffed("mp3", "container", "mp3", audio=True),
    "aac": Sniffed("aac", "container", "aac", audio=True),                  # ADTS
    "aiff": Sniffed("aiff", "container", "aiff", audio=True),
}
VIDEO_NAMES = "MP4, MOV, WebM, MKV, AVI, GIF"
IMAGE_NAMES = "PNG, JPEG, WebP, BMP, TIFF"
AUDIO_NAMES = "WAV, FLAC, Ogg (Opus, Vorbis), MP3, AAC, M4A, WebM, AIFF"
_QUICKTIME_ATOMS = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def sniff(data: bytes | bytearray | memoryview) -> Sniffed | None:
    """The format of `data` from its magic bytes, or None when it is none of the accepted ones."""
    head = bytes(data[:16])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return IMAGES["png"]
    if head.startswith(b"\xff\xd8\xff"):
        return IMAGES["jpeg"]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return IMAGES["webp"]
    if head[:2] == b"BM" and len(head) >= 14:
        return IMAGES["bmp"]
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return IMAGES["tiff"]
    if head[4:8] in _QUICKTIME_ATOMS:
        return CONTAINERS["mp4"]
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return CONTAINERS["matroska"]
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return CONTAINERS["avi"]
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return CONTAINERS["gif"]
    if head.startswith(b"OggS"):
        return CONTAINERS["ogg"]
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return CONTAINERS["wav"]
    if head.startswith(b"fLaC"):
        return CONTAINERS["flac"]
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return CONTAINERS["aiff"]
    if head.startswith(b"ID3"):
        return CONTAINERS["mp3"]
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:  # ADTS: sync 0xFFF, layer 00
            return CONTAINERS["aac"]
        if head[1] & 0xE0 == 0xE0 and head[1] & 0x06:  # MPEG audio frame sync, layer I-III
            return CONTAINERS["mp3"]
    return None

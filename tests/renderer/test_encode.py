"""Frame encoders and the MP4 writer, checked by decoding what they wrote with PyAV / OpenCV."""

from __future__ import annotations

import io
import wave

import av
import cv2
import numpy as np
import pytest

from ditto.media.writers import Mp4Writer
from services.renderer.encode import EncodeError, H264Encoder, JpegEncoder, RawEncoder, make_encoder

from .pictures import decode_rgb, photo


def frame(i: int, h: int = 120, w: int = 160) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return np.stack([(x * 2 + 5 * i) % 256, (y * 2 + 3 * i) % 256, ((x + y) + 7 * i) % 256], -1).astype(np.uint8)


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        t = np.arange(int(seconds * rate)) / rate
        w.writeframes((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).tobytes())
    return buf.getvalue()


def test_raw_and_jpeg():
    f = frame(0)
    assert RawEncoder().encode(f) == f.tobytes()
    jpg = JpegEncoder(95).encode(f)
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert back.shape == f.shape and np.abs(back.astype(int) - f).mean() < 4
    rgba = np.dstack([f, np.full(f.shape[:2], 128, np.uint8)])
    png = JpegEncoder().encode(rgba)  # alpha survives (PNG)
    back4 = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back4.shape == (120, 160, 4) and (back4[..., 3] == 128).all()
    with pytest.raises(EncodeError, match="uint8"):
        RawEncoder().encode(f.astype(np.float32))
    with pytest.raises(EncodeError, match="quality"):
        JpegEncoder(0)


def test_h264_one_access_unit_per_frame():
    enc = make_encoder(3, 160, 120)
    assert isinstance(enc, H264Encoder)
    units = [enc.encode(frame(i)) for i in range(12)]
    assert all(u.startswith(b"\x00\x00\x00\x01") or u.startswith(b"\x00\x00\x01") for u in units)
    assert enc.flush() == []  # zero latency: nothing held back
    dec = av.CodecContext.create("h264", "r")
    decoded = []
    for u in units:  # each unit is a whole packet: no parser needed
        decoded += [f.to_ndarray(format="rgb24") for f in dec.decode(av.Packet(u))]
    decoded += [f.to_ndarray(format="rgb24") for f in dec.decode(None)]
    assert len(decoded) == 12
    for i in (0, 6, 11):
        assert np.abs(decoded[i].astype(int) - frame(i)).mean() < 4
    with pytest.raises(EncodeError, match="even"):
        H264Encoder(161, 120)
    with pytest.raises(EncodeError, match="stream is 160x120"):
        enc.encode(frame(0, 100, 100))


def test_mp4_writer_with_audio(tmp_path):
    path = tmp_path / "out.mp4"
    with Mp4Writer(path, 160, 120, fps=25, audio=wav_bytes(1.0)) as mp4:
        for i in range(25):
            mp4.write(frame(i))
    with av.open(str(path)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        assert c.streams.audio[0].codec_context.name == "aac"
        assert c.streams.video[0].average_rate == 25
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 25 and frames[0].shape == (120, 160, 3)
    assert np.abs(frames[10].astype(int) - frame(10)).mean() < 4
    with av.open(str(path)) as c:
        samples = sum(f.samples for f in c.decode(audio=0))
    assert abs(samples - 16000) < 2048  # one second of audio (plus AAC priming)


def test_mp4_writer_rejects_bad_audio(tmp_path):
    with pytest.raises(EncodeError, match="audio"):
        Mp4Writer(tmp_path / "x.mp4", 160, 120, audio=b"not audio at all" * 100)


@pytest.mark.parametrize("backend", ["opencv", "simplejpeg"])
def test_every_jpeg_backend_gives_the_same_picture(backend):
    from services.renderer.encode import jpeg_backends

    assert backend in jpeg_backends(), "simplejpeg is a pinned dependency"
    img = photo()
    enc = JpegEncoder(90, backend=backend)
    back = decode_rgb(enc.encode(img))
    psnr = 10 * np.log10(255 ** 2 / np.mean((back.astype(float) - img) ** 2))
    assert psnr > 30, f"{backend}: {psnr:.1f} dB"
    # the same library at the same quality and chroma subsampling: the two decode to nearly the same pixels
    other = decode_rgb(JpegEncoder(90, backend="opencv").encode(img))
    assert np.abs(back.astype(int) - other).mean() < 1.0
    assert JpegEncoder().backend == jpeg_backends()[-1]


def test_unknown_jpeg_backend_says_what_is_installed():
    with pytest.raises(EncodeError, match="available"):
        JpegEncoder(90, backend="nvjpeg-on-cpu")

"""The kernel's media decoding (`ditto.media`): formats told by their bytes, audio resampled while decoding, and the
pool of decoder helper processes (real processes: time limit, replacement, cancel, results equal to in-process)."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest

from ditto.media import DecoderCrashed, DecodeTimeout, MediaError, MediaTooLong, sniff
from ditto.media.audio import aac_rate, decode_audio, decode_for_render
from ditto.media.pool import DecoderPool, InProcess
from tools.hostile import (
    LAYOUTS,
    decoder_fault,
    encoded_audio,
    huge_png,
    silent_flac,
    static_video,
    video_with_audio,
    wav_without_layout,
)


def test_formats_are_told_by_their_bytes():
    import cv2
    from PIL import Image

    img = np.zeros((8, 8, 3), np.uint8)
    made = {"png": cv2.imencode(".png", img)[1].tobytes(), "jpeg": cv2.imencode(".jpg", img)[1].tobytes(),
            "webp": cv2.imencode(".webp", img)[1].tobytes(), "bmp": cv2.imencode(".bmp", img)[1].tobytes(),
            "tiff": cv2.imencode(".tiff", img)[1].tobytes(), "mp4": static_video(2, 64, 64),
            "matroska": video_with_audio("stereo"), "wav": wav_without_layout(2, seconds=0.1),
            "flac": silent_flac(1), "ogg": encoded_audio("libopus", "ogg", "mono", seconds=0.1),
            "mp3": encoded_audio("libmp3lame", "mp3", "mono", 44100, 0.1),
            "aac": encoded_audio("aac", "adts", "mono", 44100, 0.1)}
    gif = io.BytesIO()
    Image.fromarray(img).save(gif, "GIF")
    made["gif"] = gif.getvalue()
    for name, data in made.items():
        found = sniff(data)
        assert found is not None and found.name == name, (name, found)
    assert sniff(b"GIF") is None and sniff(b"hello, world" * 4) is None and sniff(b"") is None


def test_audio_is_resampled_while_decoding_whatever_its_channels():
    """Every channel count to 16 kHz mono (8 channels in planar float crash PyAV 18 when made into an array: never
    done here), the plain channel mean; and the AAC track at a rate AAC takes."""
    for channels in LAYOUTS:
        wav = wav_without_layout(channels, 44100, 0.5)
        got = decode_audio(wav, rate=16000, mono=True)
        assert got.samples.shape == (8000, 1) and got.sample_rate == 16000 and got.source_channels == channels
        kept = decode_audio(wav)  # the source's rate and channels, interleaved
        assert kept.samples.shape == (22050, channels)
        np.testing.assert_allclose(decode_audio(wav, mono=True).samples[:, 0], kept.samples.mean(axis=1), atol=1e-6)
    track = decode_for_render(encoded_audio("flac", "flac", "7.1", 192000, 0.3)).aac_track
    import av

    with av.open(io.BytesIO(track)) as c:
        assert c.streams.audio[0].codec_context.name == "aac" and c.streams.audio[0].rate == 48000
    assert [aac_rate(r) for r in (8000, 11000, 44100, 96000, 192000)] == [8000, 8000, 44100, 48000, 48000]


def test_audio_length_is_bounded_from_the_header_or_while_decoding():
    with pytest.raises(MediaTooLong) as err:
        decode_audio(silent_flac(100), max_seconds=10)
    assert err.value.from_header and err.value.seconds == pytest.approx(100, abs=1)
    with pytest.raises(MediaTooLong) as err:
        decode_audio(silent_flac(100, strip_length=True), max_seconds=10)
    assert not err.value.from_header
    with pytest.raises(MediaError, match="not an audio file"):
        decode_audio(huge_png(100, 100))


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setenv("DITTO_TEST_DECODER_FAULTS", "1")  # the helpers inherit it: the test-only fault hook
    p = DecoderPool(helpers=1, max_memory_mb=256, timeout_s=3)
    yield p
    p.close()


def test_helpers_give_what_this_process_would_and_replace_themselves(pool):
    import cv2

    photo = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))[1]
    here = InProcess().run("decode_frames", photo.tobytes())
    there = pool.run("decode_frames", photo.tobytes())
    np.testing.assert_array_equal(there.frames[0], here.frames[0])
    assert there.frames[0].flags.writeable  # received into its own memory, not a read-only view
    first = pool.pids()
    with pytest.raises(DecoderCrashed, match="SIGABRT"):
        pool.run("normalise", decoder_fault("abort"))
    t0 = time.monotonic()
    with pytest.raises(DecodeTimeout, match="DITTO_DECODE__TIMEOUT_S"):
        pool.run("normalise", decoder_fault("hang"))
    assert time.monotonic() - t0 < 3 + 10
    with pytest.raises(MediaError, match="neither a readable image"):  # a plain refusal keeps its helper
        pool.run("normalise", b"not media at all")
    assert pool.replaced == 2 and len(pool.pids()) == 1 and pool.pids() != first
    assert pool.run("normalise", photo.tobytes()).filename == "avatar.png"


async def test_a_cancelled_call_kills_its_helper(pool):
    task = asyncio.create_task(pool.run_async("normalise", decoder_fault("hang")))
    deadline = time.monotonic() + 60
    while not pool.pids():  # the helper is working on it
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    hung = pool.pids()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.replaced == 1 and pool.pids() != hung

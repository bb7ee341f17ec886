"""StreamingEncoder end to end: chunk invariance over rates, channels and formats; resume from a checkpoint; bad
audio keeps the session usable; many sessions in one batch; whole file == streaming."""

from __future__ import annotations

import numpy as np
import pytest

from services.audio_encoder.encoder import StreamingEncoder, encode_file, encode_many
from services.audio_encoder.formats import AudioError, InputFormat, decode_file
from services.audio_encoder.hubert import FunctionHubert
from services.audio_encoder.windows import window_count
from tests.audio.helpers import random_fake


@pytest.fixture(scope="module")
def backend() -> FunctionHubert:
    return FunctionHubert(random_fake(0), "fake")


def _speechlike(rate: int, seconds: float, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    base = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    return np.stack([base + 0.05 * rng.standard_normal(n) for _ in range(channels)], axis=1)  # [n, C]


def _to_bytes(x: np.ndarray, fmt: InputFormat) -> bytes:
    if fmt.sample_format == "pcm_s16le":
        return np.clip(np.round(x * 32767), -32768, 32767).astype("<i2").tobytes()
    return x.astype("<f4").tobytes()


def _stream(backend, fmt: InputFormat, data: bytes, chunk_frames) -> np.ndarray:
    enc = StreamingEncoder(backend, fmt)
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = chunk_frames[i % len(chunk_frames)] * fmt.frame_bytes
        out.append(enc.push(data[pos:pos + n]))
        pos, i = pos + n, i + 1
    out.append(enc.end())
    return np.concatenate(out)


@pytest.mark.parametrize("rate,channels,sample_format", [
    (16000, 1, "pcm_s16le"), (16000, 2, "float32le"), (8000, 1, "pcm_s16le"), (44100, 2, "pcm_s16le"),
    (48000, 1, "float32le"), (22050, 6, "float32le"),
])
def test_same_features_for_any_chunking(backend, rate, channels, sample_format):
    fmt = InputFormat(sample_format, rate, channels)
    data = _to_bytes(_speechlike(rate, 1.3, channels), fmt)
    whole = _stream(backend, fmt, data, [len(data)])
    resampled = -(-int(rate * 1.3) * 16000 // rate)
    assert whole.shape == (5 * window_count(resampled), 1024)
    short = data[: len(data) // 8 // fmt.frame_bytes * fmt.frame_bytes]  # tiny pushes on a prefix keep it quick
    short_whole = _stream(backend, fmt, short, [len(short)])
    for chunks in ([1, 3, 2, 17], [rate // 100], [997], [rate // 5 + 1]):
        tiny = min(chunks) < 5
        got = _stream(backend, fmt, short if tiny else data, chunks)
        np.testing.assert_array_equal(got, short_whole if tiny else whole)


def test_checkpoint_resume_on_another_worker(backend):
    fmt = InputFormat("pcm_s16le", 44100, 2)
    data = _to_bytes(_speechlike(44100, 1.0, 2), fmt)
    ref = _stream(backend, fmt, data, [len(data)])
    a = StreamingEncoder(backend, fmt)
    cut = 12345 * fmt.frame_bytes
    first = a.push(data[:cut])
    blob = a.state_bytes()
    assert len(blob) < 64_000  # small: a window tail and a filter tail
    b = StreamingEncoder.from_state_bytes(blob, backend)
    rest = [b.push(data[cut:]), b.end()]
    assert b.frames_out == ref.shape[0]
    np.testing.assert_array_equal(np.concatenate([first, *rest]), ref)


def test_bad_audio_gets_clear_errors_and_session_goes_on(backend):
    fmt = InputFormat("pcm_s16le", 16000, 2)
    data = _to_bytes(_speechlike(16000, 1.0, 2), fmt)
    ref = _stream(backend, fmt, data, [4000])
    enc = StreamingEncoder(backend, fmt)
    out = [enc.push(data[:8000])]
    with pytest.raises(AudioError, match="empty"):
        enc.push(b"")
    with pytest.raises(AudioError, match="whole number"):
        enc.push(data[8000:8003])
    with pytest.raises(AudioError, match="limit"):
        enc.push(np.zeros((16000 * 600, 2), np.int16))  # a 10-minute chunk
    with pytest.raises(AudioError, match="channels"):
        enc.push(np.zeros((100, 3), np.int16))
    for pos in range(8000, len(data), 8000):
        out.append(enc.push(data[pos:pos + 8000]))
    out.append(enc.end())
    np.testing.assert_array_equal(np.concatenate(out), ref)
    with pytest.raises(AudioError, match="end of the stream"):
        enc.push(data[:4])

    fenc = StreamingEncoder(backend, InputFormat("float32le", 16000, 1))
    x = np.zeros(1600, np.float32)
    x[5] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        fenc.push(x)
    with pytest.raises(AudioError, match="PCM16"):
        fenc.push(np.full(1600, 20000.0, np.float32))
    assert fenc.push(np.zeros(6480, np.float32)).shape == (5, 1024)  # still usable


@pytest.mark.parametrize("kwargs,match", [({"sample_rate": 4000}, "rate"), ({"channels": 9}, "channels"),
                                          ({"sample_format": "mulaw"}, "format")])
def test_bad_declared_format(kwargs, match):
    with pytest.raises(AudioError, match=match):
        InputFormat(**kwargs)


def test_many_sessions_in_one_backend_call(backend):
    calls = []

    class Counting:
        name, max_batch = "counting", 64

        def encode_windows(self, w):
            calls.append(len(w))
            return backend.encode_windows(w)

    fmts = [InputFormat("pcm_s16le", 16000, 1), InputFormat("float32le", 48000, 2), InputFormat("pcm_s16le", 8000, 1)]
    datas = [_to_bytes(_speechlike(f.sample_rate, 1.0, f.channels, seed=i), f) for i, f in enumerate(fmts)]
    encs = [StreamingEncoder(None, f) for f in fmts]
    got: list[list[np.ndarray]] = [[] for _ in fmts]
    for step in range(4):
        items = [(e, d[step * len(d) // 4:(step + 1) * len(d) // 4]) for e, d in zip(encs, datas, strict=True)]
        items.append((encs[0], b"\x01"))  # a bad chunk in the same batch fails alone
        results = encode_many(Counting(), items)
        assert isinstance(results[-1], AudioError)
        for i, r in enumerate(results[:-1]):
            got[i].append(r)
    for i, r in enumerate(encode_many(Counting(), [(e, None) for e in encs])):
        got[i].append(r)
    total = 0
    for f, d, g in zip(fmts, datas, got, strict=True):
        ref = _stream(backend, f, d, [len(d)])
        np.testing.assert_array_equal(np.concatenate(g), ref)
        total += ref.shape[0] // 5
    assert sum(calls) == total and len(calls) <= 5  # one backend call per round, never one per session
    assert max(calls) > 5  # windows of several sessions went through together


def _write_wav(path, samples_i16: np.ndarray, rate: int) -> None:
    import av

    channels = samples_i16.shape[1]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="stereo" if channels == 2 else "mono")
        frame = av.AudioFrame.from_ndarray(samples_i16.reshape(1, -1), format="s16",
                                           layout="stereo" if channels == 2 else "mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_whole_file_equals_streaming(backend, tmp_path):
    fmt = InputFormat("pcm_s16le", 44100, 2)
    pcm = np.frombuffer(_to_bytes(_speechlike(44100, 1.2, 2), fmt), "<i2").reshape(-1, 2)
    path = tmp_path / "speech.wav"
    _write_wav(path, pcm, 44100)
    decoded = decode_file(path)
    assert decoded.sample_rate == 44100 and decoded.samples.shape == pcm.shape
    offline = encode_file(path, backend)
    np.testing.assert_array_equal(offline, _stream(backend, fmt, pcm.tobytes(), [441 * 7]))


@pytest.mark.parametrize("suffix,codec,rate", [("ogg", "libopus", 48000), ("webm", "libopus", 48000),
                                               ("mp3", "libmp3lame", 44100), ("m4a", "aac", 44100)])
def test_compressed_file_decodes(backend, tmp_path, suffix, codec, rate):
    import av

    path = tmp_path / f"speech.{suffix}"
    x = _speechlike(rate, 1.0, 1)[:, 0].astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        fmt = stream.codec_context.format.name  # the encoder's own sample format (flt, fltp, s16p, ...)
        step = stream.codec_context.frame_size or 1024
        for start in range(0, x.size, step):
            piece = x[start:start + step]
            frame = av.AudioFrame.from_ndarray(piece[None].copy(), format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for f in av.AudioResampler(format=fmt, layout="mono", rate=rate).resample(frame):
                for packet in stream.encode(f):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    decoded = decode_file(path)
    assert decoded.sample_rate == rate and abs(decoded.seconds - 1.0) < 0.1
    feats = encode_file(path, backend)
    n16 = -(-decoded.samples.shape[0] * 16000 // rate)
    assert feats.shape == (5 * window_count(n16), 1024) and np.isfinite(feats).all()


def test_unreadable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "noise.mp3"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match="noise.mp3"):
        decode_file(bad)
    with pytest.raises(AudioError, match="no such"):
        decode_file(tmp_path / "missing.wav")

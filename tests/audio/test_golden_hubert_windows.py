"""Golden case hubert_windows (tests/golden/README.md, docs/model.md §9): our streaming windows must reproduce the
reference's ONLINE array with the fake HuBERT; the whole-file path must equal the streaming path."""

from __future__ import annotations

import numpy as np
import pytest

from services.audio_encoder.encoder import StreamingEncoder
from services.audio_encoder.formats import InputFormat
from services.audio_encoder.hubert import FunctionHubert
from services.audio_encoder.windows import FRONT_PAD, HOP, stream_features, window_count
from tests.audio.helpers import FakeHubert
from tests.conftest import golden_case

CASE = "hubert_windows"


@pytest.mark.golden
@pytest.mark.parametrize("push_ms", [None, 20, 37.5, 200, 1000], ids=lambda v: f"{CASE}-push{v}")
def test_online_features_match_reference(push_ms):
    case, io, _ = golden_case(CASE)
    audio, fake = io["audio"], FakeHubert(io["W"], io["b"])
    enc = StreamingEncoder(FunctionHubert(fake), InputFormat("float32le", 16000, 1))
    step = audio.size if push_ms is None else int(push_ms * 16)
    feats = [enc.push(audio[i:i + step]) for i in range(0, audio.size, step)]
    feats.append(enc.end())
    got = np.concatenate(feats)
    ref = io["feat_online"]
    assert got.shape == ref.shape == (window_count(audio.size) * 5, 1024)
    assert float(np.max(np.abs(got - ref))) <= case["tolerance_suggestion"]["feat_online"]
    # the windows handed to the stub are the reference's chunks, in order
    starts = io["online_chunk_starts"]
    assert len(fake.calls) == len(starts)
    padded = np.concatenate([np.zeros(FRONT_PAD, np.float32), audio])
    for call, start in zip(fake.calls, starts, strict=True):
        assert start % HOP == 0
        expect = np.zeros(6480, np.float32)
        piece = padded[start:start + 6480]
        expect[:piece.size] = piece
        np.testing.assert_array_equal(call[0], expect)


@pytest.mark.golden
def test_hubert_windows_offline_array_differs_as_documented():
    """The offline array is documentation only: it is NOT what we produce (its windows sit 80 samples earlier)."""
    _, io, _ = golden_case(CASE)
    enc = StreamingEncoder(FunctionHubert(FakeHubert(io["W"], io["b"])), InputFormat("float32le", 16000, 1))
    ours = np.concatenate([enc.push(io["audio"]), enc.end()])
    off = io["feat_offline"]
    assert ours.shape[0] > off.shape[0]
    assert np.max(np.abs(ours[: off.shape[0]] - off)) > 1e-3


@pytest.mark.golden
def test_hubert_windows_window_machine_on_a_batched_function():
    """windows.py alone, on a batched hubert function: pushes of odd sizes give the reference's online array."""
    case, io, _ = golden_case(CASE)
    fake = FakeHubert(io["W"], io["b"])
    got = stream_features(io["audio"], FunctionHubert(fake).encode_windows, push_sizes=[1, 6479, 3201, 17, 9999])
    assert float(np.max(np.abs(got - io["feat_online"]))) <= case["tolerance_suggestion"]["feat_online"]

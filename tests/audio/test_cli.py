"""`ditto features` end to end in a subprocess: synthetic tiny weights, two chunk sizes, identical arrays."""

from __future__ import annotations

import numpy as np

from tests.audio.test_encoder import _write_wav
from tests.conftest import run_cli


def test_features_cli_same_array_for_any_chunk_ms(tmp_path):
    rng = np.random.default_rng(0)
    pcm = (3000 * rng.standard_normal((22050, 2))).astype(np.int16)  # 1 s of stereo at 22.05 kHz
    wav = tmp_path / "in.wav"
    _write_wav(wav, pcm, 22050)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    outs = []
    for chunk_ms in ("40", "333"):
        out = tmp_path / f"f{chunk_ms}.npy"
        res = run_cli("features", "--audio", str(wav), "--out", str(out), "--chunk-ms", chunk_ms,
                      "--weights", "synthetic", "--profile", "tiny", "--device", "cpu", env=env)
        assert res.returncode == 0, res.stderr
        outs.append(np.load(out))
    assert (tmp_path / "cache" / "ditto" / "synthetic-tiny" / "ditto_pytorch/aux_models/hubert_streaming_fix_kv.onnx"
            ).is_file()
    # 1 s at 22.05 kHz resamples to 16000 samples: exactly 25 frames, as the service sends (not the 5 * windows)
    assert outs[0].shape == (25, 1024) and outs[0].dtype == np.float32
    np.testing.assert_array_equal(outs[0], outs[1])


def test_features_cli_bad_file(tmp_path):
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"not audio at all")
    res = run_cli("features", "--audio", str(bad), "--out", str(tmp_path / "x.npy"), "--profile", "tiny",
                  env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert res.returncode == 2 and "bad.webm" in res.stderr and "Traceback" not in res.stderr


def test_features_cli_gives_the_frames_the_service_sends(tmp_path):
    """7.97 s of audio: ceil(7.97 * 16000 / 640) = 200 frames, what the audio worker sends (not 205)."""
    rng = np.random.default_rng(1)
    pcm = (2000 * rng.standard_normal(int(7.97 * 16000))).astype(np.int16)[:, None]
    wav = tmp_path / "speech.wav"
    _write_wav(wav, pcm, 16000)
    out = tmp_path / "f.npy"
    res = run_cli("features", "--audio", str(wav), "--out", str(out), "--weights", "synthetic", "--profile", "tiny",
                  "--device", "cpu", env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr
    assert np.load(out).shape == (200, 1024)

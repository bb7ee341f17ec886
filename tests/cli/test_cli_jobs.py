"""The main job and the weights commands, run as a user runs them: `python -m ditto_app.cli ...` in a subprocess."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from scipy.io import wavfile

ROOT = Path(__file__).resolve().parents[2]


def ditto(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "ditto_app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=e)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    from skimage import data

    d = tmp_path_factory.mktemp("inputs")
    cv2.imwrite(str(d / "face.png"), cv2.resize(data.astronaut()[:, :, ::-1], (192, 160)))
    t = np.arange(int(44100 * 1.7)) / 44100
    voice = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    wavfile.write(d / "speech.wav", 44100, np.stack([voice, voice], 1).astype(np.float32))  # 44.1 kHz stereo
    return d / "face.png", d / "speech.wav"


def test_render_writes_h264_with_the_original_audio_and_says_the_weights_are_synthetic(inputs, tmp_path):
    face, speech = inputs
    out = tmp_path / "out.mp4"
    r = ditto("render", "--avatar", str(face), "--audio", str(speech), "--out", str(out), "--profile", "tiny",
              "--emotion", "happy", "--yaw", "5", "--seed", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "SYNTHETIC WEIGHTS" in r.stderr and "NOT look like a real talking face" in r.stderr
    assert "rendering" in r.stderr  # the progress bar
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == math.ceil(1.7 * 25)
    assert frames[0].shape == (160, 192, 3)
    assert abs(float(a.duration * a.time_base) - 1.7) < 0.1 if a.duration else True


def test_render_explains_bad_inputs(inputs, tmp_path):
    face, speech = inputs
    r = ditto("render", "--avatar", str(tmp_path / "missing.png"), "--audio", str(speech), "--out",
              str(tmp_path / "o.mp4"), "--profile", "tiny")
    assert r.returncode != 0 and "does not exist" in r.stderr
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    r = ditto("render", "--avatar", str(junk), "--audio", str(speech), "--out", str(tmp_path / "o.mp4"),
              "--profile", "tiny")
    assert r.returncode == 1 and "cannot use" in r.stderr and "Traceback" not in r.stderr
    bad_audio = tmp_path / "bad.wav"
    bad_audio.write_bytes(b"RIFF....garbage")
    r = ditto("render", "--avatar", str(face), "--audio", str(bad_audio), "--out", str(tmp_path / "o.mp4"),
              "--profile", "tiny")
    assert r.returncode == 1 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_weights_fetch_without_network_tells_how_to_place_files(tmp_path):
    r = ditto("weights", "fetch", "--dest", str(tmp_path / "w"), timeout=300,
              env={"HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"})
    if r.returncode == 0:
        pytest.skip("this machine can reach huggingface.co")
    assert "Place the files by hand" in r.stderr
    assert "ditto_pytorch/models/lmdm_v0.4_hubert.pth" in r.stderr
    assert "ditto weights check" in r.stderr


def test_weights_check_accepts_a_complete_folder_and_names_a_truncated_file(tmp_path):
    from ditto_app.synthetic import ensure_synthetic

    root = ensure_synthetic("tiny")
    r = ditto("weights", "check", str(root))
    assert r.returncode == 0, r.stderr
    assert "complete" in r.stdout
    broken = tmp_path / "w"
    for src in root.rglob("*"):
        if src.is_file() and src.name != ".lock":
            dst = broken / src.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    dec = broken / "ditto_pytorch/models/decoder.pth"
    dec.write_bytes(dec.read_bytes()[: dec.stat().st_size // 3])
    (broken / "ditto_pytorch/models/stitch_network.pth").unlink()
    r = ditto("weights", "check", str(broken))
    assert r.returncode == 1
    assert "missing ditto_pytorch/models/stitch_network.pth" in r.stderr
    r = ditto("weights", "check", str(broken / "nowhere"))
    assert r.returncode == 1


def test_help_lists_every_command():
    r = ditto("--help")
    for cmd in ("render", "serve", "up", "converse", "features", "weights", "prepare", "train", "worker", "demo"):
        assert cmd in r.stdout, f"ditto {cmd} missing from --help"


def test_render_cuts_the_person_out_onto_a_transparent_webm(inputs, tmp_path):
    face, _ = inputs
    speech = tmp_path / "short.wav"
    t = np.arange(int(16000 * 0.5)) / 16000
    wavfile.write(speech, 16000, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32))
    refused = ditto("render", "--avatar", str(face), "--audio", str(speech), "--out", str(tmp_path / "o.mp4"),
                    "--background", "transparent", "--profile", "tiny")
    assert refused.returncode == 2 and "needs a .webm output" in refused.stderr
    out = tmp_path / "cut.webm"
    r = ditto("render", "--avatar", str(face), "--audio", str(speech), "--out", str(out), "--background",
              "transparent", "--profile", "tiny")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "note: the face is small" in r.stderr  # registration's warnings reach the user
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "vp9" and c.streams.audio[0].codec_context.name == "opus"
        decoder = av.CodecContext.create("libvpx-vp9", "r")  # FFmpeg's own VP9 decoder drops the alpha plane
        frames = [f.to_ndarray(format="rgba") for p in c.demux(c.streams.video[0]) for f in decoder.decode(p)]
    assert len(frames) == math.ceil(0.5 * 25) and frames[0].shape == (160, 192, 4)
    alpha = frames[0][..., 3]
    assert alpha[:20, :20].max() < 32 and alpha[:20, -20:].max() < 32   # flag and shuttle: cut away (VP9 is lossy)
    assert alpha[95:120, 40:70].min() > 223                              # her suit, below the face crop: kept

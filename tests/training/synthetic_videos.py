"""Short synthetic talking videos for the training tests: a drawn face whose mouth opens with a speech-like signal.

The audio is a voiced source (harmonics of a gliding pitch, shaped by two vowel formants) switched on and off in
syllables of random length; the mouth opening of each video frame follows the syllable envelope, and the head drifts
a little, so audio and motion are related the way they are in real talking videos.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

FPS = 25


def speech_like(seconds: float, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(audio [n] float32 in [-1, 1], envelope per 25 fps frame [frames] in [0, 1])."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    env = np.zeros(n)
    pos = int(rng.uniform(0.05, 0.2) * rate)
    while pos < n:                                           # syllables of 120-300 ms with 40-200 ms gaps
        length = int(rng.uniform(0.12, 0.3) * rate)
        seg = np.sin(np.linspace(0, np.pi, min(length, n - pos))) ** 0.7
        env[pos:pos + len(seg)] = seg
        pos += length + int(rng.uniform(0.04, 0.2) * rate)
    f0 = 130 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    f1, f2 = rng.uniform(500, 800), rng.uniform(1100, 1800)
    voiced = np.zeros(n)
    for k in range(1, 25):                                   # harmonics weighted by two formant peaks
        fk = k * f0
        gain = np.exp(-((fk - f1) / 150) ** 2) + 0.6 * np.exp(-((fk - f2) / 200) ** 2) + 0.05 / k
        voiced += gain * np.sin(k * phase)
    audio = env * voiced + 0.003 * rng.standard_normal(n)
    audio = (0.5 * audio / np.abs(audio).max()).astype(np.float32)
    frames = int(seconds * FPS)
    per_frame = np.array([env[int(i * rate / FPS): int((i + 1) * rate / FPS)].mean() for i in range(frames)])
    return audio, per_frame


def draw_face(size: int, mouth: float, dx: float, dy: float, tone: tuple[int, int, int], blink: bool) -> np.ndarray:
    img = np.full((size, size, 3), (70, 90, 110), np.uint8)
    c = (int(size / 2 + dx), int(size / 2 + dy))
    cv2.ellipse(img, c, (int(size * 0.22), int(size * 0.3)), 0, 0, 360, tone, -1)
    eye_h = 1 if blink else int(size * 0.02)
    for sx in (-1, 1):
        e = (c[0] + sx * int(size * 0.08), c[1] - int(size * 0.07))
        cv2.ellipse(img, e, (int(size * 0.035), eye_h), 0, 0, 360, (30, 30, 30), -1)
    m = (c[0], c[1] + int(size * 0.13))
    cv2.ellipse(img, m, (int(size * 0.07), max(1, int(size * 0.06 * mouth))), 0, 0, 360, (90, 20, 30), -1)
    return img


def write_talking_video(path: Path, seconds: float, seed: int, size: int = 192, audio_rate: int = 22050,
                        fps: int = FPS) -> Path:
    """An MP4 (H.264 + AAC) of `seconds` at `fps` with speech-like audio at `audio_rate`."""
    import av

    rng = np.random.default_rng(seed)
    audio, env = speech_like(seconds, audio_rate, rng)
    r, g, b = (int(v) for v in rng.integers(150, 230, 3))
    tone = (r, g, b)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "ultrafast"}
        aud = out.add_stream("aac", rate=audio_rate)
        aud.layout = "mono"
        n_frames = int(seconds * fps)
        for i in range(n_frames):
            e = env[min(len(env) - 1, int(i * FPS / fps))]
            t = i / fps
            img = draw_face(size, float(e), 4 * np.sin(1.3 * t), 3 * np.sin(0.9 * t + 1), tone, i % 60 == 30)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        chunk = 1024
        for start in range(0, len(audio), chunk):
            part = audio[start:start + chunk][None]
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(part), format="flt", layout="mono")
            af.sample_rate = audio_rate
            af.pts = start
            af.time_base = Fraction(1, audio_rate)
            for p in aud.encode(af):
                out.mux(p)
        for p in aud.encode():
            out.mux(p)
    return path

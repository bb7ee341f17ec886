"""Shared builders for the motion tests: a synthetic avatar, a tiny-profile generator, a stream driver."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ditto.weights import input_rng
from services.motion_generator.generator import AvatarMotion, MotionGenerator
from services.motion_generator.models import open_backend
from services.motion_generator.streaming import MotionStream, Window

_GEN: dict[str, MotionGenerator] = {}


def tiny_generator() -> MotionGenerator:
    if "tiny" not in _GEN:
        _GEN["tiny"] = MotionGenerator(open_backend("synthetic", "tiny"))
    return _GEN["tiny"]


def avatar(n_frames: int = 1, seed: int = 7) -> AvatarMotion:
    def r(name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> np.ndarray:
        return (mean + std * input_rng(seed, name).standard_normal(shape)).astype(np.float32)

    arrays = {"pitch": r("pitch", (n_frames, 66), 3), "yaw": r("yaw", (n_frames, 66), 3),
              "roll": r("roll", (n_frames, 66), 3), "t": r("t", (n_frames, 3), 0.1),
              "exp": r("exp", (n_frames, 63), 0.02), "scale": r("scale", (n_frames, 1), 0.1, 1.0),
              "kp": r("kp", (n_frames, 63), 0.3), "eye_open": r("eye_open", (n_frames, 2), 0.05, 0.3),
              "eye_ball": r("eye_ball", (n_frames, 6), 0.01)}
    return AvatarMotion.from_arrays(arrays, is_video=n_frames > 1)


def features(n: int, seed: int = 3) -> np.ndarray:
    return input_rng(seed, "features").standard_normal((n, 1024)).astype(np.float32)


def drive_stream(stream: MotionStream, feats: np.ndarray, chunk: int,
                 sample: Callable[[Window], np.ndarray]) -> list[tuple[int, np.ndarray]]:
    """Feeds `feats` `chunk` rows at a time, runs every window as it becomes ready with `sample(window)` (while
    stream.kp_cond is that window's conditioning frame), ends and flushes -> the emitted (first frame, rows)."""
    out: list[tuple[int, np.ndarray]] = []

    def drain() -> None:
        while (w := stream.next_window()) is not None:
            first, rows = stream.complete(w, sample(w))
            if len(rows):
                out.append((first, rows))

    for i in range(0, len(feats), chunk):
        stream.push(feats[i:i + chunk])
        drain()
    stream.end()
    drain()
    first, rows = stream.flush()
    if len(rows):
        out.append((first, rows))
    assert stream.done
    return out

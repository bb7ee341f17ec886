"""The per-frame condition vector of the MotionDiT (1103 = audio 1024 | emotion 8 | eye open 2 | eye ball 6 | sc 63).

See docs/model.md §3.2. Frame indices are session frame indices (negative for the silence pre-fill of
the streaming mode; they clamp to 0). Emotion is one label, a mixture of labels, a per-frame sequence (cycled by
frame index) or probabilities; it can be replaced while a session runs (`emotion_rows` per call).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

EMOTIONS = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise", "Contempt")
NEUTRAL = 4
AUDIO_DIM, EMO_DIM, EYE_OPEN_DIM, EYE_BALL_DIM, SC_DIM = 1024, 8, 2, 6, 63
COND_DIM = AUDIO_DIM + EMO_DIM + EYE_OPEN_DIM + EYE_BALL_DIM + SC_DIM   # 1103

EmotionSpec = int | str | Sequence[Any] | np.ndarray | None


def _label(value: Any) -> int:
    if isinstance(value, str):
        names = [e.lower() for e in EMOTIONS]
        if value.lower() not in names:
            raise ValueError(f"unknown emotion {value!r}; use one of {', '.join(EMOTIONS)}")
        return names.index(value.lower())
    idx = int(value)
    if not 0 <= idx < EMO_DIM:
        raise ValueError(f"emotion label {idx} out of range 0..7 ({', '.join(EMOTIONS)})")
    return idx


def label_probs(labels: Sequence[Any]) -> np.ndarray:
    """softmax of an 8-vector with 8.0 at each chosen label (float32), [8]."""
    v = np.zeros(EMO_DIM, np.float32)
    for lab in labels:
        v[_label(lab)] = 8
    e = np.exp(v - v.max())
    return (e / e.sum()).astype(np.float32)


def emotion_probs(emo: EmotionSpec) -> np.ndarray:
    """Any accepted emotion form -> [m, 8] float32 rows (m = 1 unless a per-frame sequence is given)."""
    if emo is None:
        return label_probs([NEUTRAL])[None]
    if isinstance(emo, np.ndarray) and emo.dtype.kind == "f":
        arr = emo.astype(np.float32).reshape(-1, EMO_DIM) if emo.size % EMO_DIM == 0 else None
        if arr is None or arr.shape[0] == 0:
            raise ValueError(f"emotion probabilities must have shape [m, 8], got {emo.shape}")
        return arr
    if isinstance(emo, int | str | np.integer):
        return label_probs([emo])[None]
    items = list(emo)
    if not items:
        raise ValueError("empty emotion list")
    if all(isinstance(i, Sequence) and not isinstance(i, str) or isinstance(i, np.ndarray) for i in items):
        return np.stack([label_probs(list(i)) for i in items])        # per-frame sequence of label sets
    return label_probs(items)[None]                                     # one mixture


def mirror_index(i: int, n: int) -> int:
    """Ping-pong index over n source frames: 0..n-1, n-1..0, 0..n-1, ..."""
    q, r = divmod(i, n)
    return r if q % 2 == 0 else n - 1 - r


class ConditionBuilder:
    """Builds condition rows for a registered avatar. eye_open [N_s,2], eye_ball [N_s,6], sc [63] (frame 0 kp)."""

    def __init__(self, eye_open: np.ndarray, eye_ball: np.ndarray, sc: np.ndarray, emotion: EmotionSpec = None,
                 eye_f0_mode: bool = False) -> None:
        self.eye_open = np.asarray(eye_open, np.float32).reshape(-1, EYE_OPEN_DIM)
        self.eye_ball = np.asarray(eye_ball, np.float32).reshape(-1, EYE_BALL_DIM)
        if len(self.eye_open) != len(self.eye_ball) or len(self.eye_open) == 0:
            raise ValueError(f"eye_open {self.eye_open.shape} and eye_ball {self.eye_ball.shape} need the same "
                             "non-zero number of source frames")
        self.sc = np.asarray(sc, np.float32).reshape(SC_DIM)
        self.eye_f0_mode = eye_f0_mode
        self.emotion = emotion_probs(emotion)

    def set_emotion(self, emotion: EmotionSpec) -> None:
        self.emotion = emotion_probs(emotion)

    def emotion_rows(self, frames: np.ndarray) -> np.ndarray:
        return self.emotion[frames % len(self.emotion)]

    def __call__(self, features: np.ndarray, start: int, emotion_rows: np.ndarray | None = None) -> np.ndarray:
        """features [n,1024] of session frames start..start+n-1 -> cond [n,1103]. `emotion_rows` [n,8] replaces
        the configured emotion (timeline changes)."""
        feats = np.asarray(features, np.float32)
        if feats.ndim != 2 or feats.shape[1] != AUDIO_DIM:
            raise ValueError(f"audio features must have shape [n, {AUDIO_DIM}], got {feats.shape}")
        n = feats.shape[0]
        frames = np.maximum(np.arange(start, start + n), 0)
        emo = self.emotion_rows(frames) if emotion_rows is None else np.asarray(emotion_rows, np.float32)
        n_src = len(self.eye_open)
        if n_src == 1 or self.eye_f0_mode:
            eye_idx = np.zeros(n, dtype=np.int64)
        else:
            eye_idx = np.array([mirror_index(int(f), n_src) for f in frames], dtype=np.int64)
        return np.concatenate([feats, emo, self.eye_open[eye_idx], self.eye_ball[eye_idx],
                               np.broadcast_to(self.sc, (n, SC_DIM))], axis=1).astype(np.float32, copy=False)

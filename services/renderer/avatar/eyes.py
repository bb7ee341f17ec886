"""Eye state of the source: openness [2] and eye-ball offset [6] from the 478-point face mesh (docs/model.md §6.4).

The mesh comes from MediaPipe's face mesh and iris models (`faces.py`, the default), or from the official weights'
face-landmarker models (`sessions.py`); without any, the features fall back to `DEFAULT_EYE_OPEN` /
`DEFAULT_EYE_BALL` (eyes open, looking straight ahead), which the condition vector accepts like measured values.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
EPS = 1e-8

# Neutral values used when no face mesh model is available: an open eye (lid distances summed over three lid
# pairs are about 0.6 of the eye width on a relaxed open eye) and the iris centred between the corners.
DEFAULT_EYE_OPEN = np.array([0.6, 0.6], dtype=F32)
# Below this an eye counts as closed: the three lid distances of a shut eye sum to a small fraction of its width (an
# open eye measures 0.6 to 1.2; the astronaut portrait 1.1).
CLOSED_EYE_OPENNESS = 0.25
DEFAULT_EYE_BALL = np.zeros(6, dtype=F32)

# MediaPipe mesh indices: (outer corner, inner corner, three (lower, upper) lid pairs, iris centre).
_LEFT = (33, 133, ((145, 159), (144, 160), (153, 158)), 468)
_RIGHT = (263, 362, ((374, 386), (373, 387), (380, 385)), 473)


def _dist(p: np.ndarray, a: int, b: int) -> np.ndarray:
    return np.linalg.norm(p[:, a] - p[:, b], axis=-1)


def _direction(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    return d / (np.linalg.norm(d, axis=-1, keepdims=True) + EPS)


def eye_open(lmk478: np.ndarray) -> np.ndarray:
    """[n, 478, 3] normalised mesh -> [n, 2] (left, right) lid opening relative to the eye width."""
    p = np.asarray(lmk478, dtype=F32)
    cols = []
    for outer, inner, lids, _ in (_LEFT, _RIGHT):
        lid = _dist(p, *lids[0]) + _dist(p, *lids[1]) + _dist(p, *lids[2])
        cols.append(lid / (_dist(p, outer, inner) + EPS))
    return np.stack(cols, axis=-1).astype(F32)


def eye_ball(lmk478: np.ndarray) -> np.ndarray:
    """[n, 478, 3] -> [n, 6] iris offset from the eye centre, corrected by the eye axis; order Lx Rx Ly Ry Lz Rz."""
    p = np.asarray(lmk478, dtype=F32)
    moves = []
    for outer, inner, _, iris in (_LEFT, _RIGHT):
        centre = (p[:, outer] + p[:, inner]) / 2
        ball = p[:, iris]
        axis = _direction(p[:, outer], p[:, inner])
        moves.append((_direction(ball, centre) - axis) * np.linalg.norm(ball - centre, axis=-1, keepdims=True))
    return np.stack(moves, axis=-1).reshape(p.shape[0], 6).astype(F32)  # [n, 3, 2] -> coordinate-major


def eye_features(lmk478: np.ndarray | None, n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(eye_open [n, 2], eye_ball [n, 6]); the neutral defaults for n frames when no mesh is given."""
    if lmk478 is None:
        return np.tile(DEFAULT_EYE_OPEN, (n, 1)), np.tile(DEFAULT_EYE_BALL, (n, 1))
    return eye_open(lmk478), eye_ball(lmk478)

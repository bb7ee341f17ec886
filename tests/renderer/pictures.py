"""Pictures for the encoder tests: a real photograph (JPEG behaves differently on noise) and a JPEG decoder."""

from __future__ import annotations

import cv2
import numpy as np


def decode_rgb(jpg: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def photo(h: int = 240, w: int = 320) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(cv2.resize(data.astronaut(), (w, h)))

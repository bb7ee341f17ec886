"""Facial landmark models: InsightFace 2d106det (first frame) and the 203-point model (docs/model.md §6.2).

Both wrap a session with ONNX Runtime's `run(None, feed)` interface; only their pre- and post-processing lives
here (golden cases `landmark106_io` and `landmark203_io`).
"""

from __future__ import annotations

import cv2
import numpy as np

from .crop import Crop, crop_image, map_points
from .detection import Session

F32 = np.float32


class Landmark106:
    """2d106det: an upright square crop of 1.5 x the box's long side, 192x192, BGR 0..255 input."""

    size = 192

    def __init__(self, session: Session, input_name: str = "data"):
        self.session = session
        self.input_name = input_name

    def matrix(self, box: np.ndarray) -> np.ndarray:
        """[2, 3] float64 similarity original -> 192 crop; the scalars are float32 as in the reference."""
        box = np.asarray(box, dtype=F32)
        w, h = box[2] - box[0], box[3] - box[1]
        cx, cy = (box[2] + box[0]) / 2, (box[3] + box[1]) / 2
        s = F32(self.size) / (max(w, h) * F32(1.5))
        half = self.size / 2
        return np.array([[s, 0, half - cx * s], [0, s, half - cy * s]], dtype=np.float64)

    def prepare(self, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(blob [1,3,192,192], crop, M)."""
        m = self.matrix(box)
        crop = cv2.warpAffine(image, m, (self.size, self.size), borderValue=(0.0, 0.0, 0.0, 0.0))
        blob = cv2.dnn.blobFromImage(crop, 1.0, (self.size, self.size), (0.0, 0.0, 0.0), swapRB=True)
        return blob, crop, m

    def __call__(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """106 landmarks [106, 2] float32 in image pixels, for a face box (x1, y1, x2, y2, ...)."""
        blob, _, m = self.prepare(image, box)
        pred = self.session.run(None, {self.input_name: blob})[0][0].reshape(-1, 2)[-106:].astype(F32)
        pred = (pred + 1) * F32(self.size // 2)
        inv = cv2.invertAffineTransform(m)
        return (pred.astype(np.float64) @ inv[:, :2].T + inv[:, 2]).astype(F32)


class Landmark203:
    """The 203-point model: a 224 roll-corrected crop (scale 1.5, vy -0.1) around seed landmarks, RGB in [0, 1].

    Seeds are the 106 landmarks on the first frame and the previous frame's 203 landmarks later (tracking).
    """

    size = 224

    def __init__(self, session: Session, input_name: str = "input"):
        self.session = session
        self.input_name = input_name

    def crop(self, image: np.ndarray, seed: np.ndarray) -> Crop:
        return crop_image(image, seed, self.size, 1.5, -0.1, rotate=True)

    @staticmethod
    def blob(crop: np.ndarray) -> np.ndarray:
        return (crop.astype(F32) / 255.0).transpose(2, 0, 1)[None].copy()

    def run(self, crop: Crop) -> np.ndarray:
        out = self.session.run(None, {self.input_name: self.blob(crop.image)})
        pts = out[0].reshape(-1, 2).astype(F32) * F32(self.size)
        return map_points(pts, crop.M_c2o)

    def __call__(self, image: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """203 landmarks [203, 2] float32 in image pixels."""
        return self.run(self.crop(image, seed))

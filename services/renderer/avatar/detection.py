"""SCRFD face detection (InsightFace det_10g) pre- and post-processing (docs/model.md §6.2, golden `scrfd_decode`).

The session is anything with ONNX Runtime's `run(None, feed)` interface returning the nine raw outputs in the
order scores (strides 8, 16, 32), boxes (same strides), keypoints (same strides).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

F32 = np.float32


class Session(Protocol):
    def run(self, output_names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray      # [n, 5] float32 (x1, y1, x2, y2, score) in original pixels, descending score
    keypoints: np.ndarray  # [n, 5, 2] float32

    def largest(self) -> np.ndarray | None:
        """The box with the largest area [5], the one the reference crops (single face only), or None."""
        if len(self.boxes) == 0:
            return None
        b = self.boxes
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        return b[np.argsort(-area)][0]


@dataclass(frozen=True)
class Letterbox:
    image: np.ndarray  # [size, size, 3] uint8: the resized frame at the top-left, zeros elsewhere
    scale: float       # new_h / H (boxes are divided by it)


def letterbox(image: np.ndarray, size: int = 512) -> Letterbox:
    h, w = image.shape[:2]
    if h / w > 1.0:  # taller than the square input
        new_h, new_w = size, int(size / (h / w))
    else:
        new_w, new_h = size, int(size * (h / w))
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
    return Letterbox(out, float(new_h) / h)


def nms(dets: np.ndarray, thresh: float) -> list[int]:
    """Greedy NMS over (x1, y1, x2, y2, score) rows; areas use the +1 pixel convention of the reference."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[np.where(overlap <= thresh)[0]]
    return keep


class FaceDetector:
    """SCRFD with 3 strides and 2 anchors per location; threshold 0.5 and NMS 0.4 as in the reference."""

    strides = (8, 16, 32)
    num_anchors = 2

    def __init__(self, session: Session, input_size: int = 512, score_thresh: float = 0.5, nms_thresh: float = 0.4,
                 input_name: str = "image"):
        self.session = session
        self.input_size = input_size
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.input_name = input_name

    def blob(self, det_img: np.ndarray) -> np.ndarray:
        # swapRB on the RGB frame: the network sees BGR, as it was trained
        return cv2.dnn.blobFromImage(det_img, 1.0 / 128.0, (self.input_size, self.input_size), (127.5,) * 3,
                                     swapRB=True)

    def _anchor_centres(self, stride: int) -> np.ndarray:
        n = self.input_size // stride
        ys, xs = np.mgrid[:n, :n]
        grid = np.stack([xs, ys], axis=-1).astype(F32)  # (x, y) per location
        centres = (grid * stride).reshape(-1, 2)
        return np.repeat(centres, self.num_anchors, axis=0)            # [n*n*2, 2], anchors of a location adjacent

    def detect(self, image: np.ndarray) -> Detections:
        """Faces in an RGB uint8 frame."""
        lb = letterbox(image, self.input_size)
        outs = self.session.run(None, {self.input_name: self.blob(lb.image)})
        k = len(self.strides)
        scores_l, boxes_l, kps_l = [], [], []
        for i, stride in enumerate(self.strides):
            scores = outs[i]
            dist = outs[i + k] * stride
            kdist = outs[i + 2 * k] * stride
            centres = self._anchor_centres(stride)
            pos = np.where(scores >= self.score_thresh)[0]
            boxes = np.stack([centres[:, 0] - dist[:, 0], centres[:, 1] - dist[:, 1],
                              centres[:, 0] + dist[:, 2], centres[:, 1] + dist[:, 3]], axis=-1)
            kps = (np.tile(centres, (1, 5)) + kdist).reshape(-1, 5, 2)
            scores_l.append(scores[pos])
            boxes_l.append(boxes[pos])
            kps_l.append(kps[pos])
        scores = np.vstack(scores_l)
        order = scores.ravel().argsort()[::-1]
        boxes = np.vstack(boxes_l) / lb.scale
        kpss = np.vstack(kps_l) / lb.scale
        pre = np.hstack((boxes, scores)).astype(F32, copy=False)[order]
        keep = nms(pre, self.nms_thresh)
        return Detections(pre[keep], kpss[order][keep].astype(F32))

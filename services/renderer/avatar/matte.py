"""The person matte that "transparent" and "green" backgrounds cut along (docs/model.md §7.3).

At registration, per kept source frame:
1. MediaPipe's selfie segmentation (general model: the whole frame stretched to 256x256, RGB in [0, 1]) gives the
   probability that a pixel belongs to a person.
2. It is scaled to the frame (bilinear) and its soft edge narrowed: the model's edge spans a few of its own pixels,
   which become a wide grey band on a large frame, through which the old background would show (a halo). The
   probability is stretched around 0.5 so the band is about `EDGE_PX` source pixels wide, whatever the frame size,
   and stays soft (no staircase).
3. The face: the rendered head moves, so where it turns or nods it can leave the source's outline. Inside the
   face crop the matte is grown by `HEAD_MARGIN` of the crop side (1 % by default, 5 of the crop's 512
   pixels), faded out by the feather mask toward the crop's edges, and joined with the matte (the larger of the
   two). A head that moves less than that stays whole; the price is a ring at most that wide where the render's own
   background shows around the head.

The result is one uint8 alpha per source frame, fixed at registration: rendering a frame only reads it
(`putback.PutBack`), so its cost per output frame is the compositing alone.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .mesh import InputSpec

F32 = np.float32
EDGE_PX = 3.0        # width of the soft edge in source pixels (where alpha goes from about 0.1 to 0.9)
HEAD_MARGIN = 0.01   # growth of the matte inside the face crop, as a fraction of the crop side
CROP = 512


class PersonMatte:
    """RGB uint8 frame [H, W, 3] -> alpha uint8 [H, W] (255 = person)."""

    source = "MediaPipe selfie_segmentation (LiteRT)"

    def __init__(self, session: Any, edge_px: float = EDGE_PX):
        self.session = session
        self.input = InputSpec.of(session, 256)
        self.edge_px = edge_px

    def probability(self, frame: np.ndarray) -> np.ndarray:
        """float32 [H, W] in [0, 1]: the model's output scaled to the frame."""
        h, w = frame.shape[:2]
        size = self.input.size
        small = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
        out = self.session.run(None, self.input.feed(small, 0.0, 1.0))[0]
        p = np.asarray(out, F32).reshape(size, size)
        return np.clip(cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        p = self.probability(frame)
        # the model's 0.1 -> 0.9 edge spans about 2 of its pixels, i.e. 2 * (long side / 256) frame pixels
        native = 2.0 * max(h, w) / self.input.size
        gain = max(1.0, native / self.edge_px)
        return to_alpha((p - F32(0.5)) * F32(gain) + F32(0.5))


def to_alpha(a: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 [0, 255], rounded."""
    return (np.clip(a, 0, 1) * F32(255) + F32(0.5)).astype(np.uint8)


def with_head(matte: np.ndarray, m_o2c: np.ndarray, feather: np.ndarray, margin: float = HEAD_MARGIN) -> np.ndarray:
    """The matte joined with its own growth inside the face crop (the head's room to move), uint8 [H, W]."""
    h, w = matte.shape[:2]
    m = np.asarray(m_o2c, np.float64)[:2]
    in_crop = cv2.warpAffine(matte, m, (CROP, CROP), flags=cv2.INTER_LINEAR)
    r = max(1, int(round(margin * CROP)))
    grown = cv2.dilate(in_crop, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    grown = cv2.GaussianBlur(grown, (0, 0), r / 3)  # a soft edge for the grown part too
    head = (grown.astype(F32) * feather.astype(F32)).astype(F32)
    back = cv2.warpAffine(head, cv2.invertAffineTransform(m), (w, h), flags=cv2.INTER_LINEAR)  # 0 outside
    return np.maximum(matte, (back + F32(0.5)).astype(np.uint8))

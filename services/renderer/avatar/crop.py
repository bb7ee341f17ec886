"""Landmarks -> square, roll-corrected crop (docs/model.md §6.3).

The reference computes this geometry in float32 under numpy 2 promotion rules (a Python float times a float32 is a
float32), with the angle, its cosine and sine as float64 Python values. We keep exactly that arithmetic so that the
crop matrices, and therefore the crops OpenCV produces from them, match the reference bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ditto.media.visual import DEFAULT_MAX_SIZE

F32 = np.float32

# Anchor landmark indices: (left-eye points, right-eye points, the two lip points).
_ANCHORS = {
    203: ((0, 6, 12, 18), (24, 30, 36, 42), (48, 66)),
    106: ((33, 35, 40, 39), (87, 89, 94, 93), (52, 61)),
    # MediaPipe's 468-point mesh (and the 478 with irises): per eye its two corners and the lid midpoints, the
    # inner lips' midpoints; the same roles as the 4 eye points and 2 lip points of the 203-point layout
    468: ((33, 133, 159, 145), (263, 362, 386, 374), (13, 14)),
}

# The mesh points that stand in for the 203-point layout's extent. The mesh also covers the forehead up to the hair
# line, which the 203 (and 106) points do not: their outline runs from ear to ear along the jaw, and their highest
# points are the brows. So the rule takes the jaw line (234 -> chin 152 -> 454), the brows, the eyes, the nose and
# the lips: the same extent, hence the same crop scale (2.3) and vertical offset (-0.125) as the reference's.
MESH_EXTENT = (
    # jaw line, from the right cheek (image left) at eye height round the chin to the left cheek
    234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454,
    # brows (upper and lower edges)
    70, 63, 105, 66, 107, 46, 53, 52, 65, 55, 300, 293, 334, 296, 336, 276, 283, 282, 295, 285,
    # eyes
    33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173,
    263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398,
    # nose ridge and wings
    168, 6, 197, 195, 5, 4, 1, 2, 98, 327,
    # lips, outer and inner
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185,
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191,
)


@dataclass(frozen=True)
class CropSettings:
    """How the source portrait is cropped. Defaults are the reference's (`crop_scale`, `crop_vy_ratio`, ...)."""

    scale: float = 2.3
    vx_ratio: float = 0.0   # accepted for completeness; the reference ignores it (docs/model.md §6.3), and so do we
    vy_ratio: float = -0.125
    rotate: bool = True
    box: tuple[float, float, float, float] | None = None  # explicit face box (x0, y0, x1, y1) in source pixels
    max_size: int = DEFAULT_MAX_SIZE
    max_frames: int = 0      # frames read from a source video, 0 = all

    def key(self) -> str:
        """A stable text form, part of the avatar cache key."""
        return (f"s={self.scale!r};vy={self.vy_ratio!r};rot={self.rotate};box={self.box};max={self.max_size};"
                f"n={self.max_frames}")


@dataclass(frozen=True)
class Rect:
    """The rotated square that `crop_matrix` maps onto the crop: centre, side (already scaled), angle in radians."""

    center: np.ndarray  # [2] float32
    size: np.ndarray    # [2] float32, both entries equal
    angle: float        # float64 radians, 0 for an upright face


@dataclass(frozen=True)
class Crop:
    image: np.ndarray  # [D, D, 3] uint8 RGB
    M_o2c: np.ndarray  # [3, 3] float32, original pixel -> crop pixel
    M_c2o: np.ndarray  # [3, 3] float32, its float32 inverse (what paste-back uses)


def anchor_points(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eye centre, lip centre), float32 [2] each, for a 203- or 106-point layout or a 468/478-point mesh."""
    n = pts.shape[0]
    if n == 478:
        n = 468  # the mesh with the 10 iris points after its own 468
    if n not in _ANCHORS:
        raise ValueError(f"landmarks must have 203, 106, 468 or 478 points, got {n}")
    left, right, lip = _ANCHORS[n]
    eye = (np.mean(pts[list(left)], axis=0) + np.mean(pts[list(right)], axis=0)) / 2
    mouth = (pts[lip[0]] + pts[lip[1]]) / 2
    return eye, mouth


def rect_from_landmarks(pts: np.ndarray, scale: float, vy_ratio: float) -> Rect:
    """The scaled square around all landmarks, in the face's own (roll-corrected) axes. A 468/478-point mesh counts
    with its `MESH_EXTENT` points (the 203-point layout's extent)."""
    pts = np.asarray(pts, dtype=F32)
    eye, lip = anchor_points(pts)
    if pts.shape[0] in (468, 478):
        pts = pts[list(MESH_EXTENT)]
    uy = lip - eye
    norm = np.linalg.norm(uy)
    uy = np.array([0, 1], dtype=F32) if norm <= 1e-3 else uy / norm
    ux = np.array([uy[1], -uy[0]], dtype=F32)
    angle = math.acos(float(ux[0]))
    if ux[1] < 0:
        angle = -angle
    rot = np.stack([ux, uy])                      # [2, 2], rows are the face axes
    c0 = np.mean(pts, axis=0)
    q = (pts - c0) @ rot.T                        # landmarks in the face frame
    lt, rb = q.min(axis=0), q.max(axis=0)
    c1 = (lt + rb) / 2
    size = rb - lt
    size[:] = max(size[0], size[1])
    size *= F32(scale)
    center = c0 + ux * c1[0] + uy * c1[1]
    # vx is always 0 in the reference (the crop function does not pass it on)
    center = center + ux * (0.0 * size) + uy * (vy_ratio * size)
    return Rect(center.astype(F32), size.astype(F32), angle)


def crop_matrix(rect: Rect, dsize: int, rotate: bool = True) -> np.ndarray:
    """M_o2c [3, 3] float32: p -> s * R (p - c) + (D/2, D/2)."""
    s = F32(dsize) / rect.size[0]
    t = F32(dsize / 2)
    cx, cy = rect.center[0], rect.center[1]
    if rotate:
        co, si = math.cos(rect.angle), math.sin(rect.angle)
        m = np.array([[s * co, s * si, t - s * (co * cx + si * cy)],
                      [-s * si, s * co, t - s * (-si * cx + co * cy)]], dtype=F32)
    else:
        m = np.array([[s, 0, t - s * cx], [0, s, t - s * cy]], dtype=F32)
    return np.vstack([m, np.array([0, 0, 1], dtype=F32)])


def crop_image(image: np.ndarray, pts: np.ndarray, dsize: int, scale: float, vy_ratio: float,
               rotate: bool = True) -> Crop:
    """Crop `image` (uint8 HxWx3) to dsize x dsize around the landmarks `pts` [N, 2]."""
    m_o2c = crop_matrix(rect_from_landmarks(pts, scale, vy_ratio), dsize, rotate)
    return warp_crop(image, m_o2c, dsize)


def warp_crop(image: np.ndarray, m_o2c: np.ndarray, dsize: int) -> Crop:
    crop = cv2.warpAffine(image, m_o2c[:2], (dsize, dsize), flags=cv2.INTER_LINEAR)
    return Crop(crop, m_o2c, np.linalg.inv(m_o2c).astype(F32))


def box_crop_matrix(box: tuple[float, float, float, float], dsize: int, scale: float, vy_ratio: float) -> np.ndarray:
    """M_o2c for an explicit face box (no landmarks): an upright square of side scale*max(w, h)/1.5 around the box.

    A face box from a detector is about 1.5x tighter than the landmark extent the reference scales by `scale`,
    hence the /1.5, so that the same `scale` gives a similar framing in both paths. The box is used as given
    when it already is the wanted crop: pass scale=1.5, vy_ratio=0.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"crop box must have x1 > x0 and y1 > y0, got {box}")
    side = F32(max(x1 - x0, y1 - y0) * scale / 1.5)
    center = np.array([(x0 + x1) / 2, (y0 + y1) / 2 + vy_ratio * side], dtype=F32)
    return crop_matrix(Rect(center, np.array([side, side], dtype=F32), 0.0), dsize, rotate=False)


def to_input_256(crop: np.ndarray) -> np.ndarray:
    """512 crop (uint8 RGB) -> [1, 3, 256, 256] float32 in [0, 1], the extractors' input."""
    small = cv2.resize(crop, (256, 256), interpolation=cv2.INTER_AREA)
    return (small.astype(F32) / 255.0).transpose(2, 0, 1)[None].copy()


def map_points(pts: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply the affine part of a [3, 3] (or [2, 3]) matrix to [N, 2] points, in float32."""
    m = np.asarray(m, dtype=F32)
    return (np.asarray(pts, dtype=F32) @ m[:2, :2].T + m[:2, 2]).astype(F32)

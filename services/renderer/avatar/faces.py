"""The face with MediaPipe's models: detection, the 468-point mesh, frame-to-frame tracking and the eyes
(docs/model.md §6.2, §6.4).

The pipeline is MediaPipe's face mesh with iris refinement, on `litert.TfliteSession`s (no MediaPipe runtime):

1. BlazeFace short-range on the whole frame (`mesh.BlazeFace`): every face, with 6 keypoints; when it finds none,
   again on overlapping squares of the frame (a face far from the camera in a wide frame).
2. The mesh ROI from a detection: the box centre, a square of 1.5 x its long side, turned so the line between the
   eye keypoints is level (`mesh.face_roi`). The 468-point mesh model (192x192, RGB in [0, 1]) gives the points in
   ROI pixels (z in the same units) and a face-presence logit; presence below 0.5 (after the sigmoid) means no face.
3. Tracking (video): the next frame's ROI comes from this frame's mesh: the bounding box of its points, 1.5 x the
   long side, turned by the line from the right eye's outer corner (33) to the left eye's (263). Detection runs
   again only when the mesh loses the face.
4. Eyes: per eye a square of 2.3 x the corners' extent around the two corners (33-133 and 362-263), turned by the
   corner line, 64x64 in [0, 1], the subject's left eye mirrored (the iris model knows one eye). Its 71 eye-contour
   points replace the mesh's own (MediaPipe's index table `EYE_CONTOUR_IN_MESH`), its 5 iris points (centre first)
   become points 468-472 (right eye, image left) and 473-477: the 478-point layout of `eyes.py`.

Points are in image pixels in continuous coordinates (the image's left edge at x = 0, the first pixel's centre at
0.5, as MediaPipe's normalised coordinates times the size); `to_pixel_centres` converts to OpenCV's convention
(pixel centres at integers), which the crop geometry uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .mesh import BlazeFace, FaceDetections, InputSpec, Roi, _apply, _cv_matrix, _normalize_radians, _pick, face_roi

F64 = np.float64
MESH_POINTS = 468
PRESENCE_THRESHOLD = 0.5
# The second look at squares of the frame sees many more candidates: it takes surer ones only (a coffee cup's
# shadows scored 0.505 there)
TILE_MIN_SCORE = 0.7
ROI_SCALE = 1.5         # mesh ROI: 1.5 x the face's extent
EYE_ROI_SCALE = 2.3     # iris ROI: 2.3 x the eye corners' extent
TRACK_EYES = (33, 263)  # the rotation of a tracking ROI: right eye's outer corner -> left eye's outer corner
# (corner, corner, mirrored): the right eye (image left) as the model was trained, the left one mirrored
EYES = ((33, 133, False), (362, 263, True))

# Where the iris model's 71 eye-contour points of each eye go in the 468-point mesh (MediaPipe's table, left eye in
# the iris model's sense first): the lids' lower then upper contour, three halos around them, the brow's edges.
EYE_CONTOUR_IN_MESH = (
    33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173, 130, 25, 110, 24, 23, 22, 26, 112,
    243, 247, 30, 29, 27, 28, 56, 190, 226, 31, 228, 229, 230, 231, 232, 233, 244, 113, 225, 224, 223, 222, 221, 189,
    35, 124, 46, 53, 52, 65, 143, 111, 117, 118, 119, 120, 121, 128, 245, 156, 70, 63, 105, 66, 107, 55, 193,
    263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398, 359, 255, 339, 254, 253, 252, 256,
    341, 463, 467, 260, 259, 257, 258, 286, 414, 446, 261, 448, 449, 450, 451, 452, 453, 464, 342, 445, 444, 443, 442,
    441, 413, 265, 353, 276, 283, 282, 295, 372, 340, 346, 347, 348, 349, 350, 357, 465, 383, 300, 293, 334, 296, 336,
    285, 417)


@dataclass(frozen=True)
class MeshFace:
    """One face on one frame."""

    points: np.ndarray  # [478, 3] float64: image pixels, continuous coordinates, z scaled like x
    score: float        # face presence in [0, 1]
    roi: Roi            # the square the mesh model saw

    def box(self) -> np.ndarray:
        """The mesh's bounding box (x0, y0, x1, y1), pixel-centre coordinates."""
        xy = to_pixel_centres(self.points[:MESH_POINTS, :2])
        return np.concatenate([xy.min(axis=0), xy.max(axis=0)])


def to_pixel_centres(xy: np.ndarray) -> np.ndarray:
    """Continuous coordinates -> OpenCV's (the centre of the first pixel at 0)."""
    return np.asarray(xy, F64) - 0.5


def largest(dets: FaceDetections) -> int:
    """Index of the detection with the largest box (the one the reference crops)."""
    b = dets.boxes
    return int(np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))


def roi_from_box(box: np.ndarray, scale: float = ROI_SCALE) -> Roi:
    """An upright mesh ROI around a face box given in pixel-centre coordinates (a client's crop box)."""
    x0, y0, x1, y1 = (float(v) + 0.5 for v in box[:4])
    return Roi(np.array([(x0 + x1) / 2, (y0 + y1) / 2]), scale * max(x1 - x0, y1 - y0), 0.0)


def roi_from_points(points: np.ndarray, start: int, end: int, scale: float) -> Roi:
    """MediaPipe's ROI from landmarks: the centre of their bounding box, `scale` x its long side, turned so the line
    from point `start` to point `end` is level."""
    xy = points[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    d = xy[end] - xy[start]
    rotation = _normalize_radians(0.0 - math.atan2(-float(d[1]), float(d[0])))
    return Roi((lo + hi) / 2, scale * float(max(hi - lo)), rotation)


class MediaPipeFaces:
    """Detection, mesh, tracking and eyes with the MediaPipe models (sessions: ONNX Runtime's interface)."""

    source = "MediaPipe face_detection_short_range + face_landmark + iris_landmark (LiteRT)"

    def __init__(self, detector: Any, mesh: Any, iris: Any):
        self.detector = BlazeFace(detector)
        self.mesh, self.iris = mesh, iris
        self.mesh_in = InputSpec.of(mesh, 192)
        self.iris_in = InputSpec.of(iris, 64)
        self.mesh_out = [o.name for o in mesh.get_outputs()]
        self.iris_out = [o.name for o in iris.get_outputs()]

    # -- the pieces -------------------------------------------------------------------------------------------

    def detect(self, image: np.ndarray) -> FaceDetections:
        """Every face, in image pixels. The short-range detector sees the frame at 128 x 128 and misses faces below
        about a sixth of its short side (a person at a distance in a wide frame); when the whole frame shows none,
        it looks again at overlapping squares of the short side, then of half of it (faces down to about a twelfth
        of the short side), and keeps the best of overlapping finds."""
        dets = self.detector.detect(image)
        h, w = image.shape[:2]
        for side in (min(h, w), min(h, w) // 2):
            if len(dets) or side < self.detector.input.size:
                break
            found = []
            for y0, x0 in _tiles(h, w, side):
                d = self.detector.detect(np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side]))
                sure = d.scores >= TILE_MIN_SCORE
                shift = np.array([x0, y0], np.float32)
                found.append(FaceDetections((d.boxes[sure].reshape(-1, 2, 2) + shift).reshape(-1, 4),
                                            d.keypoints[sure] + shift, d.scores[sure]))
            dets = _best_of_overlapping(found)
        return dets

    @staticmethod
    def _crop(image: np.ndarray, roi: Roi, size: int) -> np.ndarray:
        """The ROI warped to size x size (bilinear, edge pixels replicated outside the image, as MediaPipe)."""
        return cv2.warpAffine(image, _cv_matrix(roi.crop_to_image(size)), (size, size),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)

    def mesh468(self, image: np.ndarray, roi: Roi) -> tuple[np.ndarray, float]:
        """([468, 3] points in image pixels, face presence) for the face in `roi`."""
        size = self.mesh_in.size
        outs = self.mesh.run(None, self.mesh_in.feed(self._crop(image, roi, size), 0.0, 1.0))
        pts = _pick(outs, self.mesh_out, MESH_POINTS * 3).reshape(MESH_POINTS, 3).astype(F64)
        logit = float(np.clip(_pick(outs, self.mesh_out, 1).ravel()[0], -100, 100))
        return _to_image(pts, roi, size), 1.0 / (1.0 + math.exp(-logit))

    def eyes(self, image: np.ndarray, mesh: np.ndarray) -> np.ndarray:
        """The 468-point mesh -> 478 points: eye contours refined and the two irises appended."""
        out = np.array(mesh[:MESH_POINTS], F64)
        irises = []
        size = self.iris_in.size
        for k, (a, b, mirrored) in enumerate(EYES):
            p0, p1 = out[a, :2], out[b, :2]
            d = p1 - p0
            roi = Roi((p0 + p1) / 2, EYE_ROI_SCALE * float(max(abs(d[0]), abs(d[1]))),
                      _normalize_radians(0.0 - math.atan2(-float(d[1]), float(d[0]))))
            crop = self._crop(image, roi, size)
            if mirrored:
                crop = np.ascontiguousarray(crop[:, ::-1])
            outs = self.iris.run(None, self.iris_in.feed(crop, 0.0, 1.0))
            contour = _pick(outs, self.iris_out, 71 * 3).reshape(71, 3).astype(F64)
            iris = _pick(outs, self.iris_out, 5 * 3).reshape(5, 3).astype(F64)
            for pts in (contour, iris):
                if mirrored:
                    pts[:, 0] = size - pts[:, 0]
            out[list(EYE_CONTOUR_IN_MESH[71 * k: 71 * (k + 1)])] = _to_image(contour, roi, size)
            irises.append(_to_image(iris, roi, size))
        return np.concatenate([out, *irises])

    def face(self, image: np.ndarray, roi: Roi) -> MeshFace | None:
        """The face in `roi` with its eyes, or None when the mesh model says there is none."""
        pts, score = self.mesh468(image, roi)
        if score < PRESENCE_THRESHOLD:
            return None
        return MeshFace(self.eyes(image, pts), score, roi)

    # -- frames -----------------------------------------------------------------------------------------------

    def track(self, frames: list[np.ndarray], first: Roi) -> tuple[list[MeshFace | None], list[int]]:
        """The face in every frame, starting from `first` (the ROI on frame 0), each frame's ROI from the previous
        frame's mesh. Where the mesh loses the face, detection runs again on that frame (largest face). Returns the
        faces (None where none was found) and the frames where detection had to run again."""
        faces: list[MeshFace | None] = []
        redetected: list[int] = []
        roi: Roi | None = first
        for i, frame in enumerate(frames):
            face = self.face(frame, roi) if roi is not None else None
            if face is None and i > 0:
                redetected.append(i)
                dets = self.detector.detect(frame)  # the whole frame only: a video may lose the face for long
                if len(dets):
                    j = largest(dets)
                    face = self.face(frame, face_roi(dets.boxes[j], dets.keypoints[j, 0], dets.keypoints[j, 1]))
            faces.append(face)
            if face is not None:
                roi = roi_from_points(face.points[:MESH_POINTS], *TRACK_EYES, ROI_SCALE)
        return faces, redetected


def _tiles(h: int, w: int, side: int) -> list[tuple[int, int]]:
    """Top-left corners of squares of `side` covering an h x w frame, overlapping by half a side."""
    def starts(n: int) -> list[int]:
        last = n - side
        return sorted({*range(0, last, max(1, side // 2)), last})

    return [(y, x) for y in starts(h) for x in starts(w)]


def _best_of_overlapping(parts: list[FaceDetections], iou: float = 0.3) -> FaceDetections:
    """Detections from several looks, a face seen in more than one (or cut by a square's edge) kept once: the
    highest-scoring of each overlapping group."""
    from .mesh import _iou

    boxes = np.concatenate([p.boxes for p in parts]) if parts else np.zeros((0, 4), np.float32)
    if not len(boxes):
        return FaceDetections(boxes, np.zeros((0, 6, 2), np.float32), np.zeros(0, np.float32))
    kps, scores = np.concatenate([p.keypoints for p in parts]), np.concatenate([p.scores for p in parts])
    order, keep = np.argsort(-scores, kind="stable"), []
    while order.size:
        keep.append(order[0])
        order = order[1:][_iou(boxes[order[0]], boxes[order[1:]]) <= iou]
    return FaceDetections(boxes[keep], kps[keep], scores[keep])


def _to_image(pts: np.ndarray, roi: Roi, size: int) -> np.ndarray:
    """[k, 3] model points in ROI-crop pixels -> image pixels (z scaled like x and y)."""
    xy = _apply(roi.crop_to_image(size), pts[:, :2])
    return np.concatenate([xy, (pts[:, 2] * roi.side / size)[:, None]], axis=1)

"""BlazeFace decoding (`BlazeFace`, for any runtime: the MediaPipe .tflite in LiteRT, `faces.py`, or an ONNX export)
and the 478-point face mesh from the official ONNX pair `blaze_face.onnx` + `face_mesh.onnx` (docs/model.md §6.4).

This is the MediaPipe face-landmarker pipeline without MediaPipe:

1. BlazeFace short-range on the whole image, letterboxed to 128x128, values in [-1, 1]: 896 SSD anchors, 16
   regressors per anchor (box centre/size and six keypoints, in input pixels relative to the anchor), a logit
   per anchor. Sigmoid scores (logits clipped to +-100) above 0.5, then *weighted* NMS at IoU 0.3 as MediaPipe's
   face detection graph does: overlapping candidates are averaged, weighted by score, into the best one.
2. The face-mesh ROI from the best detection: the box centre, a square of side 1.5 x max(w, h), rotated so the
   line from keypoint 0 (the subject's right eye) to keypoint 1 (left eye) is horizontal.
3. FaceMesh-with-iris on that ROI warped to 256x256, values in [0, 1]: output `Identity` [1, 1434] = 478 x 3
   points in crop pixels (z in the same pixel units), mapped back through the ROI to the image and normalised by
   the image width (x, z) and height (y), which is what MediaPipe's `NormalizedLandmark` holds.

Coordinates: "continuous" pixel coordinates put the image's left edge at x = 0 and the first pixel's centre at
0.5 (MediaPipe's normalised coordinates times the size). OpenCV's warps use pixel centres at integers, so every
warp matrix is conjugated by a half-pixel shift (`_cv_matrix`).

Tensor layouts are read from each session's input shape (NHWC `[1, S, S, 3]`, as the TFLite originals and their
tf2onnx conversions have, or NCHW `[1, 3, S, S]`); the value ranges are the MediaPipe graphs' ([-1, 1] for the
detector, [0, 1] for the mesh) because a shape cannot tell them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

F32 = np.float32
NUM_POINTS = 478
MESH_OUTPUT = "Identity"


# ---------------------------------------------------------------------------------------------------------------
# tensor layout of an ONNX Runtime input


@dataclass(frozen=True)
class InputSpec:
    """How to feed an image model: its input name, square side, layout and element type."""

    name: str
    size: int
    channels_last: bool
    dtype: type[np.floating[Any]] = np.float32

    @classmethod
    def of(cls, session: Any, default_size: int) -> InputSpec:
        """Read name, side and layout from the session's first input; symbolic dimensions take `default_size`."""
        inp = session.get_inputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ValueError(f"input '{inp.name}' has shape {shape}; an image model needs [1, S, S, 3] or [1, 3, S, S]")
        dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
        if dims[3] == 3:
            channels_last, hw = True, dims[1:3]
        elif dims[1] == 3:
            channels_last, hw = False, dims[2:4]
        else:
            raise ValueError(f"input '{inp.name}' has shape {shape}: neither NHWC nor NCHW with 3 channels")
        sides = {d for d in hw if d is not None}
        if len(sides) > 1:
            raise ValueError(f"input '{inp.name}' has shape {shape}: expected a square image input")
        dtype = np.float16 if "float16" in str(inp.type) else np.float32
        return cls(inp.name, sides.pop() if sides else default_size, channels_last, dtype)

    def feed(self, image: np.ndarray, lo: float, hi: float) -> dict[str, np.ndarray]:
        """[S, S, 3] uint8 -> {name: [1, S, S, 3] or [1, 3, S, S]} with values mapped from [0, 255] to [lo, hi]."""
        x = image.astype(F32) * F32((hi - lo) / 255.0) + F32(lo)
        x = x[None] if self.channels_last else x.transpose(2, 0, 1)[None]
        return {self.name: np.ascontiguousarray(x, dtype=self.dtype)}


def _cv_matrix(dst_to_src: np.ndarray) -> np.ndarray:
    """A 3x3 continuous-coordinate map (dst -> src) as OpenCV's 2x3 matrix for WARP_INVERSE_MAP (pixel centres at
    integers): x_cv = x - 0.5 on both sides."""
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    unshift = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    return (unshift @ dst_to_src @ shift)[:2]


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """3x3 affine applied to [..., 2] points."""
    return pts @ m[:2, :2].T + m[:2, 2]


# ---------------------------------------------------------------------------------------------------------------
# BlazeFace short-range: anchors, decoding, weighted NMS


@dataclass(frozen=True)
class AnchorConfig:
    """MediaPipe's SSD anchor options for the short-range face detector."""

    input_size: int = 128
    strides: tuple[int, ...] = (8, 16, 16, 16)
    anchor_offset: float = 0.5
    anchors_per_layer: int = 2  # aspect ratio 1.0 plus the interpolated-scale anchor; fixed size 1 x 1


def ssd_anchors(cfg: AnchorConfig = AnchorConfig()) -> np.ndarray:
    """[896, 2] anchor centres (x, y) in [0, 1] of the detector input, in the order the model's rows use.

    Consecutive layers with the same stride share one grid: each cell emits all their anchors together, so the
    layout is 16x16 cells x 2 anchors (stride 8), then 8x8 cells x 6 anchors (three layers of stride 16). With
    fixed anchor size every anchor is 1 x 1, so only the centres matter."""
    rows: list[np.ndarray] = []
    layer = 0
    while layer < len(cfg.strides):
        stride = cfg.strides[layer]
        same = 0
        while layer + same < len(cfg.strides) and cfg.strides[layer + same] == stride:
            same += 1
        grid = math.ceil(cfg.input_size / stride)
        y, x = np.mgrid[:grid, :grid]
        centres = np.stack([(x + cfg.anchor_offset) / grid, (y + cfg.anchor_offset) / grid], axis=-1)  # [g, g, 2]
        rows.append(np.repeat(centres.reshape(-1, 2), cfg.anchors_per_layer * same, axis=0))
        layer += same
    return np.concatenate(rows).astype(F32)


@dataclass(frozen=True)
class FaceDetections:
    """Detections in image pixels (continuous coordinates), best first."""

    boxes: np.ndarray      # [n, 4] float32 (x0, y0, x1, y1)
    keypoints: np.ndarray  # [n, 6, 2] float32: right eye, left eye, nose tip, mouth, right ear, left ear
    scores: np.ndarray     # [n] float32

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class DetectorConfig:
    anchors: AnchorConfig = AnchorConfig()
    num_keypoints: int = 6
    score_clip: float = 100.0
    min_score: float = 0.5
    nms_iou: float = 0.3


def decode(regressors: np.ndarray, logits: np.ndarray, anchors: np.ndarray,
           cfg: DetectorConfig = DetectorConfig()) -> FaceDetections:
    """Raw outputs ([896, 16], [896] or [896, 1]) -> candidates above `min_score`, in [0, 1] input coordinates.

    Box centre and keypoints are offsets from the anchor centre, sizes absolute, all in input pixels (scale 128)."""
    s = float(cfg.anchors.input_size)
    reg = np.asarray(regressors, dtype=F32).reshape(len(anchors), 4 + 2 * cfg.num_keypoints)
    clipped = np.clip(np.asarray(logits, dtype=np.float64).reshape(-1), -cfg.score_clip, cfg.score_clip)
    scores = (1.0 / (1.0 + np.exp(-clipped))).astype(F32)
    keep = scores >= cfg.min_score
    reg, a, scores = reg[keep], anchors[keep], scores[keep]
    centre = reg[:, :2] / s + a
    half = reg[:, 2:4] / s / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    kps = reg[:, 4:].reshape(-1, cfg.num_keypoints, 2) / s + a[:, None]
    return FaceDetections(boxes.astype(F32), kps.astype(F32), scores.astype(F32))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def weighted_nms(dets: FaceDetections, iou: float) -> FaceDetections:
    """MediaPipe's weighted NMS: the best remaining candidate absorbs every candidate overlapping it by more than
    `iou` (itself included); box and keypoints become their score-weighted mean, the score stays the best one's."""
    order = np.argsort(-dets.scores, kind="stable")
    boxes, kps, scores = [], [], []
    while order.size:
        overlap = _iou(dets.boxes[order[0]], dets.boxes[order]) > iou
        overlap[0] = True
        group = order[overlap]
        w = dets.scores[group] / dets.scores[group].sum()
        boxes.append((dets.boxes[group] * w[:, None]).sum(axis=0))
        kps.append((dets.keypoints[group] * w[:, None, None]).sum(axis=0))
        scores.append(dets.scores[order[0]])
        order = order[~overlap]
    if not scores:
        return FaceDetections(np.zeros((0, 4), F32), np.zeros((0, dets.keypoints.shape[1], 2), F32), np.zeros(0, F32))
    return FaceDetections(np.stack(boxes).astype(F32), np.stack(kps).astype(F32), np.array(scores, dtype=F32))


# ---------------------------------------------------------------------------------------------------------------
# the face-mesh ROI


@dataclass(frozen=True)
class Roi:
    """A rotated square in image pixels (continuous coordinates): what the mesh model sees, stretched to its input."""

    centre: np.ndarray  # [2] float64
    side: float
    rotation: float     # radians; positive turns the crop's x axis from the image's x axis toward +y (clockwise)

    def crop_to_image(self, crop_size: int) -> np.ndarray:
        """3x3: crop pixel (continuous, [0, crop_size]) -> image pixel. p = c + side * R(rotation) (u / size - 1/2)."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        k = self.side / crop_size
        lin = np.array([[c, -s], [s, c]]) * k
        out = np.eye(3)
        out[:2, :2] = lin
        out[:2, 2] = self.centre - lin @ np.array([crop_size / 2, crop_size / 2])
        return out


def _normalize_radians(a: float) -> float:
    return a - 2 * math.pi * math.floor((a + math.pi) / (2 * math.pi))


def face_roi(box: np.ndarray, right_eye: np.ndarray, left_eye: np.ndarray, scale: float = 1.5) -> Roi:
    """MediaPipe's face-landmark ROI from a detection in image pixels: the box centre, side scale x the box's long
    side, rotation = target (0) - atan2(-(y1 - y0), x1 - x0) from the right eye (0) to the left eye (1)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    rotation = _normalize_radians(0.0 - math.atan2(-(float(left_eye[1]) - float(right_eye[1])),
                                                   float(left_eye[0]) - float(right_eye[0])))
    return Roi(np.array([(x0 + x1) / 2, (y0 + y1) / 2]), scale * max(x1 - x0, y1 - y0), rotation)


# ---------------------------------------------------------------------------------------------------------------
# the provider


def _pick(outputs: list[np.ndarray], names: list[str], size: int, prefer: str | None = None) -> np.ndarray:
    """The output named `prefer`, else the first whose element count is `size`."""
    if prefer is not None and prefer in names:
        return outputs[names.index(prefer)]
    for out in outputs:
        if out.size == size:
            return out
    shapes = {n: list(o.shape) for n, o in zip(names, outputs, strict=True)}
    raise ValueError(f"no model output with {size} values among {shapes}")


class BlazeFace:
    """BlazeFace short-range (step 1): RGB uint8 image -> every face after weighted NMS, in image pixels, best first.
    The session is anything with ONNX Runtime's `get_inputs`, `get_outputs` and `run` (an ONNX export, or the
    MediaPipe .tflite through `litert.TfliteSession`)."""

    def __init__(self, session: Any, cfg: DetectorConfig = DetectorConfig()):
        self.session, self.cfg = session, cfg
        self.input = InputSpec.of(session, cfg.anchors.input_size)
        if self.input.size != cfg.anchors.input_size:
            raise ValueError(f"blaze_face input is {self.input.size}x{self.input.size}; the short-range "
                             f"anchors need {cfg.anchors.input_size}x{cfg.anchors.input_size}")
        self.outputs = [o.name for o in session.get_outputs()]
        self.anchors = ssd_anchors(cfg.anchors)

    def letterbox(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(input [S, S, 3] uint8: the image scaled to fit and centred, zero padding; 3x3 input -> image map)."""
        h, w = image.shape[:2]
        size = self.input.size
        s = min(size / w, size / h)
        in_to_img = np.array([[1 / s, 0, -(size - s * w) / 2 / s], [0, 1 / s, -(size - s * h) / 2 / s], [0, 0, 1]])
        x = cv2.warpAffine(image, _cv_matrix(in_to_img), (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        return x, in_to_img

    def detect(self, image: np.ndarray) -> FaceDetections:
        """All faces after NMS, in image pixels, best first."""
        x, in_to_img = self.letterbox(image)
        outs = self.session.run(None, self.input.feed(x, -1.0, 1.0))
        n = len(self.anchors)
        reg = _pick(outs, self.outputs, n * (4 + 2 * self.cfg.num_keypoints))
        logits = _pick(outs, self.outputs, n)
        dets = weighted_nms(decode(reg, logits, self.anchors, self.cfg), self.cfg.nms_iou)
        size = float(self.input.size)
        boxes = _apply(in_to_img, dets.boxes.reshape(-1, 2, 2) * size).reshape(-1, 4)
        kps = _apply(in_to_img, dets.keypoints * size)
        return FaceDetections(boxes.astype(F32), kps.astype(F32), dets.scores)


class OnnxFaceMesh:
    """RGB uint8 image -> [1, 478, 3] normalised MediaPipe mesh, or None when BlazeFace finds no face.

    The call interface of `sessions.MeshProvider`; the sessions are anything with ONNX Runtime's `get_inputs`,
    `get_outputs` and `run`."""

    source = "ONNX blaze_face + face_mesh"

    def __init__(self, blaze_session: Any, mesh_session: Any, cfg: DetectorConfig = DetectorConfig(),
                 roi_scale: float = 1.5):
        self.detector = BlazeFace(blaze_session, cfg)
        self.mesh, self.cfg, self.roi_scale = mesh_session, cfg, roi_scale
        self.mesh_in = InputSpec.of(mesh_session, 256)
        self.mesh_out = [o.name for o in mesh_session.get_outputs()]

    @property
    def blaze_in(self) -> InputSpec:
        return self.detector.input

    def letterbox(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.detector.letterbox(image)

    def detect(self, image: np.ndarray) -> FaceDetections:
        return self.detector.detect(image)

    # steps 2 and 3 ------------------------------------------------------------------------------------------
    def crop(self, image: np.ndarray, roi: Roi) -> np.ndarray:
        """The ROI warped to the mesh input [S, S, 3] (bilinear, edge pixels replicated outside the image)."""
        size = self.mesh_in.size
        return cv2.warpAffine(image, _cv_matrix(roi.crop_to_image(size)), (size, size),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)

    def landmarks(self, image: np.ndarray, roi: Roi) -> np.ndarray:
        """[478, 3] mesh in image pixels (continuous; z in pixels too, scaled like x)."""
        size = self.mesh_in.size
        outs = self.mesh.run(None, self.mesh_in.feed(self.crop(image, roi), 0.0, 1.0))
        pts = _pick(outs, self.mesh_out, NUM_POINTS * 3, prefer=MESH_OUTPUT).reshape(NUM_POINTS, 3).astype(np.float64)
        xy = _apply(roi.crop_to_image(size), pts[:, :2])
        z = pts[:, 2] * roi.side / size
        return np.concatenate([xy, z[:, None]], axis=1)

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {list(image.shape)}")
        dets = self.detect(image)
        if not len(dets):
            return None
        roi = face_roi(dets.boxes[0], dets.keypoints[0, 0], dets.keypoints[0, 1], self.roi_scale)
        pts = self.landmarks(image, roi)
        h, w = image.shape[:2]
        return (pts / np.array([w, h, w]))[None].astype(F32)  # [1, 478, 3], MediaPipe's normalisation

"""Where the crop goes, per source frame, and what registration found (docs/model.md §6.2-6.4).

`frame_faces(frames, crop, aux)` finds the face with the chosen face models and returns the crop matrices, the eye
features when it measured them, and a `FaceReport` (what RegisterAvatar answers):

| face models | face | crop rule on | eyes |
|---|---|---|---|
| `mediapipe` (default) | BlazeFace, then the 468-point mesh tracked frame to frame | the mesh's `MESH_EXTENT` | iris |
| `insightface` (user-supplied files) | SCRFD + 106 points, then 203 points tracked | the 203 points | iris |
| `none` | the client's crop box, else the centred square | - | neutral |

Refusals that help: no face and no crop box from the client -> `NoFaceError` (INVALID_ARGUMENT); several faces -> the
largest, with a warning; a face whose crop is smaller than the extractors' 256-pixel input -> a warning naming its
size. With a client's crop box the mesh looks inside it: a face there gives the mesh crop, none keeps the box as
given (a warning says so).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .crop import CropSettings, Rect, box_crop_matrix, crop_image, crop_matrix, map_points
from .eyes import CLOSED_EYE_OPENNESS, eye_features
from .faces import (
    MESH_POINTS,
    ROI_SCALE,
    TRACK_EYES,
    MediaPipeFaces,
    MeshFace,
    largest,
    roi_from_box,
    roi_from_points,
    to_pixel_centres,
)
from .mesh import face_roi

F32 = np.float32
CROP_SIZE = 512
MIN_CROP_PX = 256  # the extractors see the crop at 256 x 256: a smaller source crop is scaled up


class NoFaceError(ValueError):
    """No face was found in the source."""


@dataclass
class FaceReport:
    """What registration found, in source pixels (pixel-centre coordinates) of the first source frame."""

    face_models: str                                       # mediapipe | insightface | none
    models: list[str] = field(default_factory=list)        # the model files that ran
    faces_found: int = 0                                   # faces detected on the first frame (0: none looked for)
    face_box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 of the face used
    crop_center: tuple[float, float] = (0.0, 0.0)         # the square the model sees: centre,
    crop_size: float = 0.0                                 # side,
    crop_rotation_deg: float = 0.0                         # and turn (clockwise, degrees)
    eye_open: tuple[float, float] | None = None            # left, right openness (None: not measured)
    person_matte: bool = False                             # transparent / green cut along a person matte
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FaceReport:
        d = json.loads(text)
        for key in ("face_box", "crop_center", "eye_open"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    def set_crop(self, m_o2c: np.ndarray) -> None:
        """The crop square from the matrix: its centre (what the crop rule centres, mapped to (256, 256) of the
        crop), side and turn in the source."""
        m = np.linalg.inv(np.asarray(m_o2c, np.float64))  # crop -> source
        centre = m[:2, :2] @ np.array([CROP_SIZE / 2] * 2) + m[:2, 2]
        self.crop_center = (float(centre[0]), float(centre[1]))
        self.crop_size = float(CROP_SIZE * math.sqrt(abs(np.linalg.det(m[:2, :2]))))
        self.crop_rotation_deg = float(math.degrees(math.atan2(m[1, 0], m[0, 0])))


@dataclass
class Framing:
    """Per source frame: M_o2c, and the eye features when measured; plus the report."""

    mats: list[np.ndarray]
    report: FaceReport
    eye_open: np.ndarray | None = None      # [n, 2]
    eye_ball: np.ndarray | None = None      # [n, 6]
    lmk203: np.ndarray | None = None        # [n, 203, 2] (insightface)
    notes: list[str] = field(default_factory=list)


def _where(i: int, n: int) -> str:
    return "the image" if n == 1 else f"frame {i} of the video"


def _no_face(where: str, models: str) -> NoFaceError:
    return NoFaceError(f"no face found in {where} (face models: {models}); use a portrait with one clearly visible "
                       "face, or pass the face's box as the crop (CropOptions.box, `ditto render --crop x0,y0,x1,y1`)")


def frame_faces(frames: Sequence[np.ndarray], crop: CropSettings, aux: Any) -> Framing:
    """Crop matrices (and eyes, report) for `frames` with `aux`'s face models."""
    faces: MediaPipeFaces | None = getattr(aux, "faces", None)
    choice = getattr(aux, "choice", "none")
    report = FaceReport(face_models=choice, models=list(getattr(aux, "models", [])),
                        person_matte=getattr(aux, "matte", None) is not None)
    if choice == "insightface" or (faces is None and aux.can_find_faces):
        framing = _insightface(frames, crop, aux, report)
        if faces is not None:  # the eyes from the iris model, on the crop the 203 points gave
            _measure_eyes(framing, frames, faces)
    elif faces is not None:
        framing = _mediapipe(frames, crop, faces, report)
    else:
        framing = _without_models(frames, crop, report)
    _check_size(framing)
    if framing.eye_open is not None:
        report.eye_open = (float(framing.eye_open[0, 0]), float(framing.eye_open[0, 1]))
        if max(report.eye_open) < CLOSED_EYE_OPENNESS:
            report.warnings.append(f"the eyes look closed (openness {report.eye_open[0]:.2f}, "
                                   f"{report.eye_open[1]:.2f}, below {CLOSED_EYE_OPENNESS}); a portrait with open "
                                   "eyes blinks and looks around naturally")
    return framing


def _check_size(framing: Framing) -> None:
    report = framing.report
    report.set_crop(framing.mats[0])
    if report.face_box is not None and report.crop_size < MIN_CROP_PX:
        x0, y0, x1, y1 = report.face_box
        report.warnings.append(
            f"the face is small: {x1 - x0:.0f} x {y1 - y0:.0f} px, so its crop ({report.crop_size:.0f} px) is scaled "
            f"up {CROP_SIZE / report.crop_size:.1f}x to the model's {CROP_SIZE} px and the rendered face will look "
            f"soft; use a portrait where the face is at least {(y1 - y0) * MIN_CROP_PX / report.crop_size:.0f} px "
            "tall")


# ---------------------------------------------------------------------------------------------------------------
# no face models


def _without_models(frames: Sequence[np.ndarray], crop: CropSettings, report: FaceReport) -> Framing:
    h, w = frames[0].shape[:2]
    if crop.box is not None:
        m = box_crop_matrix(crop.box, CROP_SIZE, crop.scale, crop.vy_ratio)
        report.face_box = tuple(float(v) for v in crop.box)  # type: ignore[assignment]
    else:  # centred square of the frame, pixel-centre convention
        side = F32(min(h, w))
        m = crop_matrix(Rect(np.array([(w - 1) / 2, (h - 1) / 2], dtype=F32), np.array([side, side]), 0.0),
                        CROP_SIZE, rotate=False)
        report.warnings.append("no face models ran (DITTO_MEDIA__FACE_MODELS=none): the crop is the centred square "
                               "of the frame; pass a crop box to place it")
    return Framing([m] * len(frames), report)


# ---------------------------------------------------------------------------------------------------------------
# MediaPipe


def _first_roi(frame: np.ndarray, crop: CropSettings, faces: MediaPipeFaces, report: FaceReport,
               where: str) -> tuple[Any, bool]:
    """(ROI for the mesh on the first frame, whether the client's box placed it)."""
    if crop.box is not None:
        report.faces_found = 0
        return roi_from_box(np.array(crop.box)), True
    dets = faces.detect(frame)
    report.faces_found = len(dets)
    if not len(dets):
        raise _no_face(where, "mediapipe")
    j = largest(dets)
    if len(dets) > 1:
        b = dets.boxes[j] - 0.5
        report.warnings.append(f"{len(dets)} faces found; registered the largest ({b[0]:.0f}, {b[1]:.0f}, "
                               f"{b[2]:.0f}, {b[3]:.0f}); crop the portrait to one face, or pass a crop box to "
                               "choose another")
    report.face_box = tuple(float(v) for v in to_pixel_centres(dets.boxes[j].reshape(2, 2)).ravel())  # type: ignore
    return face_roi(dets.boxes[j], dets.keypoints[j, 0], dets.keypoints[j, 1]), False


def _mediapipe(frames: Sequence[np.ndarray], crop: CropSettings, faces: MediaPipeFaces,
               report: FaceReport) -> Framing:
    n = len(frames)
    roi, from_box = _first_roi(frames[0], crop, faces, report, _where(0, n))
    if from_box:  # a client's box is only roughly the face: one more look, from the mesh the box gave
        first = faces.face(frames[0], roi)
        roi = roi_from_points(first.points[:MESH_POINTS], *TRACK_EYES, ROI_SCALE) if first is not None else roi
    found, redetected = faces.track(list(frames), roi)
    if found[0] is None:
        if not from_box:
            raise _no_face(_where(0, n), "mediapipe")
        report.warnings.append("no face found inside the crop box given; cropping the box as given, with neutral "
                               "eye features")
        return _without_models(frames, crop, report)
    if from_box:
        report.face_box = tuple(float(v) for v in found[0].box())  # type: ignore[assignment]
    lost = [i for i, f in enumerate(found) if f is None]
    if lost:
        report.warnings.append(f"the face was lost in {len(lost)} of {n} video frames (first: frame {lost[0]}); "
                               "those frames keep the crop of the frame before")
    held: list[MeshFace] = []
    for f in found:  # a lost frame keeps the last face seen (frame 0 always has one)
        held.append(f if f is not None else held[-1])
    mats = [crop_image_matrix(f.points, crop) for f in held]
    eye_open, eye_ball = eye_features(np.stack([mesh_in_crop(f.points, m) for f, m in zip(held, mats, strict=True)]))
    notes = [f"face: {faces.source}"]
    if redetected:
        notes.append(f"face tracking: detection ran again on {len(redetected)} frames")
    return Framing(mats, report, eye_open, eye_ball, notes=notes)


def crop_image_matrix(points: np.ndarray, crop: CropSettings) -> np.ndarray:
    """M_o2c of the reference's crop rule applied to the mesh (points in continuous coordinates)."""
    from .crop import rect_from_landmarks

    return crop_matrix(rect_from_landmarks(to_pixel_centres(points[:, :2]), crop.scale, crop.vy_ratio), CROP_SIZE,
                       crop.rotate)


def mesh_in_crop(points: np.ndarray, m_o2c: np.ndarray) -> np.ndarray:
    """[478, 3] image points -> MediaPipe's normalised coordinates on the 512 crop (x/512, y/512, z/512), the units
    the reference's eye features are measured in (it ran the mesh on the crop)."""
    xy = map_points(to_pixel_centres(points[:, :2]), m_o2c).astype(np.float64) + 0.5
    scale = math.sqrt(abs(float(np.linalg.det(np.asarray(m_o2c, np.float64)[:2, :2]))))
    return (np.concatenate([xy, points[:, 2:3] * scale], axis=1) / CROP_SIZE).astype(F32)


def _measure_eyes(framing: Framing, frames: Sequence[np.ndarray], faces: MediaPipeFaces) -> None:
    """Eye features with the mesh and iris models, for crops placed by other models: the mesh is seeded by the crop
    square (the face fills its middle)."""
    meshes = []
    for frame, m in zip(frames, framing.mats, strict=True):
        c2o = np.linalg.inv(np.asarray(m, np.float64))
        centre = c2o[:2, :2] @ np.array([CROP_SIZE / 2] * 2) + c2o[:2, 2]
        side = CROP_SIZE * math.sqrt(abs(np.linalg.det(c2o[:2, :2]))) / 2.3  # about the face's extent
        box = np.array([centre[0] - side / 2, centre[1] - side / 2, centre[0] + side / 2, centre[1] + side / 2])
        face = faces.face(frame, roi_from_box(box))
        if face is None:
            framing.notes.append("eye features: neutral defaults (the mesh found no face in the crop)")
            return
        meshes.append(mesh_in_crop(face.points, m))
    framing.eye_open, framing.eye_ball = eye_features(np.stack(meshes))


# ---------------------------------------------------------------------------------------------------------------
# InsightFace (SCRFD det_10g + 2d106det, then the 203-point model): the reference's own models


def _insightface(frames: Sequence[np.ndarray], crop: CropSettings, aux: Any, report: FaceReport) -> Framing:
    assert aux.detector is not None and aux.landmark106 is not None and aux.landmark203 is not None
    mats, lmks = [], []
    prev: np.ndarray | None = None
    for i, frame in enumerate(frames):
        if prev is None:
            if crop.box is not None:
                box = np.array([*crop.box, 1.0], dtype=F32)
            else:
                dets = aux.detector.detect(frame)
                report.faces_found = len(dets.boxes)
                box = dets.largest()
                if box is None:
                    raise _no_face(_where(i, len(frames)), "insightface")
                if len(dets.boxes) > 1:
                    report.warnings.append(f"{len(dets.boxes)} faces found; registered the largest "
                                           f"({box[0]:.0f}, {box[1]:.0f}, {box[2]:.0f}, {box[3]:.0f}); crop the "
                                           "portrait to one face, or pass a crop box to choose another")
            report.face_box = tuple(float(v) for v in box[:4])  # type: ignore[assignment]
            seed = aux.landmark106(frame, box)
        else:
            seed = prev  # tracking: the previous frame's 203 landmarks
        prev = aux.landmark203(frame, seed)
        lmks.append(prev)
        mats.append(crop_image(frame, prev, CROP_SIZE, crop.scale, crop.vy_ratio, crop.rotate).M_o2c)
    return Framing(mats, report, lmk203=np.stack(lmks))


__all__ = ["CROP_SIZE", "FaceReport", "Framing", "MESH_POINTS", "NoFaceError", "frame_faces"]

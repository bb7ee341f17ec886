"""Registration's face models on a real photograph with the real models: MediaPipe's BlazeFace, 468-point mesh, iris
and selfie-segmentation models in LiteRT (the files `make setup` takes out of the mediapipe wheel), on NASA's
portrait of Eileen Collins that scikit-image ships (`skimage.data.astronaut()`, public domain).

The picture of the matte checked here is committed as `tests/renderer/data/astronaut_matte.png` (left: the matte,
right: the cut-out on green, both at half size); `test_the_matte_covers_the_person_and_not_the_background` compares
against it, and `DITTO_WRITE_MATTE_PICTURE=1` writes it again.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from ditto import face_models
from services.renderer.avatar.crop import MESH_EXTENT, CropSettings, map_points, warp_crop
from services.renderer.avatar.eyes import CLOSED_EYE_OPENNESS, eye_features
from services.renderer.avatar.faces import largest, to_pixel_centres
from services.renderer.avatar.framing import NoFaceError, frame_faces
from services.renderer.avatar.mesh import face_roi
from services.renderer.avatar.sessions import AuxModels
from services.renderer.putback import over_green

MATTE_PICTURE = Path(__file__).parent / "data" / "astronaut_matte.png"
# Regions of the 512 x 512 photograph, chosen by looking at it (x0, y0, x1, y1): her face and hair, her suit's
# chest; the flag and wall at the top left, the shuttle and wall at the top right.
PERSON = {"face and hair": (185, 30, 265, 170), "suit": (90, 260, 320, 470)}
BACKGROUND = {"flag": (0, 0, 140, 180), "shuttle": (340, 0, 512, 250)}


@pytest.fixture(scope="module")
def aux() -> AuxModels:
    return AuxModels.open("mediapipe")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut())


def inside(points: np.ndarray, box: tuple[float, float, float, float] | np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = box
    return (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)


def test_exactly_one_face_and_its_mesh_inside_the_face_box(aux, astronaut):
    dets = aux.faces.detect(astronaut)
    assert len(dets) == 1, dets.boxes
    box = to_pixel_centres(dets.boxes[0].reshape(2, 2)).ravel()
    face = aux.faces.face(astronaut, face_roi(dets.boxes[0], dets.keypoints[0, 0], dets.keypoints[0, 1]))
    assert face is not None and face.score > 0.9 and face.points.shape == (478, 3)
    pts = to_pixel_centres(face.points[:, :2])
    eyes = [33, 133, 159, 145, 263, 362, 386, 374, 468, 473]   # corners, lids, iris centres
    mouth = [13, 14, 61, 291]                                    # inner lips' middle, mouth corners
    assert inside(pts[eyes + mouth], box).all(), (box, pts[eyes + mouth])
    # the subject's right eye is on the image's left, and the irises sit between their eye corners
    assert pts[468, 0] < pts[473, 0]
    assert min(pts[33, 0], pts[133, 0]) < pts[468, 0] < max(pts[33, 0], pts[133, 0])
    assert min(pts[263, 0], pts[362, 0]) < pts[473, 0] < max(pts[263, 0], pts[362, 0])


def reference_rule(points: np.ndarray, scale: float = 2.3, vy: float = -0.125) -> tuple[np.ndarray, float, float]:
    """The reference's crop rule, written here from its description (docs/model.md §6.3) in float64, on the mesh:
    (centre, side, angle in degrees)."""
    eye = (points[[33, 133, 159, 145]].mean(0) + points[[263, 362, 386, 374]].mean(0)) / 2
    lip = (points[13] + points[14]) / 2
    uy = (lip - eye) / np.linalg.norm(lip - eye)
    ux = np.array([uy[1], -uy[0]])
    q = points[list(MESH_EXTENT)] @ np.stack([ux, uy]).T      # the extent in the face's own axes
    lo, hi = q.min(0), q.max(0)
    side = float(max(hi - lo)) * scale
    mid = (lo + hi) / 2
    centre = ux * mid[0] + uy * mid[1] + uy * vy * side
    return centre, side, math.degrees(math.atan2(ux[1], ux[0]))


def test_the_crop_follows_the_reference_rule_from_the_mesh(aux, astronaut):
    framing = frame_faces([astronaut], CropSettings(), aux)
    r = framing.report
    assert r.face_models == "mediapipe" and r.faces_found == 1 and r.face_box is not None
    assert r.models == [f.name for f in face_models.MODELS.values()]
    # the rule applied by this test to the same mesh
    face = aux.faces.face(astronaut, face_roi(*_first_detection(aux, astronaut)))
    pts = to_pixel_centres(face.points[:, :2])
    centre, side, angle = reference_rule(pts)
    assert np.allclose(r.crop_center, centre, atol=0.05), (r.crop_center, centre)
    assert r.crop_size == pytest.approx(side, rel=1e-4)
    assert r.crop_rotation_deg == pytest.approx(angle, abs=0.01)
    # the crop square contains the whole face box
    a = math.radians(r.crop_rotation_deg)
    x0, y0, x1, y1 = r.face_box
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) - np.array(r.crop_center)
    local = corners @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]).T
    assert (np.abs(local) < r.crop_size / 2).all(), (local, r.crop_size)
    # the eyes are level in the crop, within 3 degrees
    in_crop = map_points(pts, framing.mats[0])
    left, right = in_crop[[33, 133]].mean(0), in_crop[[263, 362]].mean(0)
    assert abs(math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))) < 3
    # ... and so are the irises
    assert abs(math.degrees(math.atan2(*(in_crop[473] - in_crop[468])[::-1]))) < 3


def _first_detection(aux, image):
    dets = aux.faces.detect(image)
    j = largest(dets)
    return dets.boxes[j], dets.keypoints[j, 0], dets.keypoints[j, 1]


def test_eyes_are_open_and_measured_as_the_reference_would_on_its_crop(aux, astronaut):
    framing = frame_faces([astronaut], CropSettings(), aux)
    assert framing.eye_open is not None and framing.eye_ball is not None
    assert (framing.eye_open > CLOSED_EYE_OPENNESS).all() and (framing.eye_open < 2).all(), framing.eye_open
    assert framing.report.eye_open == pytest.approx(tuple(framing.eye_open[0]))
    assert not any("closed" in w for w in framing.report.warnings)
    # the reference runs the mesh on the 512 crop: do that, and compare with our mapping of the frame's mesh
    crop = warp_crop(astronaut, framing.mats[0], 512).image
    face = aux.faces.face(crop, face_roi(*_first_detection(aux, crop)))
    on_crop_open, on_crop_ball = eye_features((face.points / 512)[None].astype(np.float32))
    np.testing.assert_allclose(framing.eye_open, on_crop_open, rtol=0.1)
    np.testing.assert_allclose(framing.eye_ball, on_crop_ball, atol=2e-3)


def _region_share(alpha: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    return float((alpha[y0:y1, x0:x1] > 127).mean())


def matte_picture(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Half size: the matte beside the cut-out on green (RGB uint8)."""
    half = (image.shape[1] // 2, image.shape[0] // 2)
    a = cv2.resize(alpha, half, interpolation=cv2.INTER_AREA)
    cut = over_green(np.concatenate([cv2.resize(image, half, interpolation=cv2.INTER_AREA), a[..., None]], -1))
    return np.concatenate([cv2.cvtColor(a, cv2.COLOR_GRAY2RGB), cut], axis=1)


def test_the_matte_covers_the_person_and_not_the_background(aux, astronaut):
    alpha = aux.matte(astronaut)
    assert alpha.shape == astronaut.shape[:2] and alpha.dtype == np.uint8
    for name, box in PERSON.items():
        assert _region_share(alpha, box) >= 0.95, name
    for name, box in BACKGROUND.items():
        assert _region_share(alpha, box) <= 0.05, name
    # a soft edge, but narrow (no wide band through which the old background shows): along rows through the head
    # the pixels between 10 % and 90 % alpha are a few per side
    widths = [((row > 25) & (row < 230)).sum() / 2 for row in alpha[40:160:4, 100:350].astype(int)]
    assert 0.5 <= float(np.median(widths)) <= 4.5, widths
    picture = matte_picture(astronaut, alpha)
    if os.environ.get("DITTO_WRITE_MATTE_PICTURE"):
        MATTE_PICTURE.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(MATTE_PICTURE), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    checked = cv2.cvtColor(cv2.imread(str(MATTE_PICTURE)), cv2.COLOR_BGR2RGB)
    mine, theirs = picture[:, :256, 0] > 127, checked[:, :256, 0] > 127
    iou = (mine & theirs).sum() / (mine | theirs).sum()
    assert iou > 0.97, f"the matte moved away from the committed picture (IoU {iou:.3f})"


def test_the_head_keeps_room_to_move_inside_the_crop_only(aux, astronaut):
    from services.renderer.avatar.matte import with_head
    from services.renderer.putback import feather_mask

    framing = frame_faces([astronaut], CropSettings(), aux)
    alpha = aux.matte(astronaut)
    joined = with_head(alpha, framing.mats[0], feather_mask())
    assert (joined >= alpha).all()
    grown = joined.astype(int) - alpha
    ys, xs = np.nonzero(grown > 64)
    assert len(ys) > 0
    cx, cy = framing.report.crop_center
    # the growth stays inside the crop square, around the head, a few pixels wide
    assert (np.hypot(xs - cx, ys - cy) < framing.report.crop_size * 0.75).all()
    assert grown[400:, :].max() == 0 and _region_share(joined, BACKGROUND["shuttle"]) <= 0.05


def test_a_photograph_without_a_person_is_refused_unless_a_crop_box_is_given(aux):
    coffee = np.ascontiguousarray(data.coffee())
    assert len(aux.faces.detect(coffee)) == 0
    with pytest.raises(NoFaceError, match="no face found in the image"):
        frame_faces([coffee], CropSettings(), aux)
    framing = frame_faces([coffee], CropSettings(box=(100.0, 100.0, 300.0, 300.0)), aux)
    assert framing.report.face_box == (100.0, 100.0, 300.0, 300.0) and framing.eye_open is None
    assert any("no face found inside the crop box" in w for w in framing.report.warnings)


def test_a_crop_box_around_a_face_places_the_mesh_crop(aux, astronaut):
    framing = frame_faces([astronaut], CropSettings(box=(160.0, 60.0, 290.0, 190.0)), aux)
    free = frame_faces([astronaut], CropSettings(), aux)
    assert framing.report.faces_found == 0 and framing.eye_open is not None
    assert np.allclose(framing.report.crop_center, free.report.crop_center, atol=3)
    assert framing.report.crop_size == pytest.approx(free.report.crop_size, rel=0.03)


def test_several_faces_take_the_largest_with_a_warning(aux, astronaut):
    head = astronaut[20:280, 110:350]                                    # her head and shoulders, 240 x 260
    small = cv2.resize(head, (168, 182), interpolation=cv2.INTER_AREA)   # the same at 0.7
    canvas = np.full((300, 480, 3), 200, np.uint8)
    canvas[20:280, 0:240] = head
    canvas[60:242, 290:458] = small
    framing = frame_faces([canvas], CropSettings(), aux)
    r = framing.report
    assert r.faces_found == 2, r
    assert r.face_box is not None and r.face_box[2] < 240, r.face_box  # the larger face, on the left
    assert any(w.startswith("2 faces found; registered the largest") for w in r.warnings), r.warnings


def test_a_small_face_warns_with_its_size(aux, astronaut):
    small = cv2.resize(astronaut, (160, 160), interpolation=cv2.INTER_AREA)
    r = frame_faces([small], CropSettings(), aux).report
    assert r.faces_found == 1
    warning = next(w for w in r.warnings if w.startswith("the face is small"))
    x0, y0, x1, y1 = r.face_box
    assert f"{x1 - x0:.0f} x {y1 - y0:.0f} px" in warning and "scaled up" in warning
    assert r.crop_size < 256


def shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.array([[1, 0, dx], [0, 1, dy]], np.float64)
    return cv2.warpAffine(image, m, image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)


def test_a_video_is_tracked_frame_to_frame(aux, astronaut):
    frames = [shifted(astronaut, 6 * i, 3 * i) for i in range(5)]
    found, redetected = aux.faces.track(frames, face_roi(*_first_detection(aux, frames[0])))
    assert redetected == [] and all(f is not None for f in found)   # one detection, then the mesh follows
    framing = frame_faces(frames, CropSettings(), aux)
    centres = [np.linalg.inv(m)[:2] @ np.array([256.0, 256.0, 1.0]) for m in framing.mats]
    steps = np.diff(np.array(centres), axis=0)
    np.testing.assert_allclose(steps, [[6, 3]] * 4, atol=1.5)
    assert framing.eye_open is not None and framing.eye_open.shape == (5, 2)
    # a frame without the face: detection runs again there, finds nothing, the crop of the frame before is kept
    frames[2] = np.ascontiguousarray(cv2.resize(data.coffee(), (512, 512)))
    found, redetected = aux.faces.track(frames, face_roi(*_first_detection(aux, frames[0])))
    assert found[2] is None and found[3] is not None and 2 in redetected
    framing = frame_faces(frames, CropSettings(), aux)
    np.testing.assert_array_equal(framing.mats[2], framing.mats[1])
    assert any("lost in 1 of 5" in w for w in framing.report.warnings)


def test_missing_or_altered_model_files_say_how_to_get_them(tmp_path):
    with pytest.raises(face_models.FaceModelsMissing, match="ditto weights faces"):
        AuxModels.open("mediapipe", models_dir=tmp_path)
    for path in face_models.locate().values():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    victim = tmp_path / face_models.MODELS["face_landmark"].name
    altered = bytearray(victim.read_bytes())
    altered[len(altered) // 2] ^= 0xFF
    victim.write_bytes(bytes(altered))
    with pytest.raises(face_models.FaceModelsMissing, match="face_landmark.tflite is not the expected file"):
        AuxModels.open("mediapipe", models_dir=tmp_path)


def test_insightface_needs_the_users_files_and_says_their_licence(tmp_path):
    with pytest.raises(FileNotFoundError, match="non-commercial research only"):
        AuxModels.open("insightface", tmp_path / "no-weights")
    off = AuxModels.open("none")
    assert off.faces is None and off.matte is None and off.choice == "none"


def test_fetch_takes_the_models_out_of_a_wheel_and_checks_each(tmp_path):
    """`ditto weights faces` without the network: a wheel laid out as mediapipe's (zip members at their paths)."""
    import zipfile

    cached = face_models.locate()
    wheel = tmp_path / "mediapipe-0.10.21-test.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, f in face_models.MODELS.items():
            z.writestr(f.member, cached[name].read_bytes())
    got = face_models.fetch(tmp_path / "models", wheel)
    assert {p.name for p in got.values()} == {f.name for f in face_models.MODELS.values()}
    assert face_models.problems(tmp_path / "models") == []
    assert face_models.fetch(tmp_path / "models") == got  # present and checked: nothing downloaded
    bad = tmp_path / "mediapipe-bad.whl"
    with zipfile.ZipFile(bad, "w") as z:
        for name, f in face_models.MODELS.items():
            z.writestr(f.member, cached[name].read_bytes()[:-7] if name == "iris_landmark" else
                       cached[name].read_bytes())
    with pytest.raises(face_models.FaceModelsMissing, match="iris_landmark.tflite is not the expected file"):
        face_models.fetch(tmp_path / "other", bad)
    assert not (tmp_path / "other").exists()  # nothing half-extracted is left to be taken for the models


def test_a_face_far_from_the_camera_in_a_wide_frame_is_found(aux, astronaut):
    """The short-range detector sees the frame at 128 x 128: a 130 px face in a 1280 x 720 frame is 13 of its pixels,
    too few; the second look, at squares of the frame, finds it (and only it)."""
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[:, 280:1000] = cv2.resize(astronaut, (720, 720), interpolation=cv2.INTER_AREA)
    assert len(aux.faces.detector.detect(frame)) == 0
    dets = aux.faces.detect(frame)
    assert len(dets) == 1
    x0, y0, x1, y1 = dets.boxes[0]
    assert 500 < (x0 + x1) / 2 < 620 and 110 < (y0 + y1) / 2 < 250, dets.boxes  # her face (225, 127) x 1.4 + 280
    framing = frame_faces([frame], CropSettings(), aux)
    assert framing.report.faces_found == 1 and framing.eye_open is not None

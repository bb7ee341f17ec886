"""The 478-point mesh through the official ONNX pair (blaze_face + face_mesh): anchors, decoding and weighted NMS,
the rotated ROI, the crop-pixel -> image-normalised mapping, eye features and registration, all through real ONNX
Runtime sessions of small stand-in models with the official input/output names and shapes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from ditto.weights import resolve
from services.renderer.avatar.crop import CropSettings
from services.renderer.avatar.eyes import DEFAULT_EYE_BALL, DEFAULT_EYE_OPEN, eye_features
from services.renderer.avatar.mesh import OnnxFaceMesh, face_roi, ssd_anchors
from services.renderer.avatar.register import register_avatar
from services.renderer.avatar.sessions import AuxModels, open_session
from tests.renderer.aux_onnx import _const_model, write_aux_models
from tests.renderer.renderer_models import face_image, tiny_models


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


@dataclass
class Face:
    """A face the fake BlazeFace reports, in image pixels."""

    box: tuple[float, float, float, float]
    eyes: tuple[tuple[float, float], tuple[float, float]]  # (right eye, left eye) = keypoints 0 and 1
    logit: float


def _to_input(pts: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Image pixels -> [0, 1] coordinates of the 128 letterboxed detector input (scaled to fit, centred)."""
    h, w = hw
    s = 128 / max(h, w)
    return (pts * s + np.array([(128 - s * w) / 2, (128 - s * h) / 2])) / 128


def blaze_outputs(faces: list[Face], hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Raw regressors / logits that decode to `faces`, each at the anchor nearest its centre."""
    anchors = ssd_anchors()
    reg = np.zeros((896, 16), np.float32)
    logits = np.full((896, 1), -20.0, np.float32)
    for f in faces:
        x0, y0, x1, y1 = _to_input(np.array(f.box, np.float64).reshape(2, 2), hw).ravel()
        centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        free = np.where(logits[:, 0] == -20.0)[0]
        k = free[np.argmin(np.linalg.norm(anchors[free] - centre, axis=1))]
        kps = np.zeros((6, 2))
        kps[:2] = _to_input(np.array(f.eyes, np.float64), hw)
        kps[2:] = centre  # nose, mouth, ears: unused downstream
        reg[k, :2] = (centre - anchors[k]) * 128
        reg[k, 2:4] = (x1 - x0) * 128, (y1 - y0) * 128
        reg[k, 4:] = ((kps - anchors[k]) * 128).ravel()
        logits[k] = f.logit
    return {"regressors": reg[None], "classificators": logits[None]}


def mesh_pattern() -> np.ndarray:
    """[478, 3] in 256-crop pixels: scattered points, a half-closed left eye and an open right eye looking aside."""
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.uniform(40, 216, (478, 2)), rng.uniform(-20, 20, (478, 1))], axis=1)
    for (outer, inner, lids, iris), (cx, open_px, look) in (
        ((33, 133, ((145, 159), (144, 160), (153, 158)), 468), (90.0, 4.0, 3.0)),
        ((263, 362, ((374, 386), (373, 387), (380, 385)), 473), (166.0, 10.0, -5.0)),
    ):
        p[outer, :2], p[inner, :2] = (cx - 18, 110), (cx + 18, 110)
        for j, (lo, up) in enumerate(lids):
            x = cx - 8 + 8 * j
            p[lo, :2], p[up, :2] = (x, 110 + open_px), (x, 110 - open_px)
        p[iris, :2] = (cx + look, 109)
        p[[outer, inner, iris], 2] = 0.0, 2.0, -4.0
    return p.astype(np.float32)


def write_mesh_models(root: Path, faces: list[Face], hw: tuple[int, int], pattern: np.ndarray,
                      nchw: bool = False, mesh_output: str = "Identity") -> None:
    """blaze_face.onnx / face_mesh.onnx stand-ins under `root` in the official layout."""
    _const_model(resolve(root, "blaze_face"), "input", [1, 128, 128, 3], blaze_outputs(faces, hw))
    shape = [1, 3, 256, 256] if nchw else [1, 256, 256, 3]
    outs = {"Identity_1": np.full((1, 1, 1, 1), 3.0, np.float32),  # face presence, listed first on purpose
            mesh_output: pattern.reshape(1, 1, 1, 1434)}
    _const_model(resolve(root, "face_mesh"), "input_12", shape, outs)


def provider(root: Path) -> OnnxFaceMesh:
    return OnnxFaceMesh(open_session(resolve(root, "blaze_face")), open_session(resolve(root, "face_mesh")))


def expected_mesh(face: Face, pattern: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """MediaPipe's projection written out: p = c + side * R(angle) (u / 256 - 1/2), normalised by (W, H, W)."""
    h, w = hw
    x0, y0, x1, y1 = face.box
    (ex0, ey0), (ex1, ey1) = face.eyes
    angle = math.atan2(ey1 - ey0, ex1 - ex0)  # = 0 - atan2(-(y1 - y0), x1 - x0)
    side = 1.5 * max(x1 - x0, y1 - y0)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    xy = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) + side * (pattern[:, :2] / 256 - 0.5) @ rot.T
    z = pattern[:, 2] / 256 * side
    return (np.concatenate([xy, z[:, None]], axis=1) / np.array([w, h, w]))[None]


# ---------------------------------------------------------------------------------------------------------------


def test_anchor_count_and_layout():
    a = ssd_anchors()
    assert a.shape == (896, 2)
    fine, coarse = a[:512].reshape(16, 16, 2, 2), a[512:].reshape(8, 8, 6, 2)
    # two anchors per cell on the 16x16 grid (stride 8), six per cell on the 8x8 grid (three layers of stride 16)
    assert np.all(fine == fine[:, :, :1]) and np.all(coarse == coarse[:, :, :1])
    for grid, cells in ((16, fine[:, :, 0]), (8, coarse[:, :, 0])):
        y, x = np.mgrid[:grid, :grid]
        np.testing.assert_allclose(cells[..., 0], (x + 0.5) / grid)  # row-major: x varies fastest
        np.testing.assert_allclose(cells[..., 1], (y + 0.5) / grid)


def test_decode_weighted_nms_and_letterbox(tmp_path):
    hw = (200, 300)  # wider than tall: the letterbox pads above and below
    a = Face((110, 50, 190, 150), ((130, 80), (170, 86)), 4.0)
    a2 = Face((116, 56, 196, 156), ((136, 86), (176, 92)), 2.0)   # overlaps a: merged into it
    b = Face((10, 10, 40, 40), ((18, 20), (32, 20)), 1.0)         # far away: a second face
    c = Face((240, 120, 280, 170), ((250, 140), (270, 140)), -1.0)  # score 0.27 < 0.5: dropped
    write_mesh_models(tmp_path, [a, a2, b, c], hw, mesh_pattern())
    dets = provider(tmp_path).detect(np.zeros((*hw, 3), np.uint8))
    assert len(dets) == 2
    wa, wa2 = sigmoid(4.0), sigmoid(2.0)
    merged_box = (np.array(a.box) * wa + np.array(a2.box) * wa2) / (wa + wa2)
    merged_eyes = (np.array(a.eyes) * wa + np.array(a2.eyes) * wa2) / (wa + wa2)
    np.testing.assert_allclose(dets.boxes[0], merged_box, atol=2e-3)
    np.testing.assert_allclose(dets.keypoints[0, :2], merged_eyes, atol=2e-3)
    np.testing.assert_allclose(dets.scores, [wa, sigmoid(1.0)], rtol=1e-5)  # the merged face keeps its best score
    np.testing.assert_allclose(dets.boxes[1], b.box, atol=2e-3)


def test_roi_rotation_levels_the_eye_line(tmp_path):
    hw = (240, 320)
    eyes = ((140.0, 100.0), (180.0, 120.0))  # the left eye (image right) lower: a head tilted clockwise
    write_mesh_models(tmp_path, [], hw, mesh_pattern())
    roi = face_roi(np.array([120, 70, 200, 170]), np.array(eyes[0]), np.array(eyes[1]))
    assert roi.rotation == pytest.approx(math.atan2(20, 40))
    assert roi.side == pytest.approx(150) and np.allclose(roi.centre, (160, 120))
    # a real warp: two bright dots at the eyes land on one row of the 256 crop, right eye on the left
    img = np.zeros((*hw, 3), np.uint8)
    for x, y in eyes:
        cv2.circle(img, (int(x), int(y)), 3, (255, 255, 255), -1)
    crop = provider(tmp_path).crop(img, roi)[..., 0].astype(np.float64)
    n, labels = cv2.connectedComponents((crop > 100).astype(np.uint8))
    assert n == 3
    (cx0, cy0), (cx1, cy1) = sorted(
        (float((np.nonzero(labels == i)[1] * crop[labels == i]).sum() / crop[labels == i].sum()),
         float((np.nonzero(labels == i)[0] * crop[labels == i]).sum() / crop[labels == i].sum())) for i in (1, 2))
    assert abs(cy0 - cy1) < 0.5
    # and exactly where the ROI says, to a fraction of a pixel: a dot drawn at OpenCV pixel (x, y) has its centre at
    # continuous (x + 0.5, y + 0.5), and the crop's pixel centres sit at continuous u + 0.5 too
    to_crop = np.linalg.inv(roi.crop_to_image(256))
    for (x, y), got in zip(eyes, ((cx0, cy0), (cx1, cy1)), strict=True):
        u = to_crop @ np.array([x + 0.5, y + 0.5, 1.0])
        np.testing.assert_allclose(got, u[:2] - 0.5, atol=0.15)
    assert cx1 - cx0 == pytest.approx(math.hypot(40, 20) * 256 / 150, abs=1.0)  # eye distance at crop scale
    # an upside-down face (left eye on the image's left) is turned half a turn
    assert abs(face_roi(np.array([0, 0, 10, 10]), np.array([8.0, 5]), np.array([2.0, 5])).rotation) == \
        pytest.approx(math.pi)


def test_mesh_maps_back_to_image_coordinates_and_eye_features(tmp_path):
    hw = (240, 320)
    face = Face((120, 60, 200, 180), ((143, 105), (181, 97)), 5.0)  # eyes tilted the other way
    pattern = mesh_pattern()
    write_mesh_models(tmp_path, [face], hw, pattern)
    out = provider(tmp_path)(face_image(*hw))
    assert out is not None and out.shape == (1, 478, 3) and out.dtype == np.float32
    want = expected_mesh(face, pattern, hw)
    np.testing.assert_allclose(out, want, atol=2e-5)
    # spot checks of the projection itself: the crop centre is the box centre, the crop's x axis the eye line
    centre = expected_mesh(face, np.array([[128.0, 128.0, 0.0], [192.0, 128.0, 0.0]]), hw)[0] * (320, 240, 320)
    np.testing.assert_allclose(centre[0, :2], (160, 120), atol=1e-9)
    step = centre[1, :2] - centre[0, :2]
    assert np.hypot(*step) == pytest.approx(1.5 * 120 / 4)
    assert math.atan2(step[1], step[0]) == pytest.approx(math.atan2(97 - 105, 181 - 143))
    # eye features from the ONNX mesh are those of the expected landmarks, and not the neutral defaults
    got_open, got_ball = eye_features(out)
    want_open, want_ball = eye_features(want.astype(np.float32))
    np.testing.assert_allclose(got_open, want_open, atol=1e-4)
    np.testing.assert_allclose(got_ball, want_ball, atol=1e-4)
    assert got_open[0, 0] < 0.5 * got_open[0, 1]  # the half-closed left eye
    assert np.abs(got_ball - DEFAULT_EYE_BALL).max() > 0.01


def test_layouts_output_names_and_errors(tmp_path):
    hw = (256, 256)
    face = Face((80, 70, 180, 190), ((105, 110), (155, 110)), 5.0)
    pattern = mesh_pattern()
    # NCHW input and an output not called Identity: found by layout and by its 1434 values
    write_mesh_models(tmp_path, [face], hw, pattern, nchw=True, mesh_output="landmarks")
    mesh = provider(tmp_path)
    assert not mesh.mesh_in.channels_last and mesh.blaze_in.channels_last and mesh.mesh_in.size == 256
    np.testing.assert_allclose(mesh(face_image(*hw)), expected_mesh(face, pattern, hw), atol=2e-5)
    with pytest.raises(ValueError, match="RGB uint8"):
        mesh(np.zeros((64, 64), np.uint8))
    # no face above the threshold: None
    write_mesh_models(tmp_path, [Face(face.box, face.eyes, -0.5)], hw, pattern)
    assert provider(tmp_path)(face_image(*hw)) is None
    # an input that is not an image
    _const_model(resolve(tmp_path, "face_mesh"), "x", [1, 256, 256, 4], {"Identity": pattern.reshape(1, 1434)})
    with pytest.raises(ValueError, match="neither NHWC nor NCHW"):
        provider(tmp_path)


def test_register_avatar_measures_eyes_with_the_onnx_mesh(tmp_path):
    weights = tmp_path / "w"
    img = face_image(240, 320)
    write_aux_models(weights, face_box=(110, 50, 210, 190), image_hw=(240, 320))
    face = Face((176, 196, 336, 376), ((216, 250), (296, 262)), 5.0)  # in the 512 crop registration makes
    pattern = mesh_pattern()
    write_mesh_models(weights, [face], (512, 512), pattern)
    aux = AuxModels.load(weights)
    assert isinstance(aux.mesh, OnnxFaceMesh) and any("blaze_face" in n for n in aux.notes)
    ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    a = register_avatar(png.tobytes(), "f.png", CropSettings(), tiny_models(), aux, cache_dir=tmp_path / "cache")
    want_open, want_ball = eye_features(expected_mesh(face, pattern, (512, 512)).astype(np.float32))
    np.testing.assert_allclose(a.eye_open, want_open, atol=1e-4)
    np.testing.assert_allclose(a.eye_ball, want_ball, atol=1e-4)
    assert np.abs(a.eye_open - DEFAULT_EYE_OPEN).max() > 0.1
    assert any("eye features: measured by ONNX blaze_face + face_mesh" in n for n in a.notes)
    # the mesh files are part of the cache key: without them the same source registers anew, with defaults
    resolve(weights, "blaze_face").unlink()
    plain = AuxModels.load(weights)
    assert plain.mesh is None and plain.identity != aux.identity
    b = register_avatar(png.tobytes(), "f.png", CropSettings(), tiny_models(), plain, cache_dir=tmp_path / "cache")
    assert not b.cache_hit and np.array_equal(b.eye_open[0], DEFAULT_EYE_OPEN)

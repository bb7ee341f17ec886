"""Golden parity of the avatar preprocessing: SCRFD decode, both landmark models, crop geometry, eye features.

The auxiliary networks are replaced by fake sessions with ONNX Runtime's `run(None, feed)` interface (golden
README 8.1): they record the tensor our preprocessing feeds them and return the stored raw outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from services.renderer.avatar.crop import crop_image, crop_matrix, rect_from_landmarks, to_input_256
from services.renderer.avatar.detection import FaceDetector
from services.renderer.avatar.eyes import eye_ball, eye_open
from services.renderer.avatar.landmarks import Landmark106, Landmark203
from tests.conftest import golden_case, scaled_error

pytestmark = pytest.mark.golden


class RecordingSession:
    """Stands in for an ONNX model: remembers the feed, returns fixed outputs."""

    def __init__(self, outputs: list[np.ndarray]):
        self.outputs = outputs
        self.feed: dict[str, np.ndarray] = {}

    def run(self, output_names, feed):
        assert output_names is None
        self.feed = dict(feed)
        return self.outputs


@pytest.mark.parametrize("case_name", ["scrfd_decode"], ids=["scrfd_decode"])
def test_scrfd_decode(case_name):
    case, a, _ = golden_case(case_name)
    raw = [a[f"{kind}{i}"] for kind in ("scores", "boxes", "kps") for i in (1, 2, 3)]
    session = RecordingSession(raw)
    det = FaceDetector(session).detect(a["image"])
    np.testing.assert_array_equal(session.feed["image"], a["blob"])
    tol = case["tolerance_suggestion"]["det_kpss_chosen_box"]
    assert det.boxes.shape == a["det"].shape, "number of detections after NMS differs"
    assert np.max(np.abs(det.boxes - a["det"])) <= tol
    assert np.max(np.abs(det.keypoints - a["kpss"])) <= tol
    assert np.max(np.abs(det.largest() - a["chosen_box"])) <= tol


@pytest.mark.parametrize("case_name", ["landmark106_io"], ids=["landmark106_io"])
def test_landmark106_io(case_name):
    case, a, _ = golden_case(case_name)
    session = RecordingSession([a["fc1"]])
    model = Landmark106(session)
    lmk = model(a["image"], a["box"])
    np.testing.assert_array_equal(session.feed["data"], a["blob"])
    _, crop, m = model.prepare(a["image"], a["box"])
    np.testing.assert_array_equal(crop, a["crop"])
    assert np.max(np.abs(m - a["M"])) <= case["tolerance_suggestion"]["M"]
    assert np.max(np.abs(lmk - a["lmk106"])) <= case["tolerance_suggestion"]["lmk106"]


@pytest.mark.parametrize("variant", ["a", "b"], ids=["landmark203_io-first_frame_106", "landmark203_io-tracking_203"])
def test_landmark203_io(variant):
    case, a, _ = golden_case("landmark203_io")
    session = RecordingSession([a[f"fake_out_{variant}"]])
    model = Landmark203(session)
    crop = model.crop(a["image"], a[f"lmk_in_{variant}"])
    lmk = model.run(crop)
    np.testing.assert_array_equal(crop.image, a[f"crop_{variant}"])
    assert scaled_error(crop.M_o2c, a[f"M_o2c_{variant}"]) <= 1e-5
    assert scaled_error(crop.M_c2o, a[f"M_c2o_{variant}"]) <= 1e-5
    np.testing.assert_array_equal(session.feed["input"], a[f"blob_{variant}"])
    assert np.max(np.abs(lmk - a[f"lmk203_{variant}"])) <= case["tolerance_suggestion"]["lmk203"]


@pytest.mark.parametrize("case_name", ["crop_geometry"], ids=["crop_geometry"])
def test_crop_geometry(case_name):
    _, a, _ = golden_case(case_name)
    crop = crop_image(a["image"], a["lmk203"], dsize=512, scale=2.3, vy_ratio=-0.125, rotate=True)
    np.testing.assert_array_equal(crop.image, a["img_crop"])
    assert scaled_error(crop.M_o2c, a["M_o2c"]) <= 1e-5
    assert scaled_error(crop.M_c2o, a["M_c2o"]) <= 1e-5
    np.testing.assert_array_equal(to_input_256(crop.image), a["img_256"])
    rect = rect_from_landmarks(a["lmk203"], 2.3, -0.125)
    got_rect = np.array([*rect.center, *rect.size, rect.angle], dtype=np.float64)
    assert np.max(np.abs(got_rect - a["rect"])) <= 1e-4
    norot = crop_matrix(rect, 512, rotate=False)
    assert scaled_error(norot, a["M_o2c_norot"]) <= 1e-5
    assert scaled_error(np.linalg.inv(norot), a["M_c2o_norot"]) <= 1e-5


@pytest.mark.parametrize("case_name", ["eye_features"], ids=["eye_features"])
def test_eye_features(case_name):
    case, a, _ = golden_case(case_name)
    tol = case["tolerance_suggestion"]
    assert np.max(np.abs(eye_open(a["lmk478"]) - a["eye_open"])) <= tol["eye_open"]
    assert np.max(np.abs(eye_ball(a["lmk478"]) - a["eye_ball"])) <= tol["eye_ball"]
    # each frame on its own gives the same row as the batch (the reference calls it per frame)
    one = eye_ball(a["lmk478"][2:3])
    np.testing.assert_array_equal(one[0], eye_ball(a["lmk478"])[2])

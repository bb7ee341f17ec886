"""Avatar registration end to end: media decoding, crop paths (centred, explicit box, face finding through real
ONNX Runtime sessions), the real renderer extractors (tiny profile), eye defaults, video smoothing and the cache."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from services.renderer.avatar.crop import CropSettings, map_points
from services.renderer.avatar.eyes import DEFAULT_EYE_BALL, DEFAULT_EYE_OPEN
from services.renderer.avatar.register import (
    MOTION_KEYS,
    MediaError,
    NoFaceError,
    limit_size,
    load_media,
    mirror_index,
    register_avatar,
    smooth,
)
from services.renderer.avatar.sessions import AuxModels
from tests.renderer.aux_onnx import write_aux_models
from tests.renderer.renderer_models import face_image, tiny_models


def png_bytes(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def mp4_bytes(frames: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, 25)
            for p in stream.encode(vf):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    return buf.getvalue()


def test_image_centred_crop_and_cache(tmp_path):
    models = tiny_models()
    img = face_image(240, 320)
    media = png_bytes(img)
    a = register_avatar(media, "face.png", CropSettings(), models, AuxModels.none(), cache_dir=tmp_path)
    assert not a.cache_hit and not a.is_video and (a.width, a.height) == (320, 240)
    np.testing.assert_array_equal(a.frames[0], img)
    # centred square: crop pixel (256, 256) (the reference convention) lands on the frame centre;
    # the crop covers the short side
    centre = map_points(np.array([[256.0, 256.0]]), a.M_c2o[0])[0]
    np.testing.assert_allclose(centre, [159.5, 119.5], atol=1e-3)
    assert a.M_c2o[0, 0, 0] == pytest.approx(240 / 512, rel=1e-6)
    info = a.motion_info()
    assert set(info) == {*MOTION_KEYS, "eye_open", "eye_ball"}
    assert info["pitch"].shape == (1, 66) and info["exp"].shape == (1, 63) and info["scale"].shape == (1, 1)
    assert a.x_s(0).shape == (1, 21, 3)
    np.testing.assert_array_equal(info["eye_open"][0], DEFAULT_EYE_OPEN)
    np.testing.assert_array_equal(info["eye_ball"][0], DEFAULT_EYE_BALL)
    # the networks really ran on this picture: another picture gives other motion and appearance
    b = register_avatar(png_bytes(face_image(240, 320, seed=5)[::-1].copy()), "b.png", CropSettings(), models)
    assert not np.allclose(b.motion_info()["kp"], info["kp"])
    # second registration: a cache hit with identical tensors
    again = register_avatar(media, "face.png", CropSettings(), models, AuxModels.none(), cache_dir=tmp_path)
    assert again.cache_hit and again.avatar_id == a.avatar_id
    for k in info:
        np.testing.assert_array_equal(again.motion_info()[k], info[k])
    np.testing.assert_array_equal(again.f_s[0].numpy(), a.f_s[0].numpy())
    np.testing.assert_array_equal(again.M_c2o, a.M_c2o)
    np.testing.assert_array_equal(again.frames[0], img)
    other = register_avatar(media, "face.png", CropSettings(scale=2.0), models, AuxModels.none(), cache_dir=tmp_path)
    assert other.avatar_id != a.avatar_id and not other.cache_hit


def test_explicit_box_without_face_models():
    a = register_avatar(png_bytes(face_image()), None, CropSettings(box=(100, 50, 200, 170), vy_ratio=0.0),
                        tiny_models())
    centre = map_points(np.array([[256.0, 256.0]]), a.M_c2o[0])[0]
    np.testing.assert_allclose(centre, [150, 110], atol=0.6)
    side = 512 * a.M_c2o[0, 0, 0]
    assert side == pytest.approx(120 * 2.3 / 1.5, rel=1e-5)


def test_bad_media_is_a_clear_error():
    with pytest.raises(MediaError, match="empty"):
        register_avatar(b"", "x.png", CropSettings(), tiny_models())
    with pytest.raises(MediaError, match="neither a readable image"):
        load_media(b"this is not a picture at all" * 10, "x.mp4")


def test_face_finding_through_onnx_sessions(tmp_path):
    img = face_image(240, 320)
    write_aux_models(tmp_path / "w", face_box=(110, 50, 210, 190), image_hw=(240, 320))
    aux = AuxModels.load(tmp_path / "w")
    assert aux.can_find_faces and aux.mesh is None and any("face_landmarker" in n for n in aux.notes)
    a = register_avatar(png_bytes(img), "f.png", CropSettings(), tiny_models(), aux)
    assert a.lmk203 is not None and a.lmk203.shape == (1, 203, 2)
    # the 106 layout is centred on the detected box, the 203 layout sits in the 224 crop around it: all inside
    lmk = a.lmk203[0]
    assert lmk[:, 0].min() > 110 and lmk[:, 0].max() < 210 and lmk[:, 1].min() > 50 and lmk[:, 1].max() < 190
    centre = map_points(np.array([[256.0, 256.0]]), a.M_c2o[0])[0]
    assert abs(centre[0] - 160) < 15 and centre[1] < 125  # vy -0.125 moves the crop up, toward the forehead

    # a short video: detection on frame 0, tracking after; motion smoothed over time
    frames = [np.roll(img, 2 * i, axis=1) for i in range(4)]
    v = register_avatar(mp4_bytes(frames), "clip.mp4", CropSettings(), tiny_models(), aux)
    assert v.is_video and v.num_frames == 4 and v.lmk203 is not None and v.lmk203.shape == (4, 203, 2)
    assert [v.source_index(i) for i in range(9)] == [0, 1, 2, 3, 3, 2, 1, 0, 0]
    info = v.motion_info()
    assert info["kp"].shape == (4, 63) and info["eye_open"].shape == (4, 2)
    # all four frames lie within one smoothing window, so smoothed values are equal across frames
    np.testing.assert_allclose(info["kp"], np.broadcast_to(info["kp"].mean(axis=0), (4, 63)), atol=1e-6)


def test_no_face_is_a_clear_error(tmp_path):
    write_aux_models(tmp_path / "w", face_box=None, image_hw=(240, 320))
    with pytest.raises(NoFaceError, match="no face found in the image"):
        register_avatar(png_bytes(face_image()), "f.png", CropSettings(), tiny_models(), AuxModels.load(tmp_path / "w"))


def test_synthetic_weights_have_no_aux_models():
    aux = AuxModels.load("synthetic")
    assert not aux.can_find_faces and aux.notes


def test_mirror_smooth_and_size_limit():
    assert [mirror_index(i, 3) for i in range(9)] == [0, 1, 2, 2, 1, 0, 0, 1, 2]
    assert [mirror_index(i, 1) for i in range(3)] == [0, 0, 0]
    x = np.arange(20, dtype=np.float32)[:, None] ** 2
    s = smooth(x, 13)
    assert s[0, 0] == pytest.approx(np.mean(x[0:7]))
    assert s[10, 0] == pytest.approx(np.mean(x[4:17]))
    assert s[19, 0] == pytest.approx(np.mean(x[13:20]))
    assert limit_size(np.zeros((1001, 2000, 3), np.uint8)).shape == (960, 1920, 3)
    assert limit_size(np.zeros((301, 401, 3), np.uint8)).shape == (300, 400, 3)


def test_weights_identity_in_cache_key(tmp_path: Path):
    media = png_bytes(face_image())
    a = register_avatar(media, "f.png", CropSettings(), tiny_models())
    class Renamed:
        def __init__(self, inner):
            self.inner, self.identity, self.device = inner, "other-weights", "cpu"

        def motion(self, x):
            return self.inner.motion(x)

        def appearance(self, x):
            return self.inner.appearance(x)

    b = register_avatar(media, "f.png", CropSettings(), Renamed(tiny_models()))
    assert a.avatar_id != b.avatar_id

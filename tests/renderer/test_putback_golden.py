"""Paste-back parity (golden `putback_blend`) and the GPU-ready warp emulation against OpenCV itself."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.renderer.putback import Background, PasteOptions, PutBack, WarpTable, blend, feather_mask
from tests.conftest import golden_case


@pytest.mark.golden
@pytest.mark.parametrize("case_name", ["putback_blend"], ids=["putback_blend"])
def test_putback_blend(case_name):
    _, a, _ = golden_case(case_name)
    np.testing.assert_array_equal(feather_mask(), a["mask"][..., 0])
    out = PutBack()(a["frame_rgb"], a["render_image"], a["M_c2o"])
    np.testing.assert_array_equal(out, a["out"])
    # the blend alone, on the stored warps (README 6 option ii)
    np.testing.assert_array_equal(blend(a["mask_warped"], a["render_warped"], a["frame_rgb"]), a["out"])


@pytest.mark.golden
@pytest.mark.parametrize("case_name", ["putback_blend"], ids=["putback_blend-warp_table"])
def test_warp_table_matches_reference_warps(case_name):
    _, a, _ = golden_case(case_name)
    h, w = a["frame_rgb"].shape[:2]
    table = WarpTable.build(a["M_c2o"], (512, 512), (h, w))
    y0, y1, x0, x1 = table.box
    np.testing.assert_array_equal(table.apply(a["render_image"]), a["render_warped"][y0:y1, x0:x1])
    np.testing.assert_array_equal(np.clip(table.apply(a["mask"]), 0, 1), a["mask_warped"][y0:y1, x0:x1])
    # outside the box the reference warps are exactly zero, so the frame passes through unchanged
    outside = np.ones((h, w), dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert not a["render_warped"][outside].any()


def _similarity(rng: np.random.Generator) -> np.ndarray:
    s, th = rng.uniform(0.3, 3.0), rng.uniform(-np.pi, np.pi)
    return np.array([[s * np.cos(th), -s * np.sin(th), rng.uniform(-300, 400)],
                     [s * np.sin(th), s * np.cos(th), rng.uniform(-300, 300)], [0, 0, 1]], dtype=np.float32)


def test_torch_blend_equals_opencv_path_on_random_matrices():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    render = (rng.random((512, 512, 3)) * 255).astype(np.float32)
    pb = PutBack()
    for _ in range(4):
        m = _similarity(rng)
        frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        mask3 = np.clip(cv2.warpAffine(feather_mask(), m[:2], (320, 240)), 0, 1)[..., None]
        ref = blend(mask3, cv2.warpAffine(render, m[:2], (320, 240)), frame)
        np.testing.assert_array_equal(pb(frame, render, m), ref)
        got = pb.blend_torch(torch.from_numpy(frame), torch.from_numpy(render), m).numpy()
        np.testing.assert_array_equal(got, ref)


def test_background_options():
    rng = np.random.default_rng(3)
    render = np.full((512, 512, 3), 200.0, dtype=np.float32)
    frame = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    m = np.array([[0.4, 0, 50], [0, 0.4, 40], [0, 0, 1]], dtype=np.float32)  # crop lands at (50..255, 40..245)
    pb = PutBack()
    rgba = pb(frame, render, m, PasteOptions(background=Background.TRANSPARENT))
    assert rgba.shape == (300, 300, 4)
    assert rgba[150, 150, 3] == 255 and rgba[5, 5, 3] == 0 and rgba[150, 150, 0] == 200
    green = pb(frame, render, m, PasteOptions(background=Background.GREEN))
    assert tuple(green[5, 5]) == (0, 255, 0) and tuple(green[150, 150]) == (200, 200, 200)
    orig = pb(frame, render, m)
    np.testing.assert_array_equal(orig[:30], frame[:30])
    crop = pb(frame, render, m, PasteOptions(paste_back=False))
    assert crop.shape == (512, 512, 3) and crop[256, 256, 0] == 200
    crop_rgba = pb(frame, render, m, PasteOptions(paste_back=False, background=Background.TRANSPARENT))
    assert crop_rgba.shape == (512, 512, 4) and crop_rgba[0, 0, 3] == 0 and crop_rgba[256, 256, 3] == 255


@pytest.mark.gpu
@pytest.mark.golden
@pytest.mark.parametrize("case_name", ["putback_blend"], ids=["putback_blend-cuda"])
def test_putback_blend_on_cuda(case_name):
    import torch

    _, a, _ = golden_case(case_name)
    frame = torch.from_numpy(a["frame_rgb"]).cuda()
    render = torch.from_numpy(a["render_image"]).cuda()
    out = PutBack().blend_torch(frame, render, a["M_c2o"]).cpu().numpy()
    # CUDA may contract the blend into FMAs: allow one grey level where the float blend is near an integer
    diff = np.abs(out.astype(int) - a["out"])
    near_integer = np.abs(a["blend_float"] - np.round(a["blend_float"])) < 1e-4
    assert diff.max() <= 1 and not (diff[~near_integer]).any()


def _whole_frame_paste(pb: PutBack, frame: np.ndarray, render: np.ndarray, m: np.ndarray,
                       background: Background = Background.ORIGINAL) -> np.ndarray:
    """The previous implementation: warp the render over the whole frame with cv2.warpAffine, cut the box, blend."""
    h, w = frame.shape[:2]
    box, mask_w = pb.warped_mask(m, w, h)
    y0, y1, x0, x1 = box
    render_w = cv2.warpAffine(render, np.asarray(m, np.float32)[:2], (w, h), flags=cv2.INTER_LINEAR)[y0:y1, x0:x1]
    if background == Background.TRANSPARENT:
        out = np.zeros((h, w, 4), dtype=np.uint8)
        out[y0:y1, x0:x1, :3] = np.clip(render_w, 0, 255).astype(np.uint8)
        out[y0:y1, x0:x1, 3] = (mask_w[..., 0] * np.float32(255)).astype(np.uint8)
        return out
    out = frame.copy()
    if background == Background.GREEN:
        out[:] = (0, 255, 0)
    out[y0:y1, x0:x1] = blend(mask_w, render_w, out[y0:y1, x0:x1])
    return out


@pytest.mark.parametrize("size", [(512, 512), (1080, 1920), (240, 320)], ids=["512", "1080p", "small"])
def test_box_only_paste_back_is_byte_identical_to_the_whole_frame_warp(size):
    rng = np.random.default_rng(size[0])
    h, w = size
    pb = PutBack()
    for k in range(6):
        # a render with values past [0, 255] (the decoder is not clipped) and the face at real-sized scales, some
        # rotated, some partly outside the frame
        render = rng.uniform(-20, 275, (512, 512, 3)).astype(np.float32)
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        s, th = rng.uniform(0.3, 2.2) * min(h, w) / 512, rng.uniform(-0.6, 0.6)
        cx, cy = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h
        m = np.array([[s * np.cos(th), -s * np.sin(th), cx - 256 * s], [s * np.sin(th), s * np.cos(th), cy - 256 * s],
                      [0, 0, 1]], dtype=np.float32)
        for bg in (Background.ORIGINAL, Background.GREEN, Background.TRANSPARENT):
            got = pb(frame, render, m, PasteOptions(background=bg))
            np.testing.assert_array_equal(got, _whole_frame_paste(pb, frame, render, m, bg), err_msg=f"{k} {bg}")


def test_box_only_paste_back_on_the_real_golden_frame():
    _, a, _ = golden_case("putback_blend")
    pb = PutBack()
    np.testing.assert_array_equal(pb(a["frame_rgb"], a["render_image"], a["M_c2o"]),
                                  _whole_frame_paste(pb, a["frame_rgb"], a["render_image"], a["M_c2o"]))

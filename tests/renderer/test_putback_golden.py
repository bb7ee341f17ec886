"""Paste-back parity (golden `putback_blend`) and the GPU-ready warp emulation against OpenCV itself."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.renderer.putback import (
    Background,
    BoxGrid,
    PasteOptions,
    PutBack,
    WarpTable,
    blend,
    feather_mask,
    over_green,
)
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
    table = WarpTable.build(BoxGrid.build(a["M_c2o"], (512, 512), (h, w)), (512, 512))
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
    y0, y1, x0, x1 = pb.grid(m, w, h).box
    m32 = np.asarray(m, np.float32)[:2]
    mask_w = np.clip(cv2.warpAffine(pb.mask, m32, (w, h), flags=cv2.INTER_LINEAR), 0, 1)[y0:y1, x0:x1, None]
    render_w = cv2.warpAffine(render, m32, (w, h), flags=cv2.INTER_LINEAR)[y0:y1, x0:x1]
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


def _pastes_like_the_whole_frame_warp(pb: PutBack, rng: np.random.Generator, cases: int) -> int:
    """Paste `cases` random renders (values past [0, 255]) onto random 640x480 frames with random similarity
    matrices, some partly outside the frame, and compare each background kind with `_whole_frame_paste`.
    Returns how many cases put some of the face on the frame."""
    on_frame = 0
    for k in range(cases):
        render = rng.uniform(-20, 275, (512, 512, 3)).astype(np.float32)
        frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        s, th = rng.uniform(0.4, 1.6), rng.uniform(-0.6, 0.6)
        m = np.array([[s * np.cos(th), -s * np.sin(th), rng.uniform(-100, 400)],
                      [s * np.sin(th), s * np.cos(th), rng.uniform(-100, 300)], [0, 0, 1]], dtype=np.float32)
        on_frame += not pb.grid(m, 640, 480).empty
        for bg in (Background.ORIGINAL, Background.TRANSPARENT):
            np.testing.assert_array_equal(pb(frame, render, m, PasteOptions(background=bg)),
                                          _whole_frame_paste(pb, frame, render, m, bg), err_msg=f"{k} {bg}")
        alpha = rng.integers(0, 256, (480, 640), dtype=np.uint8)  # blend keeping the avatar's alpha
        rgba = pb(frame, render, m, PasteOptions(background=Background.TRANSPARENT), alpha)
        np.testing.assert_array_equal(rgba[..., :3], _whole_frame_paste(pb, frame, render, m), err_msg=f"{k} alpha")
        np.testing.assert_array_equal(rgba[..., 3], alpha)
    return on_frame


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


@pytest.mark.parametrize("size", [(512, 512), (1080, 1920)], ids=["512", "1080p"])
def test_backgrounds_cut_along_the_avatars_alpha(size):
    """With the avatar's alpha (its person matte), transparent is the ORIGINAL paste with that alpha as the fourth
    channel, byte for byte (the kernel's blend-keeping-alpha mode against the whole-frame warp), and green is it
    composited onto green by c * a / 255 (+ 255 - a in green), rounded."""
    rng = np.random.default_rng(11)
    h, w = size
    pb = PutBack()
    for k in range(3):
        render = rng.uniform(-20, 275, (512, 512, 3)).astype(np.float32)
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
        s, th = rng.uniform(0.3, 2.2) * min(h, w) / 512, rng.uniform(-0.6, 0.6)
        cx, cy = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h
        m = np.array([[s * np.cos(th), -s * np.sin(th), cx - 256 * s], [s * np.sin(th), s * np.cos(th), cy - 256 * s],
                      [0, 0, 1]], dtype=np.float32)
        rgba = pb(frame, render, m, PasteOptions(background=Background.TRANSPARENT), alpha)
        np.testing.assert_array_equal(rgba[..., :3], _whole_frame_paste(pb, frame, render, m), err_msg=str(k))
        np.testing.assert_array_equal(rgba[..., 3], alpha)
        green = pb(frame, render, m, PasteOptions(background=Background.GREEN), alpha)
        a = rgba[..., 3:].astype(np.float64)
        want = np.floor(rgba[..., :3] * a / 255 + 0.5)
        want[..., 1] += 255 - a[..., 0]
        assert np.abs(green.astype(np.int64) - want).max() <= 1  # OpenCV's rounding of the scaled product
        np.testing.assert_array_equal(green, over_green(rgba))
        assert (green[alpha == 0] == (0, 255, 0)).all()
        np.testing.assert_array_equal(green[alpha == 255], rgba[..., :3][alpha == 255])
    # ORIGINAL ignores the alpha; without a crop the matte is warped into the crop
    np.testing.assert_array_equal(pb(frame, render, m, PasteOptions(), alpha), _whole_frame_paste(pb, frame, render, m))
    crop = pb(frame, render, m, PasteOptions(paste_back=False, background=Background.TRANSPARENT), alpha)
    m_o2c = np.linalg.inv(m.astype(np.float64))[:2]
    np.testing.assert_array_equal(crop[..., 3], cv2.warpAffine(alpha, m_o2c, (512, 512), flags=cv2.INTER_LINEAR))


def test_box_only_paste_back_on_the_real_golden_frame():
    _, a, _ = golden_case("putback_blend")
    pb = PutBack()
    np.testing.assert_array_equal(pb(a["frame_rgb"], a["render_image"], a["M_c2o"]),
                                  _whole_frame_paste(pb, a["frame_rgb"], a["render_image"], a["M_c2o"]))


def test_paste_back_from_several_threads_at_once_gives_each_its_own_bytes():
    """The renderer pastes a batch's frames from several threads (the kernel releases the GIL): every result must
    be the one a lone call gives."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    pb = PutBack()
    jobs = []
    for k in range(8):
        s, th = rng.uniform(0.5, 1.5), rng.uniform(-0.5, 0.5)
        m = np.array([[s * np.cos(th), -s * np.sin(th), 40.0 * k], [s * np.sin(th), s * np.cos(th), 20.0],
                      [0, 0, 1]], dtype=np.float32)
        jobs.append((rng.integers(0, 256, (600, 800, 3), dtype=np.uint8),
                     rng.uniform(0, 255, (512, 512, 3)).astype(np.float32), m))
    expected = [_whole_frame_paste(pb, *job) for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            for got, want in zip(pool.map(lambda job: pb(*job), jobs), expected, strict=True):
                np.testing.assert_array_equal(got, want)


def test_a_face_outside_the_frame_leaves_the_frame_as_it_is():
    pb = PutBack()
    frame = np.random.default_rng(2).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    render = np.full((512, 512, 3), 128, np.float32)
    for tx, ty in ((-2000, 0), (5000, 50), (0, -900), (10, 4000)):
        m = np.array([[0.5, 0, tx], [0, 0.5, ty], [0, 0, 1]], dtype=np.float32)
        assert pb.grid(m, 320, 240).empty
        np.testing.assert_array_equal(pb(frame, render, m), frame)
        assert not pb(frame, render, m, PasteOptions(background=Background.TRANSPARENT)).any()


def test_a_render_of_the_wrong_shape_is_refused():
    pb = PutBack()
    with pytest.raises(ValueError, match="does not match the mask"):
        pb(np.zeros((240, 320, 3), np.uint8), np.zeros((256, 256, 3), np.float32),
           np.array([[0.5, 0, 0], [0, 0.5, 0], [0, 0, 1]], np.float32))


@pytest.mark.parametrize("kind", ["no_ones", "ones_not_a_rectangle", "ones_at_the_border"])
def test_paste_back_with_other_masks_is_byte_identical_too(kind):
    """The kernel skips sampling the mask where its four neighbours are exactly 1: a mask whose ones do not form
    a rectangle, or that has none, or reaches the border, must give the whole-frame warp's bytes all the same."""
    from services.renderer.paste_kernel import ones_rect

    rng = np.random.default_rng(5)
    mask = rng.uniform(0, 1, (512, 512)).astype(np.float32)
    if kind == "ones_not_a_rectangle":
        mask[100:300, 100:300] = 1
        mask[350:400, 50:90] = 1
        assert not ones_rect(mask).any()
    elif kind == "ones_at_the_border":
        mask[:200, :] = 1
        np.testing.assert_array_equal(ones_rect(mask), [0, 200, 0, 512])
    _pastes_like_the_whole_frame_warp(PutBack(mask=mask), rng, cases=4)


def test_the_compiled_kernel_refuses_arguments_that_do_not_fit_and_writes_nothing():
    """The C pass trusts only what it has checked: a render, mask or grid vector of the wrong length, a grid column
    vector that is not monotone (its runs would not hold), a box outside the frame, a channel count that does not
    match the mode or an unknown mode is a ValueError, never a write."""
    from services.renderer import _paste
    from services.renderer.paste_kernel import WEIGHTS, ones_rect

    pb = PutBack()
    frame = np.zeros((120, 160, 3), np.uint8)
    grid = pb.grid(np.array([[0.2, 0, 10], [0, 0.2, 10], [0, 0, 1]], np.float32), 160, 120)
    render = np.full((512, 512, 3), 100, np.float32)
    ok = dict(render=render, mask=pb.mask, ones=ones_rect(pb.mask), row_x=grid.row_x, row_y=grid.row_y,
              col_x=grid.col_x, col_y=grid.col_y, weights=WEIGHTS, frame=frame, render_hw=(512, 512),
              frame_shape=frame.shape, box=grid.box, mode=0)

    def call(**change):
        _paste.paste_box(*{**ok, **change}.values())

    call()
    assert frame.any()  # the valid call pastes
    frame[:] = 0
    y0, y1, x0, x1 = grid.box
    for change in (dict(render=render[:256]), dict(render_hw=(512, 1024)), dict(mask=pb.mask[:100]),
                   dict(row_x=grid.row_x[:-1]), dict(col_y=grid.col_y[1:]), dict(weights=WEIGHTS[:100]),
                   dict(box=(y0, 121, x0, x1)), dict(box=(-1, y1, x0, x1)), dict(frame_shape=(120, 160, 4)),
                   dict(frame=frame[:60]), dict(mode=1), dict(mode=2), dict(mode=7), dict(render_hw=(1, 1)),
                   dict(col_x=np.ascontiguousarray(grid.col_x[::-1] * np.where(np.arange(x1 - x0) % 2, 1, -1)
                                                   .astype(np.int32)))):
        with pytest.raises(ValueError, match="paste_box"):
            call(**change)
    assert not frame.any()


_GUARD_PAGE_SCRIPT = """
import ctypes, mmap
import numpy as np
from services.renderer.putback import Background, PasteOptions, PutBack

n = 512 * 512 * 3 * 4                      # the render's bytes: a whole number of pages
buf = mmap.mmap(-1, n + mmap.PAGESIZE)
base = ctypes.addressof((ctypes.c_char * (n + mmap.PAGESIZE)).from_buffer(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.mprotect(ctypes.c_void_p(base + n), mmap.PAGESIZE, 0) == 0  # PROT_NONE: a read there is SIGSEGV
render = np.frombuffer(buf, np.float32, 512 * 512 * 3).reshape(512, 512, 3)
render[:] = np.random.default_rng(0).uniform(0, 255, render.shape)
mask = np.ones((512, 512), np.float32)     # ones up to the last row and column: the all-ones run reaches the corner
mask[:8] = 0.5
pb = PutBack(mask=mask)
frame = np.zeros((900, 900, 3), np.uint8)
m = np.array([[1.7, 0, 10], [0, 1.7, 10], [0, 0, 1]], np.float32)
for bg in (Background.ORIGINAL, Background.TRANSPARENT):
    pb(frame, render, m, PasteOptions(background=bg))
print("ok")
"""


def test_the_vector_loads_never_read_past_the_render():
    """Each 4-lane sample reads one float beyond the pixel it needs; the kernel keeps that float inside the render.
    The render here ends where an unreadable page begins and its mask is 1 up to the last row and column, so the
    samples next to the render's bottom-right corner would fault if the guard were wrong (in a child process)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _GUARD_PAGE_SCRIPT], cwd=root, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


def test_the_portable_build_pastes_the_same_bytes(tmp_path, monkeypatch):
    """Machines without SSE2 (ARM servers) compile `_paste.c`'s generic vector code instead of its x86 intrinsics.
    Built here with __SSE2__ undefined, as such a machine would see it, and put in the installed module's place, it
    must paste cv2.warpAffine's bytes in both modes on random matrices and frames."""
    import importlib.util
    import shutil
    import subprocess
    import sysconfig
    from pathlib import Path

    from services.renderer import paste_kernel

    source = Path(paste_kernel.__file__).with_name("_paste.c")
    module = tmp_path / f"_paste{sysconfig.get_config_var('EXT_SUFFIX')}"
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler, "no C compiler: make setup installs gcc"
    subprocess.run([compiler, "-O3", "-ffp-contract=off", "-Wall", "-Werror", "-U__SSE2__", "-fPIC", "-shared",
                    f"-I{sysconfig.get_paths()['include']}", "-o", str(module), str(source)], check=True, timeout=120)
    spec = importlib.util.spec_from_file_location("portable._paste", module)
    assert spec is not None and spec.loader is not None
    portable = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(portable)
    monkeypatch.setattr(paste_kernel, "_paste", portable)

    assert _pastes_like_the_whole_frame_warp(PutBack(), np.random.default_rng(11), cases=8) == 8

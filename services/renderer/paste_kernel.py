"""The CPU paste-back of one frame as a single compiled pass over the face box (`_paste.c`, a C extension built at
install): for each destination pixel, OpenCV 4.10's fixed-point bilinear sample of the render and of the feather
mask, then the reference's float32 blend into the frame, clipped and truncated to uint8 (docs/model.md §7.1-7.2).

Why one compiled pass: done as an OpenCV remap and numpy array operations, the same work reads and writes the box
six times over in float32 (1080p: 7.7 ms a frame on one core, bench/results/postprocess.json) and needs per-pixel
maps cached per source frame (20 MB each at 1080p). Here every box pixel is touched once, the mask is not sampled
where it is exactly 1, and the source positions come from the separable terms warpAffine itself sums (`BoxGrid`),
so nothing per pixel is stored.

Why C and not numba (which this was until the numbers below): along a row of the box the source position moves
monotonically, so the columns outside the crop, on the mask's feathered rim and on its all-ones rectangle are three
runs; the all-ones run (two thirds of the box) then needs no per-pixel test, every sample takes the three channels
in one 4-lane vector, and a pixel's bytes are written in one store. Per frame including the frame copy, measured
against the numba pass in one interleaved run on the 2-core VM (byte-identical in both modes): 0.75-0.77x at 1080p
(772 px box) and 0.64x at 512x512, 0.89x when every call starts with cold caches at 512x512. On the way: the fused
pass in C with SSE samples alone was 1.04x; per-row runs 0.88x (baseline x86-64) and 0.79x (x86-64-v3, which
`_paste.c` now builds beside the baseline and picks at load time); the same per-row runs written in numba were
1.1-2.1x (its inlined rim loops compile badly). Tried, no gain: per-row vectorised source indices 0.96x, AVX2
gathers (slower than scalar loads on this AMD EPYC), copying only the frame outside the box (slower than one copy),
an incremental source position (not exact: warpAffine rounds each column's share on its own). Dropping numba also
drops its first-call compile (about a second per process) and two large dependencies.

Exactness: each float32 operation is a separate IEEE float32 operation in OpenCV's order (`_paste.c` says how the
build keeps it so). The tests compare against `cv2.warpAffine` over the whole frame, byte for byte.
"""

from __future__ import annotations

import numpy as np

from . import _paste

F32 = np.float32

# How each channel is written: blended into the frame (ORIGINAL background); the warped render with the warped mask
# as alpha on a transparent frame (RGBA, an avatar without a person matte); blended into the RGB of an RGBA frame
# whose alpha, the avatar's person matte, stays (BLEND_KEEP_ALPHA: transparent and green backgrounds).
BLEND, RGBA, BLEND_KEEP_ALPHA = 0, 1, 2


def bilinear_weights() -> np.ndarray:
    """[1024 * 4] float32: OpenCV's bilinear weights w00, w01, w10, w11 for the fractional index fy * 32 + fx."""
    k = np.arange(1024)
    a, b = (k & 31).astype(F32) / F32(32), (k >> 5).astype(F32) / F32(32)
    one = F32(1)
    return np.ascontiguousarray(np.stack([(one - b) * (one - a), (one - b) * a, b * (one - a), b * a], -1)).ravel()


WEIGHTS = bilinear_weights()


def ones_rect(mask: np.ndarray) -> np.ndarray:
    """int64 [4] rows y0:y1, cols x0:x1: the bounding rectangle of the mask's exact ones when it holds nothing
    else (the feather mask's inner box), else an empty rectangle (then every pixel is sampled and blended)."""
    ys, xs = np.nonzero(mask == 1)
    if len(ys):
        rect = np.array([ys.min(), ys.max() + 1, xs.min(), xs.max() + 1], np.int64)
        if (mask[rect[0]:rect[1], rect[2]:rect[3]] == 1).all():
            return rect
    return np.zeros(4, np.int64)


def paste(render: np.ndarray, mask: np.ndarray, ones: np.ndarray, grid, frame: np.ndarray, mode: int = BLEND) -> None:
    """Paste into `grid.box` of `frame` (uint8 [H, W, 3], or [H, W, 4] in the RGBA modes; C-contiguous, in place)
    from a `BoxGrid` (services.renderer.putback) and the mask's `ones_rect`; releases the GIL."""
    if render.shape[:2] != mask.shape[:2] or render.shape[2:] != (3,):
        raise ValueError(f"render {render.shape} does not match the mask {mask.shape} (expected [h, w, 3])")
    if frame.dtype != np.uint8 or frame.ndim != 3 or not frame.flags.c_contiguous:
        raise ValueError(f"frame must be a C-contiguous uint8 [H, W, C] array, not {frame.dtype} {frame.shape}")
    _paste.paste_box(np.ascontiguousarray(render, dtype=F32), np.ascontiguousarray(mask, dtype=F32),
                     np.ascontiguousarray(ones, dtype=np.int64), grid.row_x, grid.row_y, grid.col_x, grid.col_y,
                     WEIGHTS, frame, render.shape[:2], frame.shape, grid.box, mode)

"""The CPU paste-back of one frame as a single compiled pass over the face box (numba): for each destination pixel,
OpenCV 4.10's fixed-point bilinear sample of the render and of the feather mask, then the reference's float32
blend into the frame, clipped and truncated to uint8 (docs/model.md §7.1-7.2).

Why one fused pass: done as an OpenCV remap and numpy array operations, the same work reads and writes the box six
times over in float32 (1080p: 7.7 ms a frame on one core against 3.6 ms here, bench/results/postprocess.json) and
needs per-pixel maps cached per source frame (20 MB each at 1080p). Here every box pixel is touched once, the mask
is not sampled where it is exactly 1, and the source positions come from the separable terms warpAffine itself sums
(`BoxGrid`), so nothing per pixel is stored.

Exactness: each float32 operation is a separate IEEE float32 operation in OpenCV's order (numba compiles without
`contract`, so no fused multiply-add, and without `reassoc`); the fast-math flags used only drop NaN, infinity and
signed-zero cases, which a finite render does not produce and which the clip to [0, 255] hides. The tests compare
against `cv2.warpAffine` over the whole frame, byte for byte.

Where the time goes at 1080p (772 px box; C replicas timed in one run on the 2-core VM): the frame copy before the
pass 0.2-0.4 ms; the 199k pixels of the rim and the corners outside the warped crop 1.3 ms (the rim's 91k blended
pixels sample the mask and blend, about 4x an all-ones pixel); the 397k all-ones pixels 1.2 ms. Tried and not kept,
each exact, ratios to this kernel: 4-lane SSE samples 1.04x; separate rim and all-ones loops per row with SSE
0.87-0.92x (in numba the same split is 2.1x: the inlined rim loops compile badly); per-row vectorised source indices
0.96x; an RGBX render through LLVM's SLP vectoriser 0.97x; AVX2 gathers slower than scalar loads on this AMD EPYC;
an incremental source position is not exact (warpAffine rounds each column's share on its own).
"""

from __future__ import annotations

import numba
import numpy as np

F32 = np.float32

# How each channel is written: blended into the frame (ORIGINAL and GREEN backgrounds), or the warped render with
# the warped mask as alpha on a transparent frame (RGBA).
BLEND, RGBA = 0, 1


def bilinear_weights() -> np.ndarray:
    """[1024 * 4] float32: OpenCV's bilinear weights w00, w01, w10, w11 for the fractional index fy * 32 + fx."""
    k = np.arange(1024)
    a, b = (k & 31).astype(F32) / F32(32), (k >> 5).astype(F32) / F32(32)
    one = F32(1)
    return np.ascontiguousarray(np.stack([(one - b) * (one - a), (one - b) * a, b * (one - a), b * a], -1)).ravel()


WEIGHTS = bilinear_weights()


@numba.njit(nogil=True)
def _edge_sample(src, channels, h, w, x, y, c, w00, w01, w10, w11):  # pragma: no cover - compiled
    """One channel of the bilinear sample at (x, y) when a neighbour lies outside the source: 0 there (OpenCV's
    constant border). The rare case (the box's rim), kept out of the main loop."""
    z = np.float32(0)
    s00 = src[(y * w + x) * channels + c] if (0 <= y < h and 0 <= x < w) else z
    s01 = src[(y * w + x + 1) * channels + c] if (0 <= y < h and 0 <= x + 1 < w) else z
    s10 = src[((y + 1) * w + x) * channels + c] if (0 <= y + 1 < h and 0 <= x < w) else z
    s11 = src[((y + 1) * w + x + 1) * channels + c] if (0 <= y + 1 < h and 0 <= x + 1 < w) else z
    return s00 * w00 + s01 * w01 + s10 * w10 + s11 * w11


# Indices are unsigned where they are known to be in range: numba checks signed indices for negative wraparound.
@numba.njit(nogil=True, boundscheck=False, error_model="numpy", fastmath={"nnan", "ninf", "nsz"})
def paste_box(render, mask, ones, row_x, row_y, col_x, col_y, weights, region, mode):  # pragma: no cover - compiled
    """Paste into `region` (the frame's box, uint8 [bh, bw, 3], or [bh, bw, 4] in RGBA mode) in place.

    render: float32 [h, w, 3] C-contiguous; mask: float32 [h, w] C-contiguous; ones: int64 [4] rows y0:y1, cols
    x0:x1 of a rectangle where the mask is exactly 1 (empty if none); row_*/col_*: int32 [bh] / [bw], the source
    position of box pixel (i, j) in 1/1024 pixel being row_x[i] + col_x[j] (see `BoxGrid`)."""
    h, w = render.shape[0], render.shape[1]
    src, msk = render.reshape(-1), mask.reshape(-1)
    one, lo, hi = np.float32(1), np.float32(0), np.float32(255)
    u1, u2, u3, uw, urow = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(w), np.uint64(w * 3)
    oy0, oy1, ox0, ox1 = ones[0], ones[1], ones[2], ones[3]
    for i in range(region.shape[0]):
        rx, ry = np.int64(row_x[i]), np.int64(row_y[i])
        for j in range(region.shape[1]):
            xq, yq = (rx + col_x[j]) >> 5, (ry + col_y[j]) >> 5   # 1/32 pixel, as warpAffine hands its remap
            x, y = xq >> 5, yq >> 5
            if x < -1 or y < -1 or x >= w or y >= h:
                continue  # all four neighbours outside: mask 0 and render 0, what the region holds or keeps
            k = np.uint64(((yq & 31) * 32 + (xq & 31)) * 4)
            w00, w01, w10, w11 = weights[k], weights[k + u1], weights[k + u2], weights[k + u3]
            if ox0 <= x and x + 1 < ox1 and oy0 <= y and y + 1 < oy1:
                # the four mask neighbours are 1, so the warped mask is exactly 1 (the weights are multiples of
                # 1/1024 summing to 1) and the blend is the render itself: most of the face takes this path
                q = np.uint64((y * w + x) * 3)
                for c in range(3):
                    v = src[q] * w00 + src[q + u3] * w01 + src[q + urow] * w10 + src[q + urow + u3] * w11
                    region[i, j, c] = np.uint8(min(max(v, lo), hi))
                    q += u1
                if mode == RGBA:
                    region[i, j, 3] = np.uint8(hi)
                continue
            inside = x >= 0 and y >= 0 and x + 1 < w and y + 1 < h
            if inside:
                p = np.uint64(y * w + x)
                m = msk[p] * w00 + msk[p + u1] * w01 + msk[p + uw] * w10 + msk[p + uw + u1] * w11
            else:
                m = _edge_sample(msk, 1, h, w, x, y, 0, w00, w01, w10, w11)
            m = min(max(m, lo), one)
            if m == 0 and mode != RGBA:
                continue  # 0 * render + 1 * frame is the frame itself
            for c in range(3):
                if inside:
                    q = np.uint64((y * w + x) * 3 + c)
                    v = src[q] * w00 + src[q + u3] * w01 + src[q + urow] * w10 + src[q + urow + u3] * w11
                else:
                    v = _edge_sample(src, 3, h, w, x, y, c, w00, w01, w10, w11)
                if mode != RGBA and m != one:  # where the mask is 1 the blend is the render itself
                    v = m * v + (one - m) * np.float32(region[i, j, c])
                region[i, j, c] = np.uint8(min(max(v, lo), hi))
            if mode == RGBA:
                region[i, j, 3] = np.uint8(m * hi)


def ones_rect(mask: np.ndarray) -> np.ndarray:
    """int64 [4] rows y0:y1, cols x0:x1: the bounding rectangle of the mask's exact ones when it holds nothing
    else (the feather mask's inner box), else an empty rectangle (then every pixel is sampled and blended)."""
    ys, xs = np.nonzero(mask == 1)
    if len(ys):
        rect = np.array([ys.min(), ys.max() + 1, xs.min(), xs.max() + 1], np.int64)
        if (mask[rect[0]:rect[1], rect[2]:rect[3]] == 1).all():
            return rect
    return np.zeros(4, np.int64)


def paste(render: np.ndarray, mask: np.ndarray, ones: np.ndarray, grid, region: np.ndarray, mode: int = BLEND) -> None:
    """`paste_box` on a `BoxGrid` (services.renderer.putback) and the mask's `ones_rect`; releases the GIL."""
    if render.shape[:2] != mask.shape[:2] or render.shape[2:] != (3,):
        raise ValueError(f"render {render.shape} does not match the mask {mask.shape} (expected [h, w, 3])")
    paste_box(np.ascontiguousarray(render, dtype=F32), np.ascontiguousarray(mask, dtype=F32), ones, grid.row_x,
              grid.row_y, grid.col_x, grid.col_y, WEIGHTS, region, mode)

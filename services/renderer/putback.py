"""Paste-back: the 512x512 render is warped into the source frame with M_c2o and feather-blended
(docs/model.md §7.1-7.2).

`out = uint8(trunc(clip(m * render_w + (1 - m) * frame, 0, 255)))` in float32, one rounding per operation, with
the mask and render warped by OpenCV 4.10's bilinear `warpAffine`. Both implementations of that warp start from
`BoxGrid`, the source position of each pixel of the face box in warpAffine's own fixed-point arithmetic:
- CPU: `paste_kernel`, one compiled pass over the box that samples, blends and writes each pixel; the bytes equal
  `cv2.warpAffine` over the whole frame cut to the box (checked in the tests), at the cost of the box only.
- torch (GPU): `WarpTable`, the same samples as a gather with per-pixel weights, built on the device; bit-exact
  with cv2 on float32 images (checked in the tests).
Both touch only the bounding box of the warped crop: outside it the mask is 0 and the frame passes unchanged,
which is exactly what the full-frame formula gives there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from cachetools import LRUCache

from . import paste_kernel
from .paste_kernel import bilinear_weights

F32 = np.float32


class Background(enum.IntEnum):
    """What the face is pasted onto (values as in `ditto.v1.Background`; 0 means ORIGINAL).

    TRANSPARENT and GREEN cut along the avatar's alpha (its person matte with room for the head, `avatar/matte.py`):
    the frame is pasted as for ORIGINAL, then the alpha is its fourth channel (RGBA) or blends it onto green. An
    avatar without a matte (face models off) cuts along the warped feather mask: the face crop only."""

    ORIGINAL = 1
    TRANSPARENT = 2  # RGBA: the person cut out
    GREEN = 3        # the person on pure green, for chroma keying


GREEN_RGB = (0, 255, 0)


def feather_mask(width: int = 512, height: int = 512, ratio_w: float = 0.9, ratio_h: float = 0.9) -> np.ndarray:
    """[H, W] float32 feather mask: 1 inside the centred ratio box, linear ramps to 0 at the borders, radial corners."""
    w, h = int(width * ratio_w), int(height * ratio_h)
    x1, y1 = (width - w) // 2, (height - h) // 2
    x2, y2 = x1 + w, y1 + h
    mask = np.zeros((height, width), dtype=F32)
    mask[y1:y2, x1:x2] = 1
    up, down = np.linspace(0, 1, y1), np.linspace(1, 0, height - y2)       # ramps along the rows
    left, right = np.linspace(0, 1, x1), np.linspace(1, 0, width - x2)     # and along the columns
    mask[:y1, x1:x2] = up[:, None]
    mask[y2:, x1:x2] = down[:, None]
    mask[y1:y2, :x1] = left[None, :]
    mask[y1:y2, x2:] = right[None, :]

    def corner(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        # distance to the inner corner, in float64, cast to float32 before the clip and the `1 -` (as the reference)
        r = np.sqrt(u[None, :] ** 2 + v[:, None] ** 2).astype(F32)
        return F32(1) - np.clip(r, F32(0), F32(1))

    mask[:y1, :x1] = corner(np.linspace(1, 0, x1), np.linspace(1, 0, y1))
    mask[:y1, x2:] = corner(np.linspace(0, 1, width - x2), np.linspace(1, 0, y1))
    mask[y2:, :x1] = corner(np.linspace(1, 0, x1), np.linspace(0, 1, height - y2))
    mask[y2:, x2:] = corner(np.linspace(0, 1, width - x2), np.linspace(0, 1, height - y2))
    return mask


def over_green(rgba: np.ndarray) -> np.ndarray:
    """RGBA uint8 -> RGB uint8 on pure green (`on_green`)."""
    return on_green(np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]))


def on_green(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """RGB uint8 with alpha uint8 -> RGB uint8 on pure green: c * a / 255 (+ 255 - a in the green channel), rounded
    (OpenCV's saturating arithmetic)."""
    out = cv2.multiply(rgb, cv2.merge([alpha, alpha, alpha]), scale=1 / 255)
    out[..., 1] = cv2.add(np.ascontiguousarray(out[..., 1]), 255 - alpha)  # g * a / 255 <= a: never saturates
    return out


def blend(mask_w: np.ndarray, render_w: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """The reference's float32 blend, clipped and truncated to uint8. mask_w [h,w,1|3], render_w [h,w,3]."""
    b = mask_w * render_w + (F32(1) - mask_w) * frame.astype(F32)
    return np.clip(b, 0, 255).astype(np.uint8)


def _round_even(x: np.ndarray) -> np.ndarray:
    # rint rounds half to even, as OpenCV's saturate_cast<int>(double); int32 as OpenCV's own sums
    return np.clip(np.rint(x), -2**31, 2**31 - 1).astype(np.int32)


@dataclass(frozen=True)
class BoxGrid:
    """Where OpenCV 4.10's bilinear `warpAffine` (INTER_BITS 5, constant 0 border) samples the source for each
    destination pixel of a box, in the terms it computes them: the inverse matrix in float64, each row's and each
    column's share rounded to 1/1024 pixel, summed, then shifted to 1/32 pixel. Pixel (i, j) of the box samples at
    x = (row_x[i] + col_x[j]) >> 5, y = (row_y[i] + col_y[j]) >> 5 in 1/32 pixel, so the grid costs O(bh + bw)
    memory, not a map per pixel."""

    box: tuple[int, int, int, int]  # destination rows y0:y1, cols x0:x1
    row_x: np.ndarray               # [bh] int32, in 1/1024 pixel (the rounding offset included)
    row_y: np.ndarray
    col_x: np.ndarray               # [bw] int32
    col_y: np.ndarray

    @classmethod
    def build(cls, m: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> BoxGrid:
        m64 = np.asarray(m, dtype=F32)[:2].astype(np.float64)
        box = _dest_box(m64, src_hw, dst_hw)
        det = m64[0, 0] * m64[1, 1] - m64[0, 1] * m64[1, 0]
        det = 1.0 / det if det != 0 else 0.0
        i00, i01 = m64[1, 1] * det, -m64[0, 1] * det
        i10, i11 = -m64[1, 0] * det, m64[0, 0] * det
        i02 = -i00 * m64[0, 2] - i01 * m64[1, 2]
        i12 = -i10 * m64[0, 2] - i11 * m64[1, 2]
        y0, y1, x0, x1 = box
        ys, xs = np.arange(y0, y1, dtype=np.float64), np.arange(x0, x1, dtype=np.float64)
        return cls(box, _round_even((i01 * ys + i02) * 1024) + 16, _round_even((i11 * ys + i12) * 1024) + 16,
                   _round_even((i00 * xs) * 1024), _round_even((i10 * xs) * 1024))

    @property
    def empty(self) -> bool:
        y0, y1, x0, x1 = self.box
        return y1 <= y0 or x1 <= x0

    @property
    def nbytes(self) -> int:
        return self.row_x.nbytes + self.row_y.nbytes + self.col_x.nbytes + self.col_y.nbytes


@dataclass(frozen=True)
class WarpTable:
    """The same warp as gather indices and weights, for numpy arrays or torch tensors (the GPU paste-back builds it
    on the device for each frame from the cached `BoxGrid`: a few elementwise operations there, and no per-pixel
    table kept in memory)."""

    box: tuple[int, int, int, int]
    index: Any   # [4, bh, bw] int64 flat source indices of the 4 neighbours (0 where outside)
    weight: Any  # [4, bh, bw] float32 weights w00, w01, w10, w11 (0 where the neighbour is outside)

    @classmethod
    def build(cls, grid: BoxGrid, src_hw: tuple[int, int], device: Any = None) -> WarpTable:
        """numpy arrays when `device` is None, else torch tensors on that device."""
        xp: Any = np
        if device is not None:
            import torch

            xp = torch

        def put(a: np.ndarray) -> Any:
            a = a.astype(np.int64) if a.dtype == np.int32 else a  # indices as int64 on either side
            return a if device is None else torch.as_tensor(a, device=device)

        xq = (put(grid.row_x)[:, None] + put(grid.col_x)[None, :]) >> 5
        yq = (put(grid.row_y)[:, None] + put(grid.col_y)[None, :]) >> 5
        sx, sy = xq >> 5, yq >> 5
        taps = put(bilinear_weights().reshape(1024, 4))[(yq & 31) * 32 + (xq & 31)]  # [bh, bw, 4]
        h, w = src_hw
        index, weight = [], []
        for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            yy, xx = sy + dy, sx + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            index.append(xp.where(inside, yy * w + xx, 0))
            weight.append(xp.where(inside, taps[..., k], 0))
        return cls(grid.box, xp.stack(index), xp.stack(weight))

    def apply(self, src: Any) -> Any:
        """Warp a [h, w, c] float32 numpy array or torch tensor (as the table); returns the [bh, bw, c] box."""
        flat = src.reshape(-1, src.shape[-1])
        idx, wt = self.index, self.weight
        # summed in OpenCV's order: ((s00 w00 + s01 w01) + s10 w10) + s11 w11
        out = flat[idx[0]] * wt[0][..., None]
        for k in (1, 2, 3):
            out = out + flat[idx[k]] * wt[k][..., None]
        return out


def _grid_bytes(grid: BoxGrid) -> int:
    return grid.nbytes + 256  # the vectors and the object around them


def _matrix_key(m_c2o: np.ndarray, width: int, height: int) -> tuple[np.ndarray, tuple[bytes, int, int]]:
    """The float32 2x3 crop-to-frame matrix and the cache key of everything derived from it at one frame size."""
    m = np.ascontiguousarray(np.asarray(m_c2o, dtype=F32)[:2])
    return m, (m.tobytes(), width, height)


def _dest_box(m: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Rows y0:y1, cols x0:x1 of the destination that the warped source can touch (with a 2 px margin)."""
    h, w = src_hw
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], dtype=np.float64) - [0.5, 0.5, 0]
    pts = corners @ m[:2].T
    x0, y0 = np.floor(pts.min(axis=0)) - 2
    x1, y1 = np.ceil(pts.max(axis=0)) + 3
    dh, dw = dst_hw
    return (int(np.clip(y0, 0, dh)), int(np.clip(y1, 0, dh)), int(np.clip(x0, 0, dw)), int(np.clip(x1, 0, dw)))


@dataclass(frozen=True)
class PasteOptions:
    background: Background = Background.ORIGINAL
    paste_back: bool = True  # False: emit the 512 crop itself


class PutBack:
    """Pastes renders into frames. The sampling grid of each (matrix, frame size) is cached: a source has one
    matrix per frame, and an entry is a few kilobytes (four int32 vectors along the box's sides, 13 KB for a face
    on a 1080p frame), so the default 32 MiB hold the grids of a 1080p video source of over 2000 frames; the cache
    is bounded by those bytes. The per-frame cost is one pass over the face box (`paste_kernel`).

    Transparent and green backgrounds with the avatar's alpha: outside the face box the output depends on the
    source frame alone (the frame with its alpha, or that on green), so it is made once per source frame and kept
    (`cut_bytes`, least recently used out; 256 MiB hold 32 1080p source frames); a frame is a copy of it with the
    face box pasted over."""

    def __init__(self, mask: np.ndarray | None = None, cache_bytes: int = 32 << 20, cut_bytes: int = 256 << 20):
        self.mask = np.ascontiguousarray(feather_mask() if mask is None else np.asarray(mask, dtype=F32))  # [512, 512]
        self._mask_ones = paste_kernel.ones_rect(self.mask)
        self._grids: LRUCache[tuple[bytes, int, int], BoxGrid] = LRUCache(cache_bytes, getsizeof=_grid_bytes)
        # (id(frame), id(alpha), background) -> (frame, alpha, the cut-out source frame); holding the arrays keeps
        # their ids from being reused while the entry lives
        self._cuts: LRUCache[tuple[int, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = LRUCache(
            cut_bytes, getsizeof=lambda v: v[2].nbytes)
        self._lock = threading.Lock()  # render_many may paste from several threads
        self._device_masks: dict[str, Any] = {}

    def _cut(self, frame: np.ndarray, alpha: np.ndarray, background: Background) -> np.ndarray:
        """The source frame cut out along its alpha: RGBA (transparent) or RGB on green; cached, do not write to it."""
        key = (id(frame), id(alpha), int(background))
        with self._lock:
            hit = self._cuts.get(key)
        if hit is not None and hit[0] is frame and hit[1] is alpha:
            return hit[2]
        if background == Background.TRANSPARENT:
            cut = cv2.merge([*cv2.split(frame), alpha])
        else:
            cut = on_green(np.ascontiguousarray(frame), alpha)
        with self._lock, contextlib.suppress(ValueError):  # larger than the whole cache: not kept
            self._cuts[key] = (frame, alpha, cut)
        return cut

    def _paste_cut(self, frame: np.ndarray, render: np.ndarray, grid: BoxGrid, alpha: np.ndarray,
                   background: Background) -> np.ndarray:
        out = self._cut(frame, alpha, background).copy()
        if grid.empty:
            return out
        if background == Background.TRANSPARENT:  # the RGB blended as for ORIGINAL, the alpha left as it is
            paste_kernel.paste(render, self.mask, self._mask_ones, grid, out, paste_kernel.BLEND_KEEP_ALPHA)
            return out
        y0, y1, x0, x1 = grid.box  # green: the face box blended as for ORIGINAL, then onto green
        box = np.ascontiguousarray(frame[y0:y1, x0:x1])
        paste_kernel.paste(render, self.mask, self._mask_ones, dataclasses.replace(grid, box=(0, y1 - y0, 0, x1 - x0)),
                           box, paste_kernel.BLEND)
        out[y0:y1, x0:x1] = on_green(box, np.ascontiguousarray(alpha[y0:y1, x0:x1]))
        return out

    def grid(self, m_c2o: np.ndarray, width: int, height: int) -> BoxGrid:
        m, key = _matrix_key(m_c2o, width, height)
        with self._lock:
            grid = self._grids.get(key)
        if grid is None:
            grid = BoxGrid.build(m, self.mask.shape[:2], (height, width))
            with self._lock:
                self._grids[key] = grid
        return grid

    def __call__(self, frame: np.ndarray, render: np.ndarray, m_c2o: np.ndarray,
                 options: PasteOptions = PasteOptions(), alpha: np.ndarray | None = None) -> np.ndarray:
        """frame: uint8 [H, W, 3] RGB; render: float32 [512, 512, 3] in [0, 255] -> uint8 [H, W, 3] (RGBA [H, W, 4]
        for a transparent background, [512, 512, 3|4] when not pasting back). `alpha` (uint8 [H, W], the avatar's
        person matte) is what transparent and green backgrounds cut along; without it, the feather mask."""
        keyed = options.background in (Background.TRANSPARENT, Background.GREEN)
        if not options.paste_back:
            return self.crop_only(render, options.background, alpha if keyed else None, m_c2o)
        height, width = frame.shape[:2]
        grid = self.grid(m_c2o, width, height)
        if keyed and alpha is not None:
            return self._paste_cut(frame, render, grid, alpha, options.background)
        if options.background == Background.TRANSPARENT:
            out = np.zeros((height, width, 4), dtype=np.uint8)
            mode = paste_kernel.RGBA
        elif options.background == Background.GREEN:
            out = np.empty((height, width, 3), dtype=np.uint8)
            out[:] = GREEN_RGB
            mode = paste_kernel.BLEND
        else:
            out = np.array(frame, dtype=np.uint8, order="C")  # a copy, C-contiguous as the kernel writes it
            mode = paste_kernel.BLEND
        if not grid.empty:  # else the face lies outside the frame
            paste_kernel.paste(render, self.mask, self._mask_ones, grid, out, mode)
        return out

    def blend_torch(self, frame: Any, render: Any, m_c2o: np.ndarray) -> Any:
        """GPU variant: frame uint8 [H, W, 3] and render float32 [512, 512, 3] torch tensors on one device; the
        warps use `WarpTable`, so the result equals the CPU path bit for bit."""
        import torch

        height, width = int(frame.shape[0]), int(frame.shape[1])
        grid = self.grid(m_c2o, width, height)
        out = frame.clone()
        if grid.empty:
            return out
        y0, y1, x0, x1 = grid.box
        table = WarpTable.build(grid, self.mask.shape[:2], render.device)
        mask = self._device_masks.get(str(render.device))
        if mask is None:
            mask = self._device_masks[str(render.device)] = torch.from_numpy(self.mask[..., None]).to(render.device)
        mask_w = table.apply(mask).clamp_(0, 1)
        render_w = table.apply(render)
        region = out[y0:y1, x0:x1].to(torch.float32)
        b = mask_w * render_w + (1 - mask_w) * region
        out[y0:y1, x0:x1] = b.clamp_(0, 255).to(torch.uint8)
        return out

    def crop_only(self, render: np.ndarray, background: Background, alpha: np.ndarray | None = None,
                  m_c2o: np.ndarray | None = None) -> np.ndarray:
        img = np.clip(render, 0, 255).astype(np.uint8)
        if alpha is not None and m_c2o is not None:  # the matte as the crop sees it
            m_o2c = np.linalg.inv(np.asarray(m_c2o, np.float64))[:2]
            a = cv2.warpAffine(alpha, m_o2c, img.shape[1::-1], flags=cv2.INTER_LINEAR)
            rgba = np.concatenate([img, a[..., None]], axis=-1)
            return rgba if background == Background.TRANSPARENT else over_green(rgba)
        if background == Background.TRANSPARENT:
            alpha = (self.mask[..., None] * F32(255)).astype(np.uint8)
            return np.concatenate([img, alpha], axis=-1)
        if background == Background.GREEN:
            green = np.empty_like(img)
            green[:] = GREEN_RGB
            return blend(self.mask[..., None], render, green)
        return img

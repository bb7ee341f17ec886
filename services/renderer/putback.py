"""Paste-back: the 512x512 render is warped into the source frame with M_c2o and feather-blended
(docs/model.md §7.1-7.2).

`out = uint8(trunc(clip(m * render_w + (1 - m) * frame, 0, 255)))` in float32, one rounding per operation, with
the mask and render warped by OpenCV 4.10's bilinear `warpAffine`. Two implementations of that warp:
- CPU: OpenCV's own remap over the face box only, fed the fixed-point map that `warpAffine` computes internally for
  those destination pixels (`FixedPointMap`), so the bytes equal `cv2.warpAffine` over the whole frame cut to the
  box (checked in the tests) at the cost of the box, not of the frame.
- torch (GPU): `WarpTable`, an emulation of OpenCV's fixed-point (1/32 pixel) bilinear warp as a gather with
  per-pixel weights, precomputed once per matrix; bit-exact with cv2 on float32 images (checked in the tests).
Both touch only the bounding box of the warped crop: outside it the mask is 0 and the frame passes unchanged,
which is exactly what the full-frame formula gives there.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from cachetools import LRUCache

F32 = np.float32


class Background(enum.IntEnum):
    """What the face is pasted onto (values as in `ditto.v1.Background`; 0 means ORIGINAL)."""

    ORIGINAL = 1
    TRANSPARENT = 2  # RGBA, the face only, with the feather mask as alpha
    GREEN = 3        # a pure green frame, for chroma keying


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


def blend(mask_w: np.ndarray, render_w: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """The reference's float32 blend, clipped and truncated to uint8. mask_w [h,w,1|3], render_w [h,w,3]."""
    b = mask_w * render_w + (F32(1) - mask_w) * frame.astype(F32)
    return np.clip(b, 0, 255).astype(np.uint8)


def _round_even(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.int64)  # rint rounds half to even, as OpenCV's saturate_cast<int>(double)


@dataclass(frozen=True)
class WarpTable:
    """OpenCV 4.10 bilinear `warpAffine` (INTER_BITS 5, constant 0 border) of a [h, w] source into a box of the
    destination, as gather indices and weights (docs/model.md §7.2)."""

    box: tuple[int, int, int, int]  # destination rows y0:y1, cols x0:x1
    index: np.ndarray               # [4, bh, bw] int64 flat source indices of the 4 neighbours (0 where outside)
    weight: np.ndarray              # [4, bh, bw] float32 weights w00, w01, w10, w11 (0 where the neighbour is outside)

    @classmethod
    def build(cls, m: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> WarpTable:
        box = _dest_box(np.asarray(m, dtype=F32)[:2].astype(np.float64), src_hw, dst_hw)
        xq, yq = _source_grid(m, box)
        sx, fx, sy, fy = xq >> 5, xq & 31, yq >> 5, yq & 31
        a, b = fx.astype(F32) / F32(32), fy.astype(F32) / F32(32)
        one = F32(1)
        weights = [(one - b) * (one - a), (one - b) * a, b * (one - a), b * a]
        h, w = src_hw
        index, weight = [], []
        for (dy, dx), wt in zip(((0, 0), (0, 1), (1, 0), (1, 1)), weights, strict=True):
            yy, xx = sy + dy, sx + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            index.append(np.where(inside, yy * w + xx, 0))
            weight.append(np.where(inside, wt, F32(0)).astype(F32))
        return cls(box, np.stack(index), np.stack(weight))

    @staticmethod
    def fixed_point(m: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """OpenCV 4.10 `warpAffine`'s internal map for the destination pixels of `box`: integer source coordinates
        (x, y) [bh, bw, 2] int16 and the 5+5-bit fractional index fy * 32 + fx [bh, bw] uint16 -- the two maps
        `cv2.remap` takes in its fixed-point form, the very arrays warpAffine hands to its remap."""
        xq, yq = _source_grid(m, box)
        xy = np.stack([np.clip(xq >> 5, -32768, 32767), np.clip(yq >> 5, -32768, 32767)], axis=-1).astype(np.int16)
        frac = ((yq & 31) * 32 + (xq & 31)).astype(np.uint16)
        return xy, frac

    def apply(self, src: Any) -> Any:
        """Warp a [h, w, c] float32 numpy array or torch tensor; returns the [bh, bw, c] box."""
        flat = src.reshape(-1, src.shape[-1])
        if isinstance(src, np.ndarray):
            idx, wt = self.index, self.weight
        else:
            idx, wt = _torch_table(self, src.device)
        # summed in OpenCV's order: ((s00 w00 + s01 w01) + s10 w10) + s11 w11
        out = flat[idx[0]] * wt[0][..., None]
        for k in (1, 2, 3):
            out = out + flat[idx[k]] * wt[k][..., None]
        return out


_TORCH_TABLES: dict[tuple[int, str], tuple[Any, Any]] = {}


def _torch_table(table: WarpTable, device: Any) -> tuple[Any, Any]:
    import torch

    key = (id(table), str(device))
    if key not in _TORCH_TABLES:
        _TORCH_TABLES[key] = (torch.from_numpy(table.index).to(device), torch.from_numpy(table.weight).to(device))
    return _TORCH_TABLES[key]


def _source_grid(m: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For each destination pixel of `box`: its source position in 1/32 pixel (x, y) [bh, bw] int64, computed as
    OpenCV 4.10's warpAffine does (the inverse matrix in float64, rounded to 1/1024, then to 1/32), so the tables
    built from it reproduce warpAffine's bytes."""
    m64 = np.asarray(m, dtype=F32)[:2].astype(np.float64)
    det = m64[0, 0] * m64[1, 1] - m64[0, 1] * m64[1, 0]
    det = 1.0 / det if det != 0 else 0.0
    i00, i01 = m64[1, 1] * det, -m64[0, 1] * det
    i10, i11 = -m64[1, 0] * det, m64[0, 0] * det
    i02 = -i00 * m64[0, 2] - i01 * m64[1, 2]
    i12 = -i10 * m64[0, 2] - i11 * m64[1, 2]
    y0, y1, x0, x1 = box
    ys, xs = np.arange(y0, y1, dtype=np.float64), np.arange(x0, x1, dtype=np.float64)
    gx = _round_even((i01 * ys + i02) * 1024)[:, None] + 16 + _round_even((i00 * xs) * 1024)[None, :]
    gy = _round_even((i11 * ys + i12) * 1024)[:, None] + 16 + _round_even((i10 * xs) * 1024)[None, :]
    xq, yq = gx >> 5, gy >> 5
    return xq, yq


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


@dataclass(frozen=True)
class _BoxWarp:
    """Everything per (matrix, frame size) that does not depend on the render: the box, the fixed-point map of the
    warp into it, the warped mask and its complement (3 channels, so the blend needs no broadcasting)."""

    box: tuple[int, int, int, int]
    xy: np.ndarray
    frac: np.ndarray
    mask: np.ndarray      # [bh, bw, 1] clipped warped mask
    mask3: np.ndarray     # [bh, bw, 3]
    inv3: np.ndarray      # 1 - mask3, as the reference computes it in float32


class PutBack:
    """Pastes renders into frames. Warped masks and warp maps are cached per (matrix, frame size): a source has
    one matrix per frame, so after the first pass over the source the per-frame cost is one warp and one blend of
    the face box."""

    def __init__(self, mask: np.ndarray | None = None, cache_size: int = 256):
        self.mask = (feather_mask() if mask is None else np.asarray(mask, dtype=F32))[..., None]  # [512, 512, 1]
        self._cache: LRUCache[tuple[bytes, int, int], tuple[tuple[int, int, int, int], np.ndarray]] = LRUCache(
            cache_size)
        self._tables: LRUCache[tuple[bytes, int, int], WarpTable] = LRUCache(cache_size)
        self._box_warps: LRUCache[tuple[bytes, int, int], _BoxWarp] = LRUCache(cache_size)
        self._local = threading.local()  # per-thread scratch buffers of the blend
        self.cache_size = cache_size

    def warped_mask(self, m_c2o: np.ndarray, width: int, height: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """(box, mask_w [bh, bw, 1]) clipped to [0, 1]."""
        m, key = _matrix_key(m_c2o, width, height)
        hit = self._cache.get(key)
        if hit is None:
            box = _dest_box(m.astype(np.float64), self.mask.shape[:2], (height, width))
            full = cv2.warpAffine(self.mask[..., 0], m, (width, height), flags=cv2.INTER_LINEAR)
            y0, y1, x0, x1 = box
            hit = box, np.clip(full[y0:y1, x0:x1], 0, 1)[..., None]
            self._cache[key] = hit
        return hit

    def box_warp(self, m_c2o: np.ndarray, width: int, height: int) -> _BoxWarp:
        m, key = _matrix_key(m_c2o, width, height)
        hit = self._box_warps.get(key)
        if hit is None:
            box, mask_w = self.warped_mask(m, width, height)
            xy, frac = WarpTable.fixed_point(m, box)
            mask3 = np.ascontiguousarray(np.broadcast_to(mask_w, (*mask_w.shape[:2], 3)))
            hit = _BoxWarp(box, xy, frac, mask_w, mask3, F32(1) - mask3)
            self._box_warps[key] = hit
        return hit

    def table(self, m_c2o: np.ndarray, width: int, height: int) -> WarpTable:
        m, key = _matrix_key(m_c2o, width, height)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = WarpTable.build(m, self.mask.shape[:2], (height, width))
        return table

    def __call__(self, frame: np.ndarray, render: np.ndarray, m_c2o: np.ndarray,
                 options: PasteOptions = PasteOptions()) -> np.ndarray:
        """frame: uint8 [H, W, 3] RGB; render: float32 [512, 512, 3] in [0, 255] -> uint8 [H, W, 3] (RGBA [H, W, 4]
        for a transparent background, [512, 512, 3|4] when not pasting back)."""
        if not options.paste_back:
            return self.crop_only(render, options.background)
        height, width = frame.shape[:2]
        box, mask_w = self.warped_mask(m_c2o, width, height)
        y0, y1, x0, x1 = box
        m = np.asarray(m_c2o, dtype=F32)[:2]
        if options.background == Background.TRANSPARENT:
            out = np.zeros((height, width, 4), dtype=np.uint8)
            if y1 <= y0 or x1 <= x0:
                return out
            render_w = self._warp_box(render, self.box_warp(m, width, height))
            out[y0:y1, x0:x1, :3] = np.clip(render_w, 0, 255).astype(np.uint8)
            out[y0:y1, x0:x1, 3] = (mask_w[..., 0] * F32(255)).astype(np.uint8)
            return out
        if options.background == Background.GREEN:
            out = np.empty_like(frame)
            out[:] = GREEN_RGB
        else:
            out = frame.copy()
        if y1 <= y0 or x1 <= x0:
            return out  # the face lies outside the frame
        bw = self.box_warp(m, width, height)
        # OpenCV's fixed-point coordinates depend on the absolute destination index (a shifted matrix would round
        # differently), so the box is warped with the map warpAffine would use for those very pixels.
        b, scratch = self._scratch(bw.mask3.shape)
        self._warp_box(render, bw, b)
        # the reference's float32 blend, m * r + (1 - m) * f, one rounding per operation, in reused buffers (fresh
        # multi-megabyte arrays cost page faults on every frame)
        np.multiply(b, bw.mask3, out=b)
        region = out[y0:y1, x0:x1]
        np.multiply(region, bw.inv3, out=scratch)  # uint8 promoted to float32 exactly, as astype(F32)
        np.add(b, scratch, out=b)
        np.clip(b, 0, 255, out=b)
        region[...] = b  # truncates toward zero, as astype(uint8)
        return out

    def _scratch(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Two float32 buffers of `shape`, this thread's own (render_many may run in several threads)."""
        bufs = getattr(self._local, "bufs", None)
        if bufs is None or bufs[0].shape != shape:
            bufs = self._local.bufs = (np.empty(shape, F32), np.empty(shape, F32))
        return bufs

    @staticmethod
    def _warp_box(render: np.ndarray, bw: _BoxWarp, dst: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(cv2.remap(np.ascontiguousarray(render, dtype=F32), bw.xy, bw.frac, cv2.INTER_LINEAR,
                                    dst=dst, borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0, 0.0, 0.0, 0.0)))

    def blend_torch(self, frame: Any, render: Any, m_c2o: np.ndarray) -> Any:
        """GPU variant: frame uint8 [H, W, 3] and render float32 [512, 512, 3] torch tensors on one device; the
        warps use `WarpTable`, so the result equals the CPU path bit for bit."""
        import torch

        height, width = int(frame.shape[0]), int(frame.shape[1])
        table = self.table(m_c2o, width, height)
        y0, y1, x0, x1 = table.box
        out = frame.clone()
        if y1 <= y0 or x1 <= x0:
            return out
        mask = torch.from_numpy(self.mask).to(render.device)
        mask_w = table.apply(mask).clamp_(0, 1)
        render_w = table.apply(render)
        region = out[y0:y1, x0:x1].to(torch.float32)
        b = mask_w * render_w + (1 - mask_w) * region
        out[y0:y1, x0:x1] = b.clamp_(0, 255).to(torch.uint8)
        return out

    def crop_only(self, render: np.ndarray, background: Background) -> np.ndarray:
        img = np.clip(render, 0, 255).astype(np.uint8)
        if background == Background.TRANSPARENT:
            alpha = (self.mask * F32(255)).astype(np.uint8)
            return np.concatenate([img, alpha], axis=-1)
        if background == Background.GREEN:
            green = np.empty_like(img)
            green[:] = GREEN_RGB
            return blend(self.mask, render, green)
        return img

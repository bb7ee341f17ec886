"""Volumetric (5-D) grid sampling, natively or decomposed into gathers and trilinear weights.

TensorRT up to 10.x has no 5-D GridSample, which is why the reference ships a per-GPU plugin. The decomposition here
uses only Gather, Floor, Clip, Cast and arithmetic, which every TensorRT 10 and ONNX Runtime build runs, and equals
`F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=False)` up to float rounding.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

GridSampleMode = Literal["native", "decomposed"]


def grid_sample_3d(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Trilinear sampling with zero padding and align_corners=False.

    volume [N, C, D, H, W], grid [N, Do, Ho, Wo, 3] with last axis (x, y, z) in [-1, 1] indexing (W, H, D)
    -> [N, C, Do, Ho, Wo].
    """
    n, c, d, h, w = volume.shape
    _, do, ho, wo, _ = grid.shape
    # Zero padding by construction: pad one zero voxel on every side and clamp corner indices into the padded
    # volume. A corner outside the volume then reads a padding zero, whatever its distance, and the trilinear
    # weights stay the reference's (never renormalised).
    padded = F.pad(volume, (1, 1, 1, 1, 1, 1))                         # [N, C, D+2, H+2, W+2]
    dp, hp, wp = d + 2, h + 2, w + 2
    table = padded.permute(0, 2, 3, 4, 1).reshape(n * dp * hp * wp, c)  # one row of C channels per voxel

    # Unnormalise exactly as the reference (align_corners=False): i = ((g + 1) * size - 1) / 2.
    ix = ((grid[..., 0] + 1) * w - 1) / 2                              # [N, Do, Ho, Wo]
    iy = ((grid[..., 1] + 1) * h - 1) / 2
    iz = ((grid[..., 2] + 1) * d - 1) / 2
    x0, y0, z0 = torch.floor(ix), torch.floor(iy), torch.floor(iz)
    # Weights of the lower (0) and upper (1) neighbour along each axis.
    wx1, wy1, wz1 = ix - x0, iy - y0, iz - z0
    wx0, wy0, wz0 = (x0 + 1) - ix, (y0 + 1) - iy, (z0 + 1) - iz

    def padded_index(i0: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Index in the padded volume of the lower and upper neighbour: shift by one, clamp to [0, size + 1].
        lo = torch.clamp(i0 + 1, 0, size + 1)
        hi = torch.clamp(i0 + 2, 0, size + 1)
        return lo.to(torch.int32), hi.to(torch.int32)

    xs, ys, zs = padded_index(x0, w), padded_index(y0, h), padded_index(z0, d)
    # Row offset of each sample's own batch element in the flattened table.
    base = (torch.arange(n, dtype=torch.int32, device=grid.device) * (dp * hp * wp)).view(n, 1, 1, 1)

    out: torch.Tensor | None = None
    for zi, wz in ((0, wz0), (1, wz1)):
        for yi, wy in ((0, wy0), (1, wy1)):
            for xi, wx in ((0, wx0), (1, wx1)):
                index = base + (zs[zi] * hp + ys[yi]) * wp + xs[xi]          # [N, Do, Ho, Wo]
                values = table.index_select(0, index.reshape(-1))           # [N*Do*Ho*Wo, C]
                weight = (wx * wy * wz).reshape(-1, 1)                      # x * y * z, the reference's order
                term = values * weight
                out = term if out is None else out + term
    assert out is not None
    return out.view(n, do, ho, wo, c).permute(0, 4, 1, 2, 3).contiguous()


class GridSample3d(nn.Module):
    """The networks' one entry point for 3-D sampling; `mode` is the switch.

    "native": F.grid_sample (PyTorch runs, ONNX Runtime CPU export). "decomposed": `grid_sample_3d` (export for
    TensorRT / ONNX Runtime CUDA). A stateless module rather than a function so that exported nodes carry its
    class in their metadata, which lets the exporter tag them for fp32 in TensorRT.
    """

    def __init__(self, mode: GridSampleMode = "native") -> None:
        super().__init__()
        self.mode: GridSampleMode = mode

    def forward(self, volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if self.mode == "native":
            return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.mode == "decomposed":
            return grid_sample_3d(volume, grid)
        raise ValueError(f"grid sample mode must be 'native' or 'decomposed', got {self.mode!r}")

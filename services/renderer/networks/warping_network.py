"""WarpingNetwork (W) with its DenseMotionNetwork: warps the appearance volume from source to driving pose.

See docs/model.md §5.5. Dense motion turns 21 keypoint pairs into 22 motion hypotheses (identity plus
one rigid shift per keypoint), lets a 3-D hourglass weigh them per voxel (softmax mask) and predicts an occlusion map.
The weighted deformation resamples the source volume, which a 2-D head compresses to 256 channels.

Both 3-D grid samples go through `GridSample3d`, so one switch (`grid_sample_mode`) picks native
`F.grid_sample` (PyTorch) or the gather decomposition (ONNX for TensorRT, which has no 5-D grid sample).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Hourglass, SameBlock2d, identity_grid, keypoint_gaussian
from .grid_sample import GridSample3d, GridSampleMode


@dataclass(frozen=True)
class WarpingConfig:
    num_kp: int = 21
    block_expansion: int = 64        # head width: block_expansion * 2**num_down_blocks output channels
    num_down_blocks: int = 2
    reshape_channel: int = 32        # f_s channels (feature_channel of the dense motion network)
    reshape_depth: int = 16
    feature_size: int = 64           # H = W of f_s (AppearanceConfig.feature_shape)
    # dense motion network
    dm_block_expansion: int = 32
    dm_max_features: int = 1024
    dm_num_blocks: int = 5
    compress: int = 4
    kp_variance: float = 0.01

    @property
    def out_channels(self) -> int:
        return self.block_expansion * 2**self.num_down_blocks

    @classmethod
    def full(cls) -> WarpingConfig:
        return cls()

    @classmethod
    def tiny(cls) -> WarpingConfig:
        # Matches AppearanceConfig.tiny(): f_s [N, 8, 4, 32, 32].
        return cls(block_expansion=8, reshape_channel=8, reshape_depth=4, feature_size=32, dm_block_expansion=8,
                   dm_max_features=64, dm_num_blocks=3, compress=2)


class DenseMotionNetwork(nn.Module):
    def __init__(self, cfg: WarpingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hypotheses = cfg.num_kp + 1
        self.hourglass = Hourglass(cfg.dm_block_expansion, in_features=hypotheses * (cfg.compress + 1),
                                   num_blocks=cfg.dm_num_blocks, max_features=cfg.dm_max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, hypotheses, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(cfg.reshape_channel, cfg.compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(cfg.compress)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters * cfg.reshape_depth, 1, kernel_size=7, padding=3)
        self.grid_sample = GridSample3d()           # stateless: no state_dict entries

    def sparse_motions(self, spatial: tuple[int, int, int], kp_driving: torch.Tensor,
                       kp_source: torch.Tensor) -> torch.Tensor:
        """[N, K+1, D, H, W, 3]: hypothesis 0 the identity grid, k the grid shifted by (x_s - x_d) of keypoint k-1."""
        n, k, _ = kp_driving.shape
        grid = identity_grid(spatial, kp_source).unsqueeze(0).unsqueeze(0)          # [1, 1, D, H, W, 3]
        # (grid - x_d) + x_s in this order: at a driving voxel, where to read in the source volume.
        shifted = (grid - kp_driving.view(n, k, 1, 1, 1, 3)) + kp_source.view(n, k, 1, 1, 1, 3)
        return torch.cat([grid.expand(n, 1, *grid.shape[2:]), shifted], dim=1)

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor,
                kp_source: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, d, h, w = feature.shape
        hyp = kp_driving.shape[1] + 1
        compressed = F.relu(self.norm(self.compress(feature)))                       # [N, 4, D, H, W]

        motions = self.sparse_motions((d, h, w), kp_driving, kp_source)             # [N, 22, D, H, W, 3]
        # Sample the compressed volume once per hypothesis (batch-major: row n*22 + k is sample n).
        tiled = compressed.unsqueeze(1).expand(n, hyp, *compressed.shape[1:]).reshape(n * hyp, -1, d, h, w)
        deformed = self.grid_sample(tiled, motions.reshape(n * hyp, d, h, w, 3))
        deformed = deformed.view(n, hyp, -1, d, h, w)                                # [N, 22, 4, D, H, W]

        # Heatmaps: Gaussian(driving) - Gaussian(source), a zero map for the identity hypothesis.
        heat = (keypoint_gaussian(kp_driving, (d, h, w), self.cfg.kp_variance)
                - keypoint_gaussian(kp_source, (d, h, w), self.cfg.kp_variance))
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1).unsqueeze(2)  # [N, 22, 1, D, H, W]

        # Interleaved per hypothesis: channel 5k + j is hypothesis k's heatmap (j = 0) or feature j - 1.
        hourglass_in = torch.cat([heat, deformed], dim=2).view(n, -1, d, h, w)     # [N, 110, D, H, W]
        prediction = self.hourglass(hourglass_in)                                  # [N, 142, D, H, W]

        mask = F.softmax(self.mask(prediction), dim=1)                             # [N, 22, D, H, W]
        deformation = (motions.permute(0, 1, 5, 2, 3, 4) * mask.unsqueeze(2)).sum(dim=1)  # [N, 3, D, H, W]
        deformation = deformation.permute(0, 2, 3, 4, 1)                           # [N, D, H, W, 3]

        occlusion = torch.sigmoid(self.occlusion(prediction.reshape(n, -1, h, w)))  # channel 16c + d; [N, 1, H, W]
        return {"mask": mask, "deformation": deformation, "occlusion_map": occlusion}


class WarpingNetwork(nn.Module):
    def __init__(self, cfg: WarpingConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or WarpingConfig.full()
        self.dense_motion_network = DenseMotionNetwork(cfg)
        volume_channels = cfg.reshape_channel * cfg.reshape_depth
        self.third = SameBlock2d(volume_channels, cfg.out_channels, lrelu=True)
        self.fourth = nn.Conv2d(cfg.out_channels, cfg.out_channels, kernel_size=1)
        self.grid_sample = GridSample3d()

    @property
    def grid_sample_mode(self) -> GridSampleMode:
        return self.grid_sample.mode

    @grid_sample_mode.setter
    def grid_sample_mode(self, mode: GridSampleMode) -> None:
        if mode not in ("native", "decomposed"):
            raise ValueError(f"grid sample mode must be 'native' or 'decomposed', got {mode!r}")
        self.grid_sample.mode = mode
        self.dense_motion_network.grid_sample.mode = mode

    def warp(self, feature_3d: torch.Tensor, kp_source: torch.Tensor,
             kp_driving: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(out, dense motion dict); the dict holds mask, deformation, occlusion_map for debugging."""
        dense = self.dense_motion_network(feature_3d, kp_driving=kp_driving, kp_source=kp_source)
        # The final warp reads the original 32-channel volume, not the compressed one.
        out = self.grid_sample(feature_3d, dense["deformation"])                         # [N, 32, 16, 64, 64]
        n, c, d, h, w = out.shape
        out = self.fourth(self.third(out.view(n, c * d, h, w)))                      # [N, 256, 64, 64]
        return out * dense["occlusion_map"], dense

    def forward(self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """f_s [N, 32, 16, 64, 64], x_s, x_d [N, 21, 3] -> [N, 256, 64, 64]. Note: source before driving."""
        return self.warp(feature_3d, kp_source, kp_driving)[0]

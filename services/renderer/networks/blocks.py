"""Building blocks shared by the renderer networks (docs/model.md §5).

Attribute names are part of the checkpoint format: they produce the official state_dict keys, so they are kept
exactly (`conv`, `norm`, `conv1`, `mlp_shared`, `weight_orig`, ...), including registration order where it
differs from execution order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------------------------
# 2-D and 3-D conv blocks (docs/model.md §5.2, §5.5). Every norm is BatchNorm with running statistics (eval mode only).


class SameBlock2d(nn.Module):
    """conv 3x3 -> BN2d -> ReLU (or LeakyReLU(0.01) with lrelu); spatial size kept."""

    def __init__(self, in_features: int, out_features: int, lrelu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_features)
        self.ac: nn.Module = nn.LeakyReLU() if lrelu else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ac(self.norm(self.conv(x)))


class DownBlock2d(nn.Module):
    """conv 3x3 -> BN2d -> ReLU -> avgpool 2x2: [N, in, H, W] -> [N, out, H/2, W/2]."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_features)
        self.pool = nn.AvgPool2d(kernel_size=(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))


class DownBlock3d(nn.Module):
    """conv 3x3x3 -> BN3d -> ReLU -> avgpool (1,2,2): depth is never pooled, H and W halve."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features)
        self.pool = nn.AvgPool3d(kernel_size=(1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))


class UpBlock3d(nn.Module):
    """nearest upsample (1,2,2) -> conv 3x3x3 -> BN3d -> ReLU (upsample first, then a plain conv)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0))
        return F.relu(self.norm(self.conv(x)))


class ResBlock3d(nn.Module):
    """Pre-activation residual block: x + conv2(relu(norm2(conv1(relu(norm1(x)))))).

    Registration order (conv1, conv2, norm1, norm2) differs from execution order; it fixes the key order.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm3d(channels)
        self.norm2 = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


# ---------------------------------------------------------------------------------------------------------------
# Hourglass: the 3-D U-Net of the dense motion network (docs/model.md §5.5).


class HourglassEncoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()

        def ch(i: int) -> int:
            return min(max_features, block_expansion * 2**i)

        self.down_blocks = nn.ModuleList(
            DownBlock3d(in_features if i == 0 else ch(i), ch(i + 1)) for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]                                   # input first, deepest last: num_blocks + 1 entries
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()

        def ch(i: int) -> int:
            return min(max_features, block_expansion * 2**i)

        self.up_blocks = nn.ModuleList()
        for i in reversed(range(num_blocks)):        # up block j works at level i = num_blocks - 1 - j
            in_filters = (1 if i == num_blocks - 1 else 2) * ch(i + 1)   # deeper levels get [up, skip]
            self.up_blocks.append(UpBlock3d(in_filters, ch(i)))
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        skips = list(skips)
        out = skips.pop()
        for block in self.up_blocks:
            out = block(out)
            out = torch.cat([out, skips.pop()], dim=1)   # upsampled first, skip second
        return F.relu(self.norm(self.conv(out)))


class Hourglass(nn.Module):
    """[N, I, D, H, W] -> [N, E + I, D, H, W]; H and W must be divisible by 2**num_blocks."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        self.encoder = HourglassEncoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


# ---------------------------------------------------------------------------------------------------------------
# Coordinate grid and keypoint Gaussians (docs/model.md §5.5).


def identity_grid(spatial_size: tuple[int, int, int], like: torch.Tensor) -> torch.Tensor:
    """[D, H, W, 3] grid with last axis (x, y, z) = (width, height, depth), endpoints exactly -1 and +1.

    Evaluated as 2 * (i / (S - 1)) - 1 in `like`'s dtype, the reference's order.
    """
    d, h, w = spatial_size

    def axis(n: int) -> torch.Tensor:
        return 2 * (torch.arange(n, dtype=like.dtype, device=like.device) / (n - 1)) - 1

    z = axis(d).view(d, 1, 1).expand(d, h, w)
    y = axis(h).view(1, h, 1).expand(d, h, w)
    x = axis(w).view(1, 1, w).expand(d, h, w)
    return torch.stack([x, y, z], dim=-1)


def keypoint_gaussian(kp: torch.Tensor, spatial_size: tuple[int, int, int], variance: float = 0.01) -> torch.Tensor:
    """Unnormalised Gaussians exp((-0.5 * |g - kp|^2) / variance): kp [N, K, 3] -> [N, K, D, H, W]."""
    n, k, _ = kp.shape
    grid = identity_grid(spatial_size, kp).unsqueeze(0).unsqueeze(0)      # [1, 1, D, H, W, 3]
    diff = grid - kp.view(n, k, 1, 1, 1, 3)                                # [N, K, D, H, W, 3]
    return torch.exp(-0.5 * (diff**2).sum(-1) / variance)


# ---------------------------------------------------------------------------------------------------------------
# SPADE parts (docs/model.md §5.6), used only by the decoder.


class SpectralNormConv2d(nn.Module):
    """Conv2d with eval-mode spectral normalisation, in the classic hook-based checkpoint format.

    State: `bias` (optional), `weight_orig`, `weight_u` [out], `weight_v` [in*kh*kw] -- no `weight` entry. The
    effective weight is weight_orig / sigma with sigma = u . (W_mat v) from the stored u, v (no power iteration).
    It is folded once whenever a state_dict is loaded (exact: the same float32 ops the reference does per call)
    and kept in the non-persistent buffer `weight`, so forward and ONNX export see a plain convolution.
    """

    weight_u: torch.Tensor
    weight_v: torch.Tensor
    weight: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__()
        self.padding = padding
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_orig = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_uniform_(self.weight_orig, a=5**0.5)
        self.register_buffer("weight_u", F.normalize(torch.randn(out_channels), dim=0, eps=1e-12))
        self.register_buffer("weight_v", F.normalize(torch.randn(in_channels * kernel_size**2), dim=0, eps=1e-12))
        self.register_buffer("weight", torch.empty(shape), persistent=False)
        self.fold()
        self.register_load_state_dict_post_hook(lambda module, _keys: module.fold())

    @torch.no_grad()
    def fold(self) -> None:
        """weight = weight_orig / (u . (W_mat v)); call again after changing weight_orig/u/v in place."""
        w_mat = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        sigma = torch.dot(self.weight_u, torch.mv(w_mat, self.weight_v))
        self.weight.copy_(self.weight_orig / sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)


class SPADE(nn.Module):
    """out = instance_norm(x) * (1 + gamma(seg)) + beta(seg), seg nearest-resized to x's size."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128) -> None:
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type):
            return self.param_free_norm(x)
        # Reduced precision (fp16 autocast): per-sample statistics of 256x256 maps overflow fp16 into black
        # patches, so the normalisation itself always runs in float32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.param_free_norm(x.float()).to(x.dtype)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        normalized = self._normalize(x)
        if seg.shape[-2:] != x.shape[-2:]:
            seg = F.interpolate(seg, size=x.shape[-2:], mode="nearest")
        actv = self.mlp_shared(seg)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """x_s + conv_1(lrelu(norm_1(conv_0(lrelu(norm_0(x)))))) with x_s = conv_s(norm_s(x)) when fin != fout."""

    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int = 128) -> None:
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = SpectralNormConv2d(fin, fmiddle, kernel_size=3, padding=1)
        self.conv_1 = SpectralNormConv2d(fmiddle, fout, kernel_size=3, padding=1)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, kernel_size=1, bias=False)
        self.norm_0 = SPADE(fin, label_nc, hidden)
        self.norm_1 = SPADE(fmiddle, label_nc, hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x   # no activation on the shortcut
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x_s + dx


# ---------------------------------------------------------------------------------------------------------------
# ConvNeXt-V2 parts (docs/model.md §5.3), used only by the motion extractor.


class LayerNormChannelsFirst(nn.Module):
    """LayerNorm over C of an NCHW tensor, by hand with biased variance, eps inside the sqrt (the reference order)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    """Global response normalisation on NHWC: gamma * (y * nu) + beta + y, nu = |y|_hw / (mean_c |y|_hw + 1e-6)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)          # library 2-norm: bitwise as the reference
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """x + pwconv2(grn(gelu(pwconv1(norm(dwconv(x)))))) with the MLP part in NHWC; no layer scale, no drop path."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).permute(0, 2, 3, 1)                     # [N, H, W, C]
        h = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(h)))))
        return x + h.permute(0, 3, 1, 2)

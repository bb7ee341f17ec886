"""MotionDecoder: the MotionDiT of Ditto (LMDM), predicting clean motion x0 from noisy motion and conditions.

See docs/model.md §3.3 (network, rotary positions, state_dict keys) and §3.4 (guidance). Built as DiT models.py
does it: small blocks, one config dataclass, shapes in comments.

    x [B,80,265] | cond_frame [B,265] --concat--> input_projection --> h [B,80,d]
    cond [B,80,1103] --> cond_projection --> 2 x EncoderLayer --> c [B,80,d]      (null_cond_embed when dropped)
    mean(c) --> LN, Linear, SiLU, Linear --> g [B,d]                               (null_cond_hidden when dropped)
    t --> sinusoidal --> Linear, Mish --> t_film [B,d] (+g) and 2 time tokens [B,2,d]
    memory m = LN(concat(c, time tokens)) [B,82,d]
    h --> 8 x FiLM DecoderLayer(h, m, t_film) --> final_layer --> x0 [B,80,265]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MotionDiTConfig:
    nfeats: int = 265            # motion vector (docs/model.md §3.1)
    seq_len: int = 80            # frames per window
    latent_dim: int = 512
    ff_size: int = 1024
    num_layers: int = 8
    num_heads: int = 8
    cond_dim: int = 1103         # per-frame condition (docs/model.md §3.2)
    cond_layers: int = 2
    num_time_tokens: int = 2
    guidance_weight: float = 2.0

    @classmethod
    def full(cls) -> MotionDiTConfig:
        return cls()

    @classmethod
    def tiny(cls) -> MotionDiTConfig:
        """Same architecture and interfaces, narrow and shallow: for tests on CPU."""
        return cls(latent_dim=64, ff_size=128, num_layers=2, num_heads=4)

    @classmethod
    def for_profile(cls, profile: str) -> MotionDiTConfig:
        if profile not in ("full", "tiny"):
            raise ValueError(f"unknown profile {profile!r}; use 'full' or 'tiny'")
        return cls.full() if profile == "full" else cls.tiny()


class RotaryEmbedding(nn.Module):
    """Interleaved-pair rotary positions over the full width. One instance is shared by the model and all layers,
    so its `freqs` buffer appears under 11 keys; the loaded values count (golden weights make them random)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        exponent = torch.arange(0, dim, 2, dtype=torch.float32) / dim
        self.freqs: torch.Tensor
        self.register_buffer("freqs", 1.0 / (10000.0 ** exponent))   # [dim/2]

    def angles(self, n: int) -> torch.Tensor:
        pos = torch.arange(n, device=self.freqs.device, dtype=torch.float32)
        theta = pos[:, None] * self.freqs[None, :]                     # [n, dim/2]
        return theta.repeat_interleave(2, dim=-1)                      # [n, dim]: (t0, t0, t1, t1, ...)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x [B, n, dim] by its position along axis -2: x*cos + rot(x)*sin, rot(a, b) = (-b, a)."""
        theta = self.angles(x.shape[-2]).to(x.dtype)
        pairs = x.unflatten(-1, (-1, 2))                               # [B, n, dim/2, 2]
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * theta.cos() + rotated * theta.sin()


class Attention(nn.Module):
    """Multi-head attention with separate query, key and value inputs (keys as torch's MultiheadAttention)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))  # rows: W_q | W_k | W_v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q, k, v = F.linear(q_in, w_q, b_q), F.linear(k_in, w_k, b_k), F.linear(v_in, w_v, b_v)
        b, lq, d = q.shape
        dh = d // self.heads
        q, k, v = (t.reshape(b, -1, self.heads, dh).transpose(1, 2) for t in (q, k, v))  # [B, H, L, dh]
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)            # [B, H, Lq, Lk]
        out = (attn @ v).transpose(1, 2).reshape(b, lq, d)
        return self.out_proj(out)


class DenseFiLM(nn.Module):
    """t [B, d] -> (scale, shift) [B, 1, d] each: scale is the first half of Linear(Mish(t))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Mish(), nn.Linear(dim, 2 * dim))

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.block(t)[:, None, :]
        scale, shift = s.chunk(2, dim=-1)
        return scale, shift


def film(y: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    scale, shift = scale_shift
    return (scale + 1) * y + shift


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer with rotary self-attention (values unrotated)."""

    def __init__(self, dim: int, heads: int, ff: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.linear1 = nn.Linear(dim, ff)
        self.linear2 = nn.Linear(ff, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.rotary = rotary                                           # shared; registered last (key order)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        h = self.norm1(c)
        qk = self.rotary(h)
        c = c + self.self_attn(qk, qk, h)
        return c + self.linear2(F.gelu(self.linear1(self.norm2(c))))


class DecoderLayer(nn.Module):
    """Pre-norm FiLM decoder layer: self-attention, cross-attention, feed-forward; FiLM before each residual."""

    def __init__(self, dim: int, heads: int, ff: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.multihead_attn = Attention(dim, heads)
        self.linear1 = nn.Linear(dim, ff)
        self.linear2 = nn.Linear(ff, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.film1 = DenseFiLM(dim)
        self.film2 = DenseFiLM(dim)
        self.film3 = DenseFiLM(dim)
        self.rotary = rotary

    def forward(self, x: torch.Tensor, memory: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # x [B,80,d], memory [B,82,d], t [B,d]
        h = self.norm1(x)
        qk = self.rotary(h)
        x = x + film(self.self_attn(qk, qk, h), self.film1(t))
        h = self.norm2(x)
        x = x + film(self.multihead_attn(self.rotary(h), self.rotary(memory), memory), self.film2(t))
        h = self.linear2(F.gelu(self.linear1(self.norm3(x))))
        return x + film(h, self.film3(t))


class DecoderStack(nn.Module):
    def __init__(self, layers: list[DecoderLayer]) -> None:
        super().__init__()
        self.stack = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        for layer in self.stack:
            x = layer(x, memory, t)
        return x


class SinusoidalPosEmb(nn.Module):
    """Integer steps [B] -> [B, dim]: all sines first, then all cosines."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, times: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        c = math.log(10000) / (half - 1)
        omega = torch.exp(torch.arange(half, device=times.device, dtype=torch.float32) * -c)
        arg = times.to(torch.float32)[:, None] * omega[None, :]
        return torch.cat((arg.sin(), arg.cos()), dim=-1)


class MotionDecoder(nn.Module):
    """The MotionDiT. Attribute names and registration order give the official state_dict keys and order."""

    def __init__(self, cfg: MotionDiTConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or MotionDiTConfig.full()
        d = cfg.latent_dim
        self.null_cond_embed = nn.Parameter(torch.randn(1, cfg.seq_len, d))
        self.null_cond_hidden = nn.Parameter(torch.randn(1, d))
        self.rotary = RotaryEmbedding(d)
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(d), nn.Linear(d, 4 * d), nn.Mish())
        self.to_time_cond = nn.Sequential(nn.Linear(4 * d, d))
        self.to_time_tokens = nn.Sequential(nn.Linear(4 * d, cfg.num_time_tokens * d),
                                            nn.Unflatten(1, (cfg.num_time_tokens, d)))
        self.norm_cond = nn.LayerNorm(d)
        self.input_projection = nn.Linear(2 * cfg.nfeats, d)
        self.cond_encoder = nn.Sequential(
            *[EncoderLayer(d, cfg.num_heads, cfg.ff_size, self.rotary) for _ in range(cfg.cond_layers)])
        self.cond_projection = nn.Linear(cfg.cond_dim, d)
        self.non_attn_cond_projection = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.seqTransDecoder = DecoderStack(
            [DecoderLayer(d, cfg.num_heads, cfg.ff_size, self.rotary) for _ in range(cfg.num_layers)])
        self.final_layer = nn.Linear(d, cfg.nfeats)

    # -- pieces of the forward pass ------------------------------------------------------------------------------

    def encode_condition(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cond [B,80,1103] -> tokens c [B,80,d] and pooled g [B,d] (the kept-condition branch)."""
        c = self.cond_encoder(self.cond_projection(cond))
        return c, self.non_attn_cond_projection(c.mean(dim=-2))

    def null_condition(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.null_cond_embed.expand(batch, -1, -1), self.null_cond_hidden.expand(batch, -1)

    def embed_time(self, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """times [B] int -> FiLM vector [B,d] and time tokens [B,2,d]."""
        hidden = self.time_mlp(times)                                  # [B, 4d]
        return self.to_time_cond(hidden), self.to_time_tokens(hidden)

    def decode(self, h: torch.Tensor, c: torch.Tensor, g: torch.Tensor, t_film: torch.Tensor,
               t_tokens: torch.Tensor) -> torch.Tensor:
        memory = self.norm_cond(torch.cat((c, t_tokens), dim=-2))      # [B, 82, d]
        return self.final_layer(self.seqTransDecoder(h, memory, t_film + g))

    def project_input(self, x: torch.Tensor, cond_frame: torch.Tensor) -> torch.Tensor:
        frames = cond_frame[:, None, :].repeat(1, x.shape[1], 1)      # [B, 80, 265]
        return self.input_projection(torch.cat((x, frames), dim=-1))   # [B, 80, d]

    # -- entry points --------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, times: torch.Tensor,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """One unguided evaluation -> x0 [B,80,265]. `keep` [B] bool: False replaces that row's condition by the
        null embeddings (classifier-free guidance training); None keeps every row."""
        b = x.shape[0]
        c, g = self.encode_condition(cond)
        if keep is not None:
            null_c, null_g = self.null_condition(b)
            c = torch.where(keep[:, None, None], c, null_c)
            g = torch.where(keep[:, None], g, null_g)
        t_film, t_tokens = self.embed_time(times)
        return self.decode(self.project_input(x, cond_frame), c, g, t_film, t_tokens)

    def forward_uncond(self, x: torch.Tensor, cond_frame: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """The drop pass: the condition encoder is skipped, both null tensors are used."""
        c, g = self.null_condition(x.shape[0])
        t_film, t_tokens = self.embed_time(times)
        return self.decode(self.project_input(x, cond_frame), c, g, t_film, t_tokens)

    def guided(self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor,
               times: torch.Tensor) -> torch.Tensor:
        """Guided x0 = u + (k - u) * w, both passes stacked into one batch of 2B."""
        b = x.shape[0]
        c_keep, g_keep = self.encode_condition(cond)
        c_null, g_null = self.null_condition(b)
        t_film, t_tokens = self.embed_time(times)
        h = self.project_input(x, cond_frame)
        out = self.decode(torch.cat((h, h)), torch.cat((c_null, c_keep)), torch.cat((g_null, g_keep)),
                          torch.cat((t_film, t_film)), torch.cat((t_tokens, t_tokens)))
        u, k = out[:b], out[b:]
        return u + (k - u) * self.cfg.guidance_weight

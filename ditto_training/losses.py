"""The training objective (docs/model.md §10): x0-prediction diffusion with classifier-free-guidance dropout, and L2
losses per motion part on positions (P), velocities (V), accelerations (A), plus the last-frame term (L).

    t ~ U{0..999}, noise ~ N(0, I), x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise       (cosine schedule)
    x0_hat = model(x_t, cond_frame, cond, t, keep)   keep ~ Bernoulli(1 - 0.2) per sample
    loss = sum over parts p of  w_p * (P_p + V_p + A_p [+ L_p])  [+ R]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from services.motion_generator.diffusion import NUM_TIMESTEPS, cosine_schedule

# motion part -> (start, end) in the 265-d vector
PARTS: dict[str, tuple[int, int]] = {"scale": (0, 1), "pitch": (1, 67), "yaw": (67, 133), "roll": (133, 199),
                                     "t": (199, 202), "exp": (202, 265)}
COND_DROP_PROB = 0.2


@dataclass(frozen=True)
class LossSettings:
    use_last_frame_loss: bool = True
    use_reg_loss: bool = False
    cond_drop_prob: float = COND_DROP_PROB
    part_weights: dict[str, float] | None = None       # default weight 1 for every part


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    acp = torch.from_numpy(cosine_schedule().alphas_cumprod).to(x0.device)[t][:, None, None]
    return acp.sqrt() * x0 + (1 - acp).sqrt() * noise


def part_losses(pred: torch.Tensor, target: torch.Tensor, cond_frame: torch.Tensor,
                settings: LossSettings) -> dict[str, torch.Tensor]:
    """pred, target [B, T, D], cond_frame [B, D] -> named scalar terms, e.g. 'P_exp', 'V_yaw', 'L_t', 'R'."""
    weights = settings.part_weights or {}
    out: dict[str, torch.Tensor] = {}
    for name, (s, e) in PARTS.items():
        if e > pred.shape[-1]:
            continue
        w = float(weights.get(name, 1.0))
        p, g = pred[..., s:e], target[..., s:e]
        out[f"P_{name}"] = w * F.mse_loss(p, g)
        out[f"V_{name}"] = w * F.mse_loss(p[:, 1:] - p[:, :-1], g[:, 1:] - g[:, :-1])
        pa, ga = p[:, 2:] - 2 * p[:, 1:-1] + p[:, :-2], g[:, 2:] - 2 * g[:, 1:-1] + g[:, :-2]
        out[f"A_{name}"] = w * F.mse_loss(pa, ga)
        if settings.use_last_frame_loss:
            # continuity: the clip's first frame follows the conditioning (previous) frame
            out[f"L_{name}"] = w * F.mse_loss(p[:, 0], cond_frame[:, s:e])
    if settings.use_reg_loss:
        out["R"] = 1e-4 * pred[..., 1:].abs().mean()          # not on scale
    return out


def diffusion_loss(model: torch.nn.Module, kp_seq: torch.Tensor, kp_cond: torch.Tensor, aud_cond: torch.Tensor,
                   settings: LossSettings, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total loss, terms) for one batch; `generator` fixes t, noise and dropout (evaluation)."""
    b, dev = kp_seq.shape[0], kp_seq.device
    t = torch.randint(0, NUM_TIMESTEPS, (b,), device=dev, generator=generator)
    noise = torch.randn(kp_seq.shape, device=dev, generator=generator)
    keep = torch.rand(b, device=dev, generator=generator) >= settings.cond_drop_prob
    x_t = q_sample(kp_seq, t, noise)
    pred = model(x_t, kp_cond, aud_cond, t, keep)
    terms = part_losses(pred, kp_seq, kp_cond, settings)
    return torch.stack(list(terms.values())).sum(), terms

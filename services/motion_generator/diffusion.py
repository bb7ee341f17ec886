"""Diffusion schedule and DDIM sampler around the guided one-step MotionDiT call.

See docs/model.md §3.4-3.5. The sampler is written once, in numpy, around a `OneStep` callable
(torch module, ONNX Runtime session or TensorRT engine), so every backend samples with the same arithmetic.
Everything is batched: row b of x / cond_frame / cond is one window of one session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

NUM_TIMESTEPS = 1000

# (x [B,80,265], cond_frame [B,265], cond [B,80,1103], t [B] int64) -> (pred_noise, x_start), each [B,80,265]
OneStep = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Schedule:
    """Cosine schedule (s = 0.008): float32 arrays indexed by the diffusion step 0..999."""

    alphas_cumprod: np.ndarray        # [1000]
    sqrt_recip1m: np.ndarray          # A  = sqrt(1 / (1 - a)), for pred_noise
    sqrt_recipm1: np.ndarray          # Bc = sqrt(1 / a - 1)


@lru_cache(maxsize=1)
def cosine_schedule(steps: int = NUM_TIMESTEPS, s: float = 0.008) -> Schedule:
    tau = np.arange(steps + 1, dtype=np.float64) / steps + s
    f = np.cos(tau / (1 + s) * np.pi / 2) ** 2
    f = f / f[0]
    betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999).astype(np.float32)
    alphas = (np.float32(1) - betas).astype(np.float32)
    # float64 running product of the float32 alphas, rounded at every output (the CPU cumprod's accumulator)
    acp = np.cumprod(alphas.astype(np.float64)).astype(np.float32)
    one = np.float32(1)
    return Schedule(acp, np.sqrt(one / (one - acp)), np.sqrt(one / acp - one))


def time_pairs(steps: int) -> list[tuple[int, int]]:
    """DDIM (t, t_next) pairs: float32 linspace(-1, 999, S+1) as torch computes it, truncated, reversed."""
    if steps < 1 or steps > NUM_TIMESTEPS:
        raise ValueError(f"sampling steps must be in 1..{NUM_TIMESTEPS}, got {steps}")
    step = np.float32(NUM_TIMESTEPS) / np.float32(steps)
    lo, hi = np.float32(-1), np.float32(NUM_TIMESTEPS - 1)
    vals = [lo + step * np.float32(i) if i < (steps + 1) // 2 else hi - step * np.float32(steps - i)
            for i in range(steps + 1)]
    times = [int(v) for v in vals][::-1]                               # int() truncates toward zero
    return list(zip(times[:-1], times[1:], strict=True))


@dataclass(frozen=True)
class StepConstants:
    pairs: list[tuple[int, int]]
    alpha_next_sqrt: np.ndarray       # [S-1] float32
    sigma: np.ndarray                 # [S-1]
    c: np.ndarray                     # [S-1]


@lru_cache(maxsize=64)
def step_constants(steps: int, eta: float = 1.0) -> StepConstants:
    acp = cosine_schedule().alphas_cumprod
    pairs = time_pairs(steps)
    s_list, sig_list, c_list = [], [], []
    one, e = np.float32(1), np.float32(eta)
    for t, t_next in pairs:
        if t_next < 0:
            continue
        a, an = acp[t], acp[t_next]
        sigma = e * np.sqrt((one - a / an) * (one - an) / (one - a))
        c_list.append(np.sqrt(np.maximum(one - an - sigma * sigma, np.float32(0))))
        sig_list.append(sigma)
        s_list.append(np.sqrt(an))
    f32 = np.float32
    return StepConstants(pairs, np.array(s_list, f32), np.array(sig_list, f32), np.array(c_list, f32))


@dataclass
class SampleTrace:
    """Per-step model inputs and outputs, for debugging against the reference."""

    times: list[int]
    x_t: list[np.ndarray]
    pred_noise: list[np.ndarray]
    x_start: list[np.ndarray]


def ddim_sample(one_step: OneStep, cond_frame: np.ndarray, cond: np.ndarray, steps: int, x_T: np.ndarray,
                step_noise: np.ndarray | Sequence[np.ndarray], eta: float = 1.0,
                trace: SampleTrace | None = None) -> np.ndarray:
    """Sample a batch of windows -> motion [B,80,265].

    cond_frame [B,265], cond [B,80,1103], x_T [B,80,265] (initial noise), step_noise [S-1,B,80,265] (noise added
    after step k; the reference draws them once per step count and reuses them for every window).
    """
    consts = step_constants(steps, float(eta))
    n_noisy = len(consts.sigma)
    if len(step_noise) < n_noisy:
        raise ValueError(f"{steps} steps need {n_noisy} step noises, got {len(step_noise)}")
    x = np.asarray(x_T, dtype=np.float32)
    b = x.shape[0]
    x_start = x
    for k, (t, t_next) in enumerate(consts.pairs):
        tt = np.full((b,), t, dtype=np.int64)
        pred_noise, x_start = one_step(x, cond_frame, cond, tt)
        if trace is not None:
            trace.times.append(t)
            trace.x_t.append(x)
            trace.pred_noise.append(pred_noise)
            trace.x_start.append(x_start)
        if t_next < 0:
            return np.asarray(x_start, dtype=np.float32)
        z = np.asarray(step_noise[k], dtype=np.float32)
        x = ((x_start * consts.alpha_next_sqrt[k]) + (consts.c[k] * pred_noise)) + consts.sigma[k] * z
        x = x.astype(np.float32, copy=False)
    return np.asarray(x_start, dtype=np.float32)

"""Golden parity of the MotionDiT: the guided one-step call and the 10-step DDIM sampler (official sizes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ditto.weights import Generated, load_weights
from services.motion_generator.diffusion import SampleTrace, cosine_schedule, ddim_sample, step_constants
from services.motion_generator.dit import MotionDecoder, MotionDiTConfig
from services.motion_generator.models import TorchBackend
from tests.conftest import golden_case, scaled_error


@pytest.fixture(scope="module")
def golden_backend() -> TorchBackend:
    case, _, folder = golden_case("lmdm_one_step")
    model = MotionDecoder(MotionDiTConfig.full())
    manifest = json.loads((folder / "manifest.json").read_text())
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    theirs = [(k, v["shape"]) for k, v in manifest["state_dict"].items()]
    assert ours == theirs, "state_dict keys, shapes or order differ from the official manifest"
    load_weights(model, Generated(case["seed"]))
    return TorchBackend(model)


@pytest.mark.golden
def test_lmdm_one_step(golden_backend: TorchBackend) -> None:
    _, io, _ = golden_case("lmdm_one_step")
    model = golden_backend.model
    for t in (999, 500, 0):
        tc = io[f"time_cond_t{t}"]
        x, cf, cond = (torch.from_numpy(io[k]) for k in ("x", "cond_frame", "cond"))
        with torch.inference_mode():
            unc = model.forward_uncond(x, cf, torch.from_numpy(tc)).numpy()
            kept = model(x, cf, cond, torch.from_numpy(tc)).numpy()
            dropped = model(x, cf, cond, torch.from_numpy(tc), keep=torch.tensor([False])).numpy()
        assert scaled_error(unc, io[f"x0_uncond_t{t}"]) <= 1e-4
        assert scaled_error(dropped, io[f"x0_uncond_t{t}"]) <= 1e-4
        assert scaled_error(kept, io[f"x0_cond_t{t}"]) <= 1e-4
        pred_noise, x_start = golden_backend.one_step(io["x"], io["cond_frame"], io["cond"], tc)
        assert scaled_error(x_start, io[f"x_start_t{t}"]) <= 1e-4, t
        assert scaled_error(pred_noise, io[f"pred_noise_t{t}"]) <= 1e-4, t


@pytest.mark.golden
def test_lmdm_sampling(golden_backend: TorchBackend) -> None:
    _, io, _ = golden_case("lmdm_sampling")
    np.testing.assert_array_equal(cosine_schedule().alphas_cumprod, io["sched_alphas_cumprod"])
    consts = step_constants(10)
    np.testing.assert_allclose(consts.sigma, io["sched_sigma"], rtol=1e-6)
    np.testing.assert_allclose(consts.c, io["sched_c"], rtol=1e-4)
    np.testing.assert_allclose(consts.alpha_next_sqrt, io["sched_alpha_next_sqrt"], rtol=1e-6)
    trace = SampleTrace([], [], [], [])
    motion = ddim_sample(golden_backend.one_step, io["cond_frame"], io["cond"], 10, io["x_T"], io["step_noise"],
                         trace=trace)
    assert trace.times == list(io["steps_time_cond"])
    for k in range(10):
        assert scaled_error(trace.x_start[k], io["steps_x_start"][k]) <= 1e-3, k
    assert scaled_error(motion, io["motion"]) <= 1e-3

"""Golden parity of the five renderer networks at the official sizes (tests/golden/README.md).

Weights: golden-init v1 with each case's seed; one fp32 forward each under torch.no_grad().
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ditto.weights import golden_state_dict
from services.renderer.models import build_networks
from tests.conftest import golden_case, scaled_error

# golden case folder -> our network key (OFFICIAL_FILES naming)
CASES = {
    "appearance_extractor": "appearance_extractor",
    "motion_extractor": "motion_extractor",
    "stitch_network": "stitch_network",
    "warp_network": "warp_network",
    "decoder": "decoder",
}
TOLERANCE = {"stitch_network": 1e-5}        # scaled max error; 1e-4 for the others (tests/golden/README.md)


def _network(case_name: str) -> torch.nn.Module:
    name = CASES[case_name]
    return build_networks("full", (name,))[name]


@pytest.mark.golden
@pytest.mark.parametrize("case_name", list(CASES), ids=list(CASES))
def test_state_dict_matches_manifest(case_name: str) -> None:
    _, _, folder = golden_case(case_name)
    manifest = json.loads((folder / "manifest.json").read_text())
    net = _network(case_name)
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in net.state_dict().items()]
    ref = [(k, e["shape"], e["dtype"]) for k, e in manifest["state_dict"].items()]
    assert ours == ref                                        # same keys, shapes, dtypes, in the same order
    assert len(ours) == manifest["num_entries"]
    assert sum(p.numel() for p in net.parameters()) == manifest["num_parameters_unique"]


def _run_case(case_name: str) -> tuple[dict, dict[str, np.ndarray], torch.nn.Module]:
    case, io, _ = golden_case(case_name)
    net = _network(case_name)
    net.load_state_dict(golden_state_dict(net, case["seed"]), strict=True)
    return case, io, net.eval()


def _inputs(case: dict, io: dict[str, np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(io[name]) for name in case["inputs"]]


@pytest.mark.golden
@pytest.mark.parametrize("case_name", ["appearance_extractor", "motion_extractor", "stitch_network", "decoder"],
                         ids=["appearance_extractor", "motion_extractor", "stitch_network", "decoder"])
def test_network_output(case_name: str) -> None:
    case, io, net = _run_case(case_name)
    with torch.no_grad():
        out = net(*_inputs(case, io))
    outs = out if isinstance(out, tuple) else (out,)
    names = list(case["outputs"])
    assert len(outs) == len(names)
    for name, got in zip(names, outs, strict=True):
        err = scaled_error(got.numpy(), io[name])
        assert err <= TOLERANCE.get(case_name, 1e-4), f"{case_name}.{name}: scaled error {err:.3g}"
    if case_name == "stitch_network":
        with torch.no_grad():
            delta = net.deltas(*_inputs(case, io))
        assert scaled_error(delta.numpy(), io["mlp_out"]) <= 1e-5


@pytest.mark.golden
@pytest.mark.parametrize("grid_sample", ["native", "decomposed"],
                         ids=["warp_network-native", "warp_network-decomposed"])
def test_warp_network(grid_sample: str) -> None:
    case, io, net = _run_case("warp_network")
    net.grid_sample_mode = grid_sample
    with torch.no_grad():
        out, dense = net.warp(*_inputs(case, io))
    assert scaled_error(out.numpy(), io["out"]) <= 1e-4
    # Debug arrays: the dense motion network's dict, to locate a mismatch.
    for ref, ours in (("dense_deformation", "deformation"), ("dense_occlusion_map", "occlusion_map"),
                      ("dense_mask", "mask")):
        err = scaled_error(dense[ours].numpy(), io[ref])
        assert err <= 1e-4, f"{ref}: scaled error {err:.3g}"

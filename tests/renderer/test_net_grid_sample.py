"""The gather decomposition of the 3-D grid sample equals F.grid_sample and exports without GridSample nodes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from services.renderer.networks.blocks import identity_grid
from services.renderer.networks.grid_sample import GridSample3d, grid_sample_3d

# What TensorRT 10 runs natively; the decomposition must stay inside this set.
TRT_SAFE_OPS = {"Gather", "GatherElements", "Add", "Sub", "Mul", "Div", "Floor", "Clip", "Cast", "Pad", "Reshape",
                "Transpose", "Range", "Concat", "Slice", "Squeeze", "Unsqueeze", "Shape", "Expand", "Constant",
                "Min", "Max", "Identity"}


def _reference(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@pytest.mark.parametrize("spread", [0.6, 1.3, 6.0])
def test_matches_torch_grid_sample(spread: float) -> None:
    gen = torch.Generator().manual_seed(int(spread * 10))
    volume = torch.randn(2, 3, 5, 6, 7, generator=gen)                  # N, C, D, H, W all different
    grid = spread * (2 * torch.rand(2, 4, 5, 6, 3, generator=gen) - 1)  # partly outside [-1, 1] for spread > 1
    got = grid_sample_3d(volume, grid)
    assert got.shape == (2, 3, 4, 5, 6)
    torch.testing.assert_close(got, _reference(volume, grid), rtol=0, atol=2e-6)


def test_identity_grid_edges_and_voxel_centres() -> None:
    gen = torch.Generator().manual_seed(1)
    volume = torch.randn(1, 4, 4, 8, 8, generator=gen)
    # The networks' identity grid has endpoints exactly +-1 with align_corners=False: border samples are half
    # outside the volume and must be blended with zeros, not clamped.
    grid = identity_grid((4, 8, 8), volume).unsqueeze(0)
    got = grid_sample_3d(volume, grid)
    torch.testing.assert_close(got, _reference(volume, grid), rtol=0, atol=2e-6)
    assert not torch.allclose(got, volume, atol=1e-3)                  # not an identity, as in the reference
    # Exact voxel centres (align_corners=False convention) reproduce the volume.
    def centres(n: int) -> torch.Tensor:
        return (2 * torch.arange(n) + 1) / n - 1
    z, y, x = torch.meshgrid(centres(4), centres(8), centres(8), indexing="ij")
    exact = grid_sample_3d(volume, torch.stack([x, y, z], -1).unsqueeze(0))
    torch.testing.assert_close(exact, volume, rtol=0, atol=1e-6)


def test_module_switch() -> None:
    gen = torch.Generator().manual_seed(2)
    volume, grid = torch.randn(1, 2, 3, 4, 5, generator=gen), torch.rand(1, 2, 2, 2, 3, generator=gen) * 2 - 1
    sampler = GridSample3d("decomposed")
    torch.testing.assert_close(sampler(volume, grid), _reference(volume, grid), rtol=0, atol=2e-6)
    sampler.mode = "native"
    assert torch.equal(sampler(volume, grid), _reference(volume, grid))
    sampler.mode = "bicubic"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="native"):
        sampler(volume, grid)


def test_exports_without_grid_sample(tmp_path) -> None:
    path = tmp_path / "gs.onnx"
    gen = torch.Generator().manual_seed(3)
    volume, grid = torch.randn(2, 3, 4, 6, 6, generator=gen), 1.2 * (2 * torch.rand(2, 3, 5, 5, 3, generator=gen) - 1)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.onnx.export(GridSample3d("decomposed"), (volume, grid), input_names=["volume", "grid"],
                                output_names=["out"], opset_version=20, dynamo=True,
                                dynamic_shapes={"volume": {0: batch}, "grid": {0: batch}}, verbose=False)
    assert program is not None
    program.save(str(path))
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "GridSample" not in ops
    assert ops <= TRT_SAFE_OPS, f"ops outside the TensorRT-safe set: {ops - TRT_SAFE_OPS}"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 2):
        (out,) = session.run(["out"], {"volume": volume[:n].numpy(), "grid": grid[:n].numpy()})
        np.testing.assert_allclose(out, _reference(volume[:n], grid[:n]).numpy(), rtol=0, atol=2e-6)

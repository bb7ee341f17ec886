"""Our own ONNX export of the five renderer networks (opset 20, dynamic batch axis, the reference's I/O names).

The warp network can be exported with native 5-D GridSample nodes (ONNX Runtime CPU runs them) or with the
gather decomposition of `networks/grid_sample.py` (TensorRT 10, ONNX Runtime CUDA). In the decomposed graph every
node that comes from the decomposition is renamed `GridSample3D/...`, so a TensorRT build can keep exactly those
layers in fp32, as the reference does for its GridSample plugin layers.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ditto.accel import cached_export

from .networks.grid_sample import GridSampleMode
from .networks.motion_extractor import MOTION_OUTPUTS

OPSET = 20
GRID_SAMPLE_SCOPE = "GridSample3D/"
EXPORT_FORMAT_VERSION = 1          # bump when the exported graphs change, to invalidate caches


@dataclass(frozen=True)
class NetworkIO:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


# Input/output names of the reference's exported graphs (docs/model.md §5.7).
NETWORK_IO: dict[str, NetworkIO] = {
    "appearance_extractor": NetworkIO(("image",), ("pred",)),
    "motion_extractor": NetworkIO(("image",), MOTION_OUTPUTS),
    "stitch_network": NetworkIO(("kp_source", "kp_driving"), ("out",)),
    "warp_network": NetworkIO(("feature_3d", "kp_source", "kp_driving"), ("out",)),
    "decoder": NetworkIO(("feature",), ("output",)),
}


def example_inputs(name: str, module: nn.Module, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Inputs of the right shapes for tracing (batch 2, so the exporter cannot specialise the batch to 1)."""
    cfg: Any = getattr(module, "cfg", None)
    gen = torch.Generator().manual_seed(0)
    if name in ("appearance_extractor", "motion_extractor"):
        x: tuple[torch.Tensor, ...] = (torch.rand(batch, 3, 256, 256, generator=gen),)
    elif name == "stitch_network":
        x = (0.3 * torch.randn(batch, cfg.num_kp, 3, generator=gen),
             0.3 * torch.randn(batch, cfg.num_kp, 3, generator=gen))
    elif name == "warp_network":
        volume = (batch, cfg.reshape_channel, cfg.reshape_depth, cfg.feature_size, cfg.feature_size)
        x = (torch.randn(volume, generator=gen), 0.3 * torch.randn(batch, cfg.num_kp, 3, generator=gen),
             0.3 * torch.randn(batch, cfg.num_kp, 3, generator=gen))
    elif name == "decoder":
        x = (torch.randn(batch, cfg.input_channels, cfg.feature_size, cfg.feature_size, generator=gen),)
    else:
        raise KeyError(f"unknown renderer network {name!r}; expected one of {sorted(NETWORK_IO)}")
    device = next(module.parameters()).device
    return tuple(t.to(device) for t in x)


@contextlib.contextmanager
def _grid_sample_mode(module: nn.Module, mode: GridSampleMode):
    """Temporarily switch a warp network's grid sampling; other networks have none."""
    if not hasattr(module, "grid_sample_mode"):
        yield
        return
    previous = module.grid_sample_mode
    setattr(module, "grid_sample_mode", mode)  # noqa: B010 (a property of WarpingNetwork)
    try:
        yield
    finally:
        setattr(module, "grid_sample_mode", previous)  # noqa: B010


def _tag_grid_sample_nodes(model: Any) -> int:
    """Rename nodes that come from the grid-sample decomposition to GridSample3D/<name>; returns how many."""
    count = 0
    for node in model.graph.node:
        # The exporter records the module classes each node was produced under.
        hierarchy = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.class_hierarchy"), "")
        if "grid_sample.GridSample3d" in hierarchy:
            node.name = GRID_SAMPLE_SCOPE + (node.name or node.op_type)
            count += 1
    return count


def export_network(name: str, module: nn.Module, path: str | Path, grid_sample: GridSampleMode = "native") -> Path:
    """Export one network in float32, eval mode, opset 20, with a dynamic batch axis named `batch`."""
    import onnx

    if name not in NETWORK_IO:
        raise KeyError(f"unknown renderer network {name!r}; expected one of {sorted(NETWORK_IO)}")
    names = NETWORK_IO[name]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    if next(module.parameters()).dtype != torch.float32:
        raise ValueError(f"{name}: export expects float32 weights, got {next(module.parameters()).dtype}")
    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic_shapes = {arg: {0: batch} for arg in names.inputs}
    with _grid_sample_mode(module, grid_sample), torch.no_grad(), warnings.catch_warnings(), \
            _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, example_inputs(name, module), input_names=list(names.inputs),
            output_names=list(names.outputs), opset_version=OPSET, dynamo=True, dynamic_shapes=dynamic_shapes,
            external_data=False, verbose=False,
        )
    assert program is not None
    model = program.model_proto
    if grid_sample == "decomposed" and name == "warp_network":
        if _tag_grid_sample_nodes(model) == 0:
            raise RuntimeError("no grid-sample decomposition nodes found in the exported warp network")
        if any(node.op_type == "GridSample" for node in model.graph.node):
            raise RuntimeError("the decomposed warp network still contains GridSample nodes")
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "batch"
    onnx.save(model, str(path))
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter prints progress lines and warns about optional packages; keep service logs clean."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def weights_digest(module: nn.Module) -> str:
    """Hash of a network's architecture and weights: the ONNX cache key."""
    h = hashlib.sha256()
    h.update(json.dumps({"cls": type(module).__name__, "cfg": repr(getattr(module, "cfg", None)),
                         "torch": torch.__version__, "format": EXPORT_FORMAT_VERSION}).encode())
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def export_path(name: str, cache_dir: str | Path, grid_sample: GridSampleMode, module: nn.Module) -> Path:
    """Where the export of these weights in this mode is cached: `cache_dir/onnx/<name>-<weights digest>-<mode>.onnx`
    (only the warp network has a grid-sample mode)."""
    mode = grid_sample if name == "warp_network" else "native"
    return Path(cache_dir) / "onnx" / f"{name}-{weights_digest(module)[:16]}-{mode}.onnx"


def export_cached(name: str, module: nn.Module, cache_dir: str | Path,
                  grid_sample: GridSampleMode = "native") -> Path:
    """Export into `cache_dir/onnx/`, reusing a previous export of the same weights and mode."""
    return cached_export(export_path(name, cache_dir, grid_sample, module),
                         lambda tmp: export_network(name, module, tmp, grid_sample))

"""Execution backends for the renderer networks: PyTorch, ONNX Runtime and TensorRT 10, one interface.

Every backend runs a network by name on a dict of named input tensors and returns a dict of named outputs
(`export.NETWORK_IO`), so outputs are always bound by name: runtimes may reorder the motion extractor's seven outputs.

Precision follows the reference: F, W and G in fp16 on GPUs (PyTorch autocast / TensorRT fp16 with the grid-sample
layers kept in fp32), the motion extractor and the stitching MLP in fp32. CPU runs are fp32.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ditto.accel import EngineSpec, TensorRTEngine, onnx_session

from .export import GRID_SAMPLE_SCOPE, NETWORK_IO

FP16_NETWORKS = frozenset({"appearance_extractor", "warp_network", "decoder"})   # fp32: motion_extractor, stitch
TRT_FP16_NETWORKS = FP16_NETWORKS | {"stitch_network"}                           # the reference's engines
TRT_MAX_BATCH = 16


class RendererBackend(Protocol):
    name: str
    device: torch.device
    max_batch: int | None            # None: any batch

    def run(self, network: str, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


# ---------------------------------------------------------------------------------------------------------------


class TorchBackend:
    name = "torch"
    max_batch: int | None = None

    def __init__(self, networks: Mapping[str, nn.Module], device: torch.device) -> None:
        self.device = device
        self.networks = {k: m.to(device).eval() for k, m in networks.items()}

    def run(self, network: str, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        io = NETWORK_IO[network]
        args = [inputs[k].to(self.device, torch.float32) for k in io.inputs]
        fp16 = self.device.type == "cuda" and network in FP16_NETWORKS
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.float16, enabled=fp16):
            out = self.networks[network](*args)
        outs = out if isinstance(out, tuple) else (out,)
        return {k: v.float() for k, v in zip(io.outputs, outs, strict=True)}


# ---------------------------------------------------------------------------------------------------------------


class OnnxRuntimeBackend:
    """ONNX Runtime sessions over our own fp32 exports (CPU, or CUDA with CPU fallback; `ditto.accel.onnx_session`)."""

    name = "onnxruntime"
    max_batch: int | None = None

    def __init__(self, onnx_paths: Mapping[str, Path], device: torch.device,
                 session_options: Any | None = None) -> None:
        self.device = device
        self.sessions = {name: onnx_session(path, str(device), session_options) for name, path in onnx_paths.items()}

    def run(self, network: str, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        io = NETWORK_IO[network]
        feeds = {k: inputs[k].detach().to("cpu", torch.float32).contiguous().numpy() for k in io.inputs}
        outs = self.sessions[network].run(list(io.outputs), feeds)      # requested by name
        return {k: torch.from_numpy(v).to(self.device) for k, v in zip(io.outputs, outs, strict=True)}


# ---------------------------------------------------------------------------------------------------------------


class TensorRTBackend:
    """TensorRT 10 engines built from our ONNX exports (warp network with the gather grid sample: no plugin), one per
    network, batch 1..max_batch, cached under `cache_dir/trt/` (`ditto.accel.TensorRTEngine`). F, W, G and the
    stitching MLP in fp16 with the grid-sample layers kept in fp32, as the reference's engines."""

    name = "tensorrt"

    def __init__(self, onnx_paths: Mapping[str, Path], device: torch.device, cache_dir: Path,
                 max_batch: int = TRT_MAX_BATCH, opt_batch: int = 1) -> None:
        self.device = device
        self.max_batch: int | None = max_batch
        self.engines: dict[str, TensorRTEngine] = {}
        for name, path in onnx_paths.items():
            spec = EngineSpec(batch=(1, opt_batch, max_batch), fp16=name in TRT_FP16_NETWORKS,
                              fp32_layer_prefix=GRID_SAMPLE_SCOPE, optimization_level=5)
            self.engines[name] = TensorRTEngine(path, device, cache_dir / "trt", spec, stem=name)

    def run(self, network: str, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        io = NETWORK_IO[network]
        feeds = {k: inputs[k].to(self.device, torch.float32) for k in io.inputs}
        outs = self.engines[network].run(feeds, io.outputs)
        return {k: v.float() for k, v in outs.items()}

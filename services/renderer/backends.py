"""Execution backends for the renderer networks: PyTorch, ONNX Runtime and TensorRT 10, one interface.

Every backend runs a network by name on a dict of named input tensors and returns a dict of named outputs
(`export.NETWORK_IO`), so outputs are always bound by name: runtimes may reorder the motion extractor's seven outputs.

Precision follows the reference: F, W and G in fp16 on GPUs (PyTorch autocast / TensorRT fp16 with the grid-sample
layers kept in fp32), the motion extractor and the stitching MLP in fp32. CPU runs are fp32.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from ditto.accel import EngineSpec, TensorRTEngine, import_tensorrt

from .export import GRID_SAMPLE_SCOPE, NETWORK_IO, export_cached
from .networks.grid_sample import GridSampleMode

BackendName = Literal["torch", "onnxruntime", "tensorrt"]
FP16_NETWORKS = frozenset({"appearance_extractor", "warp_network", "decoder"})   # fp32: motion_extractor, stitch
TRT_FP16_NETWORKS = FP16_NETWORKS | {"stitch_network"}                           # the reference's engines
TRT_MAX_BATCH = 16


class RendererBackend(Protocol):
    name: str
    device: torch.device
    max_batch: int | None            # None: any batch

    def run(self, network: str, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


def make_backend(name: str, networks: Mapping[str, nn.Module], device: torch.device,
                 cache_dir: Path) -> RendererBackend:
    if name == "torch":
        return TorchBackend(networks, device)
    if name == "onnxruntime":
        return OnnxRuntimeBackend.from_networks(networks, device, cache_dir)
    if name == "tensorrt":
        return TensorRTBackend.from_networks(networks, device, cache_dir)
    raise ValueError(f"backend must be 'torch', 'onnxruntime' or 'tensorrt', got {name!r}")


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


def cpu_session_options(threads: int | None = None) -> Any:
    """The CPU session options measured best (tools/bench/onnxruntime.py, bench/results/onnxruntime.json): all
    graph optimisations (NCHWc layout, fusions), one intra-op pool as wide as PyTorch's, sequential execution, and
    no spin-waiting -- spinning threads cost the most where the cores are shared with other processes."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OnnxRuntimeBackend:
    """ONNX Runtime sessions over our own fp32 exports (CPU, or CUDA with CPU fallback)."""

    name = "onnxruntime"
    max_batch: int | None = None

    def __init__(self, onnx_paths: Mapping[str, Path], device: torch.device,
                 session_options: Any | None = None) -> None:
        import onnxruntime as ort

        self.device = device
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("ONNX Runtime has no CUDA provider here: install onnxruntime-gpu "
                                   "(pip install '.[gpu]') or use device='cpu'")
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": device.index or 0}),
                                    "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
            if session_options is None:
                session_options = cpu_session_options()
        self.sessions = {name: ort.InferenceSession(str(path), sess_options=session_options, providers=providers)
                         for name, path in onnx_paths.items()}

    @classmethod
    def from_networks(cls, networks: Mapping[str, nn.Module], device: torch.device,
                      cache_dir: Path) -> OnnxRuntimeBackend:
        # ONNX Runtime's CPU provider runs 5-D GridSample; older CUDA providers fall back to the CPU for it, so
        # CUDA sessions get the gather decomposition instead.
        mode: GridSampleMode = "decomposed" if device.type == "cuda" else "native"
        paths = {name: export_cached(name, net.float().cpu(), cache_dir, mode) for name, net in networks.items()}
        return cls(paths, device)

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

    @classmethod
    def from_networks(cls, networks: Mapping[str, nn.Module], device: torch.device,
                      cache_dir: Path) -> TensorRTBackend:
        import_tensorrt()          # fail before a long export when TensorRT is missing
        paths = {name: export_cached(name, net.float().cpu(), cache_dir, "decomposed")
                 for name, net in networks.items()}
        return cls(paths, device, cache_dir)

    def run(self, network: str, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        io = NETWORK_IO[network]
        feeds = {k: inputs[k].to(self.device, torch.float32) for k in io.inputs}
        outs = self.engines[network].run(feeds, io.outputs)
        return {k: v.float() for k, v in outs.items()}

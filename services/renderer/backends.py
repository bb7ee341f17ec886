"""Execution backends for the renderer networks: PyTorch, ONNX Runtime and TensorRT 10, one interface.

Every backend runs a network by name on a dict of named input tensors and returns a dict of named outputs
(`export.NETWORK_IO`), so outputs are always bound by name: runtimes may reorder the motion extractor's seven outputs.

Precision follows the reference: F, W and G in fp16 on GPUs (PyTorch autocast / TensorRT fp16 with the grid-sample
layers kept in fp32), the motion extractor and the stitching MLP in fp32. CPU runs are fp32.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

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
    """The CPU session options measured best (services/renderer/bench_ort.py, bench/results/onnxruntime.json): all
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


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as err:
        raise RuntimeError(
            "backend 'tensorrt' needs the TensorRT 10 Python package, which is not installed: "
            "pip install '.[gpu]' (tensorrt>=10,<11) on a CUDA machine, or use backend='torch'/'onnxruntime'"
        ) from err
    if int(trt.__version__.split(".")[0]) < 10:
        raise RuntimeError(f"backend 'tensorrt' needs TensorRT 10, found {trt.__version__}")
    return trt


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class TensorRTBackend:
    """TensorRT 10 engines built from our ONNX exports (warp network with the gather grid sample: no plugin).

    Engines have one optimisation profile with batch 1..max_batch and are cached under
    `cache_dir/trt/` keyed by GPU name, compute capability, TensorRT version, ONNX hash, precision and batch range.
    Execution uses `execute_async_v3` on torch CUDA tensors and the current torch stream.
    """

    name = "tensorrt"

    def __init__(self, onnx_paths: Mapping[str, Path], device: torch.device, cache_dir: Path,
                 max_batch: int = TRT_MAX_BATCH, opt_batch: int = 1) -> None:
        trt = import_tensorrt()
        if device.type != "cuda":
            raise RuntimeError("backend 'tensorrt' runs on CUDA devices only; use device='cuda'")
        self.trt = trt
        self.device = device
        self.max_batch: int | None = max_batch
        self.opt_batch = opt_batch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engines: dict[str, Any] = {}
        self.contexts: dict[str, Any] = {}
        self.locks: dict[str, threading.Lock] = {}
        for name, path in onnx_paths.items():
            fp16 = name in TRT_FP16_NETWORKS
            engine_path = cache_dir / "trt" / f"{name}-{self.engine_key(path, fp16)}.engine"
            if not engine_path.is_file():
                engine_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = engine_path.with_suffix(".tmp")
                tmp.write_bytes(self.build(path, fp16))
                tmp.replace(engine_path)
            with torch.cuda.device(device):
                engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
                if engine is None:
                    raise RuntimeError(f"{engine_path}: TensorRT cannot deserialize the engine; delete it to rebuild")
                self.engines[name] = engine
                self.contexts[name] = engine.create_execution_context()
            self.locks[name] = threading.Lock()

    @classmethod
    def from_networks(cls, networks: Mapping[str, nn.Module], device: torch.device,
                      cache_dir: Path) -> TensorRTBackend:
        import_tensorrt()          # fail before a long export when TensorRT is missing
        paths = {name: export_cached(name, net.float().cpu(), cache_dir, "decomposed")
                 for name, net in networks.items()}
        return cls(paths, device, cache_dir)

    def engine_key(self, onnx_path: Path, fp16: bool) -> str:
        idx = self.device.index or 0
        major, minor = torch.cuda.get_device_capability(idx)
        parts = [torch.cuda.get_device_name(idx), f"sm{major}{minor}", self.trt.__version__, _file_sha256(onnx_path),
                 "fp16" if fp16 else "fp32", f"b1-{self.opt_batch}-{self.max_batch}"]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]

    def build(self, onnx_path: Path, fp16: bool) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)           # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"{onnx_path}: TensorRT cannot parse the ONNX graph: {errors}")
        config = builder.create_builder_config()
        config.builder_optimization_level = 5
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
            # Sampling coordinates need fp32: in fp16 an index near 64 has a resolution of 1/32 voxel.
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                if not layer.name.startswith(GRID_SAMPLE_SCOPE):
                    continue
                outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
                if all(o.dtype in (trt.float32, trt.float16) for o in outputs):
                    layer.precision = trt.float32
                    for j in range(layer.num_outputs):
                        layer.set_output_type(j, trt.float32)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            tail = tuple(tensor.shape)[1:]
            profile.set_shape(tensor.name, (1, *tail), (self.opt_batch, *tail), (self.max_batch, *tail))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
        return bytes(serialized)

    def run(self, network: str, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        trt = self.trt
        io = NETWORK_IO[network]
        engine, context = self.engines[network], self.contexts[network]
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                  trt.int64: torch.int64, trt.bool: torch.bool}
        with self.locks[network], torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            feeds = {k: inputs[k].to(self.device, torch.float32).contiguous() for k in io.inputs}
            for k, t in feeds.items():
                context.set_input_shape(k, tuple(t.shape))
                context.set_tensor_address(k, t.data_ptr())
            outs: dict[str, torch.Tensor] = {}
            for k in io.outputs:
                shape = tuple(context.get_tensor_shape(k))
                outs[k] = torch.empty(shape, dtype=dtypes[engine.get_tensor_dtype(k)], device=self.device)
                context.set_tensor_address(k, outs[k].data_ptr())
            # Inputs and outputs were allocated on this stream, so the caching allocator cannot hand their memory
            # to other work before the launch has finished.
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution of {network} failed")
        return {k: v.float() for k, v in outs.items()}

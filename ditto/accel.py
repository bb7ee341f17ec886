"""Accelerator plumbing shared by the three stages: content hashes, atomic file writes, the ONNX export cache, ONNX
Runtime sessions, and TensorRT 10 engines (import, build, cache key, runner).

Caches live on volumes that several processes (pods, workers) share, so every file is written the same way: into a
temporary file with a name no other writer can pick (process id + random suffix) in the target's folder, then renamed
over the target. A reader sees either no file or a complete one; two writers racing each produce a complete file and
the last rename wins, which is harmless because both wrote the same content (cache files are named by it).

- `file_sha256`, `digest`: content hashes for cache keys.
- `atomic_path` (`atomic_paths` for several files in one block), `write_bytes_atomic`, `atomic_dir`, `partial_path`
  (for a writer that stays open): the one way files and folders are published.
- `cached_export(path, export)`: an ONNX (or any) file produced once and reused; stages name it by its source's
  content.
- `require_runtime(backend, device)`: fail in a second, before any export, where a backend cannot run.
- `onnx_session(path, device)`: an ONNX Runtime session with the providers for the device and the CPU options
  measured best (`onnx_cpu_options`).
- `import_tensorrt`, `EngineSpec`, `build_engine`, `engine_key`, `TensorRTEngine`: a TensorRT engine of an ONNX graph,
  cached as `<cache_dir>/<stem>-<key>.engine` where the key covers the GPU, its compute capability, the TensorRT
  version, the ONNX content and the build options, so an engine only ever runs where it was built. TensorRT needs a
  CUDA GPU and the `[gpu]` extra; this module imports it lazily so CPU machines never need it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class BackendError(RuntimeError):
    """A backend cannot run here (missing package, no GPU, engine build failed); the message says what to do."""


# ---------------------------------------------------------------------------------------------------------------
# Hashes


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(*parts: object) -> str:
    """sha256 hex of the parts' string forms, joined by '|': a cache key from what determines the cached content."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes


def partial_path(path: Path) -> Path:
    """A temporary name for writing `path`, unique to this writer (publish it with os.replace)."""
    # Hidden, unique per writer, same folder (a rename never crosses file systems), same suffix (np.save, av.open and
    # torch.onnx.export pick their format from it).
    return path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:12]}.partial{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write instead of `path`; renamed over `path` when the block ends without error, removed
    when it raises."""
    with atomic_paths([path]) as tmp:
        yield tmp[Path(path)]


@contextlib.contextmanager
def atomic_paths(paths: Iterable[str | Path]) -> Iterator[dict[Path, Path]]:
    """`atomic_path` for several files written in one block: {target: temporary path}; each temporary file is renamed
    over its target when the block ends without error, and all are removed when it raises."""
    tmp = {Path(p): partial_path(Path(p)) for p in paths}
    for path in tmp:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        for path, t in tmp.items():
            os.replace(t, path)
    finally:
        for t in tmp.values():
            t.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(folder: str | Path) -> Iterator[Path]:
    """A temporary folder to fill instead of `folder`; renamed to `folder` when the block ends without error. When
    `folder` appeared meanwhile (another writer of the same content won), that one is kept and ours is removed."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(folder)
    tmp.mkdir()
    try:
        yield tmp
        if not folder.exists():
            with contextlib.suppress(OSError):       # lost a race between the check and the rename: theirs stays
                os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_export(path: str | Path, export: Callable[[Path], object]) -> Path:
    """`path` when it exists; else `export(tmp)` writes a temporary file that is then published as `path`."""
    path = Path(path)
    if not path.is_file():
        with atomic_path(path) as tmp:
            export(tmp)
    return path


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime


def onnx_providers(device: str) -> list[Any]:
    """Execution providers for a device: 'cpu', or 'cuda[:N]' with the CPU for the nodes CUDA lacks."""
    import onnxruntime as ort

    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendError(f"device {device!r} asked for, but this ONNX Runtime has no CUDA provider: install "
                           "onnxruntime-gpu (pip install '.[gpu]') or use device 'cpu'")
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def onnx_cpu_options(threads: int | None = None) -> Any:
    """The CPU session options measured best (tools/bench/onnxruntime.py, bench/results/onnxruntime.json): all
    graph optimisations (NCHWc layout, fusions), one intra-op pool as wide as PyTorch's, sequential execution, and
    no spin-waiting -- spinning threads cost the most where the cores are shared with other processes."""
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def onnx_session(path: str | Path, device: str = "cpu", options: Any | None = None,
                 threads: int | None = None) -> Any:
    """An ONNX Runtime session of `path` on `device`; `options` default to `onnx_cpu_options(threads)` on the CPU.
    A missing or unreadable file is a CheckpointError naming it."""
    import onnxruntime as ort

    from ditto.weights import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found. Run `ditto weights fetch`, or use --weights synthetic")
    providers = onnx_providers(str(device))
    if options is None and not str(device).startswith("cuda"):
        options = onnx_cpu_options(threads)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types
        raise CheckpointError(f"{path}: ONNX Runtime cannot load it ({err}); the file may be truncated: delete it "
                              "and fetch it again") from err


def require_runtime(backend: str, device: str, what: str) -> None:
    """Fail now, with what to do, when `backend` cannot run on `device` here (before any weights are read or any
    export is written): TensorRT needs its package and a CUDA GPU, ONNX Runtime on CUDA needs onnxruntime-gpu."""
    if backend == "tensorrt":
        import_tensorrt(what)
        require_cuda(what)
    elif backend == "onnxruntime":
        onnx_providers(str(device))


# ---------------------------------------------------------------------------------------------------------------
# TensorRT


def import_tensorrt(what: str = "the 'tensorrt' backend") -> Any:
    """`import tensorrt` (version 10) or a BackendError saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BackendError(f"{what} needs the TensorRT 10 Python package, which is not installed: pip install "
                           "'.[gpu]' (tensorrt>=10,<11) on a CUDA machine, or use backend 'torch' or 'onnxruntime'"
                           ) from err
    if int(trt.__version__.split(".")[0]) < 10:
        raise BackendError(f"{what} needs TensorRT 10, found {trt.__version__}")
    return trt


def require_cuda(what: str = "the 'tensorrt' backend") -> None:
    import torch

    if not torch.cuda.is_available():
        raise BackendError(f"{what} needs a CUDA GPU, and none is visible; use backend 'torch' or 'onnxruntime'")


Shape = tuple[int, ...]


@dataclass(frozen=True)
class EngineSpec:
    """How to build an engine. Shapes: `batch` = (min, opt, max) of axis 0 for every input, the other axes taken from
    the graph; `shapes` names an input's (min, opt, max) shapes explicitly. Precision: fp32 unless `fp16`; layers
    whose name starts with `fp32_layer_prefix` stay fp32 in an fp16 engine; `tf32` False clears TensorRT's TF32."""

    batch: tuple[int, int, int] = (1, 1, 1)
    shapes: Mapping[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)
    fp16: bool = False
    fp32_layer_prefix: str | None = None
    tf32: bool = True
    workspace_bytes: int | None = None
    optimization_level: int | None = None

    def key(self) -> str:
        return repr((self.batch, sorted(self.shapes.items()), self.fp16, self.fp32_layer_prefix, self.tf32,
                     self.workspace_bytes, self.optimization_level))


def build_engine(onnx_path: str | Path, spec: EngineSpec) -> bytes:
    """A serialized TensorRT engine of an ONNX graph (on the current CUDA device)."""
    trt = import_tensorrt()
    require_cuda("building a TensorRT engine")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)              # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"{onnx_path}: TensorRT cannot parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    if spec.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    if spec.optimization_level is not None:
        config.builder_optimization_level = spec.optimization_level
    if not spec.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if spec.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        if spec.fp32_layer_prefix:
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
            _keep_fp32(trt, network, spec.fp32_layer_prefix)
    profile = builder.create_optimization_profile()
    low, opt, high = spec.batch
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        tail = tuple(tensor.shape)[1:]
        shapes = spec.shapes.get(tensor.name, ((low, *tail), (opt, *tail), (high, *tail)))
        profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
    return bytes(serialized)


def _keep_fp32(trt: Any, network: Any, prefix: str) -> None:
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not layer.name.startswith(prefix):
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if all(o.dtype in (trt.float32, trt.float16) for o in outputs):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)


def engine_key(onnx_path: str | Path, spec: EngineSpec, device_index: int) -> str:
    """What an engine depends on: the GPU model and compute capability, TensorRT, the graph and the build options."""
    import torch

    trt = import_tensorrt()
    major, minor = torch.cuda.get_device_capability(device_index)
    return digest(torch.cuda.get_device_name(device_index), f"sm{major}{minor}", trt.__version__,
                  file_sha256(onnx_path), spec.key())[:20]


class TensorRTEngine:
    """A TensorRT engine of `onnx_path`, built on first use into `cache_dir` and loaded, with one execution context.

    `run` takes and returns torch CUDA tensors by name (dtypes follow the engine); calls are serialised by a lock.
    """

    def __init__(self, onnx_path: str | Path, device: Any, cache_dir: str | Path, spec: EngineSpec,
                 stem: str | None = None) -> None:
        trt = import_tensorrt()
        import torch

        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise BackendError(f"the 'tensorrt' backend runs on CUDA devices only, not {str(device)!r}; use device "
                               "'cuda' or backend 'torch'/'onnxruntime'")
        require_cuda()
        self.torch = torch
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            from ditto.weights import CheckpointError

            raise CheckpointError(f"{self.onnx_path}: file not found")
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self.path = Path(cache_dir) / f"{stem or self.onnx_path.stem}-{engine_key(self.onnx_path, spec, index)}.engine"
        if not self.path.is_file():
            with torch.cuda.device(self.device):
                write_bytes_atomic(self.path, build_engine(self.onnx_path, spec))
        with torch.cuda.device(self.device):
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise BackendError(f"{self.path}: TensorRT cannot deserialize the engine; delete it to rebuild")
            self.context = self.engine.create_execution_context()
        to_torch = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                    trt.int64: torch.int64, trt.bool: torch.bool}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.dtypes = {k: to_torch[self.engine.get_tensor_dtype(k)] for k in names}
        self.lock = threading.Lock()

    def run(self, inputs: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        torch, ctx = self.torch, self.context
        with self.lock, torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            feeds = {k: torch.as_tensor(v).to(self.device, self.dtypes[k]).contiguous() for k, v in inputs.items()}
            for k, v in feeds.items():
                if not ctx.set_input_shape(k, tuple(v.shape)):
                    raise ValueError(f"{self.path.name}: input {k} has shape {tuple(v.shape)}, outside the engine's "
                                     f"profile for {tuple(self.engine.get_tensor_shape(k))}")
                ctx.set_tensor_address(k, v.data_ptr())
            outs = {k: torch.empty(tuple(ctx.get_tensor_shape(k)), dtype=self.dtypes[k], device=self.device)
                    for k in outputs}
            for k, v in outs.items():
                ctx.set_tensor_address(k, v.data_ptr())
            # Inputs and outputs were allocated on this stream, so the caching allocator cannot hand their memory to
            # other work before the launch has finished.
            if not ctx.execute_async_v3(stream.cuda_stream):
                raise BackendError(f"TensorRT execution of {self.path.name} failed")
        return outs

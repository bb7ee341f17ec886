"""Loading a stage's networks: one pass, the same steps for every stage.

    read and check the weights -> build the model -> (export to ONNX -> build the engine) -> the backend

A stage says once what it loads, as a `ModelSpec`: its networks (`NetworkSpec`: how to build each one, where its
weights are, how it is exported and where that export is cached) and, for each backend it offers, how its backend
object is made from what loading hands over. `load(spec, backend, device)` walks the steps, each once:

1. the backend's runtime is checked (`ditto.accel.require_runtime`), so a machine without TensorRT or a CUDA GPU
   fails in a second, not after a long export;
2. each network is built from its config and its weights are read, checked against it and loaded
   (`ditto.weights.load_weights`: errors name the file and the first bad key);
3. 'torch' hands the loaded modules to the stage's backend; 'onnxruntime' and 'tensorrt' export each network to
   ONNX once, into a file named by its content (`ditto.accel.cached_export`), and hand over the files;
4. the stage's backend opens them: ONNX Runtime sessions (`ditto.accel.onnx_session`) or TensorRT engines, built on
   first use and cached by GPU, TensorRT version, graph and build options (`ditto.accel.TensorRTEngine`).

A network published as ONNX (HuBERT) has nothing to build or export: its file is handed over as it is, and the
runtime that opens it checks it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ditto.accel import cached_export, require_runtime
from ditto.weights import WeightsSource, load_weights

BackendT = TypeVar("BackendT")


@dataclass(frozen=True)
class NetworkSpec:
    """One network of a stage. Either `build` + `weights` (+ `export`, `export_path` for the ONNX backends), or
    `onnx`: a network that is published as an ONNX file."""

    name: str                                              # the stage's name for it; the stem of its cached files
    weights: WeightsSource | None = None
    build: Callable[[], Any] | None = None                 # the network from its config, weights not loaded yet
    export: Callable[[Any, Path], object] | None = None    # writes the loaded network's ONNX graph to a path
    export_path: Callable[[Any], Path] | None = None       # where that export is cached, named by content
    onnx: Path | None = None


@dataclass(frozen=True)
class ModelSpec(Generic[BackendT]):
    """What a stage loads, and its backends: name -> the backend object, made from {network name: what loading
    handed over} (a loaded torch module for 'torch', an ONNX file otherwise)."""

    what: str                                              # in messages: "the motion backend 'tensorrt' needs ..."
    networks: Sequence[NetworkSpec]
    backends: Mapping[str, Callable[[dict[str, Any]], BackendT]]
    default: str                                           # what 'auto' means


def load(spec: ModelSpec[BackendT], backend: str, device: str) -> BackendT:
    """The stage's backend for `backend` ('auto' or one of `spec.backends`) on `device`, in one pass."""
    chosen = spec.default if backend == "auto" else backend
    if chosen not in spec.backends:
        raise ValueError(f"{spec.what} backend must be one of {', '.join(('auto', *spec.backends))}, got {backend!r}")
    require_runtime(chosen, str(device), f"the {spec.what} backend {chosen!r}")
    ready = {net.name: (build_network(net) if chosen == "torch" else onnx_file(net)) for net in spec.networks}
    return spec.backends[chosen](ready)


def build_network(net: NetworkSpec) -> Any:
    """The network built and its weights read, checked and loaded; in eval mode, on the CPU."""
    if net.build is None or net.weights is None:
        raise ValueError(f"{net.name} is published as ONNX; it has no PyTorch network to build")
    return load_weights(net.build(), net.weights)


def onnx_file(net: NetworkSpec) -> Path:
    """The network's ONNX file: as published, or our export of the loaded network, written once and reused."""
    if net.onnx is not None:
        return net.onnx
    if net.export is None or net.export_path is None:
        raise ValueError(f"{net.name} has no ONNX export")
    model = build_network(net)
    export = net.export
    return cached_export(net.export_path(model), lambda tmp: export(model, tmp))

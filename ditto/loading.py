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
   ONNX once, into a file named by its content (written whole or not at all: `ditto.accel.atomic_paths`), and hand
   over the files;
4. the stage's backend opens them: ONNX Runtime sessions (`ditto.accel.onnx_session`) or TensorRT engines, built on
   first use and cached by GPU, TensorRT version, graph and build options (`ditto.accel.TensorRTEngine`).

A network published as ONNX (`PublishedOnnx`: HuBERT) has nothing to build or export: its file is handed over as it
is, and the runtime that opens it checks it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

from ditto.accel import atomic_paths, cached_export, require_runtime
from ditto.weights import WeightsSource, load_weights

BackendT = TypeVar("BackendT")


@dataclass(frozen=True)
class NetworkSpec:
    """One network of a stage: how to build it, where its weights are, how it is exported and where that export is
    cached (named by content)."""

    name: str                                              # the stage's name for it; the stem of its cached files
    weights: WeightsSource
    build: Callable[[], Any]                               # the network from its config, weights not loaded yet
    export: Callable[[Any, Path], object]                  # writes the loaded network's ONNX graph to a path
    export_path: Callable[[Any], Path]                     # where that export is cached, named by content


@dataclass(frozen=True)
class PublishedOnnx:
    """A network that is published as an ONNX file (HuBERT): nothing to build or export."""

    name: str
    path: Path


@dataclass(frozen=True)
class ModelSpec(Generic[BackendT]):
    """What a stage loads, and its backends: name -> the backend object, made from {network name: what loading
    handed over} (a loaded torch module for 'torch', an ONNX file otherwise)."""

    what: str                                              # in messages: "the motion backend 'tensorrt' needs ..."
    networks: Sequence[NetworkSpec | PublishedOnnx]
    backends: Mapping[str, Callable[[dict[str, Any]], BackendT]]
    default: str                                           # what 'auto' means


def load(spec: ModelSpec[BackendT], backend: str, device: str) -> BackendT:
    """The stage's backend for `backend` ('auto' or one of `spec.backends`) on `device`, in one pass: every network
    goes through a step before the next step starts."""
    chosen = spec.default if backend == "auto" else backend
    if chosen not in spec.backends:
        raise ValueError(f"{spec.what} backend must be one of {', '.join(('auto', *spec.backends))}, got {backend!r}")
    require_runtime(chosen, str(device), f"the {spec.what} backend {chosen!r}")
    built = [net for net in spec.networks if isinstance(net, NetworkSpec)]
    models = {net.name: load_weights(net.build(), net.weights) for net in built}
    if chosen == "torch":
        return spec.backends[chosen](models)
    files = {net.name: net.export_path(models[net.name]) for net in built}      # named by content
    missing = [net for net in built if not files[net.name].is_file()]          # a cached export is not redone
    with atomic_paths(files[net.name] for net in missing) as tmp:
        for net in missing:
            net.export(models[net.name], tmp[files[net.name]])
    files |= {net.name: net.path for net in spec.networks if isinstance(net, PublishedOnnx)}
    return spec.backends[chosen](files)


def build_network(net: NetworkSpec) -> Any:
    """The network built and its weights read, checked and loaded; in eval mode, on the CPU."""
    return load_weights(net.build(), net.weights)


def onnx_file(net: NetworkSpec) -> Path:
    """The network's ONNX export, written on first use into a file named by its content and reused after."""
    model = build_network(net)
    return cached_export(net.export_path(model), partial(net.export, model))

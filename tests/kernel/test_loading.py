"""The one loading pass (`ditto.loading`) on a toy stage: the runtime is checked before any weights are read, every
backend gets what it runs, exports are named by content and written once, and 'auto' and unknown names are clear."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from torch import nn

from ditto import loading
from ditto.accel import BackendError, digest
from ditto.loading import ModelSpec, NetworkSpec, PublishedOnnx
from ditto.weights import Checkpoint, CheckpointError, Generated


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(3, 3)
        self.again = self.shared                 # one submodule under two names: aliased state_dict entries
        self.head = nn.Linear(3, 2)


def toy_stage(weights: Checkpoint | Generated, cache: Path, exports: list[Path]) -> ModelSpec[dict]:
    def export(model: nn.Module, path: Path) -> None:
        exports.append(path)
        torch.save(model.state_dict(), path)    # stands in for an ONNX graph: the walker only moves files

    def export_path(model: nn.Module) -> Path:
        return cache / f"toy-{digest(*(v.sum().item() for v in model.state_dict().values()))[:12]}.onnx"

    net = NetworkSpec("toy", weights, build=Toy, export=export, export_path=export_path)
    graph = PublishedOnnx("graph", cache / "published.onnx")
    backends = {name: (lambda ready, name=name: {"backend": name, **ready})
                for name in ("torch", "onnxruntime", "tensorrt")}
    return ModelSpec("toy", [net, graph], backends, default="torch")


def test_each_backend_gets_what_it_runs_and_exports_are_written_once(tmp_path):
    exports: list[Path] = []
    spec = toy_stage(Generated(seed=1), tmp_path, exports)
    torch_backend = loading.load(spec, "auto", "cpu")             # 'auto' is the spec's default
    assert torch_backend["backend"] == "torch" and "graph" not in torch_backend
    assert isinstance(torch_backend["toy"], Toy) and not torch_backend["toy"].training

    onnx_backend = loading.load(spec, "onnxruntime", "cpu")
    assert onnx_backend["graph"] == tmp_path / "published.onnx"   # a published file is handed over as it is
    assert onnx_backend["toy"].is_file() and len(exports) == 1     # written beside it, then renamed over it
    assert not list(tmp_path.glob(".*partial*"))
    # the same weights again: the same file, not exported again; other weights: another file
    assert loading.load(spec, "onnxruntime", "cpu")["toy"] == onnx_backend["toy"] and len(exports) == 1
    other = loading.load(toy_stage(Generated(seed=2), tmp_path, exports), "onnxruntime", "cpu")
    assert other["toy"] != onnx_backend["toy"] and len(exports) == 2


def test_unknown_backend_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"toy backend must be one of auto, torch, onnxruntime, tensorrt, got 'tvm'"):
        loading.load(toy_stage(Generated(0), tmp_path, []), "tvm", "cpu")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available(),
                    reason="TensorRT can run here")
def test_runtime_is_checked_before_weights_are_read(tmp_path):
    spec = toy_stage(Checkpoint(tmp_path / "missing.pth"), tmp_path, [])
    with pytest.raises(BackendError, match="tensorrt"):
        loading.load(spec, "tensorrt", "cuda")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendError, match="onnxruntime-gpu"):
            loading.load(spec, "onnxruntime", "cuda")
    with pytest.raises(CheckpointError, match=r"missing\.pth: file not found"):
        loading.load(spec, "torch", "cpu")
    assert list(tmp_path.iterdir()) == []                     # nothing exported, nothing half-written

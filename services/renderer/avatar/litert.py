"""LiteRT (`ai-edge-litert`, the maintained TensorFlow Lite runtime) behind ONNX Runtime's session interface.

The MediaPipe models are TFLite flatbuffers; running them as they are, in Google's own runtime, leaves no conversion
to check. The adapter gives an interpreter the three methods the face code already uses on ONNX Runtime sessions
(`get_inputs`, `get_outputs`, `run(None, feed)`), so BlazeFace's decoding (`mesh.py`) serves both.

An interpreter is not safe to call from two threads, and registrations run in worker threads: each call holds the
session's lock. One thread per model: a model costs 2-5 ms a call on one core, and registration runs beside render
work.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class LiteRtMissing(ImportError):
    """The `ai-edge-litert` package is not installed."""


@dataclass(frozen=True)
class TensorInfo:
    """What ONNX Runtime's NodeArg tells: name, shape, element type."""

    name: str
    shape: list[int]
    type: str = "tensor(float)"


class TfliteSession:
    """One .tflite model in a LiteRT interpreter, called like an ONNX Runtime session."""

    def __init__(self, path: str | Path, threads: int = 1):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise LiteRtMissing("the MediaPipe face models run in LiteRT, and `ai-edge-litert` is not installed: "
                                "pip install ai-edge-litert==2.3.0 (make setup does), or register without face "
                                "models (DITTO_MEDIA__FACE_MODELS=none)") from err
        self.path = Path(path)
        self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self._interpreter.allocate_tensors()
        self._in = self._interpreter.get_input_details()
        self._out = self._interpreter.get_output_details()
        self._lock = threading.Lock()

    def get_inputs(self) -> list[TensorInfo]:
        return [TensorInfo(d["name"], [int(v) for v in d["shape"]]) for d in self._in]

    def get_outputs(self) -> list[TensorInfo]:
        return [TensorInfo(d["name"], [int(v) for v in d["shape"]]) for d in self._out]

    def run(self, output_names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """All outputs (copies), in the model's order; `feed` by input name."""
        with self._lock:
            for d in self._in:
                self._interpreter.set_tensor(d["index"], np.ascontiguousarray(feed[d["name"]], dtype=d["dtype"]))
            self._interpreter.invoke()
            return [self._interpreter.get_tensor(d["index"]).copy() for d in self._out]

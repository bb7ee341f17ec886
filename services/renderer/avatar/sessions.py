"""ONNX Runtime sessions of the auxiliary models (face detector, landmark models, face mesh).

They come from a weights folder in the official layout (`ditto.weights.OFFICIAL_FILES`: det_10g, landmark106,
landmark203, face_landmarker, blaze_face, face_mesh). Fallbacks, documented because they change what registration
does:
- detector or either landmark model missing (or `--weights synthetic`): no face finding. Registration uses the
  caller's crop box, or else a centred square crop (see `register.py`).
- the 478-point face mesh: MediaPipe Tasks with `face_landmarker.task` when the optional `mediapipe` package is
  installed (the PyTorch configuration's choice); otherwise the ONNX pair `ditto_onnx/blaze_face.onnx` +
  `face_mesh.onnx` (the TRT/ONNX configuration's choice, `mesh.OnnxFaceMesh`); with neither, the eye features take
  the neutral defaults of `eyes.DEFAULT_EYE_OPEN` / `DEFAULT_EYE_BALL`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ditto.weights import resolve

from .detection import FaceDetector
from .landmarks import Landmark106, Landmark203
from .mesh import OnnxFaceMesh


def providers(device: str = "cpu") -> list[str]:
    """ONNX Runtime execution providers for a device string ('cpu', 'cuda', 'cuda:N')."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(path: str | Path, device: str = "cpu", threads: int = 0) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers(device))


def _input_name(session: Any) -> str:
    return session.get_inputs()[0].name


class MeshProvider:
    """MediaPipe FaceLandmarker (the official `face_landmarker.task`): 512 crop -> [1, 478, 3] normalised mesh,
    or None when no face is found. Needs the optional `mediapipe` package."""

    source = "MediaPipe face_landmarker.task"

    def __init__(self, task_path: Path):
        from mediapipe.tasks.python import BaseOptions, vision  # optional dependency

        options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(task_path)),
                                               num_faces=1)
        self._landmarker = vision.FaceLandmarker.create_from_options(options)

    def __call__(self, crop_rgb: np.ndarray) -> np.ndarray | None:
        import mediapipe as mp

        result = self._landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=crop_rgb))
        if not result.face_landmarks:
            return None
        pts = result.face_landmarks[0]
        return np.array([[[p.x, p.y, p.z] for p in pts]], dtype=np.float32)


@dataclass
class AuxModels:
    """The auxiliary models that are available; None where a fallback applies (see the module docstring)."""

    detector: FaceDetector | None = None
    landmark106: Landmark106 | None = None
    landmark203: Landmark203 | None = None
    mesh: MeshProvider | OnnxFaceMesh | None = None
    identity: str = "none"  # part of the avatar cache key: which files produced the landmarks
    notes: list[str] = field(default_factory=list)

    @property
    def can_find_faces(self) -> bool:
        return self.detector is not None and self.landmark106 is not None and self.landmark203 is not None

    @classmethod
    def none(cls, reason: str = "no auxiliary models") -> AuxModels:
        return cls(notes=[reason])

    @classmethod
    def load(cls, weights: str | Path, device: str = "cpu") -> AuxModels:
        """Sessions for the files present in `weights`; 'synthetic' has none."""
        if str(weights) == "synthetic":
            return cls.none("synthetic weights: no face detector or landmark models")
        aux = cls()
        ident = hashlib.sha256()
        paths = {name: resolve(weights, name) for name in ("det_10g", "landmark106", "landmark203", "face_landmarker")}
        missing = [f"{n} ({p})" for n, p in paths.items() if n != "face_landmarker" and not p.is_file()]
        if missing:
            aux.notes.append("face finding off, missing: " + ", ".join(missing))
        else:
            det, l106, l203 = (open_session(paths[n], device) for n in ("det_10g", "landmark106", "landmark203"))
            aux.detector = FaceDetector(det, input_name=_input_name(det))
            aux.landmark106 = Landmark106(l106, input_name=_input_name(l106))
            aux.landmark203 = Landmark203(l203, input_name=_input_name(l203))
            for n in ("det_10g", "landmark106", "landmark203"):
                st = paths[n].stat()
                ident.update(f"{n}:{st.st_size}:{int(st.st_mtime)};".encode())
        aux.mesh = _load_mesh(weights, device, ident, aux.notes)
        aux.identity = ident.hexdigest()[:16]
        return aux


def _load_mesh(weights: str | Path, device: str, ident: Any, notes: list[str]) -> MeshProvider | OnnxFaceMesh | None:
    """MediaPipe with `face_landmarker.task` first, then the ONNX pair; the reasons for a fallback go to `notes`."""
    task = resolve(weights, "face_landmarker")
    blaze, mesh = resolve(weights, "blaze_face"), resolve(weights, "face_mesh")
    why: list[str] = []
    if task.is_file():
        try:
            provider = MeshProvider(task)
            ident.update(f"mesh:{task.stat().st_size};".encode())
            return provider
        except ImportError:
            why.append("`mediapipe` is not installed for face_landmarker.task")
    else:
        why.append(f"{task} not found")
    if blaze.is_file() and mesh.is_file():
        onnx_mesh = OnnxFaceMesh(open_session(blaze, device), open_session(mesh, device))
        for name, p in (("blaze_face", blaze), ("face_mesh", mesh)):
            st = p.stat()
            ident.update(f"{name}:{st.st_size}:{int(st.st_mtime)};".encode())
        notes.append(f"face mesh: {onnx_mesh.source} ({'; '.join(why)})")
        return onnx_mesh
    why.extend(f"{p} not found" for p in (blaze, mesh) if not p.is_file())
    notes.append("eye features default: " + "; ".join(why))
    return None

"""The auxiliary models of registration: face finding, eyes and the person matte (`AuxModels`).

`AuxModels.open(choice, ...)` is what the renderer uses: the face models the deployment chose
(`DITTO_MEDIA__FACE_MODELS`):
- `mediapipe` (default): the four MediaPipe models (Apache-2.0) from the cache `make setup` fills
  (`ditto.face_models`), run in LiteRT. Missing files or runtime stop the start with how to get them.
- `insightface`: SCRFD det_10g, 2d106det and the 203-point model from the weights folder (the reference's models,
  **non-commercial research use only**), for the crop; eyes and matte still from the MediaPipe models.
- `none`: nothing; the crop is the client's box or the centred square, eyes neutral, no person matte.

`AuxModels.load(weights)` is the reference's own set, as the training data preparation uses it: ONNX Runtime
sessions from a weights folder in the official layout (`ditto.weights.OFFICIAL_FILES`: det_10g, landmark106,
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
from .faces import MediaPipeFaces
from .landmarks import Landmark106, Landmark203
from .matte import PersonMatte
from .mesh import OnnxFaceMesh

FACE_MODEL_CHOICES = ("mediapipe", "insightface", "none")


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
    faces: MediaPipeFaces | None = None     # MediaPipe detection, mesh, tracking and eyes
    matte: PersonMatte | None = None        # MediaPipe selfie segmentation
    choice: str = "none"                    # the face models that place the crop (FACE_MODEL_CHOICES)
    models: list[str] = field(default_factory=list)  # the model files, as registration reports them
    identity: str = "none"  # part of the avatar cache key: which files produced the landmarks
    notes: list[str] = field(default_factory=list)

    @property
    def can_find_faces(self) -> bool:
        """The InsightFace set (SCRFD + 106 + 203 points) is there."""
        return self.detector is not None and self.landmark106 is not None and self.landmark203 is not None

    @classmethod
    def none(cls, reason: str = "no auxiliary models") -> AuxModels:
        return cls(notes=[reason])

    @classmethod
    def open(cls, choice: str, weights: str | Path = "synthetic", device: str = "cpu",
             models_dir: str | Path | None = None) -> AuxModels:
        """The face models `choice` names (see the module docstring). Raises `ditto.face_models.FaceModelsMissing`,
        `litert.LiteRtMissing` or FileNotFoundError, each saying what to install or set."""
        from ditto import face_models

        if choice not in FACE_MODEL_CHOICES:
            raise ValueError(f"face models must be one of {', '.join(FACE_MODEL_CHOICES)}, got {choice!r}")
        if choice == "none":
            aux = cls.none("face models off (DITTO_MEDIA__FACE_MODELS=none)")
            aux.identity = "none"
            return aux
        paths = face_models.locate(models_dir)
        from .litert import TfliteSession

        faces = MediaPipeFaces(*(TfliteSession(paths[n]) for n in ("face_detection", "face_landmark",
                                                                   "iris_landmark")))
        matte = PersonMatte(TfliteSession(paths["selfie_segmentation"]))
        mediapipe = [paths[n].name for n in face_models.MODELS]
        ident = hashlib.sha256(f"{choice};".encode())
        for f in face_models.MODELS.values():
            ident.update(f.sha256.encode())
        if choice == "insightface":
            aux = cls.load(weights, device)
            if not aux.can_find_faces:
                raise FileNotFoundError(
                    "DITTO_MEDIA__FACE_MODELS=insightface needs InsightFace's det_10g.onnx and 2d106det.onnx and the "
                    "203-point landmark203.onnx in the weights folder (`ditto weights fetch`); their licence is "
                    "non-commercial research only. The default, mediapipe, needs none of them. "
                    f"({'; '.join(aux.notes)})")
            aux.mesh = None  # the eyes come from the MediaPipe models
            aux.models = [resolve(weights, n).name for n in ("det_10g", "landmark106", "landmark203")] + mediapipe
            ident.update(aux.identity.encode())
        else:
            aux = cls(models=mediapipe)
        aux.faces, aux.matte, aux.choice = faces, matte, choice
        aux.identity = ident.hexdigest()[:16]
        aux.notes.append(f"face models: {choice} ({', '.join(aux.models)})")
        return aux

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
        aux.choice = "insightface" if aux.can_find_faces else "none"
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

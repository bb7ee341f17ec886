"""The models data preparation runs, loaded once per worker process, with pluggable face mesh and emotion classifier.

- Face finding (detector, 106 and 203 landmarks) and the LivePortrait motion extractor come from the weights folder
  (`services.renderer`). Without face-finding models (synthetic weights) the crop is the centred square of the frame.
- HuBERT is the official ONNX file in the weights folder (`services.audio_encoder`).
- The 478-point mesh (eye openness and eye-ball position) is any `MeshFn`: by default MediaPipe's FaceLandmarker
  when `mediapipe` and `face_landmarker.task` are present. Without one the eye features are the neutral defaults of
  `services.renderer.avatar.eyes`, and the video's notes say so.
- Emotion is any `EmotionFn`: HSEmotion (`enet_b2_8`) when the `hsemotion` package is installed; otherwise every
  frame is Neutral, again with a note.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.motion_generator.condition import EMO_DIM, NEUTRAL, label_probs

# crop [S, S, 3] uint8 RGB -> [478, 3] normalised mesh (or [1, 478, 3]), None when no face is found
MeshFn = Callable[[np.ndarray], "np.ndarray | None"]

# HSEmotion enet_b2_8 classes: Anger, Contempt, Disgust, Fear, Happiness, Neutral, Sadness, Surprise.
# Ditto's order: Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise, Contempt.
HSEMOTION_TO_DITTO = [0, 2, 3, 4, 5, 6, 7, 1]


class EmotionFn(Protocol):
    name: str

    def __call__(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        """Face images (RGB uint8) -> [m, 8] probabilities in Ditto's label order."""
        ...


class NeutralEmotion:
    """Every face is Neutral (the label the reference's inference uses by default)."""

    name = "neutral"

    def __call__(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        return np.tile(label_probs([NEUTRAL]), (len(faces), 1))


class HSEmotion:
    """HSEmotion `enet_b2_8` (the reference's classifier). Needs `pip install hsemotion`."""

    name = "hsemotion"

    def __init__(self, device: str = "cpu") -> None:
        from hsemotion.facial_emotions import HSEmotionRecognizer  # optional dependency

        self.recognizer = HSEmotionRecognizer(model_name="enet_b2_8", device=device)

    def __call__(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        if not faces:
            return np.zeros((0, EMO_DIM), np.float32)
        _, scores = self.recognizer.predict_multi_emotions(list(faces), logits=False)
        return np.asarray(scores, np.float32)[:, HSEMOTION_TO_DITTO]


def face_region(crop: np.ndarray) -> np.ndarray:
    """The face inside a global 512 crop: the reference finds it with MTCNN; our crop is already centred on the face
    (landmark box x 2.2, shifted up by 0.1), so the face is the central ~55 % square, slightly below the centre."""
    s = crop.shape[0]
    side = int(0.55 * s)
    cx, cy = s // 2, int(0.53 * s)
    y0, x0 = max(0, cy - side // 2), max(0, cx - side // 2)
    return crop[y0:y0 + side, x0:x0 + side]


def make_emotion(kind: str, device: str = "cpu") -> tuple[EmotionFn, list[str]]:
    """'auto' (HSEmotion when installed, else neutral), 'hsemotion' (required) or 'neutral'."""
    if kind == "neutral":
        return NeutralEmotion(), ["emotion: neutral for every frame (--emotion neutral)"]
    if kind not in ("auto", "hsemotion"):
        raise ValueError(f"unknown emotion classifier {kind!r}; use auto, hsemotion or neutral")
    try:
        return HSEmotion(device), []
    except ImportError as err:
        if kind == "hsemotion":
            raise RuntimeError("--emotion hsemotion needs the `hsemotion` package: pip install hsemotion") from err
        return NeutralEmotion(), ["emotion: HSEmotion is not installed (pip install hsemotion); every frame Neutral"]


@dataclass
class Extractors:
    """Everything a worker needs to prepare videos."""

    models: Any                         # services.renderer.models.RendererModels
    aux: Any                            # services.renderer.avatar.sessions.AuxModels
    hubert: Any                         # services.audio_encoder.hubert.HubertBackend
    mesh: MeshFn | None
    emotion: EmotionFn
    notes: list[str] = field(default_factory=list)

    @property
    def can_find_faces(self) -> bool:
        return bool(self.aux.can_find_faces)

    @classmethod
    def load(cls, weights_dir: Path, profile: str, device: str = "cpu", emotion: str = "auto",
             hubert_backend: str = "auto", mesh: MeshFn | None | str = "auto") -> Extractors:
        from ditto.weights import OFFICIAL_FILES
        from services.audio_encoder.hubert import open_onnx_backend
        from services.renderer.avatar.sessions import AuxModels
        from services.renderer.models import RendererModels

        dev = device
        if device == "auto":
            import torch

            dev = "cuda" if torch.cuda.is_available() else "cpu"
        models = RendererModels.load(weights_dir, profile, dev, backend="torch")
        aux = AuxModels.load(weights_dir, dev)
        hubert_path = weights_dir / OFFICIAL_FILES["hubert"].path
        if not hubert_path.is_file():
            raise FileNotFoundError(f"{hubert_path}: the HuBERT model is missing; run `ditto weights fetch`")
        hubert = open_onnx_backend(hubert_path, hubert_backend, dev)
        notes = [n for n in aux.notes]
        mesh_fn: MeshFn | None
        if mesh == "auto":
            mesh_fn = aux.mesh
        elif mesh is None or isinstance(mesh, str):
            mesh_fn = None
            notes.append("eye features: face mesh disabled")
        else:
            mesh_fn = mesh
        if mesh_fn is None and not any("eye features" in n for n in notes):
            notes.append("eye features: neutral defaults (no face mesh)")
        emo, emo_notes = make_emotion(emotion, dev)
        return cls(models, aux, hubert, mesh_fn, emo, notes + emo_notes)

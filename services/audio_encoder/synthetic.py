"""Synthetic audio-encoder weights: a randomly initialised transformers HuBERT exported as the official ONNX file.

`full` is the real HuBERT-Large shape (24 layers, 1024-d, about 315 M parameters, a 1.26 GB ONNX file; about half a
minute to build and export on two CPU cores). `tiny` keeps the 1024-d output with one narrow layer (about 25 MB).
Both follow the official file's contract: `input_values` [1, N] -> `encoding_out` [T, 1024].
"""

from __future__ import annotations

from pathlib import Path

from ditto.weights import OFFICIAL_FILES


def hubert_path(root: str | Path) -> Path:
    return Path(root) / OFFICIAL_FILES["hubert"].path


def write_synthetic(root: Path, profile: str, seed: int = 0, batch_axis: bool = False) -> Path:
    """Write `<root>/ditto_pytorch/aux_models/hubert_streaming_fix_kv.onnx` for `profile`; returns its path.

    An existing file is kept (the export is deterministic for a given profile and seed)."""
    from ditto.accel import cached_export
    from services.audio_encoder.hubert_model import HubertShape, export_onnx, random_hubert

    return cached_export(hubert_path(root), lambda tmp: export_onnx(random_hubert(HubertShape.profile(profile), seed),
                                                                    tmp, batch_axis=batch_axis))

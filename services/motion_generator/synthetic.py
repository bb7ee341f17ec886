"""Synthetic LMDM checkpoint in the official layout and container (golden-init v1 weights)."""

from __future__ import annotations

from pathlib import Path

from ditto.weights import OFFICIAL_FILES
from services.motion_generator.models import save_checkpoint, synthetic_motion_decoder


def write_synthetic(root: Path, profile: str, seed: int = 0) -> Path:
    return save_checkpoint(synthetic_motion_decoder(profile, seed), Path(root) / OFFICIAL_FILES["lmdm"].path)

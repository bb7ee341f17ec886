"""Synthetic weights for `--weights synthetic`: the official file layout and container, golden-init v1 values."""

from __future__ import annotations

from pathlib import Path

from ditto.weights import OFFICIAL_FILES

from .models import save_checkpoint, synthetic_motion_decoder


def write_synthetic(root: Path, profile: str, seed: int = 0) -> Path:
    """Write `ditto_pytorch/models/lmdm_v0.4_hubert.pth` under root ({'model_state_dict': ...}); returns the path."""
    path = Path(root) / OFFICIAL_FILES["lmdm"].path
    return save_checkpoint(synthetic_motion_decoder(profile, seed), path)

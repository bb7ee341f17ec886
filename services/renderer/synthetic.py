"""Synthetic renderer checkpoints: the five `.pth` files in the official layout, with golden-init v1 weights.

Same shapes and container formats as the release (docs/model.md §8), no real face: for tests, demos and
benchmarks where the official weights are absent.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ditto.accel import atomic_path
from ditto.weights import OFFICIAL_FILES, golden_state_dict, resolve

from .models import build_networks


def write_synthetic(root: Path, profile: str, seed: int = 0) -> None:
    """Write appearance_extractor, motion_extractor, stitch_network, warp_network and decoder `.pth` files."""
    for name, net in build_networks(profile).items():
        state = golden_state_dict(net, seed)
        container = OFFICIAL_FILES[name].container
        obj: dict
        if container == "retarget_shoulder":
            # As released: the shoulder MLP under 'retarget_shoulder', keys with the data-parallel 'module.' prefix.
            obj = {"retarget_shoulder": {f"module.{k}": v for k, v in state.items()}}
        elif container == "plain":
            obj = state
        else:
            raise AssertionError(f"unexpected container {container!r} for renderer network {name}")
        path = resolve(root, name)
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)

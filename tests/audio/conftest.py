from __future__ import annotations

from pathlib import Path

import pytest

from tests.audio.helpers import export_small


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """The tiny random HuBERT exported with the official layout ([1, N] -> [T, 1024])."""
    return export_small(tmp_path_factory.mktemp("hubert") / "hubert.onnx")


@pytest.fixture(scope="session")
def tiny_onnx_batched(tmp_path_factory) -> Path:
    """The same weights exported with a batch axis ([B, N] -> [B, T, 1024])."""
    return export_small(tmp_path_factory.mktemp("hubert_b") / "hubert_batched.onnx", batch_axis=True)

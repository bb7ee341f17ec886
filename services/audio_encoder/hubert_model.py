"""The HuBERT network (transformers `HubertModel`) and its ONNX export with the reference's names and shapes.

Ditto's audio model is a HuBERT-Large-sized encoder (1024-d, docs/model.md §2.3) shipped only as ONNX: input
`input_values` float32 [1, N] at 16 kHz, output `encoding_out` [T, 1024] with no batch axis, T = (N - 400) // 320 + 1.
This module builds that shape from a local checkpoint folder (config.json + weights, as `save_pretrained` writes) or
with random weights, and exports it the same way. `batch_axis=True` exports our own batched variant instead:
`input_values` [B, N] -> `encoding_out` [B, T, 1024], which lets ONNX Runtime / TensorRT run many windows at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

INPUT_NAME = "input_values"
OUTPUT_NAME = "encoding_out"


@dataclass(frozen=True)
class HubertShape:
    """Widths of the encoder. `full()` is HuBERT-Large; `tiny()` keeps the 1024-d output so the rest of the
    pipeline sees the same feature size, with one narrow layer."""

    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    conv_dim: int = 512                 # the 7 feature-extractor convolutions (kernels 10,3,3,3,3,2,2; strides 5,2,...)
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16

    @classmethod
    def full(cls) -> HubertShape:
        return cls()

    @classmethod
    def tiny(cls) -> HubertShape:
        return cls(num_layers=1, num_heads=8, intermediate_size=256, conv_dim=32, pos_conv_kernel=16)

    @classmethod
    def profile(cls, name: str) -> HubertShape:
        if name not in ("full", "tiny"):
            raise ValueError(f"unknown profile {name!r}; use 'full' or 'tiny'")
        return cls.full() if name == "full" else cls.tiny()

    def config(self) -> Any:
        """The transformers `HubertConfig` (Large layout: layer-norm feature extractor, pre-norm transformer)."""
        from transformers import HubertConfig

        return HubertConfig(
            hidden_size=self.hidden_size, num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size, conv_dim=(self.conv_dim,) * 7,
            num_conv_pos_embeddings=self.pos_conv_kernel, num_conv_pos_embedding_groups=self.pos_conv_groups,
            feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
            mask_time_prob=0.0,  # no SpecAugment: inference only
        )


def random_hubert(shape: HubertShape, seed: int = 0) -> Any:
    """A `HubertModel` with transformers' own random initialisation, reproducible from `seed`, in eval mode."""
    from transformers import HubertModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HubertModel(shape.config())
    return model.eval()


def load_hubert_folder(folder: str | Path) -> Any:
    """A `HubertModel` from a local checkpoint folder (config.json + model.safetensors / pytorch_model.bin).

    Never downloads. Raises CheckpointError naming the folder when it is not a readable HuBERT checkpoint."""
    from transformers import HubertModel

    from ditto.weights import CheckpointError

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json; expected a HuBERT checkpoint folder (save_pretrained layout)")
    try:
        model = HubertModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: cannot load a HuBERT checkpoint ({err})") from err
    model.config.mask_time_prob = 0.0
    return model.eval()


class HubertEncoding(nn.Module):
    """The reference's interface around a HubertModel: [1, N] -> [T, D], or [B, N] -> [B, T, D] when batched."""

    def __init__(self, model: Any, batch_axis: bool = False) -> None:
        super().__init__()
        self.model = model
        self.batch_axis = batch_axis

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_values).last_hidden_state   # [B, T, D]
        return hidden if self.batch_axis else hidden[0]


def export_onnx(model: Any, path: str | Path, batch_axis: bool = False, opset: int = 17) -> Path:
    """Export a HubertModel to ONNX with the reference's names: `input_values` -> `encoding_out`.

    batch_axis False: [1, N] -> [T, D] exactly as the official file; True: [B, N] -> [B, T, D]."""
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = HubertEncoding(model, batch_axis).eval()
    example = torch.zeros(2 if batch_axis else 1, 6480)
    if batch_axis:
        axes = {INPUT_NAME: {0: "batch", 1: "samples"}, OUTPUT_NAME: {0: "batch", 1: "frames"}}
    else:
        axes = {INPUT_NAME: {1: "samples"}, OUTPUT_NAME: {0: "frames"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes: shapes are symbolic
        # The TorchScript exporter: it handles HubertModel's dynamic sample axis directly and quickly.
        torch.onnx.export(wrapper, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    return path

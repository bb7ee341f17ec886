"""ONNX export of the guided one-step graph (the reference's `lmdm` ONNX/TensorRT model).

Inputs `x [B,80,265]`, `cond_frame [B,265]`, `cond [B,80,1103]`, `time_cond [B]` int64; outputs
`pred_noise [B,80,265]`, `x_start [B,80,265]`; guidance (weight 2) is inside. The batch axis is dynamic, so one graph
serves batched windows of many sessions. The DDIM loop stays outside, in numpy (`diffusion.ddim_sample`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .dit import MotionDecoder
from .models import GuidedOneStep

INPUT_NAMES = ["x", "cond_frame", "cond", "time_cond"]
OUTPUT_NAMES = ["pred_noise", "x_start"]
OPSET = 17


def export_onnx(model: MotionDecoder, path: str | Path, opset: int = OPSET) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    graph = GuidedOneStep(model).eval()
    args = (torch.zeros(1, cfg.seq_len, cfg.nfeats), torch.zeros(1, cfg.nfeats),
            torch.zeros(1, cfg.seq_len, cfg.cond_dim), torch.zeros(1, dtype=torch.int64))
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        torch.onnx.export(graph, args, str(path), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                          opset_version=opset, dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: batch}, {0: batch}, {0: batch}, {0: batch}))
    return path


def main(argv: list[str] | None = None) -> int:
    from .models import load_motion_decoder, synthetic_motion_decoder

    ap = argparse.ArgumentParser(description="Export the MotionDiT one-step graph to ONNX")
    ap.add_argument("--weights", default="synthetic", help="checkpoint .pth or 'synthetic'")
    ap.add_argument("--profile", choices=("full", "tiny"), default="full")
    ap.add_argument("--out", required=True, help="output .onnx path")
    args = ap.parse_args(argv)
    model = (synthetic_motion_decoder(args.profile) if args.weights == "synthetic"
             else load_motion_decoder(args.weights, args.profile))
    print(export_onnx(model, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

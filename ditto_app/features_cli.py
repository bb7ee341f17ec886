"""`ditto features`: the 25 fps HuBERT features of an audio file, computed the streaming way.

    ditto features --audio speech.m4a --out speech.npy [--chunk-ms 200] [--weights DIR|synthetic] [--profile full]

The file is decoded with PyAV and fed to a StreamingEncoder in chunks of N ms at its own rate and channel count,
exactly as a client would stream it; every N gives the same [frames, 1024] array, with exactly the frames the
service would send for this audio (ceil(16 kHz samples / 640)).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from ditto_app.cli import add_model_args

    p = subparsers.add_parser("features", help="audio file -> [frames, 1024] HuBERT features (.npy), streamed",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audio", required=True, type=Path, help="audio file (wav, mp3, m4a, ogg, webm, ...)")
    p.add_argument("--out", required=True, type=Path, help="output .npy file, float32 [frames, 1024]")
    p.add_argument("--chunk-ms", type=float, default=200.0,
                   help="feed the audio in chunks of this many ms; 0 = the whole file at once (default: %(default)s)")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto",
                   help="how to run the HuBERT ONNX file (default: %(default)s = ONNX Runtime on --device)")
    add_model_args(p)
    p.set_defaults(handler=run)


def resolve_onnx(weights: str, profile: str) -> Path:
    """The HuBERT ONNX file for --weights:
    - 'synthetic': a random HuBERT of `profile`, exported once into the cache;
    - a folder in the official layout: its `ditto_pytorch/aux_models/hubert_streaming_fix_kv.onnx`;
    - a transformers HuBERT checkpoint folder (config.json + weights): exported once into the cache with the
      reference's names and shapes."""
    from ditto.accel import cached_export, digest
    from ditto.config import default_cache_dir
    from services.audio_encoder.synthetic import hubert_path, write_synthetic

    if weights == "synthetic":
        root = default_cache_dir() / f"synthetic-{profile}"
        path = hubert_path(root)
        if not path.is_file():
            print(f"writing synthetic HuBERT ({profile}) to {path} ...", file=sys.stderr)
        return write_synthetic(root, profile)
    official = hubert_path(weights)
    folder = Path(weights)
    if official.is_file() or not (folder / "config.json").is_file():
        return official
    from services.audio_encoder.hubert_model import export_onnx, load_hubert_folder

    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(folder.iterdir())
                     if p.is_file())
    path = default_cache_dir() / f"hubert-export-{digest(folder.resolve(), stamp)[:12]}" / "hubert.onnx"
    if not path.is_file():
        print(f"exporting the HuBERT checkpoint in {folder} to {path} ...", file=sys.stderr)
    return cached_export(path, lambda tmp: export_onnx(load_hubert_folder(folder), tmp))


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import onnxruntime as ort

    return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from ditto.weights import CheckpointError
    from services.audio_encoder.encoder import StreamingEncoder
    from services.audio_encoder.formats import AudioError, decode_file
    from services.audio_encoder.hubert import BackendError, open_onnx_backend

    try:
        decoded = decode_file(args.audio)
        backend = open_onnx_backend(resolve_onnx(args.weights, args.profile), args.backend,
                                    resolve_device(args.device))
    except (AudioError, CheckpointError, BackendError) as err:
        print(f"ditto features: {err}", file=sys.stderr)
        return 2
    enc = StreamingEncoder(backend, decoded.input_format())
    feats = []
    with tqdm(total=round(decoded.seconds, 2), unit="s", desc="features", file=sys.stderr) as bar:
        for chunk in decoded.chunks(args.chunk_ms):
            feats.append(enc.push(chunk))
            bar.update(round(chunk.shape[0] / decoded.sample_rate, 4))
        # exactly the frames the service sends for this audio: ceil(16 kHz samples / 640)
        feats.append(enc.trim_final(enc.end()))
    out = np.concatenate(feats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, out)
    print(f"{args.out}: {out.shape[0]} frames x {out.shape[1]} ({decoded.seconds:.2f} s of audio, "
          f"backend {backend.name})", file=sys.stderr)
    return 0

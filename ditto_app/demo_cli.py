"""`ditto demo` (`make demo`): render the bundled example portrait and speech.

The portrait is the astronaut photo shipped inside scikit-image (NASA, public domain); the speech is synthesised
with espeak-ng. Real weights are used when they can be fetched (or are given), else synthetic weights, and then the
output says in large letters that the video is not a real face. A second video puts the same person on green: the
person matte the transparent and green backgrounds cut along (`out/demo-green.mp4`).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from ditto.config import default_cache_dir

TEXT = "Hello! I am a talking head, rendered live from a single photo and this voice."


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="render the bundled example portrait and speech to out/demo.mp4")
    p.add_argument("--out", type=Path, default=Path("out/demo.mp4"))
    p.add_argument("--weights", default=None, help="weights folder; default: fetch the official ones, else synthetic")
    p.add_argument("--profile", choices=("full", "tiny"), default=None,
                   help="default: full with real weights; tiny with synthetic weights (the full networks take "
                        "seconds per frame on a CPU and make no real face anyway)")
    p.add_argument("--device", default="auto")
    p.add_argument("--text", default=TEXT)
    p.add_argument("--no-green", action="store_true",
                   help="skip the second video, the person cut out along the matte onto green (<out>-green.mp4)")
    p.set_defaults(handler=_run)


def example_portrait(folder: Path) -> Path:
    import cv2
    from skimage import data

    path = folder / "astronaut.png"
    if not path.is_file():
        cv2.imwrite(str(path), data.astronaut()[:, :, ::-1])
    return path


def example_speech(folder: Path, text: str) -> Path:
    path = folder / "speech.wav"
    exe = shutil.which("espeak-ng")
    if exe:
        subprocess.run([exe, "-s", "150", "-w", str(path), text], check=True, capture_output=True)
        return path
    print("espeak-ng is not installed (apt-get install espeak-ng); using a synthetic voice-like signal instead",
          file=sys.stderr)
    import numpy as np
    from scipy.io import wavfile

    t = np.arange(int(16000 * 3.5)) / 16000
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3.5 * t)) * (t < 3.2)
    voice = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((140, 280, 700, 1200)))
    wavfile.write(path, 16000, (0.2 * envelope * voice).astype(np.float32))
    return path


def online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _run(args: argparse.Namespace) -> int:
    from ditto_app.cli import main as ditto_main

    folder = default_cache_dir() / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    portrait = example_portrait(folder)
    speech = example_speech(folder, args.text)
    weights = args.weights
    if weights is None:
        official = default_cache_dir() / "weights"
        if (official / "ditto_pytorch/models/decoder.pth").is_file():
            weights = str(official)
        elif online() and ditto_main(["weights", "fetch", "--dest", str(official)]) == 0:
            weights = str(official)
        else:
            print("Official weights cannot be fetched here: rendering with synthetic weights.", file=sys.stderr)
            weights = "synthetic"
    profile = args.profile or ("tiny" if weights == "synthetic" else "full")
    common = ["--avatar", str(portrait), "--audio", str(speech), "--weights", weights, "--profile", profile,
              "--device", args.device]
    rc = ditto_main(["render", *common, "--out", str(args.out)])
    if rc != 0 or args.no_green:
        return rc
    green = args.out.with_name(f"{args.out.stem}-green{args.out.suffix}")
    print(f"\nThe same on green, cut out along the person matte: {green}", file=sys.stderr)
    return ditto_main(["render", *common, "--out", str(green), "--background", "green"])

"""`ditto weights fetch | check | synthetic | faces | build-engines`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ditto.config import default_cache_dir

FETCH_PATTERNS = ["ditto_pytorch/models/*", "ditto_pytorch/aux_models/*", "ditto_cfg/*",
                  # the two small ONNX models of the 478-point face mesh (5.4 MB), used when MediaPipe is absent
                  "ditto_onnx/blaze_face.onnx", "ditto_onnx/face_mesh.onnx"]
ONNX_PATTERNS = ["ditto_onnx/*"]
FACE_MODELS = ("det_10g", "landmark106", "landmark203")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="download, verify or generate model weights")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)

    f = wsub.add_parser("fetch", help="download the official Ditto checkpoints from Hugging Face")
    f.add_argument("--dest", type=Path, default=default_cache_dir() / "weights",
                   help="target folder (default: %(default)s)")
    f.add_argument("--with-onnx", action="store_true", help="also download the ditto_onnx set (about 2.3 GB more)")
    f.set_defaults(handler=_fetch)

    c = wsub.add_parser("check", help="verify a weights folder: files present, sizes plausible, checkpoints load")
    c.add_argument("path", type=Path)
    c.add_argument("--profile", choices=("full", "tiny"), default=None,
                   help="network widths to check against (default: full, or the synthetic folder's own)")
    c.set_defaults(handler=_check)

    s = wsub.add_parser("synthetic", help="write generated weights in the official layout (offline runs, tests)")
    s.add_argument("--profile", choices=("full", "tiny"), default="full")
    s.set_defaults(handler=_synthetic)

    m = wsub.add_parser("faces", help="take the MediaPipe face models (Apache-2.0) out of the mediapipe wheel on PyPI, "
                                      "check them and keep them in the cache (make setup runs it)")
    m.add_argument("--dest", type=Path, default=None,
                   help="target folder (default: <cache>/face-models/mediapipe-<version>)")
    m.add_argument("--wheel", type=Path, default=None, help="a mediapipe wheel downloaded before (no download then)")
    m.set_defaults(handler=_faces)

    b = wsub.add_parser("build-engines", help="build TensorRT engines for this GPU into the cache")
    b.add_argument("--weights", default="synthetic")
    b.add_argument("--profile", choices=("full", "tiny"), default="full")
    b.add_argument("--cache", type=Path, default=default_cache_dir() / "engines")
    b.set_defaults(handler=_build_engines)


def _fetch(args: argparse.Namespace) -> int:
    from ditto.weights import HF_REPO, OFFICIAL_FILES

    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - it is a dependency
        print("huggingface_hub is missing: pip install huggingface-hub", file=sys.stderr)
        return 1
    dest: Path = args.dest
    dest.mkdir(parents=True, exist_ok=True)
    patterns = FETCH_PATTERNS + (ONNX_PATTERNS if args.with_onnx else [])
    print(f"Downloading {HF_REPO} ({', '.join(patterns)}) into {dest} ...")
    try:
        snapshot_download(repo_id=HF_REPO, local_dir=str(dest), allow_patterns=patterns)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        print(f"\nCould not download from huggingface.co: {type(err).__name__}: {err}\n", file=sys.stderr)
        print("This machine seems to have no access to huggingface.co. Place the files by hand instead:\n"
              f"  1. On a machine with internet: huggingface-cli download {HF_REPO} --local-dir ditto-weights\n"
              f"  2. Copy these files into {dest}, keeping the folders:", file=sys.stderr)
        for f in OFFICIAL_FILES.values():
            print(f"       {f.path}{'' if f.required else '   (optional)'}", file=sys.stderr)
        print(f"  3. Verify: ditto weights check {dest}\n"
              "Or run offline with generated weights: --weights synthetic", file=sys.stderr)
        return 1
    rc = _check(argparse.Namespace(path=dest, profile="full"))
    if rc == 0:
        print(f"\nWeights are ready in {dest}\nUse them with: --weights {dest}")
    return rc


def _faces(args: argparse.Namespace) -> int:
    from ditto import face_models

    try:
        face_models.fetch(args.dest or face_models.models_dir(), args.wheel, say=print)
    except face_models.FaceModelsMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def check_folder(path: Path, profile: str) -> list[str]:
    """Problems found in a weights folder (empty when it is complete and loads)."""
    from ditto.weights import OFFICIAL_FILES, CheckpointError
    from ditto_app.synthetic import is_synthetic

    problems: list[str] = []
    synthetic = is_synthetic(path)
    for name, f in OFFICIAL_FILES.items():
        p = path / f.path
        if not p.is_file():
            # generated folders have no face models: registration uses a centred crop or an explicit box there
            if f.required and not (synthetic and name in FACE_MODELS):
                problems.append(f"missing {f.path}")
            continue
        size = p.stat().st_size
        if not synthetic and profile == "full" and size < 0.9 * f.approx_bytes:
            problems.append(f"{f.path} is {size} bytes, the published file is about {f.approx_bytes}: truncated?")
    if problems:
        return problems
    try:
        from services.renderer.models import RendererModels

        RendererModels.load(path, profile=profile, device="cpu", backend="torch")
    except CheckpointError as err:
        problems.append(str(err))
    try:
        from services.motion_generator.models import load_motion_decoder

        load_motion_decoder(path / OFFICIAL_FILES["lmdm"].path, profile=profile)
    except CheckpointError as err:
        problems.append(str(err))
    try:
        import onnx

        onnx.checker.check_model(str(path / OFFICIAL_FILES["hubert"].path))
    except Exception as err:  # onnx raises several types
        problems.append(f"{OFFICIAL_FILES['hubert'].path}: not a valid ONNX model ({err})")
    return problems


def _check(args: argparse.Namespace) -> int:
    from ditto_app.synthetic import profile_of

    path: Path = args.path
    if not path.is_dir():
        print(f"{path} is not a folder", file=sys.stderr)
        return 1
    profile = args.profile or profile_of(path, "full")
    problems = check_folder(path, profile)
    if problems:
        print(f"{path}: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        print("Fix: run `ditto weights fetch` again, or replace the named files.", file=sys.stderr)
        return 1
    print(f"{path}: complete, every checkpoint loads ({profile} profile)")
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    from ditto_app.synthetic import BANNER, ensure_synthetic

    root = ensure_synthetic(args.profile)
    print(BANNER)
    print(f"Generated weights ({args.profile}) are in {root}")
    return 0


def _build_engines(args: argparse.Namespace) -> int:
    """Build (or find cached) TensorRT engines for this GPU: the renderer networks, HuBERT and the MotionDiT. Safe to
    run from several pods at once on a shared cache volume: engines are written to a temporary file, then renamed."""
    from ditto_app.synthetic import profile_of, resolve_weights

    weights = resolve_weights(args.weights, args.profile)
    profile = profile_of(weights, args.profile)
    args.cache.mkdir(parents=True, exist_ok=True)
    try:
        from ditto import pipeline
        from ditto.accel import import_tensorrt, require_cuda
        from ditto_app.stages import load_models

        import_tensorrt()
        require_cuda("building TensorRT engines (they are built on the GPU they will run on)")
        for stage in pipeline.active().names:  # into the sub-folders the stages read: <cache>/audio, /motion, ...
            print(f"{stage}: building or finding its engines ...", flush=True)
            load_models(stage, weights, profile, "cuda", "tensorrt", args.cache)
    except (RuntimeError, ImportError) as err:
        print(f"cannot build TensorRT engines: {err}", file=sys.stderr)
        return 1
    for p in sorted(args.cache.rglob("*.engine")):
        print(p)
    return 0

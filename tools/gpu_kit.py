"""`make gpu-check` on a GPU machine that has its own CUDA PyTorch but no package index.

A GPU node's image usually carries a CUDA build of torch with numpy, OpenCV, SciPy, ONNX, transformers and the like;
`make setup` there would replace that torch with the pinned CPU wheel (and an air-gapped node cannot install anything
at all). So the check runs on the node's own Python and torch, and the few packages such an image lacks travel with
the checkout as wheels:

    make gpu-kit                         # here, with the package index: .gpu-kit/ for the node's Python (3.12)
    python3 -m tools.gpu_kit run         # there: installs the kit beside the image's packages, runs the check

`KIT` names what the check imports that a CUDA PyTorch image is not expected to carry, `FROM_THE_IMAGE` what it is
expected to carry. The kit is `KIT` with everything it needs (but `LEFT_TO_THE_IMAGE`), each at the version installed
here (so at the version the test suite ran with), plus the compiled paste-back module (built on Python's
stable ABI, so this machine's build loads on the node's Python). The dry run of the check goes through `run` with
nothing importable but these two sets (tests/tools/test_gpu_check.py), so a new import that the kit lacks fails
there, not on the GPU machine.

This module uses the standard library only (and `packaging`, which pip itself needs, for `collect`), since `run`
starts before anything is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT_DIR = ROOT / ".gpu-kit"
PASTE_MODULE = "_paste.abi3.so"

# What the check imports beyond the image: the service's wire and bus libraries (grpcio and protobuf at the versions
# the committed stubs were generated for), its configuration, logging, telemetry and JPEG, and the test runner's
# plugins for the gpu-marked tests.
KIT = ("grpcio", "grpcio-health-checking", "grpcio-reflection", "protobuf", "redis", "pydantic", "pydantic-settings",
       "structlog", "opentelemetry-api", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-grpc",
       "simplejpeg", "cachetools", "pytest", "pytest-asyncio", "pytest-timeout")

# What a CUDA PyTorch image brings (the check uses the image's versions; `gpu-environment.json` lists where they
# differ from the pins). PyAV is in neither set: the check serves JPEG, and H.264 needs FFmpeg's 36 MB wheel.
FROM_THE_IMAGE = ("torch", "numpy", "opencv-python-headless", "scipy", "scikit-image", "pillow", "onnx",
                  "onnxruntime", "onnxscript", "transformers", "safetensors", "huggingface-hub", "tqdm", "PyYAML",
                  "prometheus-client", "hypothesis", "psutil", "pip", "setuptools", "wheel")

# What the kit's packages need that the kit leaves to the image: torch (with what torch needs) and numpy, which
# define such an image, and pygments, which pytest only colours its output with.
LEFT_TO_THE_IMAGE = ("torch", "numpy", "pygments")

# The project itself runs from the checkout (PYTHONPATH), the client package from clients/python.
OWN = ("ditto-service", "ditto-client")

MANYLINUX = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned() -> dict[str, str]:
    """Every `name==version` of pyproject.toml's dependencies and extras, by canonical name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    pins = {}
    for req in reqs:
        name, sep, version = req.partition("==")
        if sep:
            pins[_canonical(re.split(r"[\[;<>= ]", name)[0])] = version.split(";")[0].strip()
    return pins


def closure(names: Iterable[str], python_version: str) -> set[str]:
    """The installed distributions `names` need, themselves included, with markers evaluated for `python_version`
    (the node's Python, not necessarily this one; major.minor means its first release)."""
    from packaging.requirements import Requirement

    major_minor = ".".join(python_version.split(".")[:2])
    full = python_version if python_version.count(".") == 2 else f"{python_version}.0"
    env = {"python_version": major_minor, "python_full_version": full, "extra": ""}
    seen: set[str] = set()
    todo = [_canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # in the image only (or not needed on this platform): nothing to follow
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(_canonical(req.name))
    return seen


def kit_distributions(python_version: str) -> dict[str, str]:
    """{distribution: version installed here} of what the kit carries: `KIT` and everything it needs, except what it
    leaves to the image. Not less: an image may hold a needed package at a version that does not fit (pydantic
    needs its own exact pydantic-core)."""
    carried = closure(KIT, python_version) - closure(LEFT_TO_THE_IMAGE, python_version)
    versions = {}
    for name in sorted(carried):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError as err:
            raise SystemExit(f"{name} is needed on Python {python_version} but is not installed here, so its "
                             "tested version is unknown: give the GPU machine's full Python version (--python "
                             "3.12.3)") from err
    return versions


def allowed_distributions(python_version: str) -> set[str]:
    """What a node with the kit installed can import: the kit, the image and the project."""
    return (closure(KIT, python_version) | closure(FROM_THE_IMAGE, python_version)
            | {_canonical(n) for n in OWN})


def collect(kit: Path, python_version: str) -> None:
    """Downloads the kit's wheels for `python_version` on manylinux x86-64 and copies the paste-back module."""
    paste = next((ROOT / "services/renderer").glob(PASTE_MODULE), None)
    if paste is None:
        raise SystemExit(f"services/renderer/{PASTE_MODULE} is missing: run `make setup` first (it builds it)")
    wanted = kit_distributions(python_version)
    if kit.exists():
        shutil.rmtree(kit)
    kit.mkdir(parents=True)
    print(f"gpu-kit: {len(wanted)} wheels for CPython {python_version} on x86-64 Linux into {kit}", flush=True)
    platforms = [arg for p in MANYLINUX for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    python_version, "--implementation", "cp", *platforms, "--platform", "any", "-d", str(kit),
                    *(f"{name}=={version}" for name, version in wanted.items())], check=True)
    shutil.copy2(paste, kit / PASTE_MODULE)
    size = sum(f.stat().st_size for f in kit.iterdir())
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    checkout = sum((ROOT / n).stat().st_size for n in tracked.decode().split("\0") if n and (ROOT / n).is_file())
    print(f"gpu-kit: {len(list(kit.iterdir()))} files, {size / 2**20:.1f} MiB (with the checkout's tracked files "
          f"{(size + checkout) / 2**20:.1f} MiB); copy the checkout with {kit.name}/ to the GPU machine and run "
          "`python3 -m tools.gpu_kit run` there", flush=True)


def run(kit: Path, check_args: list[str], archive: Path | None) -> int:
    """Installs the kit's wheels into a temporary folder that comes before the image's packages, puts the paste-back
    module in place if the checkout has none, runs tools/gpu_check.py with `check_args`, and packs its results into
    `archive` (one .tar.gz) when asked."""
    if not kit.is_dir():
        print(f"no {kit}: run `make gpu-kit` on a machine with the package index, then bring the folder here",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ditto-gpu-kit-") as tmp:
        site = Path(tmp) / "site"
        wheels = sorted(str(w) for w in kit.glob("*.whl"))
        if wheels:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--disable-pip-version-check", "--target", str(site), *wheels], check=True)
        renderer = ROOT / "services/renderer"
        if not list(renderer.glob("_paste*.so")):
            shutil.copy2(kit / PASTE_MODULE, renderer / PASTE_MODULE)
        given = argparse.ArgumentParser(add_help=False)
        given.add_argument("--out", type=Path, default=None)
        out = given.parse_known_args(check_args)[0].out
        if out is None:
            out = Path(tmp) / "results"
            check_args = [*check_args, "--out", str(out)]
        path = [str(site), str(ROOT), str(ROOT / "clients/python"), os.environ.get("PYTHONPATH", "")]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p), PYTHONUNBUFFERED="1")
        code = subprocess.run([sys.executable, "-m", "tools.gpu_check", *check_args], cwd=ROOT, env=env).returncode
        if archive is not None and out.is_dir():
            archive.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(archive, "w:gz") as tar:
                for f in sorted(out.iterdir()):
                    tar.add(f, arcname=f.name)
            print(f"gpu-kit: results packed into {archive}", flush=True)
        return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="download the kit (needs the package index)")
    c.add_argument("--python", default="3.12", help="the GPU machine's Python, major.minor[.patch] (default 3.12)")
    c.add_argument("--kit", type=Path, default=KIT_DIR)
    r = sub.add_parser("run", help="on the GPU machine: install the kit, run the check; other arguments go to it")
    r.add_argument("--kit", type=Path, default=KIT_DIR)
    r.add_argument("--archive", type=Path, default=None, help="also pack the results into this .tar.gz")
    args, rest = ap.parse_known_args(argv)
    if args.command == "collect":
        if rest:
            ap.error(f"unknown arguments {rest}")
        collect(args.kit, args.python)
        return 0
    return run(args.kit, rest, args.archive)


if __name__ == "__main__":
    sys.exit(main())

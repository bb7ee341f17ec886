"""The face models registration runs by default: Google's MediaPipe models (Apache-2.0), as LiteRT flatbuffers.

They ship inside the `mediapipe` wheel on PyPI, which we do not install (its runtime pins numpy<2 and protobuf<5):
`make setup` (`ditto weights faces`) downloads that one wheel with pip, takes the four files below out of it, checks
each against its SHA-256 and keeps them in the cache (`~/.cache/ditto/face-models/mediapipe-0.10.21/`). Nothing is
downloaded at run time: a missing or altered file stops the renderer at start with the command that fetches it.

| name | file in the wheel | what | input |
|---|---|---|---|
| face_detection | face_detection_short_range.tflite | BlazeFace short-range: boxes and 6 keypoints | 128x128 |
| face_landmark | face_landmark.tflite | the 468-point face mesh, with a face-presence score | 192x192 |
| iris_landmark | iris_landmark.tflite | 71 eye-contour points and 5 iris points of one eye | 64x64 |
| selfie_segmentation | selfie_segmentation.tflite | the person matte (general model) | 256x256 |
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ditto.accel import atomic_dir, file_sha256

MEDIAPIPE_VERSION = "0.10.21"
# One wheel, named exactly, so every machine downloads the same bytes whatever its own Python or platform (the model
# files are the same in every wheel of a release; they are checked one by one below anyway).
WHEEL_PLATFORM = "manylinux_2_28_x86_64"
WHEEL_PYTHON = "311"
WHEEL_SHA256 = "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3"


@dataclass(frozen=True)
class FaceModelFile:
    member: str   # path inside the wheel
    sha256: str
    size: int

    @property
    def name(self) -> str:
        return Path(self.member).name


MODELS: dict[str, FaceModelFile] = {
    "face_detection": FaceModelFile(
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8", 229_714),
    "face_landmark": FaceModelFile(
        "mediapipe/modules/face_landmark/face_landmark.tflite",
        "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814", 1_242_398),
    "iris_landmark": FaceModelFile(
        "mediapipe/modules/iris_landmark/iris_landmark.tflite",
        "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f", 2_640_568),
    "selfie_segmentation": FaceModelFile(
        "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
        "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c", 249_505),
}
FETCH_COMMAND = "ditto weights faces"


class FaceModelsMissing(FileNotFoundError):
    """The MediaPipe model files are not in the cache (or not the expected bytes)."""


def models_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the files live: `<cache>/face-models/mediapipe-<version>` (cache: `DITTO_MODEL__CACHE_DIR`, default
    ~/.cache/ditto)."""
    if cache_dir is None:
        from ditto.config import default_cache_dir

        cache_dir = default_cache_dir()
    return Path(cache_dir) / "face-models" / f"mediapipe-{MEDIAPIPE_VERSION}"


def _how_to_fetch(folder: Path) -> str:
    return (f"run `make setup` or `{FETCH_COMMAND} --dest {folder}` on a machine with access to PyPI (it takes them "
            f"out of the mediapipe=={MEDIAPIPE_VERSION} wheel and checks their SHA-256), or copy that folder from "
            "one; or register without face models (DITTO_MEDIA__FACE_MODELS=none: centred crop or the client's crop "
            "box, neutral eyes, no person matte)")


def problems(folder: Path, check_hash: bool = True) -> list[str]:
    """What is wrong with the files in `folder` (empty when all four are there with the expected bytes)."""
    out = []
    for f in MODELS.values():
        path = folder / f.name
        if not path.is_file():
            out.append(f"{path} is missing")
        elif path.stat().st_size != f.size or (check_hash and file_sha256(path) != f.sha256):
            out.append(f"{path} is not the expected file (SHA-256 {f.sha256[:12]}..., {f.size} bytes)")
    return out


def locate(folder: str | Path | None = None, check_hash: bool = True) -> dict[str, Path]:
    """{name: path} of the four files; FaceModelsMissing saying how to get them when one is absent or altered."""
    folder = Path(folder) if folder is not None else models_dir()
    bad = problems(folder, check_hash)
    if bad:
        raise FaceModelsMissing(f"MediaPipe face models not usable: {'; '.join(bad)}. To get them, "
                                f"{_how_to_fetch(folder)}")
    return {name: folder / f.name for name, f in MODELS.items()}


def download_wheel(dest: Path) -> Path:
    """`pip download` of the one pinned mediapipe wheel (no dependencies) into `dest`; its SHA-256 is checked."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--platform", WHEEL_PLATFORM, "--python-version", WHEEL_PYTHON, "--implementation", "cp",
           "--dest", str(dest), f"mediapipe=={MEDIAPIPE_VERSION}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"mediapipe-{MEDIAPIPE_VERSION}-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise FaceModelsMissing(f"pip could not download mediapipe=={MEDIAPIPE_VERSION} (exit {proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-600:]}")
    digest = file_sha256(wheels[0])
    if digest != WHEEL_SHA256:
        raise FaceModelsMissing(f"{wheels[0].name} has SHA-256 {digest}, expected {WHEEL_SHA256}: not the wheel "
                                "these models were tested from")
    return wheels[0]


def extract(wheel: Path, folder: Path) -> dict[str, Path]:
    """Take the four files out of a mediapipe wheel into `folder` (published at once, when all four check out)."""
    with zipfile.ZipFile(wheel) as z, atomic_dir(folder) as tmp:
        names = set(z.namelist())
        for f in MODELS.values():
            if f.member not in names:
                raise FaceModelsMissing(f"{wheel.name} has no {f.member}: not a mediapipe {MEDIAPIPE_VERSION} wheel")
            with z.open(f.member) as src, open(tmp / f.name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        bad = problems(tmp)
        if bad:
            raise FaceModelsMissing(f"{wheel.name}: {'; '.join(bad)}")
    return locate(folder)


def fetch(folder: str | Path | None = None, wheel: str | Path | None = None,
          say: Callable[[str], None] = lambda s: None) -> dict[str, Path]:
    """Make sure the four files are in `folder`: nothing to do when they are; else from `wheel` (a downloaded
    mediapipe wheel) or from the wheel pip downloads now."""
    folder = Path(folder) if folder is not None else models_dir()
    if not problems(folder):
        say(f"MediaPipe face models: present and checked in {folder}")
        return locate(folder)
    if folder.exists():  # an altered or partial copy: replaced as a whole
        shutil.rmtree(folder)
    if wheel is not None:
        return extract(Path(wheel), folder)
    say(f"MediaPipe face models: downloading the mediapipe=={MEDIAPIPE_VERSION} wheel (35 MB) to take them out ...")
    with tempfile.TemporaryDirectory(prefix="ditto-mediapipe-") as tmp:
        out = extract(download_wheel(Path(tmp)), folder)
    say(f"MediaPipe face models: {', '.join(MODELS)} checked and kept in {folder}")
    return out


def main(argv: list[str] | None = None) -> int:  # python -m ditto.face_models [DEST]
    folder = Path(argv[0]) if argv else models_dir(os.environ.get("DITTO_MODEL__CACHE_DIR") or None)
    try:
        fetch(folder, say=print)
    except FaceModelsMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

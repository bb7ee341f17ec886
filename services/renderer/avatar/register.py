"""Avatar registration: source media -> everything the motion stage and the renderer need (docs/model.md §6).

Per source frame: find the face and place the crop (`framing.py`: MediaPipe's mesh tracked frame to frame by
default, or InsightFace's 106/203 points), the 512 roll-corrected crop and its `M_c2o`, the 256 extractor input, the
motion extractor's `x_s_info`, the appearance volume `f_s`, the eye features and, when the person matte model is
there, the alpha that transparent and green backgrounds cut along (`matte.py`). Video sources get their motion info
box-filtered over time (`smo_k_s` = 13). What was found is the avatar's `report` (RegisterAvatar's answer).

Without face models (DITTO_MEDIA__FACE_MODELS=none) the crop is an explicit box when the caller gives one, otherwise
the centred square of the frame. Results are cached per avatar under `cache_dir`, keyed by the media bytes, the crop
settings and the identity of the weights and face models, so registering the same avatar twice costs one file
read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ditto.accel import atomic_dir
from ditto.codec import as_numpy
from ditto.keypoints import transform_keypoints
from ditto.media import MediaError, short  # noqa: F401 - MediaError: this module's callers catch it here
from ditto.media.pool import Decoder, InProcess
from ditto.media.visual import MediaLimits, limit_size  # noqa: F401 - limit_size: re-exported for callers

from ..putback import feather_mask
from .crop import CropSettings, to_input_256, warp_crop
from .eyes import eye_features
from .framing import FaceReport, NoFaceError, frame_faces  # noqa: F401 (NoFaceError: raised from here)
from .matte import with_head
from .sessions import AuxModels

log = logging.getLogger(__name__)

F32 = np.float32
MOTION_KEYS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")
SMOOTH_KERNEL = 13   # smo_k_s
CROP_SIZE = 512
BATCH = 8            # source frames per extractor call
CACHE_VERSION = 2


# ---------------------------------------------------------------------------------------------------------------
# source loading (docs/model.md §6.1)


def load_media(media: bytes, filename: str | None = None, max_size: int = 1920, max_frames: int = 0,
               limits: MediaLimits | None = None, decoder: Decoder | None = None) -> tuple[list[np.ndarray], bool]:
    """(RGB uint8 frames, is_video). The format is told by the bytes, never by `filename` (used in messages only);
    sizes, frame counts and durations are checked against `limits` from the headers first, so a small file that
    expands to gigabytes is refused before it is decoded. `decoder` says where the native decoders run: a server
    passes its `ditto.media.pool.DecoderPool` (helper processes with memory and time limits), local tools decode in
    this process."""
    what = f"'{short(filename)}'" if filename else "the source"
    decoded = (decoder or InProcess()).run("decode_frames", media, what, max_size, max_frames, limits or MediaLimits())
    return decoded.frames, decoded.is_video


def release_memory() -> None:
    """Hand freed heap back to the operating system after a large registration (glibc keeps it otherwise, and the
    process stays at its peak)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


# ---------------------------------------------------------------------------------------------------------------
# video helpers (docs/model.md §6.5)


def mirror_index(i: int, n: int) -> int:
    """Ping-pong over n source frames: 0, 1, .., n-1, n-1, .., 0, 0, 1, ..."""
    q, r = divmod(i, n)
    return r if q % 2 == 0 else n - 1 - r


def smooth(values: np.ndarray, kernel: int = SMOOTH_KERNEL) -> np.ndarray:
    """Box filter over axis 0 of width `kernel`, truncated at both ends, reading the original values, in float32."""
    n = values.shape[0]
    if n <= 1 or kernel <= 1:
        return values
    half = kernel // 2
    values = values.astype(F32)
    return np.stack([values[max(0, i - half): i + half + 1].mean(axis=0) for i in range(n)]).astype(F32)


# ---------------------------------------------------------------------------------------------------------------
# the avatar


@dataclass
class Avatar:
    avatar_id: str
    frames: list[np.ndarray]              # original RGB uint8 [H, W, 3], what renders are pasted into
    x_s_info: list[dict[str, np.ndarray]]  # per source frame, values with a batch axis of 1 (smoothed for videos)
    f_s: list[Any]                        # per source frame, torch [1, 32, 16, 64, 64] (tiny profile: narrower)
    M_c2o: np.ndarray                     # [n, 3, 3] float32
    eye_open: np.ndarray                  # [n, 2] float32
    eye_ball: np.ndarray                  # [n, 6] float32
    is_video: bool
    width: int
    height: int
    lmk203: np.ndarray | None = None      # [n, 203, 2] when landmarks were found
    alpha: list[np.ndarray] | None = None  # per source frame uint8 [H, W]: the person matte with the head's room
    report: FaceReport | None = None      # what registration found (RegisterAvatar's answer)
    cache_hit: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def nbytes(self) -> int:
        """Memory the avatar holds (frames, appearance features on their device, keypoints and matrices): what the
        renderer's avatar memory is bounded by."""
        arrays = [*self.frames, self.M_c2o, self.eye_open, self.eye_ball,
                  *(v for info in self.x_s_info for v in info.values())]
        if self.lmk203 is not None:
            arrays.append(self.lmk203)
        arrays += self.alpha or []
        features = sum(int(f.numel()) * int(f.element_size()) for f in self.f_s)
        return sum(int(a.nbytes) for a in arrays) + features

    def source_index(self, gen: int) -> int:
        """The source frame that generated frame `gen` uses (ping-pong for videos)."""
        return mirror_index(gen, self.num_frames)

    def x_s(self, i: int) -> np.ndarray:
        """Source keypoints [1, 21, 3] of source frame i."""
        return transform_keypoints(self.x_s_info[i])

    def motion_info(self) -> dict[str, np.ndarray]:
        """What the motion stage needs: x_s_info keys stacked over source frames ([n, ...]), eye_open, eye_ball."""
        out = {k: np.concatenate([info[k] for info in self.x_s_info]).astype(F32) for k in MOTION_KEYS}
        out["eye_open"] = self.eye_open.astype(F32)
        out["eye_ball"] = self.eye_ball.astype(F32)
        return out


_IDENTITIES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def models_identity(models: Any) -> str:
    """Which networks produced an avatar's tensors (part of the cache key).

    A models object may say so itself (`identity`); otherwise its extractors are fingerprinted once per object:
    their outputs on a fixed probe image, rounded to 4 significant digits, hashed. Other weights, profile or
    backend precision give another fingerprint; rounding noise at worst costs a cache miss, never a wrong hit.
    """
    ident = getattr(models, "identity", None)
    if callable(ident):
        ident = ident()
    if ident:
        return str(ident)
    try:
        return _IDENTITIES[models]
    except (KeyError, TypeError):
        pass
    import torch

    y, x = np.mgrid[:256, :256].astype(F32) / 255
    probe = np.stack([x, y, (x + y) / 2])[None]  # [1, 3, 256, 256]
    h = hashlib.sha256(type(models).__qualname__.encode())
    with torch.no_grad():
        t = torch.from_numpy(probe).to(getattr(models, "device", "cpu"))
        outputs = [*(models.motion(t)[k] for k in MOTION_KEYS), models.appearance(t)]
    for v in outputs:
        arr = as_numpy(v).astype(np.float64)
        h.update(str(arr.shape).encode())
        h.update(np.array([float(f"{a:.4g}") for a in arr.ravel()[:4096]]).tobytes())
    fingerprint = h.hexdigest()[:16]
    try:
        _IDENTITIES[models] = fingerprint
    except TypeError:
        pass
    return fingerprint


def avatar_key(media: bytes, crop: CropSettings, models: Any, aux: AuxModels, tenant: str = "") -> str:
    h = hashlib.sha256()
    for part in (f"v{CACHE_VERSION}", tenant, crop.key(), models_identity(models), aux.identity):
        h.update(part.encode() + b"\0")
    h.update(media)
    return h.hexdigest()[:32]


# ---------------------------------------------------------------------------------------------------------------
# registration


def _extract(models: Any, inputs: np.ndarray) -> tuple[dict[str, np.ndarray], list[Any]]:
    """Run the motion and appearance extractors over [n, 3, 256, 256] in batches."""
    import torch

    device = getattr(models, "device", "cpu")
    infos: dict[str, list[np.ndarray]] = {k: [] for k in MOTION_KEYS}
    f_s: list[Any] = []
    with torch.no_grad():
        for start in range(0, len(inputs), BATCH):
            x = torch.from_numpy(np.ascontiguousarray(inputs[start:start + BATCH])).to(device)
            motion = models.motion(x)
            b = x.shape[0]
            for k in MOTION_KEYS:
                v = as_numpy(motion[k]).astype(F32)
                infos[k].append(v.reshape(b, -1))
            feat = models.appearance(x)
            f_s.extend(feat[j:j + 1] for j in range(b))
    return {k: np.concatenate(v) for k, v in infos.items()}, f_s


def register_avatar(media: bytes, filename: str | None, crop: CropSettings, models: Any, aux: AuxModels | None = None,
                    cache_dir: Path | None = None, tenant: str = "", limits: MediaLimits | None = None,
                    decoder: Decoder | None = None) -> Avatar:
    """Register an image or a short video. Raises MediaError (unreadable bytes) or NoFaceError."""
    aux = aux or AuxModels.none()
    avatar_id = avatar_key(media, crop, models, aux, tenant)
    if cache_dir is not None:
        cached = load_cached(avatar_id, cache_dir, models, limits, decoder)
        if cached is not None:
            return cached
    frames, is_video = load_media(media, filename, crop.max_size, crop.max_frames, limits, decoder)
    framing = frame_faces(frames, crop, aux)
    crops = [warp_crop(f, m, CROP_SIZE) for f, m in zip(frames, framing.mats, strict=True)]
    inputs = np.concatenate([to_input_256(c.image) for c in crops])  # [n, 3, 256, 256]
    info, f_s = _extract(models, inputs)
    if is_video:
        info = {k: smooth(v) for k, v in info.items()}
    meshes = [aux.mesh(c.image) for c in crops] if aux.mesh is not None and framing.eye_open is None else []
    if framing.eye_open is not None and framing.eye_ball is not None:
        eye_open, eye_ball = framing.eye_open, framing.eye_ball
        notes = ["eye features: measured by the MediaPipe face mesh and iris models"]
    elif meshes and all(m is not None for m in meshes):
        eye_open, eye_ball = eye_features(np.concatenate([m for m in meshes if m is not None]))
        notes = [f"eye features: measured by {getattr(aux.mesh, 'source', type(aux.mesh).__name__)}"]
    elif meshes:
        eye_open, eye_ball = eye_features(None, len(frames))
        missed = sum(m is None for m in meshes)
        notes = [f"eye features: neutral defaults (the face mesh found no face in {missed} of {len(meshes)} crops)"]
    else:
        eye_open, eye_ball = eye_features(None, len(frames))
        notes = ["eye features: neutral defaults (no face mesh)"]
    alpha = None
    if aux.matte is not None:  # the person matte, with room for the moving head inside the face crop
        feather = feather_mask()
        alpha = [with_head(aux.matte(f), m, feather) for f, m in zip(frames, framing.mats, strict=True)]
    h, w = frames[0].shape[:2]
    avatar = Avatar(
        avatar_id=avatar_id,
        frames=frames,
        x_s_info=[{k: v[i:i + 1] for k, v in info.items()} for i in range(len(frames))],
        f_s=f_s,
        M_c2o=np.stack([c.M_c2o for c in crops]).astype(F32),
        eye_open=eye_open, eye_ball=eye_ball,
        is_video=is_video, width=w, height=h, lmk203=framing.lmk203, alpha=alpha, report=framing.report,
        notes=[*aux.notes, *framing.notes, *notes],
    )
    if cache_dir is not None:
        save_cached(avatar, media, filename, crop, cache_dir)
    return avatar


# ---------------------------------------------------------------------------------------------------------------
# cache: <cache_dir>/<avatar_id>/{media.bin, meta.json, info.npz, f_s.pt}


def save_cached(avatar: Avatar, media: bytes, filename: str | None, crop: CropSettings, cache_dir: Path) -> None:
    import torch

    arrays: dict[str, Any] = dict(avatar.motion_info())
    arrays["M_c2o"] = avatar.M_c2o
    if avatar.lmk203 is not None:
        arrays["lmk203"] = avatar.lmk203
    meta = {"version": CACHE_VERSION, "filename": filename, "is_video": avatar.is_video,
            "max_size": crop.max_size, "max_frames": crop.max_frames, "notes": avatar.notes,
            "report": avatar.report.to_json() if avatar.report else None}
    # a concurrent registration of the same avatar may publish first; then its files are kept
    with atomic_dir(Path(cache_dir) / avatar.avatar_id) as tmp:
        (tmp / "media.bin").write_bytes(media)
        np.savez(tmp / "info.npz", **arrays)  # type: ignore[arg-type]
        torch.save(torch.cat([t.detach().cpu() for t in avatar.f_s]), tmp / "f_s.pt")
        if avatar.alpha is not None:  # mostly 0 and 255: compresses to a few percent
            np.savez_compressed(tmp / "alpha.npz", alpha=np.stack(avatar.alpha))
        (tmp / "meta.json").write_text(json.dumps(meta))


def load_cached(avatar_id: str, cache_dir: Path, models: Any, limits: MediaLimits | None = None,
                decoder: Decoder | None = None) -> Avatar | None:
    """The cached avatar, or None when absent or unreadable (then it is computed again)."""
    import torch

    folder = Path(cache_dir) / avatar_id
    if not (folder / "meta.json").is_file():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION:
            return None
        frames, _ = load_media((folder / "media.bin").read_bytes(), meta["filename"], meta["max_size"],
                               meta["max_frames"], limits, decoder)
        with np.load(folder / "info.npz") as z:
            arrays = {k: z[k] for k in z.files}
        f_s = torch.load(folder / "f_s.pt", map_location=getattr(models, "device", "cpu"), weights_only=True)
        alpha = None
        if (folder / "alpha.npz").is_file():
            with np.load(folder / "alpha.npz") as z:
                alpha = list(z["alpha"])
        report = FaceReport.from_json(meta["report"]) if meta.get("report") else None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        log.warning("avatar cache entry %s unreadable (%s); registering again", folder, err)
        return None
    n = len(frames)
    h, w = frames[0].shape[:2]
    return Avatar(
        avatar_id=avatar_id, frames=frames,
        x_s_info=[{k: arrays[k][i:i + 1] for k in MOTION_KEYS} for i in range(n)],
        f_s=[f_s[i:i + 1] for i in range(n)],
        M_c2o=arrays["M_c2o"], eye_open=arrays["eye_open"], eye_ball=arrays["eye_ball"],
        is_video=bool(meta["is_video"]), width=w, height=h, lmk203=arrays.get("lmk203"), alpha=alpha,
        report=report, cache_hit=True, notes=list(meta.get("notes", [])),
    )

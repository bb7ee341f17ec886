"""Training data preparation (docs/model.md §10): videos -> per-video feature files -> data_list.json -> preload pickle.

Per video (`prepare_video`), each output written atomically, so an interrupted run resumes where it stopped:

    fps25 video --global 512 crop--> video/<name>.mp4
        video/<name>.mp4 --per frame, normal and mirrored--> LP_pkl, LP_npy [n, 328],
                                                             MP_lmk_npy [n, 478, 3] (with a mesh),
                                                             eye_open_npy [n, 2], eye_ball_npy [n, 3, 2]
        video/<name>.mp4 --every 5th frame--> emo_npy [n, 8] (interpolated)
    fps25 video --16 kHz mono--> wav/<name>.wav --streaming HuBERT--> hubert_aud_npy [n, 1024]

Flipped variants (LP, mesh, eyes) go to the `<folder>_flip` folders. `prepare_all` runs videos in parallel worker
processes; a video whose outputs all exist is skipped, and a video that fails is reported with its reason and left
out of the data list (never silently).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .formats import DataInfo, VideoPaths, save_npy, write_lp
from .media import (
    CROP_SIZE,
    Mp4Writer,
    VideoError,
    crop_frame,
    extract_wav,
    frames_25fps,
    probe,
    read_frames,
    square_box_matrix,
)

log = logging.getLogger(__name__)

BATCH = 16                 # frames per motion-extractor call
EMOTION_EVERY = 5          # the reference classifies at 5 fps and interpolates
LP_KEYS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")
# shapes of one frame's motion info in the reference's LP_pkl (x_s_info with a batch axis of 1)
LP_SHAPES = {"pitch": (1, 66), "yaw": (1, 66), "roll": (1, 66), "t": (1, 3), "exp": (1, 21, 3), "scale": (1, 1),
             "kp": (1, 21, 3)}


@dataclass(frozen=True)
class PrepareSettings:
    crop_scale: float = 2.2          # landmark box scale of the global crop (the reference's crop_video_by_LP)
    crop_vy: float = -0.1
    flip: bool = True
    emotion_every: int = EMOTION_EVERY


@dataclass
class VideoResult:
    name: str
    status: str                      # "done", "skipped" (already prepared) or "failed"
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def required_outputs(v: VideoPaths, flip: bool, with_mesh: bool) -> list[Path]:
    keys = ["video_list", "wav_list", "hubert_aud_npy_list", "LP_pkl_list", "LP_npy_list", "eye_open_npy_list",
            "eye_ball_npy_list", "emo_npy_list"] + (["MP_lmk_npy_list"] if with_mesh else [])
    paths = [v[k] for k in keys]
    if flip:
        paths += [v.flipped(k) for k in ("LP_pkl_list", "LP_npy_list", "eye_open_npy_list", "eye_ball_npy_list")]
        if with_mesh:
            paths.append(v.flipped("MP_lmk_npy_list"))
    return paths


def is_prepared(v: VideoPaths, flip: bool, with_mesh: bool) -> bool:
    return all(p.is_file() for p in required_outputs(v, flip, with_mesh))


# ---------------------------------------------------------------------------------------------------------------
# step 1: the global crop


def global_box(frames: Iterable[np.ndarray], ex: Any, settings: PrepareSettings) -> tuple[np.ndarray, float, int]:
    """(centre [2], side, frame count): the per-frame landmark boxes averaged into one square (the reference's
    crop_video_by_LP: detection on the first frame, 203-landmark tracking after it, box scale 2.2, vy -0.1)."""
    from services.renderer.avatar.crop import rect_from_landmarks

    centres, sides = [], []
    prev: np.ndarray | None = None
    n = 0
    size: tuple[int, int] | None = None
    for i, frame in enumerate(frames):
        n += 1
        size = frame.shape[:2]
        if not ex.can_find_faces:
            continue
        if prev is None:
            box = ex.aux.detector.detect(frame).largest()
            if box is None:
                raise VideoError(f"no face found in frame {i}; the target face must be visible in every frame")
            seed = ex.aux.landmark106(frame, box)
        else:
            seed = prev
        prev = ex.aux.landmark203(frame, seed)
        rect = rect_from_landmarks(prev, settings.crop_scale, settings.crop_vy)
        centres.append(rect.center)
        sides.append(float(rect.size[0]))
    if n == 0 or size is None:
        raise VideoError("the video has no frames")
    if not centres:  # no face finding: the centred square of the frame
        h, w = size
        return np.array([(w - 1) / 2, (h - 1) / 2], np.float32), float(min(h, w)), n
    return np.mean(centres, axis=0).astype(np.float32), float(np.mean(sides)), n


def write_crop(v: VideoPaths, ex: Any, settings: PrepareSettings) -> tuple[int, list[str]]:
    src = v["fps25_video_list"]
    info = probe(src)
    notes = []
    if abs(info.fps - 25) > 0.01:
        notes.append(f"source is {info.fps:.3f} fps; resampled to 25 fps by frame timestamps")
    if not ex.can_find_faces:
        notes.append("no face-finding models: global crop = centred square of the frame")
    centre, side, n = global_box(frames_25fps(src), ex, settings)
    m = square_box_matrix(centre, side, CROP_SIZE)
    writer = Mp4Writer(v["video_list"])
    try:
        for frame in frames_25fps(src):
            writer.write(crop_frame(frame, m))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return n, notes


# ---------------------------------------------------------------------------------------------------------------
# step 3: per-frame features of the cropped video


def _batches(frames: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for f in frames:
        batch.append(f)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class FrameFeatures:
    """Accumulates motion info, meshes and emotion probabilities for one orientation (normal or mirrored)."""

    def __init__(self, want_emotion: bool) -> None:
        self.infos: list[dict[str, np.ndarray]] = []
        self.meshes: list[np.ndarray | None] = []
        self.emotion_frames: list[int] = []
        self.emotion_probs: list[np.ndarray] = []
        self.want_emotion = want_emotion

    def add(self, ex: Any, crops: list[np.ndarray], first: int, settings: PrepareSettings) -> None:
        import torch

        from services.renderer.avatar.crop import to_input_256

        x = torch.from_numpy(np.concatenate([to_input_256(c) for c in crops])).to(ex.models.device)
        with torch.no_grad():
            out = ex.models.motion(x)
        arrays = {k: out[k].detach().float().cpu().numpy() for k in LP_KEYS}
        for j in range(len(crops)):
            self.infos.append({k: arrays[k][j].reshape(LP_SHAPES[k]).astype(np.float32) for k in LP_KEYS})
        if ex.mesh is not None:
            for c in crops:
                mesh = ex.mesh(c)
                self.meshes.append(None if mesh is None else np.asarray(mesh, np.float32).reshape(478, 3))
        if self.want_emotion:
            from .extractors import face_region

            picks = [j for j in range(len(crops)) if (first + j) % settings.emotion_every == 0]
            if picks:
                self.emotion_frames += [first + j for j in picks]
                self.emotion_probs.append(ex.emotion([face_region(crops[j]) for j in picks]))


def fill_missing(rows: list[np.ndarray | None]) -> tuple[np.ndarray | None, int]:
    """Per-frame meshes with gaps -> [n, 478, 3] with each gap taking the nearest measured frame; (None, n) when
    none was measured. Returns (array, number of filled frames)."""
    have = [i for i, r in enumerate(rows) if r is not None]
    if not have:
        return None, len(rows)
    idx = np.array(have)
    out: list[np.ndarray] = []
    for i in range(len(rows)):
        nearest = rows[int(idx[np.argmin(np.abs(idx - i))])]
        assert nearest is not None
        out.append(nearest)
    return np.stack(out).astype(np.float32), len(rows) - len(have)


def interpolate_emotion(frames: list[int], probs: np.ndarray, n: int) -> np.ndarray:
    """Probabilities measured at some frames -> [n, 8], linear in between and held at the ends."""
    if len(frames) == 1:
        return np.tile(probs[0], (n, 1)).astype(np.float32)
    grid = np.arange(n)
    return np.stack([np.interp(grid, frames, probs[:, c]) for c in range(probs.shape[1])], 1).astype(np.float32)


def write_frame_features(v: VideoPaths, ex: Any, settings: PrepareSettings,
                         on_frames: Callable[[int], None] | None = None) -> tuple[int, list[str]]:
    """Motion (LP), eyes and emotion of every cropped frame, normal and mirrored, in one decoding pass."""
    from services.renderer.avatar.eyes import eye_features

    normal = FrameFeatures(want_emotion=True)
    mirrored = FrameFeatures(want_emotion=False) if settings.flip else None
    n = 0
    for batch in _batches(read_frames(v["video_list"]), BATCH):
        normal.add(ex, batch, n, settings)
        if mirrored is not None:
            mirrored.add(ex, [np.ascontiguousarray(c[:, ::-1]) for c in batch], n, settings)
        n += len(batch)
        if on_frames:
            on_frames(len(batch))
    if n == 0:
        raise VideoError(f"{v['video_list']}: the cropped video has no frames")
    notes: list[str] = []
    for feats, flipped in ((normal, False), (mirrored, True)):
        if feats is None:
            continue
        out = v.flipped if flipped else v.__getitem__
        write_lp(feats.infos, out("LP_pkl_list"), out("LP_npy_list"))
        mesh, filled = fill_missing(feats.meshes) if ex.mesh is not None else (None, 0)
        if mesh is not None:
            save_npy(out("MP_lmk_npy_list"), mesh)
            if filled:
                notes.append(f"face mesh missing on {filled} of {n} frames{' (mirrored)' if flipped else ''}; "
                             "nearest measured frame used")
        elif ex.mesh is not None:
            notes.append("face mesh found no face in any frame; neutral eye features")
        eye_open, eye_ball = eye_features(mesh, n)
        save_npy(out("eye_open_npy_list"), eye_open.astype(np.float32))
        save_npy(out("eye_ball_npy_list"), eye_ball.reshape(n, 3, 2).astype(np.float32))  # reference layout
    probs = np.concatenate(normal.emotion_probs) if normal.emotion_probs else np.zeros((0, 8), np.float32)
    save_npy(v["emo_npy_list"], interpolate_emotion(normal.emotion_frames, probs, n))
    return n, notes


# ---------------------------------------------------------------------------------------------------------------
# one video


def prepare_video(v: VideoPaths, ex: Any, settings: PrepareSettings,
                  on_frames: Callable[[int], None] | None = None) -> VideoResult:
    """Make every missing output of one video. Exceptions become a failed result naming the step and the reason."""
    from services.audio_encoder.encoder import encode_file

    with_mesh = ex.mesh is not None
    if is_prepared(v, settings.flip, with_mesh):
        return VideoResult(v.name, "skipped", "already prepared")
    t0 = time.perf_counter()
    step = "read"
    notes: list[str] = []
    frames = 0
    try:
        src = v["fps25_video_list"]
        if not src.is_file():
            raise VideoError(f"{src}: no such file")
        info = probe(src)
        if not info.has_audio:
            raise VideoError(f"{src}: no audio stream; training needs the speech that goes with the face")
        step = "crop"
        if not v["video_list"].is_file():
            frames, crop_notes = write_crop(v, ex, settings)
            notes += crop_notes
        step = "audio"
        if not v["wav_list"].is_file():
            extract_wav(src, v["wav_list"])
        step = "hubert"
        if not v["hubert_aud_npy_list"].is_file():
            save_npy(v["hubert_aud_npy_list"], encode_file(v["wav_list"], ex.hubert).astype(np.float32))
        step = "features"
        if not is_prepared(v, settings.flip, with_mesh):
            frames, feat_notes = write_frame_features(v, ex, settings, on_frames)
            notes += feat_notes
    except Exception as err:  # one bad video must not stop the others; the reason is reported
        reason = f"{step}: {type(err).__name__}: {err}" if not isinstance(err, VideoError) else f"{step}: {err}"
        return VideoResult(v.name, "failed", reason, frames, time.perf_counter() - t0, notes)
    return VideoResult(v.name, "done", "", frames, time.perf_counter() - t0, notes)


# ---------------------------------------------------------------------------------------------------------------
# many videos, in worker processes

_WORKER: dict[str, Any] = {}


def _init_worker(weights_dir: str, profile: str, device: str, emotion: str, threads: int) -> None:
    import torch

    from .extractors import Extractors

    if threads:
        torch.set_num_threads(threads)
    _WORKER["ex"] = Extractors.load(Path(weights_dir), profile, device, emotion)


def _run_in_worker(v: VideoPaths, settings: PrepareSettings) -> VideoResult:
    ex = _WORKER["ex"]
    res = prepare_video(v, ex, settings)
    res.notes = [*ex.notes, *res.notes]
    return res


def prepare_all(info: DataInfo, weights_dir: Path, profile: str, device: str = "cpu", emotion: str = "auto",
                settings: PrepareSettings | None = None, workers: int = 1, progress: bool = True,
                extractors: Any = None) -> list[VideoResult]:
    """Prepare every video of `info` (finished ones are skipped). workers > 1: that many processes, each with its
    own models. `extractors` (single process only) replaces the default models, e.g. with a custom mesh provider."""
    from tqdm import tqdm

    settings = settings or PrepareSettings()
    results: list[VideoResult] = []
    bar = tqdm(total=len(info.videos), desc="videos", unit="video", disable=not progress)
    if workers <= 1:
        from .extractors import Extractors

        ex = extractors or Extractors.load(weights_dir, profile, device, emotion)
        for v in info.videos:
            frame_bar = tqdm(desc=v.name, unit="frame", leave=False, disable=not progress)
            res = prepare_video(v, ex, settings, on_frames=frame_bar.update)
            frame_bar.close()
            res.notes = [*ex.notes, *res.notes]
            results.append(_report(res, bar))
    else:
        import multiprocessing as mp
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed

        if extractors is not None:
            raise ValueError("custom extractors run in this process only; use workers=1 with them")
        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = mp.get_context("spawn")  # torch and fork do not mix
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(str(weights_dir), profile, device, emotion, threads)) as pool:
            futures = {pool.submit(_run_in_worker, v, settings): v for v in info.videos}
            for fut in as_completed(futures):
                v = futures[fut]
                try:
                    res = fut.result()
                except Exception as err:  # the worker process itself died
                    res = VideoResult(v.name, "failed", f"worker: {type(err).__name__}: {err}")
                results.append(_report(res, bar))
        order = {v.name: i for i, v in enumerate(info.videos)}
        results.sort(key=lambda r: order[r.name])
    bar.close()
    return results


def _report(res: VideoResult, bar: Any) -> VideoResult:
    bar.update(1)
    if res.status == "failed":
        bar.write(f"FAILED {res.name}: {res.reason} (skipped)")
        log.warning("video %s failed: %s", res.name, res.reason)
    return res


def write_report(results: list[VideoResult], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return path

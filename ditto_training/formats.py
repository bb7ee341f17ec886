"""The training data files, in the reference's formats (docs/model.md §10), so either implementation reads the other's.

- `data_info.json`: parallel lists of absolute paths, one entry per video, keyed `<what>_list` (`DATA_INFO_KEYS`).
  Flipped outputs live beside the normal ones in a folder with a `_flip` suffix (`flip_path`).
- `data_list.json`: a list of `{mtn, aud, emo, eye_open, eye_ball, [lmk], frame_num}` (paths and the usable frame
  count); doubled with the `_flip` paths when flips are used. Entries shorter than 81 frames are dropped.
- the preload pickle: `[v_list, idx_map]`, v_list items `{frame_num, mtn [n,265], aud [n,1024], sc [n,63], emo [n,8],
  eye_open [n,2], eye_ball [n,6]}`, idx_map `[[video_index, start_frame], ...]` for every start in 1..n-80.

Pickles (`LP_pkl` files and the preload file) are what the reference writes and reads. Unpickling runs code chosen by
whoever wrote the file: only load pickles you produced yourself (treat them as trusted input, like a checkpoint).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ditto.accel import atomic_path, write_bytes_atomic

SEQ_FRAMES = 80
MIN_FRAMES = SEQ_FRAMES + 1            # one clip plus the conditioning frame before it
MOTION_DIM = 265                      # [scale-1, pitch 66, yaw 66, roll 66, t 3, exp 63]
LP_DIM = 328                          # ... + kp 63

# data_info.json key -> (folder under the work dir, file extension)
DATA_INFO_KEYS: dict[str, tuple[str, str]] = {
    "fps25_video_list": ("fps25_video", ".mp4"),
    "video_list": ("video", ".mp4"),
    "wav_list": ("wav", ".wav"),
    "hubert_aud_npy_list": ("hubert_aud_npy", ".npy"),
    "LP_pkl_list": ("LP_pkl", ".pkl"),
    "LP_npy_list": ("LP_npy", ".npy"),
    "MP_lmk_npy_list": ("MP_lmk_npy", ".npy"),
    "eye_open_npy_list": ("eye_open_npy", ".npy"),
    "eye_ball_npy_list": ("eye_ball_npy", ".npy"),
    "emo_npy_list": ("emo_npy", ".npy"),
}
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")


class DataError(ValueError):
    """A training data file is missing, malformed or inconsistent; the message says which and what to do."""


def flip_path(path: str | Path) -> Path:
    """`<dir>/<name>` -> `<dir>_flip/<name>`: where the flipped variant of an output lives."""
    p = Path(path)
    return p.parent.with_name(p.parent.name + "_flip") / p.name


@dataclass
class VideoPaths:
    """All the files of one video (one row of data_info.json)."""

    name: str
    paths: dict[str, Path]                 # data_info key -> path

    def __getitem__(self, key: str) -> Path:
        return self.paths[key]

    def flipped(self, key: str) -> Path:
        return flip_path(self.paths[key])


@dataclass
class DataInfo:
    videos: list[VideoPaths]

    @classmethod
    def for_videos(cls, videos: Iterable[str | Path], work_dir: str | Path) -> DataInfo:
        """The layout `ditto prepare --videos DIR --work DIR` uses: `<work>/<folder>/<video name><ext>`."""
        work = Path(work_dir).resolve()
        rows: list[VideoPaths] = []
        seen: set[str] = set()
        for v in videos:
            v = Path(v).resolve()
            name = v.stem
            if name in seen:
                raise DataError(f"two videos are named {name!r} (different extensions or folders); every video "
                                "needs a distinct file name because outputs are named after it")
            seen.add(name)
            paths = {k: work / folder / f"{name}{ext}" for k, (folder, ext) in DATA_INFO_KEYS.items()}
            paths["fps25_video_list"] = v
            rows.append(VideoPaths(name, paths))
        return cls(rows)

    @classmethod
    def from_folder(cls, video_dir: str | Path, work_dir: str | Path) -> DataInfo:
        folder = Path(video_dir)
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder of videos")
        videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        if not videos:
            raise DataError(f"{folder}: no videos found (looked for {', '.join(VIDEO_EXTENSIONS)})")
        return cls.for_videos(videos, work_dir)

    def to_json(self) -> dict[str, list[str]]:
        return {k: [str(v.paths[k]) for v in self.videos] for k in DATA_INFO_KEYS}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> DataInfo:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{path}: cannot read data_info json ({err})") from err
        missing = [k for k in DATA_INFO_KEYS if k not in raw]
        if missing:
            raise DataError(f"{path}: missing keys {', '.join(missing)}; data_info.json needs all of "
                            f"{', '.join(DATA_INFO_KEYS)} (or create it with --videos DIR --work DIR)")
        n = len(raw["fps25_video_list"])
        uneven = [f"{k} ({len(raw[k])})" for k in DATA_INFO_KEYS if len(raw[k]) != n]
        if uneven:
            raise DataError(f"{path}: the lists must be parallel (fps25_video_list has {n}): {', '.join(uneven)}")
        rows = [VideoPaths(Path(raw["fps25_video_list"][i]).stem, {k: Path(raw[k][i]) for k in DATA_INFO_KEYS})
                for i in range(n)]
        return cls(rows)


# ---------------------------------------------------------------------------------------------------------------
# per-video arrays


def lp_row(info: dict[str, np.ndarray]) -> np.ndarray:
    """One frame's motion-extractor outputs -> the 328-d LP vector [scale-1, pitch, yaw, roll, t, exp, kp]."""
    parts = [np.asarray(info[k], np.float32).reshape(-1) for k in ("scale", "pitch", "yaw", "roll", "t", "exp", "kp")]
    parts[0] = parts[0] - np.float32(1)
    return np.concatenate(parts)


def write_lp(infos: Sequence[dict[str, np.ndarray]], pkl_path: Path, npy_path: Path) -> np.ndarray:
    """LP_pkl (a list of per-frame dicts with a batch axis of 1, as the reference) and LP_npy [n, 328]."""
    rows = np.stack([lp_row(i) for i in infos]).astype(np.float32)
    if rows.shape[1] != LP_DIM:
        raise DataError(f"motion rows have {rows.shape[1]} values, expected {LP_DIM}")
    write_bytes_atomic(pkl_path, pickle.dumps(list(infos), protocol=4))
    save_npy(npy_path, rows)
    return rows


def save_npy(path: Path, array: np.ndarray) -> None:
    """np.save through a temporary file, so an interrupted run never leaves a truncated array behind."""
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def load_array(path: str | Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the {what} array ({err}); run `ditto prepare` again") from err


# ---------------------------------------------------------------------------------------------------------------
# data_list.json


def gather_data_list(info: DataInfo, use_emo: bool = True, use_eye_open: bool = True, use_eye_ball: bool = True,
                     with_flip: bool = True, use_lmk: bool = False,
                     only: Iterable[str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """(data_list entries, notes on skipped videos). `only`: names of videos to include (prepared ones)."""
    keep = set(only) if only is not None else None
    items: list[dict[str, Any]] = []
    flips: list[dict[str, Any]] = []
    notes: list[str] = []
    for v in info.videos:
        if keep is not None and v.name not in keep:
            continue
        item: dict[str, Any] = {"mtn": str(v["LP_npy_list"]), "aud": str(v["hubert_aud_npy_list"])}
        if use_emo:
            item["emo"] = str(v["emo_npy_list"])
        if use_eye_open:
            item["eye_open"] = str(v["eye_open_npy_list"])
        if use_eye_ball:
            item["eye_ball"] = str(v["eye_ball_npy_list"])
        if use_lmk:
            item["lmk"] = str(v["MP_lmk_npy_list"])
        lengths = [len(np.load(p, mmap_mode="r", allow_pickle=False)) for k, p in item.items()]
        frame_num = min(lengths)
        if frame_num < MIN_FRAMES:
            notes.append(f"{v.name}: {frame_num} frames, fewer than the {MIN_FRAMES} a training clip needs; skipped")
            continue
        item["frame_num"] = int(frame_num)
        items.append(item)
        if with_flip:
            flipped = dict(item)
            for k, src in (("mtn", "LP_npy_list"), ("eye_open", "eye_open_npy_list"),
                           ("eye_ball", "eye_ball_npy_list"), ("lmk", "MP_lmk_npy_list")):
                if k in flipped:
                    flipped[k] = str(v.flipped(src))
            flips.append(flipped)
    return items + flips, notes


def load_data_list(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    try:
        items = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read data_list json ({err})") from err
    if not isinstance(items, list) or not all(isinstance(i, dict) and "mtn" in i and "aud" in i for i in items):
        raise DataError(f"{path}: expected a list of {{mtn, aud, emo, eye_open, eye_ball, frame_num}} objects")
    if not items:
        raise DataError(f"{path}: the data list is empty: no video had {MIN_FRAMES} or more usable frames")
    return items


# ---------------------------------------------------------------------------------------------------------------
# preload pickle


def load_item_arrays(item: dict[str, Any], motion_dim: int = MOTION_DIM, use_sc: bool = True,
                     use_emo: bool = True, use_eye_open: bool = True, use_eye_ball: bool = True) -> dict[str, Any]:
    """One data_list entry -> the arrays of a preload item, each cut to frame_num."""
    n = int(item.get("frame_num", 0)) or None
    lp = load_array(item["mtn"], "motion")
    if lp.ndim != 2 or lp.shape[1] < motion_dim:
        raise DataError(f"{item['mtn']}: motion array {lp.shape}, expected [n, {LP_DIM}]")
    out: dict[str, Any] = {"mtn": lp[:n, :motion_dim].astype(np.float32),
                           "aud": load_array(item["aud"], "audio feature")[:n].astype(np.float32)}
    if use_sc:
        out["sc"] = lp[:n, MOTION_DIM:].astype(np.float32)
        if out["sc"].shape[1] != LP_DIM - MOTION_DIM:
            raise DataError(f"{item['mtn']}: no canonical keypoints (columns 265:328) for --use_sc")
    for flag, key, width in ((use_emo, "emo", 8), (use_eye_open, "eye_open", 2), (use_eye_ball, "eye_ball", 6)):
        if flag:
            if key not in item:
                raise DataError(f"data list entry {item['mtn']} has no {key!r} path, needed by --use_{key}")
            out[key] = load_array(item[key], key)[:n].reshape(-1, width).astype(np.float32)
    frame_num = min(len(v) for v in out.values())
    out = {k: v[:frame_num] for k, v in out.items()}
    out["frame_num"] = frame_num
    return out


def clip_starts(frame_num: int, seq: int = SEQ_FRAMES) -> range:
    """Clip starts with a conditioning frame before them and a full clip after: 1 .. n - seq."""
    return range(1, frame_num - seq + 1)


def build_preload(items: Sequence[dict[str, Any]], **flags: Any) -> list[Any]:
    v_list = [load_item_arrays(it, **flags) for it in items]
    idx_map = [[vi, s] for vi, v in enumerate(v_list) for s in clip_starts(v["frame_num"])]
    return [v_list, idx_map]


def save_preload(preload: list[Any], path: str | Path) -> Path:
    path = Path(path)
    write_bytes_atomic(path, pickle.dumps(preload, protocol=4))
    return path


def load_preload(path: str | Path) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """Read a preload pickle (trusted input: pickles can run code; load only files you made)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)  # noqa: S301 - the documented reference format, trusted input
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise DataError(f"{path}: cannot read the preload pickle ({err}); make it with `ditto prepare`") from err
    if not (isinstance(obj, list | tuple) and len(obj) == 2):
        raise DataError(f"{path}: expected [v_list, idx_map]")
    v_list, idx_map = obj
    if not v_list or not idx_map:
        raise DataError(f"{path}: the preload holds no training clips")
    return list(v_list), [list(map(int, i)) for i in idx_map]

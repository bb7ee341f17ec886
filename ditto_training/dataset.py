"""The clip dataset (the reference's Stage2Dataset v2, docs/model.md §10).

A sample is one 80-frame clip of one video, starting at frame f (1 <= f <= n - 80):

    kp_seq   = mtn[f : f+80]                                   [80, 265]  the target x0
    kp_cond  = mtn[f-1] (use_last_frame) or mtn[random frame]  [265]      the conditioning frame
    aud_cond = [hubert[f:f+80] | emo clip mean x80 | eye_open[f:f+80] | eye_ball[f:f+80] | sc(random frame) x80]
                                                               [80, 1103] with every flag on
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .formats import SEQ_FRAMES, DataError, build_preload, load_data_list, load_preload


@dataclass(frozen=True)
class DatasetFlags:
    use_sc: bool = True
    use_last_frame: bool = True
    use_emo: bool = True
    use_eye_open: bool = True
    use_eye_ball: bool = True
    motion_feat_dim: int = 265
    audio_feat_dim: int = 1103
    seq_frames: int = SEQ_FRAMES

    def cond_dim(self) -> int:
        return 1024 + 8 * self.use_emo + 2 * self.use_eye_open + 6 * self.use_eye_ball + 63 * self.use_sc

    def preload_flags(self) -> dict[str, Any]:
        return {"motion_dim": self.motion_feat_dim, "use_sc": self.use_sc, "use_emo": self.use_emo,
                "use_eye_open": self.use_eye_open, "use_eye_ball": self.use_eye_ball}


class ClipDataset(Dataset):
    """Clips of the preloaded videos; `seed` makes the random choices (sc frame, kp_cond frame) reproducible."""

    def __init__(self, v_list: list[dict[str, Any]], idx_map: list[list[int]], flags: DatasetFlags,
                 seed: int = 0) -> None:
        self.v_list, self.idx_map, self.flags = v_list, idx_map, flags
        self.seed = seed
        self.epoch = 0
        if flags.cond_dim() != flags.audio_feat_dim:
            raise DataError(f"--audio_feat_dim {flags.audio_feat_dim} does not match the enabled conditions "
                            f"(1024 audio + emo 8 + eye_open 2 + eye_ball 6 + sc 63 as enabled = {flags.cond_dim()})")
        for i, v in enumerate(v_list):
            for key, flag in (("sc", flags.use_sc), ("emo", flags.use_emo), ("eye_open", flags.use_eye_open),
                              ("eye_ball", flags.use_eye_ball)):
                if flag and key not in v:
                    raise DataError(f"preloaded video {i} has no {key!r}; prepare it with that feature or drop "
                                    f"--use_{key}")
            if v["mtn"].shape[1] < flags.motion_feat_dim:
                raise DataError(f"preloaded video {i}: motion has {v['mtn'].shape[1]} dims < {flags.motion_feat_dim}")

    @classmethod
    def from_preload(cls, path: str, flags: DatasetFlags, seed: int = 0) -> ClipDataset:
        v_list, idx_map = load_preload(path)
        return cls(v_list, idx_map, flags, seed)

    @classmethod
    def from_data_list(cls, path: str, flags: DatasetFlags, seed: int = 0) -> ClipDataset:
        v_list, idx_map = build_preload(load_data_list(path), **flags.preload_flags())
        return cls(v_list, idx_map, flags, seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.idx_map)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        fl = self.flags
        vi, f = self.idx_map[index]
        v = self.v_list[vi]
        n, seq = int(v["frame_num"]), fl.seq_frames
        rng = np.random.default_rng([self.seed, self.epoch, index])
        mtn = np.asarray(v["mtn"], np.float32)[:, :fl.motion_feat_dim]
        kp_seq = mtn[f:f + seq]
        kp_cond = mtn[f - 1] if fl.use_last_frame else mtn[int(rng.integers(n))]
        parts = [np.asarray(v["aud"], np.float32)[f:f + seq]]
        if fl.use_emo:
            parts.append(np.repeat(np.asarray(v["emo"], np.float32)[f:f + seq].mean(0, keepdims=True), seq, 0))
        if fl.use_eye_open:
            parts.append(np.asarray(v["eye_open"], np.float32).reshape(-1, 2)[f:f + seq])
        if fl.use_eye_ball:
            parts.append(np.asarray(v["eye_ball"], np.float32).reshape(-1, 6)[f:f + seq])
        if fl.use_sc:
            sc = np.asarray(v["sc"], np.float32)[int(rng.integers(n))]
            parts.append(np.repeat(sc[None], seq, 0))
        cond = np.concatenate(parts, axis=1)
        if kp_seq.shape[0] != seq or cond.shape[0] != seq:
            raise DataError(f"clip {index} (video {vi}, start {f}) is shorter than {seq} frames; the preload's "
                            "idx_map does not fit its arrays")
        return {"kp_seq": torch.from_numpy(np.ascontiguousarray(kp_seq)),
                "kp_cond": torch.from_numpy(np.ascontiguousarray(kp_cond)),
                "aud_cond": torch.from_numpy(np.ascontiguousarray(cond))}

"""Training the MotionDiT on prepared clips (docs/model.md §10).

- Adan optimiser (`adan-pytorch`): lr 1e-4, betas (0.02, 0.08, 0.01), eps 1e-8, weight decay 0.02. Adan's betas are
  written as the weight of the *new* value (m <- (1 - 0.02) m + 0.02 g, and likewise 0.08 for the gradient
  difference and 0.01 for the squared term), the paper's convention, i.e. Adam-style betas of 0.98/0.92/0.99.
- No LR schedule, EMA, gradient clipping or mixed precision (as the reference).
- HF Accelerate for several GPUs (`accelerate launch -m ditto_app.cli train ...`); a plain single process when not
  launched that way or when `accelerate` is missing.
- Each epoch writes `<experiment_dir>/<experiment_name>/ckpts/train_{epoch}.pt = {"model_state_dict": ...}` (what
  inference loads) plus `train_{epoch}.state.pt` (optimiser and counters, for resuming). Epochs that are multiples of
  `save_ckpt_freq` are kept; of the others the last 5 are kept.
- `loss.log` (one line per epoch: the averaged terms), `loss_steps.jsonl` (every step), `loss.svg` (the curves),
  `opt.json` (the options).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ditto.accel import atomic_path
from services.motion_generator.dit import MotionDecoder, MotionDiTConfig

from .dataset import ClipDataset, DatasetFlags
from .formats import DataError
from .losses import LossSettings, diffusion_loss
from .plot import write_png, write_svg

KEEP_LAST = 5
ADAN_BETAS = (0.02, 0.08, 0.01)
CKPT_RE = re.compile(r"train_(\d+)\.pt$")


@dataclass
class TrainOptions:
    data_list_json: str = ""
    data_preload: bool = False
    data_preload_pkl: str = ""
    experiment_dir: str = "./experiments"
    experiment_name: str = "ditto"
    profile: str = "full"
    use_sc: bool = False
    use_last_frame: bool = False
    use_last_frame_loss: bool = False
    use_emo: bool = False
    use_eye_open: bool = False
    use_eye_ball: bool = False
    use_reg_loss: bool = False
    audio_feat_dim: int = 1103
    motion_feat_dim: int = 265
    seq_frames: int = 80
    batch_size: int = 512
    epochs: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.02
    num_workers: int = 0
    save_ckpt_freq: int = 50
    cond_drop_prob: float = 0.2
    part_w_dict_json: str = ""
    resume: str = ""                  # a train_{epoch}.pt (continues) or any LMDM checkpoint (fine-tunes)
    max_steps: int = 0                # stop after this many optimiser steps (0 = run all epochs)
    use_accelerate: bool = True
    device: str = "auto"
    seed: int = 0

    @property
    def run_dir(self) -> Path:
        return Path(self.experiment_dir) / self.experiment_name

    def flags(self) -> DatasetFlags:
        return DatasetFlags(self.use_sc, self.use_last_frame, self.use_emo, self.use_eye_open, self.use_eye_ball,
                            self.motion_feat_dim, self.audio_feat_dim, self.seq_frames)

    def loss_settings(self) -> LossSettings:
        weights = json.loads(Path(self.part_w_dict_json).read_text()) if self.part_w_dict_json else None
        return LossSettings(self.use_last_frame_loss, self.use_reg_loss, self.cond_drop_prob, weights)

    def model_config(self) -> MotionDiTConfig:
        return replace(MotionDiTConfig.for_profile(self.profile), nfeats=self.motion_feat_dim,
                       cond_dim=self.audio_feat_dim, seq_len=self.seq_frames)


@dataclass
class TrainResult:
    run_dir: Path
    last_checkpoint: Path | None
    epochs_done: int
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)   # per epoch: mean terms and total


class _Single:
    """The few Accelerator methods we use, for a plain single process."""

    is_main_process = True
    num_processes = 1

    def __init__(self, device: str) -> None:
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))

    def prepare(self, *objs: Any) -> Any:
        return tuple(o.to(self.device) if isinstance(o, torch.nn.Module) else o for o in objs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def reduce(self, t: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return t

    def wait_for_everyone(self) -> None:
        pass


def make_accelerator(opt: TrainOptions) -> Any:
    if opt.use_accelerate:
        try:
            from accelerate import Accelerator
        except ImportError:
            return _Single(opt.device)
        return Accelerator(cpu=opt.device == "cpu")
    return _Single(opt.device)


def make_optimizer(model: torch.nn.Module, opt: TrainOptions) -> torch.optim.Optimizer:
    from adan_pytorch import Adan

    return Adan(model.parameters(), lr=opt.lr, betas=ADAN_BETAS, eps=1e-8, weight_decay=opt.weight_decay)


def make_dataset(opt: TrainOptions) -> ClipDataset:
    flags = opt.flags()
    if opt.data_preload:
        if not opt.data_preload_pkl:
            raise DataError("--data_preload needs --data_preload_pkl PATH (made by `ditto prepare --out-preload`)")
        return ClipDataset.from_preload(opt.data_preload_pkl, flags, opt.seed)
    if not opt.data_list_json:
        raise DataError("give --data_list_json PATH, or --data_preload --data_preload_pkl PATH")
    return ClipDataset.from_data_list(opt.data_list_json, flags, opt.seed)


def checkpoint_epoch(path: str | Path) -> int | None:
    m = CKPT_RE.search(Path(path).name)
    return int(m.group(1)) if m else None


def prune_checkpoints(ckpt_dir: Path, save_ckpt_freq: int, keep_last: int = KEEP_LAST) -> None:
    """Keep milestone epochs (multiples of save_ckpt_freq) and the newest `keep_last` others."""
    found = sorted((e, p) for p in ckpt_dir.glob("train_*.pt") if (e := checkpoint_epoch(p)) is not None)
    others = [(e, p) for e, p in found if save_ckpt_freq <= 0 or e % save_ckpt_freq != 0]
    for _, p in others[:-keep_last] if keep_last else others:
        p.unlink(missing_ok=True)
        p.with_name(p.stem + ".state.pt").unlink(missing_ok=True)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: ClipDataset, settings: LossSettings, batch: int = 16,
             seed: int = 1234) -> float:
    """Loss on a fixed batch with fixed timesteps, noise and dropout: comparable across training steps."""
    was = model.training
    model.eval()
    n = min(batch, len(dataset))
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    items = [dataset[i] for i in idx]
    dev = next(model.parameters()).device
    b = {k: torch.stack([it[k] for it in items]).to(dev) for k in items[0]}
    gen = torch.Generator(device=dev).manual_seed(seed)
    loss, _ = diffusion_loss(model, b["kp_seq"], b["kp_cond"], b["aud_cond"], settings, gen)
    model.train(was)
    return float(loss)


def train(opt: TrainOptions, progress: bool = True) -> TrainResult:
    from tqdm import tqdm

    torch.manual_seed(opt.seed)
    acc = make_accelerator(opt)
    dataset = make_dataset(opt)
    settings = opt.loss_settings()
    model = MotionDecoder(opt.model_config())
    run_dir, ckpt_dir = opt.run_dir, opt.run_dir / "ckpts"
    start_epoch, step = 0, 0
    optimizer = make_optimizer(model, opt)
    if opt.resume:
        start_epoch, step = _resume(opt.resume, model, optimizer)
    loader = DataLoader(dataset, batch_size=opt.batch_size, shuffle=True, num_workers=opt.num_workers,
                        drop_last=False, generator=torch.Generator().manual_seed(opt.seed + start_epoch))
    model, optimizer, loader = acc.prepare(model, optimizer, loader)
    if acc.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "opt.json").write_text(json.dumps(asdict(opt), indent=2))
    history = _read_history(run_dir / "loss.log") if opt.resume else []
    last: Path | None = None
    model.train()
    epoch = start_epoch
    for epoch in range(start_epoch + 1, opt.epochs + 1):
        dataset.set_epoch(epoch)
        sums: dict[str, float] = {}
        batches = 0
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not (progress and acc.is_main_process))
        for batch in bar:
            loss, terms = diffusion_loss(model, batch["kp_seq"], batch["kp_cond"], batch["aud_cond"], settings)
            optimizer.zero_grad(set_to_none=True)
            acc.backward(loss)
            optimizer.step()
            step += 1
            total = float(acc.reduce(loss.detach(), "mean"))
            if not math.isfinite(total):
                raise FloatingPointError(f"loss became {total} at step {step}; lower --lr or check the data")
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["total"] = sums.get("total", 0.0) + total
            batches += 1
            bar.set_postfix(loss=f"{total:.4f}")
            if acc.is_main_process:
                with open(run_dir / "loss_steps.jsonl", "a") as f:
                    f.write(json.dumps({"epoch": epoch, "step": step, "loss": total}) + "\n")
            if opt.max_steps and step >= opt.max_steps:
                break
        row = {"epoch": float(epoch), "steps": float(step), "seconds": time.perf_counter() - t0,
               **{k: v / max(batches, 1) for k, v in sums.items()}}
        history.append(row)
        acc.wait_for_everyone()
        if acc.is_main_process:
            last = _save(acc.unwrap_model(model), optimizer, ckpt_dir, epoch, step)
            prune_checkpoints(ckpt_dir, opt.save_ckpt_freq)
            _log_epoch(run_dir, row)
            _plot(run_dir, history)
        if opt.max_steps and step >= opt.max_steps:
            break
    return TrainResult(run_dir, last, epoch, step, history)


def _save(model: torch.nn.Module, optimizer: Any, ckpt_dir: Path, epoch: int, step: int) -> Path:
    path = ckpt_dir / f"train_{epoch}.pt"
    with atomic_path(path) as tmp:
        torch.save({"model_state_dict": model.state_dict()}, tmp)
    with atomic_path(ckpt_dir / f"train_{epoch}.state.pt") as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "epoch": epoch, "step": step}, tmp)
    return path


def _resume(path: str, model: MotionDecoder, optimizer: Any) -> tuple[int, int]:
    """Load weights (strictly); with the matching .state.pt also the optimiser and counters."""
    from ditto.weights import Checkpoint, load_weights

    load_weights(model, Checkpoint(Path(path), "model_state_dict"))
    model.train()
    state_path = Path(path).with_name(Path(path).stem + ".state.pt")
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        return int(state["epoch"]), int(state["step"])
    return checkpoint_epoch(path) or 0, 0          # fine-tuning from a bare checkpoint: fresh optimiser


def _log_epoch(run_dir: Path, row: dict[str, float]) -> None:
    terms = " ".join(f"{k}={v:.6g}" for k, v in row.items() if k not in ("epoch", "steps", "seconds"))
    with open(run_dir / "loss.log", "a") as f:
        f.write(f"epoch {int(row['epoch'])} step {int(row['steps'])} time {row['seconds']:.1f}s {terms}\n")


def _read_history(path: Path) -> list[dict[str, float]]:
    rows: list[dict[str, float]] = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[0] != "epoch":
            continue
        row = {"epoch": float(parts[1]), "steps": float(parts[3])}
        row.update({k: float(v) for k, v in (p.split("=", 1) for p in parts[6:] if "=" in p)})
        rows.append(row)
    return rows


def _plot(run_dir: Path, history: list[dict[str, float]]) -> None:
    steps: list[tuple[float, float]] = []
    path = run_dir / "loss_steps.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            steps.append((float(r["step"]), float(r["loss"])))
    series: dict[str, list[tuple[float, float]]] = {"total (step)": steps}
    for kind, label in (("P_", "position"), ("V_", "velocity"), ("A_", "acceleration"), ("L_", "last frame")):
        pts = [(h["steps"], sum(v for k, v in h.items() if k.startswith(kind))) for h in history]
        if any(v for _, v in pts):
            series[f"{label} (epoch)"] = pts
    write_svg(run_dir / "loss.svg", series)
    write_png(run_dir / "loss.png", series)

"""`ditto train`: train the MotionDiT on prepared clips, with the reference's options; or export a checkpoint.

    ditto train --use_sc --use_last_frame --use_last_frame_loss --use_emo --use_eye_open --use_eye_ball \\
        --audio_feat_dim 1103 --motion_feat_dim 265 --batch_size 1024 --epochs 500 --save_ckpt_freq 1 \\
        --data_preload --data_preload_pkl data/data_preload.pkl --experiment_dir runs --experiment_name mine
    accelerate launch -m ditto_app.cli train ...            # several GPUs (HF Accelerate)
    ditto train --export runs/mine/ckpts/train_500.pt --onnx lmdm.onnx [--tensorrt lmdm.engine]

A checkpoint `ckpts/train_{epoch}.pt` is what `--weights`-style loading of the motion stage reads
(`services.motion_generator.models.load_motion_decoder`), e.g. as `ditto_pytorch/models/lmdm_v0.4_hubert.pth` of a
copied weights folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train the motion model (or export a checkpoint)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data_list_json", default="", help="data_list.json from `ditto prepare`")
    d.add_argument("--data_preload", action="store_true", help="read the preload pickle instead of the npy files")
    d.add_argument("--data_preload_pkl", default="", help="preload pickle from `ditto prepare --out-preload`")
    c = p.add_argument_group("conditions and losses (the reference's flags)")
    for flag, what in (("use_sc", "source canonical keypoints (63) in the condition"),
                       ("use_last_frame", "the frame before the clip as the conditioning frame"),
                       ("use_last_frame_loss", "continuity loss between that frame and the first prediction"),
                       ("use_emo", "emotion probabilities (8) in the condition"),
                       ("use_eye_open", "eye openness (2) in the condition"),
                       ("use_eye_ball", "eye-ball position (6) in the condition"),
                       ("use_reg_loss", "1e-4 x mean |x0| regulariser")):
        c.add_argument(f"--{flag}", action="store_true", help=what)
    c.add_argument("--audio_feat_dim", type=int, default=1103, help="condition width (default: %(default)s)")
    c.add_argument("--motion_feat_dim", type=int, default=265, help="motion width (default: %(default)s)")
    c.add_argument("--part_w_dict_json", default="", help="JSON {part: weight} for scale/pitch/yaw/roll/t/exp")
    t = p.add_argument_group("optimisation")
    t.add_argument("--batch_size", type=int, default=512)
    t.add_argument("--epochs", type=int, default=1000)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--num_workers", type=int, default=0, help="data loader processes")
    t.add_argument("--save_ckpt_freq", type=int, default=50, help="epochs whose checkpoint is kept for good")
    t.add_argument("--max_steps", type=int, default=0, help="stop after this many steps (0: all epochs)")
    t.add_argument("--resume", default="", help="checkpoint to continue from (train_N.pt) or to fine-tune")
    t.add_argument("--no_accelerate", action="store_true", help="plain single process, without HF Accelerate")
    t.add_argument("--seed", type=int, default=0)
    o = p.add_argument_group("output")
    o.add_argument("--experiment_dir", default="./experiments")
    o.add_argument("--experiment_name", default="ditto")
    o.add_argument("--no_progress", action="store_true")
    e = p.add_argument_group("export (instead of training)")
    e.add_argument("--export", type=Path, metavar="CKPT", help="checkpoint to export")
    e.add_argument("--onnx", type=Path, help="output ONNX file of the one-step graph")
    e.add_argument("--tensorrt", type=Path, help="also build a TensorRT fp32 engine (needs a GPU and TensorRT)")
    p.add_argument("--profile", choices=("full", "tiny"), default="full",
                   help="network widths: 'full' = the official architecture, 'tiny' = narrow, for tests")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.export is not None:
        return _export(args)
    from ditto_training.formats import DataError
    from ditto_training.trainer import TrainOptions, train

    opt = TrainOptions(
        data_list_json=args.data_list_json, data_preload=args.data_preload, data_preload_pkl=args.data_preload_pkl,
        experiment_dir=args.experiment_dir, experiment_name=args.experiment_name, profile=args.profile,
        use_sc=args.use_sc, use_last_frame=args.use_last_frame, use_last_frame_loss=args.use_last_frame_loss,
        use_emo=args.use_emo, use_eye_open=args.use_eye_open, use_eye_ball=args.use_eye_ball,
        use_reg_loss=args.use_reg_loss, audio_feat_dim=args.audio_feat_dim, motion_feat_dim=args.motion_feat_dim,
        batch_size=args.batch_size, epochs=args.epochs, lr=args.lr, num_workers=args.num_workers,
        save_ckpt_freq=args.save_ckpt_freq, part_w_dict_json=args.part_w_dict_json, resume=args.resume,
        max_steps=args.max_steps, use_accelerate=not args.no_accelerate, device=args.device, seed=args.seed)
    try:
        result = train(opt, progress=not args.no_progress)
    except DataError as err:
        print(f"error: {err}")
        return 2
    if result.history:
        h = result.history[-1]
        print(f"epoch {result.epochs_done}, step {result.steps}: loss {h.get('total', float('nan')):.5f}")
    print(f"checkpoint: {result.last_checkpoint}")
    print(f"logs: {result.run_dir / 'loss.log'}, plot: {result.run_dir / 'loss.svg'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ditto.weights import CheckpointError
    from ditto_training.export import build_tensorrt, export_checkpoint

    if args.onnx is None:
        print("error: --export needs --onnx OUT.onnx")
        return 2
    try:
        path, err = export_checkpoint(args.export, args.onnx, args.profile)
    except CheckpointError as e:
        print(f"error: {e}")
        return 2
    print(f"wrote {path} (ONNX Runtime vs PyTorch: max |diff| {err:.2e})")
    if args.tensorrt is not None:
        try:
            print(f"wrote {build_tensorrt(path, args.tensorrt)}")
        except RuntimeError as e:
            print(f"error: {e}")
            return 1
    return 0

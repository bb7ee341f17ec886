"""`ditto render`: one portrait + one audio file -> an MP4, in one process, with the service's own code."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ditto_app.cli import add_model_args

EMOTIONS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise", "contempt"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render a talking-head video from a portrait and an audio file")
    p.add_argument("--avatar", required=True, type=Path, help="portrait image or short video")
    p.add_argument("--audio", required=True, type=Path, help="speech: wav, mp3, m4a, ogg or webm")
    p.add_argument("--out", required=True, type=Path,
                   help="output .mp4 (H.264 + AAC); with --background transparent a .webm (VP9 with alpha + Opus)")
    p.add_argument("--background", choices=("original", "transparent", "green"), default="original",
                   help="original: the portrait's own; transparent: the person cut out along the avatar's matte "
                        "(WebM with alpha); green: the person on pure green, for chroma keying (default: %(default)s)")
    add_model_args(p)
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime", "tensorrt"))
    g = p.add_argument_group("motion controls")
    g.add_argument("--emotion", default="neutral",
                   help=f"a label ({', '.join(EMOTIONS)}) or a mix 'happy+surprise'")
    g.add_argument("--steps", type=int, default=10, help="DDIM steps (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--pitch", type=float, default=None, help="head pitch offset in degrees")
    g.add_argument("--yaw", type=float, default=None, help="head yaw offset in degrees")
    g.add_argument("--roll", type=float, default=None, help="head roll offset in degrees")
    g.add_argument("--pose-gain", type=float, default=None, help="gain on all head angles (1 = as generated)")
    g.add_argument("--no-gaze-fix", action="store_true", help="let the eyes follow the head instead of the camera")
    g.add_argument("--blink-interval", type=float, default=None, help="seconds between blinks (0 = none)")
    g.add_argument("--crop", default=None, help="face box x0,y0,x1,y1 in source pixels (replaces detection)")
    g.add_argument("--crop-scale", type=float, default=None, help="crop scale around the face (default 2.3)")
    p.set_defaults(handler=_run)


def _controls(args: argparse.Namespace):
    from ditto_client.v1 import common_pb2

    c = common_pb2.MotionControls()
    if args.pitch is not None:
        c.delta_pitch = args.pitch
    if args.yaw is not None:
        c.delta_yaw = args.yaw
    if args.roll is not None:
        c.delta_roll = args.roll
    if args.pose_gain is not None:
        c.alpha_pitch = c.alpha_yaw = c.alpha_roll = args.pose_gain
    if args.no_gaze_fix:
        c.gaze_fix = False
    if args.blink_interval is not None:
        c.blink_interval_s = args.blink_interval
    return c


def _crop(args: argparse.Namespace):
    from ditto_client.v1 import common_pb2

    crop = common_pb2.CropOptions()
    if args.crop:
        try:
            x0, y0, x1, y1 = (float(v) for v in args.crop.split(","))
        except ValueError:
            raise SystemExit("--crop takes four numbers: x0,y0,x1,y1") from None
        crop.box.CopyFrom(common_pb2.CropBox(x0=x0, y0=y0, x1=x1, y1=y1))
    if args.crop_scale is not None:
        crop.scale = args.crop_scale
    return crop


async def render(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ditto import telemetry
    from ditto.config import TelemetrySettings, load_settings
    from ditto.pipeline import FPS
    from ditto_app.stack import EmbeddedStack
    from ditto_app.synthetic import BANNER, is_synthetic, profile_of, resolve_weights
    from ditto_client import emotion_control
    from ditto_client.v1 import avatar_pb2, common_pb2, renderer_pb2
    from services.orchestrator.config import OrchestratorSettings
    from services.orchestrator.errors import ApiError
    from services.orchestrator.render_job import run_render
    from services.orchestrator.tenants import Tenant

    for path in (args.avatar, args.audio):
        if not path.is_file():
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
    if args.background == "transparent" and args.out.suffix.lower() != ".webm":
        print(f"error: a transparent background needs a .webm output (VP9 keeps the alpha; MP4's H.264 cannot), "
              f"not {args.out.name}", file=sys.stderr)
        return 2
    telemetry.setup(TelemetrySettings.model_validate({"log_level": "warning"}), "ditto-render")
    settings = load_settings(OrchestratorSettings)
    assert isinstance(settings, OrchestratorSettings)
    weights = resolve_weights(args.weights, args.profile, settings.model.cache_dir)
    synthetic = is_synthetic(weights)
    if synthetic:
        print(BANNER, file=sys.stderr)
    stack = EmbeddedStack(weights, profile_of(weights, args.profile), settings, args.device, args.backend)
    orch = await stack.start()
    tenant = Tenant("local")
    try:
        try:
            info = await orch.avatars.register(tenant, renderer_pb2.RegisterSourceRequest(
                media=args.avatar.read_bytes(), filename=args.avatar.name, crop=_crop(args)))
        except Exception as err:
            print(f"error: cannot use {args.avatar} as a portrait: {err}", file=sys.stderr)
            return 1
        for warning in info.face.warnings:
            print(f"note: {warning}", file=sys.stderr)
        emotion = emotion_control(args.emotion.split("+"))
        background = {"original": common_pb2.BACKGROUND_ORIGINAL, "transparent": common_pb2.BACKGROUND_TRANSPARENT,
                      "green": common_pb2.BACKGROUND_GREEN}[args.background]
        request = avatar_pb2.RenderRequest(avatar_id=info.avatar_id, audio=args.audio.read_bytes(),
                                           audio_filename=args.audio.name, emotion=emotion,
                                           controls=_controls(args), sampling_steps=args.steps, seed=args.seed,
                                           background=background)
        bar = tqdm(total=0, unit="frame", desc="rendering", dynamic_ncols=True)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        args.out.parent.mkdir(parents=True, exist_ok=True)
        try:
            frames = await run_render(orch, tenant, request, args.out, progress)
        except ApiError as err:
            bar.close()
            print(f"error: {err}", file=sys.stderr)
            return 1
        bar.close()
        print(f"wrote {args.out} ({frames} frames, {frames / FPS:.2f} s, {info.width}x{info.height})")
        if synthetic:
            print(BANNER, file=sys.stderr)
        return 0
    finally:
        await stack.stop()


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(render(args))

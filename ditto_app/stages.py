"""Build a stage (its bus handler and its gRPC services) from a weights folder. Used by `ditto worker` (one stage
per process, distributed) and by the embedded stack (all stages in one process)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ditto import pipeline, rpc
from ditto.bus import Bus
from ditto.config import DecodeSettings, MediaSettings
from ditto.stage_runtime import SessionStageHandler
from ditto.weights import OFFICIAL_FILES


@dataclass
class BuiltStage:
    name: str
    handler: SessionStageHandler[Any, Any, Any]  # the bus handler; its batcher is the one the gRPC services use too
    services: list[rpc.Service] = field(default_factory=list)

    @property
    def session_stage(self) -> Any:
        return self.handler.session_stage

    async def close(self) -> None:
        await self.handler.batcher.close()


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class StageContext:
    """What a stage factory builds a stage from, besides its networks."""

    weights_dir: Path
    device: str             # resolved: "cpu", "cuda" or "cuda:N"
    bus: Bus
    cache_dir: Path | None  # the whole cache folder (avatars and every stage's engines live under it)
    media: MediaSettings
    decode: DecodeSettings | None


@dataclass(frozen=True)
class StageFactory:
    """How `ditto_app` makes one stage of `ditto.pipeline`: `load(weights_dir, profile, device, backend, cache)`
    gives its networks (`cache`: its own folder for ONNX exports and TensorRT engines; `ditto weights build-engines`
    calls only this), `build(models, context)` the stage around them."""

    load: Callable[[Path, str, str, str, Path | None], Any]
    build: Callable[[Any, StageContext], BuiltStage]


# ---- the three stages ----

def _load_audio(weights_dir: Path, profile: str, device: str, backend: str, cache: Path | None) -> Any:
    from services.audio_encoder.hubert import open_onnx_backend

    return open_onnx_backend(weights_dir / OFFICIAL_FILES["hubert"].path, backend, device, cache_dir=cache)


def _build_audio(models: Any, ctx: StageContext) -> BuiltStage:
    from services.audio_encoder import server as audio_server
    from services.audio_encoder.session_stage import AudioEncoderStage

    audio = AudioEncoderStage(models)
    handler = SessionStageHandler(audio)
    return BuiltStage(audio.name, handler, [audio_server.service(audio, handler.batcher)])


def _load_motion(weights_dir: Path, profile: str, device: str, backend: str, cache: Path | None) -> Any:
    from services.motion_generator.backends import open_stage_backend

    return open_stage_backend(weights_dir / OFFICIAL_FILES["lmdm"].path, profile, device, backend, cache)


def _build_motion(models: Any, ctx: StageContext) -> BuiltStage:
    from ditto_app.synthetic import is_synthetic
    from services.motion_generator import server as motion_server
    from services.motion_generator.generator import MotionGenerator
    from services.motion_generator.session_stage import MotionStage, synthetic_motion_range

    generator = MotionGenerator(models)
    clamp = synthetic_motion_range() if is_synthetic(ctx.weights_dir) else None
    motion = MotionStage(generator, clamp)
    handler = SessionStageHandler(motion)
    return BuiltStage(motion.name, handler, [motion_server.service(motion, handler.batcher)])


def _load_renderer(weights_dir: Path, profile: str, device: str, backend: str, cache: Path | None) -> Any:
    from services.renderer.models import RendererModels

    return RendererModels.load(weights_dir, profile=profile, device=device, backend=backend, cache_dir=cache)


def _build_renderer(models: Any, ctx: StageContext) -> BuiltStage:
    from ditto.media.pool import shared_pool
    from ditto.media.visual import MediaLimits
    from services.renderer import server as renderer_server
    from services.renderer.avatar.sessions import AuxModels
    from services.renderer.core import RendererCore
    from services.renderer.session_stage import RendererStage

    m = ctx.media
    aux = AuxModels.open(m.face_models, ctx.weights_dir, ctx.device, m.face_models_dir)
    core = RendererCore(
        models, aux, ctx.cache_dir / "avatars" if ctx.cache_dir else None,
        limits=MediaLimits(m.max_image_pixels, m.max_video_frames, m.max_video_s),
        max_concurrent_registrations=m.max_concurrent_registrations, cache_ttl_s=m.avatar_cache_ttl_s,
        max_avatar_bytes=m.max_avatar_memory_mb * 1024 * 1024,
        decoder=shared_pool(ctx.decode))  # client media is decoded in helper processes, never in the worker
    renderer = RendererStage(core, ctx.bus)
    handler = SessionStageHandler(renderer)
    return BuiltStage(renderer.name, handler, [renderer_server.service(core, handler.batcher)])


# The stage factories, one line a stage, by the stage's name in `ditto.pipeline.PIPELINE` (a test checks that every
# stage of the pipeline has one).
FACTORIES: dict[str, StageFactory] = {
    "audio_encoder": StageFactory(_load_audio, _build_audio),
    "motion_generator": StageFactory(_load_motion, _build_motion),
    "renderer": StageFactory(_load_renderer, _build_renderer),
}


def factory(name: str) -> StageFactory:
    stages = pipeline.active().names
    if name not in stages:
        raise ValueError(f"unknown stage {name!r}; one of {', '.join(stages)}")
    if name not in FACTORIES:
        raise ValueError(f"stage {name!r} is in the pipeline but has no factory: add it to ditto_app.stages.FACTORIES")
    return FACTORIES[name]


def load_models(name: str, weights_dir: Path, profile: str, device: str, backend: str = "auto",
                cache_dir: Path | None = None) -> Any:
    """A stage's networks loaded from the weights folder, on its backend (`ditto.loading`, one pass per stage).

    ONNX exports and TensorRT engines live in `cache_dir/<the stage's cache folder>` (`ditto.pipeline.StageSpec`;
    the weights folder may be read-only), where `ditto weights build-engines` puts them."""
    make = factory(name)
    cache = cache_dir / pipeline.active().spec(name).cache_folder if cache_dir is not None else None
    return make.load(weights_dir, profile, device, backend, cache)


def build_stage(name: str, weights_dir: Path, profile: str, bus: Bus, device: str = "auto",
                backend: str = "auto", cache_dir: Path | None = None, media: MediaSettings | None = None,
                decode: DecodeSettings | None = None) -> BuiltStage:
    device = _device(device)
    models = load_models(name, weights_dir, profile, device, backend, cache_dir)
    context = StageContext(weights_dir, device, bus, cache_dir, media or MediaSettings(), decode)
    return factory(name).build(models, context)

"""Build a stage (its bus handler and its gRPC services) from a weights folder. Used by `ditto worker` (one stage
per process, distributed) and by the embedded stack (all stages in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ditto import rpc
from ditto.bus import Bus
from ditto.config import DecodeSettings, MediaSettings
from ditto.stage_runtime import SessionStageHandler
from ditto.weights import OFFICIAL_FILES

STAGES = ("audio_encoder", "motion_generator", "renderer")
# where each stage keeps its ONNX exports and TensorRT engines inside the cache folder
CACHE_FOLDERS = {"audio_encoder": "audio", "motion_generator": "motion", "renderer": "renderer"}


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


def load_models(name: str, weights_dir: Path, profile: str, device: str, backend: str = "auto",
                cache_dir: Path | None = None) -> Any:
    """A stage's networks loaded from the weights folder, on its backend (`ditto.loading`, one pass per stage).

    ONNX exports and TensorRT engines live in `cache_dir/<audio|motion|renderer>` (the weights folder may be
    read-only), where `ditto weights build-engines` puts them."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; one of {', '.join(STAGES)}")
    cache = cache_dir / CACHE_FOLDERS[name] if cache_dir is not None else None
    if name == "audio_encoder":
        from services.audio_encoder.hubert import open_onnx_backend

        return open_onnx_backend(weights_dir / OFFICIAL_FILES["hubert"].path, backend, device, cache_dir=cache)
    if name == "motion_generator":
        from services.motion_generator.backends import open_stage_backend

        return open_stage_backend(weights_dir / OFFICIAL_FILES["lmdm"].path, profile, device, backend, cache)
    from services.renderer.models import RendererModels

    return RendererModels.load(weights_dir, profile=profile, device=device, backend=backend, cache_dir=cache)


def build_stage(name: str, weights_dir: Path, profile: str, bus: Bus, device: str = "auto",
                backend: str = "auto", cache_dir: Path | None = None, media: MediaSettings | None = None,
                decode: DecodeSettings | None = None) -> BuiltStage:
    device = _device(device)
    models = load_models(name, weights_dir, profile, device, backend, cache_dir)
    if name == "audio_encoder":
        from services.audio_encoder import server as audio_server
        from services.audio_encoder.session_stage import AudioEncoderStage

        audio = AudioEncoderStage(models)
        audio_handler = SessionStageHandler(audio)
        return BuiltStage(name, audio_handler, [audio_server.service(audio, audio_handler.batcher)])
    if name == "motion_generator":
        from ditto_app.synthetic import is_synthetic
        from services.motion_generator import server as motion_server
        from services.motion_generator.generator import MotionGenerator
        from services.motion_generator.session_stage import MotionStage, synthetic_motion_range

        generator = MotionGenerator(models)
        clamp = synthetic_motion_range() if is_synthetic(weights_dir) else None
        motion_stage = MotionStage(generator, clamp)
        motion_handler = SessionStageHandler(motion_stage)
        return BuiltStage(name, motion_handler, [motion_server.service(motion_stage, motion_handler.batcher)])
    if name == "renderer":
        from ditto.media.pool import shared_pool
        from ditto.media.visual import MediaLimits
        from services.renderer import server as renderer_server
        from services.renderer.avatar.sessions import AuxModels
        from services.renderer.core import RendererCore
        from services.renderer.session_stage import RendererStage

        m = media or MediaSettings()
        aux = AuxModels.open(m.face_models, weights_dir, device, m.face_models_dir)
        core = RendererCore(
            models, aux, cache_dir / "avatars" if cache_dir else None,
            limits=MediaLimits(m.max_image_pixels, m.max_video_frames, m.max_video_s),
            max_concurrent_registrations=m.max_concurrent_registrations, cache_ttl_s=m.avatar_cache_ttl_s,
            max_avatar_bytes=m.max_avatar_memory_mb * 1024 * 1024,
            decoder=shared_pool(decode))  # client media is decoded in helper processes, never in the worker
        render_handler = SessionStageHandler(RendererStage(core, bus))
        return BuiltStage(name, render_handler, [renderer_server.service(core, render_handler.batcher)])
    raise ValueError(f"unknown stage {name!r}; one of {', '.join(STAGES)}")

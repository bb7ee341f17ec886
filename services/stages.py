"""Build a stage (its bus handler and its gRPC services) from a weights folder. Used by `ditto worker` (one stage
per process, distributed) and by the embedded stack (all stages in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ditto import rpc
from ditto.bus import Bus
from ditto.config import MediaSettings
from ditto.weights import OFFICIAL_FILES

STAGES = ("audio_encoder", "motion_generator", "renderer")


@dataclass
class BuiltStage:
    name: str
    handler: Any
    services: list[rpc.Service] = field(default_factory=list)


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_stage(name: str, weights_dir: Path, profile: str, bus: Bus, device: str = "auto",
                backend: str = "auto", cache_dir: Path | None = None, media: MediaSettings | None = None
                ) -> BuiltStage:
    device = _device(device)
    if name == "audio_encoder":
        from ditto_client.v1 import audio_encoder_pb2, audio_encoder_pb2_grpc

        from services.audio_encoder.hubert import open_onnx_backend
        from services.audio_encoder.server import AudioEncoderServicer, WindowBatcher
        from services.audio_encoder.worker import AudioStage

        onnx_path = weights_dir / OFFICIAL_FILES["hubert"].path
        if backend == "tensorrt":
            from services.audio_encoder.hubert import TensorRTHubert

            # engines live in the cache volume (the weights folder may be read-only), where build-engines puts them
            hubert: Any = TensorRTHubert(onnx_path, device, cache_dir=(cache_dir / "audio") if cache_dir else None)
        else:
            hubert = open_onnx_backend(onnx_path, "onnxruntime" if backend == "onnxruntime" else "auto", device)
        svc = rpc.Service(audio_encoder_pb2_grpc.add_AudioEncoderServicer_to_server,
                          AudioEncoderServicer(WindowBatcher(hubert)),
                          rpc.service_name(audio_encoder_pb2, "AudioEncoder"))
        return BuiltStage(name, AudioStage(hubert), [svc])
    if name == "motion_generator":
        from services.motion_generator.backends import open_stage_backend
        from services.motion_generator.generator import MotionGenerator
        from services.motion_generator.worker import MotionStage

        # torch for 'auto'; ONNX Runtime and TensorRT run our own ONNX export, cached with the engines in cache_dir
        motion = open_stage_backend(weights_dir / OFFICIAL_FILES["lmdm"].path, profile, device, backend,
                                    cache_dir / "motion" if cache_dir else None)
        generator = MotionGenerator(motion)
        from ditto_client.v1 import motion_generator_pb2, motion_generator_pb2_grpc

        from services.motion_generator.server import MotionGeneratorService, SessionBatcher

        services = [rpc.Service(motion_generator_pb2_grpc.add_MotionGeneratorServicer_to_server,
                                MotionGeneratorService(generator, SessionBatcher(generator)),
                                rpc.service_name(motion_generator_pb2, "MotionGenerator"))]
        from ditto.synthetic import is_synthetic
        from services.motion_generator.worker import synthetic_motion_range

        clamp = synthetic_motion_range() if is_synthetic(weights_dir) else None
        return BuiltStage(name, MotionStage(generator, clamp), services)
    if name == "renderer":
        from ditto_client.v1 import renderer_pb2, renderer_pb2_grpc

        from services.renderer.avatar.register import MediaLimits
        from services.renderer.avatar.sessions import AuxModels
        from services.renderer.models import RendererModels
        from services.renderer.server import RendererCore, RendererServicer
        from services.renderer.worker import RendererStage

        rbackend: Any = backend if backend in ("torch", "onnxruntime", "tensorrt") else "torch"
        models = RendererModels.load(weights_dir, profile=profile, device=device, backend=rbackend,
                                     cache_dir=cache_dir / "renderer" if cache_dir else None)
        aux = AuxModels.load(weights_dir, device)
        m = media or MediaSettings()
        core = RendererCore(models, aux, cache_dir / "avatars" if cache_dir else None,
                            limits=MediaLimits(m.max_image_pixels, m.max_video_frames, m.max_video_s),
                            max_concurrent_registrations=m.max_concurrent_registrations,
                            cache_ttl_s=m.avatar_cache_ttl_s)
        svc = rpc.Service(renderer_pb2_grpc.add_RendererServicer_to_server, RendererServicer(core),
                          rpc.service_name(renderer_pb2, "Renderer"))
        return BuiltStage(name, RendererStage(core, bus), [svc])
    raise ValueError(f"unknown stage {name!r}; one of {', '.join(STAGES)}")

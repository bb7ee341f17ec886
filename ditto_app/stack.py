"""The embedded stack: a worker for each stage of `ditto.pipeline` and the orchestrator in one process over the
in-memory bus.

`ditto render` and `ditto serve` use it. It runs exactly the code the distributed deployment runs (the same stage
handlers, the same slot-worker runtime, the same orchestrator), so it gives the same frames.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from ditto import pipeline
from ditto.bus import Bus, MemoryBus
from ditto.bus.worker import SlotWorker, WorkerSettings
from ditto_app.stages import BuiltStage, build_stage
from ditto_client.v1 import renderer_pb2
from services.orchestrator.avatars import Registrar
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.errors import ApiError
from services.orchestrator.service import Orchestrator
from services.orchestrator.tenants import TenantDirectory


class LocalRegistrar(Registrar):
    """Registration by the in-process renderer."""

    def __init__(self, core) -> None:
        self.core = core

    async def register(self, request: renderer_pb2.RegisterSourceRequest) -> renderer_pb2.RegisterSourceResponse:
        import grpc

        from services.renderer.server import registration_response

        try:
            return await asyncio.to_thread(registration_response, self.core, request)
        except ValueError as err:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from err

    async def forget(self, avatar_id: str) -> int:
        return int(await asyncio.to_thread(self.core.forget, avatar_id))


@dataclass
class EmbeddedStack:
    weights: Path
    profile: str
    settings: OrchestratorSettings
    device: str = "auto"
    backend: str = "auto"
    tenants: TenantDirectory | None = None
    bus: Bus = field(default_factory=MemoryBus)
    stages: dict[str, BuiltStage] = field(default_factory=dict)
    workers: list[SlotWorker] = field(default_factory=list)
    orch: Orchestrator | None = None
    _tasks: list[asyncio.Task] = field(default_factory=list)

    async def start(self) -> Orchestrator:
        slots = self.settings.bus.slots
        for name in pipeline.active().names:
            self.stages[name] = await asyncio.to_thread(build_stage, name, self.weights, self.profile, self.bus,
                                                        self.device, self.backend, self.settings.model.cache_dir,
                                                        self.settings.media, self.settings.decode)
            worker = SlotWorker(self.bus, self.stages[name].handler, f"embedded-{name}",
                                WorkerSettings.from_bus(self.settings.bus, slots=slots, block_ms=20))
            self.workers.append(worker)
            self._tasks.append(asyncio.create_task(worker.run()))
        registrar = LocalRegistrar(self.stages["renderer"].session_stage.core)
        self.orch = Orchestrator(self.settings, self.bus, registrar, self.tenants)
        await self.orch.start()
        # wait until every stage holds its slots, so the first session is admitted
        for _ in range(200):
            if all(w.held for w in self.workers):
                break
            await asyncio.sleep(0.01)
        return self.orch

    async def stop(self) -> None:
        if self.orch:
            await self.orch.stop()
        for w in self.workers:
            await w.stop()
        for t in self._tasks:
            t.cancel()
        for built in self.stages.values():
            await built.close()
        await self.bus.close()

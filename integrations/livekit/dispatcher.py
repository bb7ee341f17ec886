"""`ditto livekit-worker`: a small HTTP service that starts one avatar worker per agent session.

    POST /v1/sessions  {"room_name", "livekit_url"?, "token"?, "avatar_id"?, "agent_identity"?,
                        "avatar_identity"?, "sample_rate"?}   -> 202 {"worker_id", "avatar_identity"}
    GET  /healthz                                             -> 200 {"workers": n, "max_workers": m}

Limits, with what a caller gets: a body over `max_request_bytes` -> 413; not JSON or a missing/invalid field -> 400;
a wrong or missing bearer token when `dispatch_secret` is set -> 401; `max_workers` rooms already served -> 429 with
Retry-After. A worker that fails (room unreachable, Ditto down) ends alone and frees its place; the service goes on.
"""

from __future__ import annotations

import asyncio
import hmac
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ditto import telemetry
from integrations.core import BridgeOptions
from integrations.livekit.settings import LiveKitWorkerSettings

log = telemetry.get_logger("ditto.integrations.livekit")

Launch = Callable[..., Awaitable[None]]
_STR_FIELDS = ("room_name", "livekit_url", "token", "avatar_id", "agent_identity", "avatar_identity")


class Dispatcher:
    def __init__(self, settings: LiveKitWorkerSettings, launch: Launch | None = None) -> None:
        self.settings = settings
        if launch is None:
            from integrations.livekit.worker import run_avatar_worker

            launch = run_avatar_worker
        self._launch = launch
        self.workers: dict[str, asyncio.Task] = {}
        self.failures = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_request_bytes)
        app.router.add_post("/v1/sessions", self._start_session)
        app.router.add_get("/healthz", self._health)
        app.on_shutdown.append(self._stop_all)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"workers": len(self.workers), "max_workers": self.settings.max_workers})

    def _authorized(self, request: web.Request) -> bool:
        secret = self.settings.dispatch_secret
        if secret is None:
            return True
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), secret.get_secret_value().encode())

    async def _start_session(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "missing or wrong bearer token; send the dispatcher's DITTO_LIVEKIT_DISPATCH_SECRET")
        try:
            body = await request.json()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body over {self.settings.max_request_bytes} bytes")
        except ValueError:
            return _error(400, "the body must be a JSON object")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        for key in _STR_FIELDS:
            if key in body and not isinstance(body[key], str):
                return _error(400, f"{key} must be a string")
        s = self.settings
        room = body.get("room_name") or ""
        url = body.get("livekit_url") or s.livekit_url
        avatar_id = body.get("avatar_id") or s.default_avatar_id
        avatar_identity = body.get("avatar_identity") or "ditto-avatar"
        agent_identity = body.get("agent_identity") or None
        rate = body.get("sample_rate", s.sample_rate)
        if not room:
            return _error(400, "room_name is required")
        if not url:
            return _error(400, "no livekit_url in the request and none configured (DITTO_LIVEKIT_LIVEKIT_URL)")
        if not avatar_id:
            return _error(400, "no avatar_id in the request and no DITTO_LIVEKIT_DEFAULT_AVATAR_ID")
        if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 48000:
            return _error(400, "sample_rate must be an integer in 8000..48000")
        token = body.get("token")
        if not token:
            if not (s.livekit_api_key and s.livekit_api_secret and agent_identity):
                return _error(400, "no token: send one, or configure DITTO_LIVEKIT_LIVEKIT_API_KEY/_SECRET and send "
                                   "agent_identity so the dispatcher mints it")
            from integrations.livekit.token import mint_avatar_token

            token = mint_avatar_token(api_key=s.livekit_api_key, api_secret=s.livekit_api_secret.get_secret_value(),
                                      room_name=room, avatar_identity=avatar_identity, agent_identity=agent_identity)
        if len(self.workers) >= s.max_workers:
            return _error(429, f"{s.max_workers} rooms already served; retry later or raise "
                               "DITTO_LIVEKIT_MAX_WORKERS", headers={"Retry-After": "5"})
        options = BridgeOptions(address=s.ditto_address, avatar_id=avatar_id,
                                api_key=s.ditto_api_key.get_secret_value() if s.ditto_api_key else None)
        worker_id = uuid.uuid4().hex[:12]
        task = asyncio.create_task(self._run(worker_id, room, url, token, options, rate, agent_identity))
        self.workers[worker_id] = task
        log.info("avatar worker starting", worker=worker_id, room=room, avatar=avatar_id)
        return web.json_response({"worker_id": worker_id, "avatar_identity": avatar_identity}, status=202)

    async def _run(self, worker_id: str, room: str, url: str, token: str, options: BridgeOptions, rate: int,
                   agent_identity: str | None) -> None:
        try:
            await self._launch(url, token, options, sample_rate=rate, agent_identity=agent_identity)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.failures += 1
            log.error("avatar worker failed", worker=worker_id, room=room, error=str(err) or type(err).__name__)
        finally:
            self.workers.pop(worker_id, None)

    async def _stop_all(self, app: web.Application | None = None) -> None:
        tasks = list(self.workers.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


async def serve(settings: LiveKitWorkerSettings, stop: asyncio.Event, ready: Callable[[int], Any] | None = None,
                launch: Launch | None = None) -> Dispatcher:
    dispatcher = Dispatcher(settings, launch)
    runner = web.AppRunner(dispatcher.app())
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    port = runner.addresses[0][1]
    log.info("livekit dispatcher serving", address=f"{settings.host}:{port}", ditto=settings.ditto_address)
    if ready is not None:
        ready(port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return dispatcher

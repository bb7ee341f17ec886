"""HTTP side of the gateway: WHIP-style signalling, controls, avatar upload, the page, health.

    POST   /whip?avatar=ID[&emotion=happy&idle=alive|freeze&seed=N&steps=N]   body: SDP offer (application/sdp)
           -> 201 Created, body: SDP answer, Location: /whip/<session>
           (or application/json {"sdp": ..., "avatar": ..., ...} -> {"sdp": ..., "type": "answer", "session": ...})
    DELETE /whip/<session>             hang up (frees the service session and the tenant's quota at once)
    POST   /whip/<session>/interrupt   the avatar stops what it is saying
    POST   /whip/<session>/emotion     {"emotion": "happy"}
    GET    /whip/<session>             live figures: fps, latency, audio-video offset, state
    POST   /avatars                    body: image or short video bytes -> {"avatar_id", "width", "height", "face"}
    GET    /  (the page)   GET /config   GET /healthz   GET /readyz

The tenant's API key travels on every request as `x-api-key` (or `Authorization: Bearer`) and goes to the service
unchanged; the gateway keeps only its hash, to check that later calls on a session come from the same key.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format

from ditto import telemetry
from ditto_client import EMOTIONS, AsyncAvatarClient
from services.webrtc_gateway.config import GatewaySettings
from services.webrtc_gateway.session import (
    HTTP_OF_GRPC,
    IDLE_POLICIES,
    GatewaySession,
    OfferError,
    key_digest,
    limit_host_addresses,
)

log = telemetry.get_logger("ditto.webrtc")
STATIC = Path(__file__).resolve().parent / "static"
SETTINGS_KEY = web.AppKey("settings", GatewaySettings)
GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway")


def api_key_of(request: web.Request) -> str | None:
    key = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if not key and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    return key or None


def error(status: int, message: str, retry_after_s: float | None = None) -> web.Response:
    headers = {"Retry-After": str(max(1, round(retry_after_s)))} if retry_after_s else None
    return web.json_response({"error": message}, status=status, headers=headers)


async def read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None when it is longer than `limit` bytes (refused from Content-Length when the client
    declares it, else after reading at most limit + 1 bytes: never more)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = bytearray()
    while chunk := await request.content.read(limit + 1 - len(body)):  # read(n) returns what has arrived so far
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.sessions: dict[str, GatewaySession] = {}
        self.ended: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
        self.opening = 0
        self._watchers: set[asyncio.Task] = set()

    def _forget(self, session: GatewaySession) -> None:
        if self.sessions.pop(session.id, None) is not None:
            self.ended[session.id] = (session.key_digest, session.stats())
            while len(self.ended) > self.settings.ended_sessions_kept:
                self.ended.popitem(last=False)

    async def _watch(self, session: GatewaySession) -> None:
        await session.closed.wait()
        self._forget(session)

    def session_for(self, request: web.Request) -> GatewaySession:
        sid = request.match_info["session"]
        digest = key_digest(api_key_of(request))
        session = self.sessions.get(sid)
        owner = session.key_digest if session else self.ended.get(sid, ("", {}))[0]
        if session is None and sid not in self.ended:
            raise OfferError(404, f"no session '{sid}' on this gateway; POST an offer to /whip to start one")
        if not hmac.compare_digest(owner, digest):
            raise OfferError(403, "this session was started with another API key")
        if session is None:
            raise OfferError(409, f"session '{sid}' has ended; POST a new offer to /whip to start another")
        return session

    # ---- signalling ----
    async def offer(self, request: web.Request) -> web.Response:
        s = self.settings
        body = await read_bounded(request, s.max_offer_bytes)
        if body is None:
            return error(413, f"the offer exceeds {s.max_offer_bytes} bytes")
        ctype = request.content_type
        as_json = ctype == "application/json"
        try:
            if as_json:
                doc = json.loads(body)
                if not isinstance(doc, dict) or not isinstance(doc.get("sdp"), str):
                    raise OfferError(400, 'send {"sdp": "<offer>", "avatar": "<avatar id>", ...}')
                sdp = doc["sdp"]
                params = {k: str(v) for k, v in doc.items() if k != "sdp" and v is not None}
            elif ctype == "application/sdp":
                sdp = body.decode("utf-8", errors="replace")
                params = dict(request.query)
            else:
                return error(415, "send the offer as application/sdp (WHIP) or application/json")
            options = parse_options(params)
        except json.JSONDecodeError as err:
            return error(400, f"the JSON body does not parse: {err}")
        except OfferError as err:
            return error(err.status, str(err))
        if len(self.sessions) + self.opening >= s.max_sessions:
            return error(503, f"this gateway serves {s.max_sessions} sessions at once and is full; retry soon or "
                              "use another replica", retry_after_s=2)
        session = GatewaySession(s, api_key_of(request), options)
        self.opening += 1
        try:
            answer = await session.open(sdp)
        except OfferError as err:
            return error(err.status, str(err), err.retry_after_s)
        finally:
            self.opening -= 1
        self.sessions[session.id] = session
        watcher = asyncio.get_running_loop().create_task(self._watch(session))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        location = f"/whip/{session.id}"
        extra = {"width": session.started.width, "height": session.started.height} if session.started else {}
        if as_json:
            return web.json_response({"type": "answer", "sdp": answer, "session": session.id, "location": location,
                                      "video_codec": session.video_codec, **extra},
                                     status=201, headers={"Location": location})
        return web.Response(status=201, text=answer, content_type="application/sdp", headers={"Location": location})

    async def second_offer(self, request: web.Request) -> web.Response:
        try:
            self.session_for(request)
        except OfferError as err:
            return error(err.status, str(err))
        return error(409, "this session already has its peer connection; renegotiation is not supported: DELETE it "
                          "and POST a new offer to /whip")

    async def hang_up(self, request: web.Request) -> web.Response:
        try:
            session = self.session_for(request)
        except OfferError as err:
            if err.status == 409:  # already over: hanging up again is fine
                return web.json_response({"state": "ended"})
            return error(err.status, str(err))
        await session.close("hang-up")
        self._forget(session)
        return web.json_response(session.stats())

    async def interrupt(self, request: web.Request) -> web.Response:
        try:
            session = self.session_for(request)
            await session.interrupt()
        except OfferError as err:
            return error(err.status, str(err))
        return web.json_response({"interrupts": session.interrupts})

    async def emotion(self, request: web.Request) -> web.Response:
        try:
            session = self.session_for(request)
            doc = await request.json() if request.can_read_body else {}
            emotion = str(doc.get("emotion", "")) if isinstance(doc, dict) else ""
            if emotion not in EMOTIONS:
                raise OfferError(400, f"emotion must be one of {', '.join(EMOTIONS)}")
            await session.set_emotion(emotion)
        except OfferError as err:
            return error(err.status, str(err))
        except json.JSONDecodeError:
            return error(400, 'send {"emotion": "happy"}')
        return web.json_response({"emotion": emotion})

    async def stats(self, request: web.Request) -> web.Response:
        sid = request.match_info["session"]
        if sid in self.ended and sid not in self.sessions:
            owner, stats = self.ended[sid]
            if not hmac.compare_digest(owner, key_digest(api_key_of(request))):
                return error(403, "this session was started with another API key")
            return web.json_response(stats)
        try:
            return web.json_response(self.session_for(request).stats())
        except OfferError as err:
            return error(err.status, str(err))

    # ---- avatars, page, health ----
    async def register_avatar(self, request: web.Request) -> web.Response:
        s = self.settings
        media = await read_bounded(request, s.max_avatar_bytes)
        if media is None:
            return error(413, f"the portrait exceeds {s.max_avatar_bytes} bytes; send a smaller image")
        if not media:
            return error(400, "the body is empty; send the image (or short video) bytes")
        async with AsyncAvatarClient(s.orchestrator, api_key=api_key_of(request)) as client:
            try:
                r = await client.register_avatar(media, timeout=120)
            except grpc.aio.AioRpcError as err:
                return error(HTTP_OF_GRPC.get(err.code(), 502), f"the avatar service refused the portrait: "
                                                                 f"{err.details()}")
        # what registration found (face and crop boxes in the registered frame's pixels, models, eye openness,
        # warnings): the page draws the crop over the portrait
        face = json_format.MessageToDict(r.face, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
        return web.json_response({"avatar_id": r.avatar_id, "width": r.width, "height": r.height,
                                  "already_registered": r.already_registered, "face": face})

    async def config(self, request: web.Request) -> web.Response:
        servers = [{"urls": x.urls, **({"username": x.username, "credential": x.credential.get_secret_value()}
                                       if x.username else {})} for x in self.settings.ice_servers]
        return web.json_response({"emotions": EMOTIONS, "ice_servers": servers,
                                  "max_avatar_bytes": self.settings.max_avatar_bytes})

    async def ready(self, request: web.Request) -> web.Response:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            async with grpc.aio.insecure_channel(self.settings.orchestrator) as channel:
                r = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="ditto.v1.Avatar"), timeout=2)
            ok = r.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            ok = False
        if not ok:
            return error(503, f"the avatar service at {self.settings.orchestrator} is not serving")
        return web.json_response({"status": "ready", "sessions": len(self.sessions)})

    async def close_all(self, _app: web.Application | None = None) -> None:
        for session in list(self.sessions.values()):
            await session.close("gateway shutting down")
            self._forget(session)


def parse_options(params: dict[str, str]) -> dict[str, Any]:
    avatar = params.get("avatar") or params.get("avatar_id") or ""
    if not avatar:
        raise OfferError(400, "no avatar: add ?avatar=<avatar id> (from RegisterAvatar or POST /avatars)")
    emotion = params.get("emotion", "")
    if emotion and emotion not in EMOTIONS:
        raise OfferError(400, f"emotion must be one of {', '.join(EMOTIONS)}")
    idle = params.get("idle", "alive").lower()
    if idle not in IDLE_POLICIES:
        raise OfferError(400, "idle must be 'alive' or 'freeze'")
    out: dict[str, Any] = {"avatar_id": avatar, "emotion": emotion, "idle": idle}
    for name, hi in (("seed", 2**62), ("steps", 1000)):
        raw = params.get(name, "0")
        if not raw.isdigit() or int(raw) > hi:
            raise OfferError(400, f"{name} must be an integer from 0 to {hi}")
        out[name] = int(raw)
    return out


def build_app(settings: GatewaySettings) -> web.Application:
    gateway = Gateway(settings)
    if settings.ice_host_addresses:
        limit_host_addresses(settings.ice_host_addresses)
    app = web.Application(client_max_size=max(settings.max_offer_bytes, settings.max_avatar_bytes) + 1024)
    app[SETTINGS_KEY] = settings
    app[GATEWAY_KEY] = gateway
    app.on_shutdown.append(gateway.close_all)

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", gateway.ready)
    app.router.add_get("/config", gateway.config)
    app.router.add_post("/avatars", gateway.register_avatar)
    app.router.add_post("/whip", gateway.offer)
    app.router.add_get("/whip/{session}", gateway.stats)
    app.router.add_delete("/whip/{session}", gateway.hang_up)
    app.router.add_patch("/whip/{session}", gateway.second_offer)
    app.router.add_post("/whip/{session}", gateway.second_offer)
    app.router.add_post("/whip/{session}/interrupt", gateway.interrupt)
    app.router.add_post("/whip/{session}/emotion", gateway.emotion)
    return app


async def serve(settings: GatewaySettings, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> int:
    """Run until `stop` is set (or SIGTERM/SIGINT). Prints `READY webrtc-gateway http=HOST:PORT`."""
    import signal

    app = build_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else settings.port
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    log.info("webrtc gateway serving", address=f"{settings.host}:{port}", orchestrator=settings.orchestrator)
    print(f"READY webrtc-gateway http={settings.host}:{port}", flush=True)
    if ready:
        ready.set()
    await stop.wait()
    await runner.cleanup()
    return 0

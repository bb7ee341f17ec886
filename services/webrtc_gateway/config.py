"""Gateway settings (env prefix DITTO_WEBRTC_, e.g. DITTO_WEBRTC_ORCHESTRATOR=orchestrator:50051), validated at
start. The gateway has its own settings class: it is a client of the public API and needs none of the kernel's bus
or model settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ditto.config import TelemetrySettings


class IceServer(BaseModel):
    """A STUN or TURN server, used by the gateway and handed to the page (RTCIceServer's fields)."""

    urls: list[str]
    username: str = ""
    credential: SecretStr = SecretStr("")


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DITTO_WEBRTC_", env_nested_delimiter="__", extra="ignore")

    host: str = Field("127.0.0.1", description="HTTP bind address (0.0.0.0 in a pod)")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port for signalling and the page; 0 = any free port")
    orchestrator: str = Field("127.0.0.1:50051", description="host:port of the public ditto.v1.Avatar API")
    max_sessions: int = Field(16, ge=1, description="peer connections this gateway serves at once")
    max_offer_bytes: int = Field(64 * 1024, ge=1024, description="largest SDP offer (or JSON body) accepted")
    max_avatar_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest portrait upload accepted")
    open_timeout_s: float = Field(20.0, gt=0, description="longest wait for the orchestrator to start a session")
    stall_timeout_s: float = Field(10.0, gt=0, description="end a session after this long without audio packets "
                                                            "from the peer (a network stall)")
    service_idle_timeout_s: int = Field(120, ge=1, description="the session's idle timeout at the service. The "
                                        "gateway ends stalled sessions itself (stall_timeout_s); this only backs it "
                                        "up, and is long because a busy service withholds reads (backpressure) "
                                        "and would otherwise count that as client silence")
    chunk_ms: int = Field(80, ge=20, le=1000, description="audio sent to Converse per message")
    max_pending_audio_s: float = Field(4.0, gt=0, description="audio sent but not yet turned into frames; past this "
                                       "(a service slower than realtime) the peer's audio is dropped, not queued, "
                                       "so memory stays bounded and an interrupt is not stuck behind old audio")
    max_backlog_s: float = Field(1.0, gt=0, description="frames (and their audio) queued beyond realtime are dropped "
                                                         "past this, so latency stays bounded and lips stay in sync")
    frame_encoding: Literal["jpeg", "raw"] = Field("jpeg", description="frames asked from the orchestrator")
    video_codec: Literal["VP8", "H264"] = Field("VP8", description="preferred codec of the video sent to the peer")
    ice_servers: list[IceServer] = Field(default_factory=list, description="STUN/TURN servers (JSON list)")
    ice_host_addresses: list[str] = Field(default_factory=list, description="gather host candidates only on these "
                                          "addresses and try only the peer's candidates on them (a pod's own IP, "
                                          "or 127.0.0.1 on one machine); empty = every interface")
    ended_sessions_kept: int = Field(1024, ge=1, description="ended session ids remembered to answer 409, not 404")
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)


def load_gateway_settings(**overrides: object) -> GatewaySettings:
    """Settings from the environment plus explicit overrides; an invalid value stops with the variable's name."""
    from pydantic import ValidationError

    try:
        return GatewaySettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        lines = [f"  DITTO_WEBRTC_{'__'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in err.errors()]
        raise SystemExit("invalid gateway configuration:\n" + "\n".join(lines)) from None

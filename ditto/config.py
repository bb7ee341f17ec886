"""Typed configuration, validated at start, overridable by environment variables.

Every process builds one `Settings` (or a service's subclass) at start. Values come from, in order of precedence:
environment variables (`DITTO_` prefix, nested with `__`, e.g. `DITTO_BUS__SLOTS=32`), then defaults. An invalid
value stops the process at start with a message naming the variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, FilePath, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Profile = Literal["full", "tiny"]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ditto"


class BusSettings(BaseModel):
    kind: Literal["memory", "redis"] = "memory"
    redis_url: str = Field(default_factory=lambda: os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    prefix: str = "ditto"
    slots: int = Field(64, ge=1, le=4096, description="stream slots per stage")
    lease_ttl_ms: int = Field(3000, ge=200, description="slot lease lifetime; renewed every ttl/3")
    block_ms: int = Field(200, ge=1, description="longest blocking read")
    state_ttl_s: int = Field(3600, ge=1, description="lifetime of checkpointed session state")
    reclaim_every_s: float = Field(1.0, gt=0, description="how often a worker re-checks its slots for pending "
                                   "entries nobody works on")
    max_retries: int = Field(6, ge=0, description="transient bus errors on one entry before its session ends "
                             "(UNAVAILABLE)")
    gap_timeout_s: float = Field(10.0, gt=0, description="how long a worker waits for a missing sequence number "
                                 "before the session ends (DATA_LOSS)")


class TlsSettings(BaseModel):
    """TLS on a public gRPC port: PEM files (in Kubernetes, a mounted `kubernetes.io/tls` Secret). With
    `client_ca_file`, clients must present a certificate signed by that CA (mutual TLS)."""

    cert_file: FilePath | None = Field(None, description="server certificate chain (PEM)")
    key_file: FilePath | None = Field(None, description="server private key (PEM)")
    client_ca_file: FilePath | None = Field(None, description="CA that client certificates must chain to; "
                                                              "set = client certificates required")

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file (or neither, for plaintext)")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file needs cert_file and key_file: client certificates are checked over TLS")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class TelemetrySettings(BaseModel):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    trace_exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str = "http://127.0.0.1:4317"
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus endpoint port; 0 = none")
    service_name: str = "ditto"


class ModelSettings(BaseModel):
    weights: str = Field("synthetic", description="a weights folder in the official layout, or 'synthetic'")
    profile: Profile = "full"
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = "auto"
    cache_dir: Path = Field(default_factory=default_cache_dir)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not v.startswith("cuda"):
            raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v


class MediaSettings(BaseModel):
    """Bounds on what one avatar registration may cost (checked by the renderer before decoding)."""

    max_image_pixels: int = Field(16_000_000, ge=4, description="width x height of an image or video frame, read "
                                  "from the header before decoding")
    max_video_frames: int = Field(100, ge=1, description="frames of a video avatar kept (and decoded); later frames "
                                  "are not read")
    max_video_s: float = Field(60.0, gt=0, description="longest video avatar, read from the container header")
    max_concurrent_registrations: int = Field(2, ge=1, description="registrations decoding at once per renderer")
    avatar_cache_ttl_s: int = Field(24 * 3600, ge=60, description="an avatar's derived features not used for this "
                                    "long are deleted from the renderer's disk cache")
    max_avatar_memory_mb: int = Field(4096, ge=64, description="memory a renderer keeps avatars in (frames and "
                                      "features, on the model's device); the least recently used leave it first "
                                      "and are reloaded from the disk cache when needed")
    face_models: Literal["mediapipe", "insightface", "none"] = Field(
        "mediapipe", description="what finds the face at registration: 'mediapipe' (Apache-2.0, fetched by make "
        "setup), 'insightface' (SCRFD + 106/203 points from the weights folder; non-commercial research use only) "
        "or 'none' (the client's crop box or the centred square, neutral eyes, no person matte)")
    face_models_dir: Path | None = Field(None, description="folder of the MediaPipe model files (default: "
                                         "~/.cache/ditto/face-models/mediapipe-<version>, what `ditto weights faces` "
                                         "fills)")


class DecodeSettings(BaseModel):
    """The helper processes that decode untrusted media (images, videos, audio files: `ditto.media.pool`). A crash, a
    memory or a time limit breach there fails that one call with INVALID_ARGUMENT; the process that asked, and every
    other session in it, go on."""

    helpers: int = Field(2, ge=1, le=64, description="decoder processes per server process (started on first use, "
                         "reused; a crashed one is replaced); more decodes wait for one")
    max_memory_mb: int = Field(1024, ge=16, description="address space one decode may take in its helper, beyond "
                               "the helper's own start-up footprint (RLIMIT_AS)")
    timeout_s: float = Field(60.0, gt=0, description="longest decode; past it the helper is killed and replaced")


class Settings(BaseSettings):
    """Settings common to every process."""

    model_config = SettingsConfigDict(env_prefix="DITTO_", env_nested_delimiter="__", extra="ignore")

    bus: BusSettings = Field(default_factory=BusSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(0, ge=0, le=65535, description="0 = any free port")
    advertise_host: str | None = Field(None, description="the host other processes dial for this worker's gRPC API "
                                                         "(default: the bind address, or this machine's address)")
    worker_id: str = Field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")
    max_message_bytes: int = Field(32 * 1024 * 1024, ge=1024)


def load_settings(cls: type[Settings] = Settings, **overrides: object) -> Settings:
    """Build settings from the environment plus explicit overrides; raises a clear error when invalid."""
    from pydantic import ValidationError

    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = "__".join(str(p) for p in e["loc"]).upper()
            lines.append(f"  DITTO_{loc}: {e['msg']}")
        raise SystemExit("invalid configuration:\n" + "\n".join(lines)) from None

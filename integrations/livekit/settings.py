"""Typed settings of the LiveKit avatar dispatcher (`ditto livekit-worker`), from DITTO_LIVEKIT_* variables."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class LiveKitWorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DITTO_LIVEKIT_", extra="ignore")

    ditto_address: str = Field("127.0.0.1:50051", description="host:port of the Ditto service (ditto.v1.Avatar)")
    ditto_api_key: SecretStr | None = Field(None, description="this deployment's tenant key for the Ditto service")
    default_avatar_id: str | None = Field(None, description="avatar used when a request names none")
    livekit_url: str | None = Field(None, description="LiveKit server URL used when a request names none")
    livekit_api_key: str | None = Field(None, description="with the secret: mint avatar tokens for requests without")
    livekit_api_secret: SecretStr | None = None
    dispatch_secret: SecretStr | None = Field(
        None, description="bearer token agents must present to start a worker; unset = open (bind to loopback)")
    host: str = "127.0.0.1"
    port: int = Field(8089, ge=0, le=65535)
    max_workers: int = Field(16, ge=1, description="rooms served at once; more are refused with 429")
    sample_rate: int = Field(24000, ge=8000, le=48000, description="rate the agent streams speech at")
    max_request_bytes: int = Field(16 * 1024, ge=1024, description="largest request body accepted")

"""Orchestrator settings (env prefix DITTO_, e.g. DITTO_CREDITS_S=2.5)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ditto.config import Settings, TlsSettings


class OrchestratorSettings(Settings):
    orchestrator_id: str = Field("", description="stable id of this replica; default: worker_id")
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS on the public port "
                             "(DITTO_TLS__CERT_FILE, DITTO_TLS__KEY_FILE, DITTO_TLS__CLIENT_CA_FILE)")
    api_keys_file: Path | None = Field(None, description="JSON tenants file with hashed API keys; none = open dev mode")
    renderer_address: str = Field("", description="host:port of a renderer for avatar registration; empty = discover")
    credits_s: float = Field(2.0, gt=0, description="audio seconds a session may have in flight beyond look-ahead")
    sessions_per_slot: int = Field(4, ge=1, description="sessions one stage slot serves at once")
    max_duration_s: int = Field(3600, ge=1, description="longest session")
    idle_timeout_s: int = Field(30, ge=1, description="end a session after this long without any client message")
    idle_feed_after_ms: int = Field(400, ge=40, description="with the ALIVE idle policy, feed silence after this gap")
    max_chunk_ms: int = Field(1000, ge=20, description="longest audio chunk accepted in one message")
    max_avatar_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_render_audio_s: int = Field(600, ge=1, description="longest audio of one Render job")
    frames_stream_ttl_s: int = Field(60, ge=4, description="TTL of this replica's frames stream in Redis, refreshed "
                                     "every ttl/4 while it runs: what a killed replica leaves is gone after it")
    lag_report_every_s: float = Field(1.0, gt=0)
    default_sampling_steps: int = Field(10, ge=1, le=1000)
    default_overlap: int = Field(70, ge=0, le=79)

    def replica_id(self) -> str:
        return self.orchestrator_id or self.worker_id

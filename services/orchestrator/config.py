"""Orchestrator settings (env prefix DITTO_, e.g. DITTO_CREDITS_S=2.5)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

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
    max_avatar_bytes: int = Field(16 * 1024 * 1024, ge=1024,
                                  description="largest RegisterAvatar media; below max_message_bytes so it fires")
    max_render_audio_bytes: int = Field(24 * 1024 * 1024, ge=1024, description="largest Render audio file")
    max_render_audio_s: int = Field(600, ge=1, description="longest audio of one Render job")
    frames_shards: int = Field(12, ge=1, le=64, description="frames streams of this replica (a session's frames go "
                               "to one): on a Redis Cluster they spread the frames, most of the traffic, over the "
                               "primaries (12 splits evenly over 2, 3, 4 or 6 of them)")
    frames_stream_ttl_s: int = Field(60, ge=4, description="TTL of this replica's frames stream in Redis, refreshed "
                                     "every ttl/4 while it runs: what a killed replica leaves is gone after it")
    bus_outage_s: float = Field(15.0, gt=0, le=50, description="how long sessions ride out a session store (Redis) "
                                "that does not answer -- restarting, failing over, or frozen -- retrying with backoff; "
                                "past it they end with UNAVAILABLE (a restart that lost the data ends them at once)")
    max_concurrent_uploads: int = Field(4, ge=1, description="RegisterAvatar and Render calls in progress at once "
                                        "on this replica (each may hold a large body); more are refused at once. "
                                        "Each tenant has its own share too (max_uploads in the tenants file)")
    upload_body_timeout_s: float = Field(30.0, gt=0, description="end a RegisterAvatar or Render call whose request "
                                         "has not arrived this long after its headers (DEADLINE_EXCEEDED)")
    max_concurrent_decodes: int = Field(2, ge=1, description="CPU-heavy decodes (Render audio, MP4 muxing) run "
                                        "at once in worker threads, off the event loop")
    lag_report_every_s: float = Field(1.0, gt=0)
    default_sampling_steps: int = Field(10, ge=1, le=1000)
    max_sampling_steps: int = Field(50, ge=1, le=1000, description="largest DDIM step count a client may ask for")
    default_overlap: int = Field(70, ge=0, le=79)
    outgoing_buffer_frames: int = Field(50, ge=2, description="messages buffered per session for a slow client")
    outgoing_buffer_mb: float = Field(32.0, gt=0, description="video a session may hold for its client beyond the "
                                      "look-ahead, in MB: large raw frames shrink the credit window to fit")
    client_stall_s: float = Field(20.0, gt=0, description="end a session with RESOURCE_EXHAUSTED when its client "
                                  "has not taken a frame for this long while frames wait")
    max_control_spans: int = Field(64, ge=1, description="live time-coded control spans per session")
    control_rate_per_s: float = Field(25.0, gt=0, description="ControlUpdate/Interrupt messages per second a "
                                      "session may send, sustained")
    control_burst: int = Field(50, ge=1, description="ControlUpdate/Interrupt messages a session may send at once")

    @model_validator(mode="after")
    def _coherent_limits(self) -> OrchestratorSettings:
        # a body limit at or above the gRPC message cap never fires: the transport refuses first, with RESOURCE_
        # EXHAUSTED and a message that names no setting; keep room for the request's other fields
        headroom = 64 * 1024
        for name in ("max_avatar_bytes", "max_render_audio_bytes"):
            if getattr(self, name) + headroom > self.max_message_bytes:
                raise ValueError(f"{name} ({getattr(self, name)}) must be at least {headroom} bytes below "
                                 f"max_message_bytes ({self.max_message_bytes}); raise DITTO_MAX_MESSAGE_BYTES")
        if self.default_sampling_steps > self.max_sampling_steps:
            raise ValueError(f"default_sampling_steps ({self.default_sampling_steps}) exceeds max_sampling_steps "
                             f"({self.max_sampling_steps})")
        return self

    def replica_id(self) -> str:
        return self.orchestrator_id or self.worker_id

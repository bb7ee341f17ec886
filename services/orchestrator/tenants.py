"""Tenants: API keys (only their SHA-256 is stored), concurrency and session-minute quotas.

Tenants file (`DITTO_API_KEYS_FILE`, mounted from a Kubernetes Secret):
    {"tenants": [{"id": "acme", "api_key_sha256": "<hex>", "max_sessions": 8, "session_minutes": 6000,
                  "max_uploads": 2, "max_avatars": 100, "max_avatar_mb": 256}]}
Make a key's hash with `python -m services.orchestrator.tenants hash KEY`. Without a file the orchestrator runs in
open development mode: every caller is tenant "default" with the default quotas. A configured file that is empty,
malformed or lists no tenant stops the start.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ditto.bus import Bus
from ditto.bus.base import Admission
from services.orchestrator.errors import ApiError

SESSION_KEY_TTL_S = 15


DEFAULT_MAX_UPLOADS = 2
DEFAULT_MAX_AVATARS = 100
DEFAULT_MAX_AVATAR_MB = 256.0


@dataclass(frozen=True)
class Tenant:
    id: str
    max_sessions: int = 16
    session_minutes: float = 0.0  # 0 = unlimited
    max_uploads: int = DEFAULT_MAX_UPLOADS  # RegisterAvatar/Render calls in progress at once; 0 = the server's cap
    max_avatars: int = DEFAULT_MAX_AVATARS  # avatars stored at once
    max_avatar_mb: float = DEFAULT_MAX_AVATAR_MB  # their stored (normalised) media, in MB

    @property
    def max_avatar_bytes(self) -> int:
        return int(self.max_avatar_mb * 1024 * 1024)


OPEN_TENANT = Tenant("default", max_uploads=0)  # without a tenants file: one tenant, with all the server's uploads


class TenantEntry(BaseModel):
    """One tenant of the tenants file."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    id: str = Field(min_length=1)
    api_key_sha256: str = Field(description="SHA-256 of the key, 64 hex characters")
    max_sessions: int = Field(16, ge=1)
    session_minutes: float = Field(0.0, ge=0)
    max_uploads: int = Field(DEFAULT_MAX_UPLOADS, ge=1, description="RegisterAvatar and Render calls of this tenant "
                             "in progress at once (its share of the server's DITTO_MAX_CONCURRENT_UPLOADS)")
    max_avatars: int = Field(DEFAULT_MAX_AVATARS, ge=1, description="avatars this tenant may keep registered")
    max_avatar_mb: float = Field(DEFAULT_MAX_AVATAR_MB, gt=0, description="stored media of those avatars, in MB")

    @field_validator("api_key_sha256")
    @classmethod
    def _sha256_hex(cls, value: str) -> str:
        if len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise ValueError("api_key_sha256 must be 64 hex characters: the SHA-256 of the key "
                             "(python -m services.orchestrator.tenants hash KEY)")
        return value.lower()

    def tenant(self) -> Tenant:
        return Tenant(self.id, self.max_sessions, self.session_minutes, self.max_uploads, self.max_avatars,
                      self.max_avatar_mb)


class TenantsFile(BaseModel):
    tenants: list[TenantEntry]

    @field_validator("tenants")
    @classmethod
    def _some_and_unique(cls, tenants: list[TenantEntry]) -> list[TenantEntry]:
        if not tenants:
            raise ValueError('the "tenants" list is empty; add a tenant, or unset DITTO_API_KEYS_FILE to run in open '
                             "development mode")
        ids, hashes = [t.id for t in tenants], [t.api_key_sha256.lower() for t in tenants]
        if len(set(ids)) != len(ids) or len(set(hashes)) != len(hashes):
            raise ValueError("duplicate tenant id or API key")
        return tenants


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class TenantDirectory:
    def __init__(self, by_hash: dict[str, Tenant] | None = None) -> None:
        self.by_hash = by_hash or {}
        self.open_mode = not self.by_hash

    @classmethod
    def from_file(cls, path: Path | None) -> TenantDirectory:
        """Open mode only when no file is configured: a file that is missing, unreadable, malformed or lists no
        tenant stops the start (an empty list must never silently mean "everyone is let in")."""
        if path is None:
            return cls()
        try:
            doc = TenantsFile.model_validate_json(Path(path).read_bytes())
        except (OSError, ValidationError) as err:
            raise SystemExit(f"cannot use tenants file {path} (DITTO_API_KEYS_FILE): {err}") from err
        return cls({t.api_key_sha256.lower(): t.tenant() for t in doc.tenants})

    def authenticate(self, metadata: tuple | list | None) -> Tenant:
        if self.open_mode:
            return OPEN_TENANT
        key = None
        for k, v in metadata or ():
            if k == "x-api-key":
                key = v
            elif k == "authorization" and isinstance(v, str) and v.lower().startswith("bearer "):
                key = v[7:]
        if not key:
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED, "no API key: send metadata 'x-api-key: <key>'")
        h = hash_key(key)
        for known, tenant in self.by_hash.items():
            if hmac.compare_digest(known, h):
                return tenant
        raise ApiError(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")


class Quotas:
    """A tenant's live sessions are members of one live-member set (`Keys.tenant_sessions`, under the admission hash
    tag) refreshed by each session; a crashed replica's sessions expire. The check and the count happen in
    `Bus.admit`, atomically."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def sessions_key(self, tenant: str) -> str:
        return self.bus.keys.tenant_sessions(tenant)

    def used_key(self, tenant: str) -> str:
        return self.bus.keys.tenant_seconds_used(tenant)

    async def active(self, tenant: str) -> list[str]:
        return await self.bus.live_members(self.sessions_key(tenant))

    @staticmethod
    def refusal(tenant: Tenant, admission: Admission) -> ApiError:
        if admission.refused == "sessions":
            return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"tenant {tenant.id} has {admission.count} of {tenant.max_sessions} sessions open; "
                            "end one or retry later")
        return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"tenant {tenant.id} used its {tenant.session_minutes:g} session minutes")

    async def remaining_s(self, tenant: Tenant) -> float:
        if not tenant.session_minutes:
            return float("inf")
        used = int((await self.bus.get_state(self.used_key(tenant.id))) or b"0")
        return max(0.0, tenant.session_minutes * 60 - used)

    async def touch(self, tenant: str, session_id: str) -> None:
        await self.bus.touch_member(self.sessions_key(tenant), session_id, SESSION_KEY_TTL_S * 1000)

    async def release(self, tenant: str, session_id: str, seconds: float) -> None:
        await self.bus.remove_member(self.sessions_key(tenant), session_id)
        if seconds > 0:
            await self.bus.incr(self.used_key(tenant), int(round(seconds)), ttl_s=400 * 24 * 3600)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "hash":
        print(hash_key(argv[1]))
        return 0
    print("usage: python -m services.orchestrator.tenants hash KEY", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

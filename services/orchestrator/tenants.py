"""Tenants: API keys (only their SHA-256 is stored), concurrency and session-minute quotas.

Tenants file (`DITTO_API_KEYS_FILE`, mounted from a Kubernetes Secret):
    {"tenants": [{"id": "acme", "api_key_sha256": "<hex>", "max_sessions": 8, "session_minutes": 6000}]}
Make a key's hash with `python -m services.orchestrator.tenants hash KEY`. Without a file the orchestrator runs in
open development mode: every caller is tenant "default" with the default quotas.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ditto.bus import Bus

SESSION_KEY_TTL_S = 15


@dataclass(frozen=True)
class Tenant:
    id: str
    max_sessions: int = 16
    session_minutes: float = 0.0  # 0 = unlimited


class TenantEntry(BaseModel):
    """One tenant of the tenants file."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    id: str
    api_key_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="SHA-256 of the key, 64 hex characters")
    max_sessions: int = 16
    session_minutes: float = 0.0

    def tenant(self) -> Tenant:
        return Tenant(self.id, self.max_sessions, self.session_minutes)


class TenantsFile(BaseModel):
    tenants: list[TenantEntry]


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class TenantDirectory:
    def __init__(self, by_hash: dict[str, Tenant] | None = None) -> None:
        self.by_hash = by_hash or {}
        self.open_mode = not self.by_hash

    @classmethod
    def from_file(cls, path: Path | None) -> TenantDirectory:
        if path is None:
            return cls()
        try:
            doc = TenantsFile.model_validate_json(Path(path).read_bytes())
        except (OSError, ValidationError) as err:
            raise SystemExit(f"cannot read tenants file {path}: {err}") from err
        return cls({t.api_key_sha256.lower(): t.tenant() for t in doc.tenants})

    def authenticate(self, metadata: tuple | list | None) -> Tenant:
        if self.open_mode:
            return Tenant("default")
        key = None
        for k, v in metadata or ():
            if k == "x-api-key":
                key = v
            elif k == "authorization" and isinstance(v, str) and v.lower().startswith("bearer "):
                key = v[7:]
        if not key:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "no API key: send metadata 'x-api-key: <key>'")
        h = hash_key(key)
        for known, tenant in self.by_hash.items():
            if hmac.compare_digest(known, h):
                return tenant
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")


class Quotas:
    """Live sessions are presence keys with a TTL refreshed by the session; a crashed replica's sessions expire."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def _session_key(self, tenant: str, session_id: str) -> str:
        return self.bus.key("tenant", tenant, "session", session_id)

    def _used_key(self, tenant: str) -> str:
        return self.bus.key("tenant", tenant, "seconds_used")

    async def active(self, tenant: str) -> list[str]:
        keys = await self.bus.scan_keys(self._session_key(tenant, "*"))
        return [k.rsplit(":", 1)[1] for k in keys]

    async def admit(self, tenant: Tenant, session_id: str) -> None:
        """Raises AuthError(RESOURCE_EXHAUSTED) when the tenant is at quota."""
        active = await self.active(tenant.id)
        if len(active) >= tenant.max_sessions:
            raise AuthError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"tenant {tenant.id} has {len(active)} of {tenant.max_sessions} sessions open; "
                            "end one or retry later")
        if tenant.session_minutes:
            used = int((await self.bus.get_state(self._used_key(tenant.id))) or b"0")
            if used >= tenant.session_minutes * 60:
                raise AuthError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"tenant {tenant.id} used its {tenant.session_minutes:g} session minutes")
        await self.touch(tenant.id, session_id)

    async def remaining_s(self, tenant: Tenant) -> float:
        if not tenant.session_minutes:
            return float("inf")
        used = int((await self.bus.get_state(self._used_key(tenant.id))) or b"0")
        return max(0.0, tenant.session_minutes * 60 - used)

    async def touch(self, tenant: str, session_id: str) -> None:
        await self.bus.set_state(self._session_key(tenant, session_id), str(time.time()).encode(), SESSION_KEY_TTL_S)

    async def release(self, tenant: str, session_id: str, seconds: float) -> None:
        await self.bus.set_state(self._session_key(tenant, session_id), None)
        if seconds > 0:
            await self.bus.incr(self._used_key(tenant), int(round(seconds)), ttl_s=400 * 24 * 3600)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "hash":
        print(hash_key(argv[1]))
        return 0
    print("usage: python -m services.orchestrator.tenants hash KEY", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

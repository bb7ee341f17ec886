"""Where avatars live on the bus's state store, per tenant: the orchestrator writes them at registration, and any
renderer worker reads an avatar's source media from there to rebuild the avatar it has not seen."""

from __future__ import annotations

from ditto.bus.base import Bus


def source_key(bus: Bus, tenant: str, avatar_id: str) -> str:
    """The avatar's `RegisterSourceRequest` (media, file name, crop, tenant) as the orchestrator received it."""
    return bus.key("avatar", tenant, avatar_id, "source")


def info_key(bus: Bus, tenant: str, avatar_id: str) -> str:
    """The avatar's registration answer (size, motion info)."""
    return bus.key("avatar", tenant, avatar_id, "info")


def quota_key(bus: Bus, tenant: str) -> str:
    """The tenant's stored avatars as a weighted set (`Bus.reserve`): one member per stored source record (its
    SHA-256), weighing its bytes, expiring with it. One key, so the count and bytes check is one atomic script
    (on a Redis Cluster, one node)."""
    return bus.key("avatar", tenant, "quota")

"""Every Redis key name the service uses, built in one place and designed for a Redis Cluster.

A Redis Cluster runs a Lua script, a MULTI or a multi-key command only when all its keys hash to one slot. The part of
a key name in `{...}` (its hash tag) is all that is hashed, so the keys one atomic step touches share a tag, and the
tags are chosen so that the traffic spreads over the primaries:

- `{<prefix>:<stage>:<slot>}` -- one stage slot: its stream, its lease, the checkpoints of the sessions placed on it
  and the commit markers. A worker's commit checks the lease, writes the checkpoint and acknowledges the input in one
  script on this tag; the bulk of the traffic (every audio window, motion window and frame) is spread over
  stages x slots tags, so over every primary.
- `{<prefix>:frames:<replica>:<shard>:<salt>}` -- one of an orchestrator replica's frames streams (and the markers of
  appends to it); the shards' tags are picked to spread evenly over the cluster's slots.
- `{<prefix>:admission}` -- what admission decides on atomically: the tenants' live sessions and used seconds, and
  per stage the set of held slots and the placements. One script checks the tenant's quota and picks a slot per stage,
  so these keys must share one tag. It is one slot of the cluster, but its load is a few small commands per session
  start and a refresh every few seconds per session and held slot, not the media: one primary carries it easily.
- Keys that are only ever read or written alone (avatars, epochs, presence sets, a tenant's avatar quota) carry no
  tag: each hashes on its whole name, so they spread by themselves.

A commit also writes outputs to the next stage's slot stream or a frames stream, which live on other tags: the bus
splits such a commit into one step per tag (outputs first, then checkpoint + acknowledgement + lease check), and
markers kept beside each stream (`beside`) make every step idempotent, so a retried or replayed step never applies
twice (see ditto.bus.redis_streams).

`python -m ditto.keys --markdown` prints the table of docs/architecture.md; a test holds the two equal.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from redis.crc import REDIS_CLUSTER_HASH_SLOTS as CLUSTER_SLOTS
from redis.crc import key_slot


def hash_tag(key: str) -> str:
    """The part of `key` Redis Cluster hashes: the text between the first `{` and the next `}` when it is not empty,
    else the whole key (the cluster specification's rule)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def beside(key: str, *parts: str) -> str:
    """A key in the same cluster slot as `key` (its hash tag, then `parts`): for markers that one script writes with
    the key they describe."""
    return ":".join(("{" + hash_tag(key) + "}", *parts))


@dataclass(frozen=True)
class Keys:
    """The key names under one prefix (`DITTO_BUS__PREFIX`; several deployments or tests can share one Redis)."""

    prefix: str = "ditto"

    def _tag(self, *parts: str | int) -> str:
        return "{" + ":".join((self.prefix, *(str(p) for p in parts))) + "}"

    def _plain(self, *parts: str | int) -> str:
        return ":".join((self.prefix, *(str(p) for p in parts)))

    # ---- one stage slot (tag per stage and slot) ----
    def slot_stream(self, stage: str, slot: int | str) -> str:
        """The stream of one stage slot, read by the consumer group named after the stage."""
        return self._tag(stage, slot) + ":stream"

    def lease(self, stage: str, slot: int | str) -> str:
        """The slot's lease: the id of the worker that may read and commit the slot, with a TTL."""
        return self._tag(stage, slot) + ":lease"

    def checkpoint(self, stage: str, slot: int | str, session_id: str) -> str:
        """A session's `StageCheckpoint` at a stage, on the tag of the slot the session is placed on (the commit
        writes it in the same script that checks the slot's lease and acknowledges the input)."""
        return self._tag(stage, slot) + f":state:{session_id}"

    @staticmethod
    def slot_of(stream: str) -> int:
        """The slot number of a slot stream's name (`{prefix:stage:7}:stream` -> 7)."""
        return int(hash_tag(stream).rsplit(":", 1)[1])

    # ---- presence of workers and orchestrators (one key each, no tag) ----
    def workers(self, stage: str) -> str:
        """Live-member set of the stage's running workers (members: worker ids)."""
        return self._plain(stage, "workers")

    def addresses(self, stage: str) -> str:
        """Live-member set of the gRPC addresses (`host:port`) the stage's workers serve on."""
        return self._plain(stage, "addrs")

    def replicas(self) -> str:
        """Live-member set of the running orchestrator replicas (members: replica ids)."""
        return self._plain("orchestrators")

    def store_marker(self, replica: str) -> str:
        """A counter the orchestrator replica keeps at 1 while it runs: found missing, the store lost its data (Redis
        restarted empty, or failed over to a replica that had not caught up) and with it every open session's."""
        return self._plain("orchestrator", replica, "store")

    def frames_stream(self, replica: str, shard: int | str = 0, shards: int = 1) -> str:
        """One of the `shards` streams the renderer writes an orchestrator replica's frames to (a session's frames
        all go to one). Frames are most of the entries, so a replica's frames are spread over several tags, each
        chosen (`<salt>`) to hash into its own even share of the 16384 cluster slots: with the slots split evenly
        over the primaries, so are a replica's frames, whatever its id."""
        if not isinstance(shard, int):  # a placeholder (the docs table)
            return self._tag("frames", replica, shard, "<salt>") + ":stream"
        return self._tag("frames", replica, shard, _salt(f"{self.prefix}:frames:{replica}:{shard}", shard, shards)) \
            + ":stream"

    def epoch(self, session_id: str) -> str:
        """The session's current epoch, written by the orchestrator on interrupt; older entries are stale."""
        return self._plain("session", session_id, "epoch")

    # ---- admission (one tag: the quota check and the placement are one script) ----
    def held_slots(self, stage: str) -> str:
        """Live-member set of the stage's slots that a worker holds (members: slot numbers), read by admission."""
        return self._tag("admission") + f":{stage}:held"

    def placements(self, stage: str) -> str:
        """Live-member set of the sessions placed on the stage's slots (members `"<slot>:<session>"`)."""
        return self._tag("admission") + f":placement:{stage}"

    def tenant_sessions(self, tenant: str) -> str:
        """Live-member set of a tenant's open sessions (members: session ids)."""
        return self._tag("admission") + f":tenant:{tenant}:sessions"

    def tenant_seconds_used(self, tenant: str) -> str:
        """Seconds of sessions a tenant has used (a counter)."""
        return self._tag("admission") + f":tenant:{tenant}:seconds_used"

    def unmetered_sessions(self) -> str:
        """Live-member set of the sessions placed without a tenant quota (`Placer.place`)."""
        return self._tag("admission") + ":unmetered:sessions"

    def unmetered_seconds_used(self) -> str:
        """The (never incremented) used-seconds counter `Placer.place` passes to admission."""
        return self._tag("admission") + ":unmetered:seconds_used"

    # ---- avatars (no tag: each key alone; the quota is one key, so its check is one script) ----
    def avatar_source(self, tenant: str, avatar_id: str) -> str:
        """The avatar's `RegisterSourceRequest` (media, file name, crop, tenant) as the orchestrator received it;
        any renderer worker rebuilds the avatar from it."""
        return self._plain("avatar", tenant, avatar_id, "source")

    def avatar_info(self, tenant: str, avatar_id: str) -> str:
        """The avatar's registration answer (size, motion info)."""
        return self._plain("avatar", tenant, avatar_id, "info")

    def avatar_quota(self, tenant: str) -> str:
        """The tenant's stored avatars as a weighted set (`Bus.reserve`): one member per stored source record (its
        SHA-256), weighing its bytes, expiring with it."""
        return self._plain("avatar", tenant, "quota")

    # ---- anything else ----
    def key(self, *parts: str) -> str:
        """An ad-hoc key under the prefix, no tag (tools and tests; the service's own keys are the methods above)."""
        return self._plain(*parts)

    def patterns(self) -> tuple[str, ...]:
        """SCAN patterns that match every key under this prefix (tagged and plain)."""
        return (f"{self.prefix}:*", "{" + f"{self.prefix}:*")


def _salt(base: str, shard: int, shards: int) -> int:
    """The smallest n for which `base:n` hashes into shard's share of the cluster's slots (about `shards` tries)."""
    lo, hi = CLUSTER_SLOTS * shard // shards, CLUSTER_SLOTS * (shard + 1) // shards
    for n in range(1 << 20):
        if lo <= key_slot(f"{base}:{n}".encode()) < hi:
            return n
    raise AssertionError("unreachable: CRC16 covers every slot range")


# Markers the bus writes beside a stream (see `beside`); listed here so the table shows every key.
APPEND_MARKER = "from"      # beside an output stream: the last input whose outputs a producer appended, per session
APPLIED_MARKER = "applied"  # beside an input stream: the last input whose commit was applied, per session


def table() -> list[tuple[str, str, str]]:
    """(key, hash tag, what it holds) for every key, with the prefix `ditto` and placeholders in angle brackets."""
    k = Keys("ditto")
    stage, slot, sid, tenant, avatar, replica = "<stage>", "<slot>", "<session>", "<tenant>", "<avatar>", "<replica>"

    def doc(fn: object) -> str:
        text = " ".join((getattr(fn, "__doc__", "") or "").split())
        return text.replace("|", "\\|")

    rows = [
        (k.slot_stream(stage, slot), doc(Keys.slot_stream)),
        (k.lease(stage, slot), doc(Keys.lease)),
        (k.checkpoint(stage, slot, sid), doc(Keys.checkpoint)),
        (beside(k.slot_stream(stage, slot), APPLIED_MARKER, "<group>", sid),
         "Commit marker: the last input of the session whose commit was applied (a replayed commit is skipped)."),
        (beside(k.slot_stream(stage, slot), APPEND_MARKER, "<group>", sid),
         "Append marker: the last input of the session whose outputs the producing stage appended here."),
        (k.frames_stream(replica, "<shard>"), doc(Keys.frames_stream)),
        (beside(k.frames_stream(replica, "<shard>"), APPEND_MARKER, "<group>", sid),
         "Append marker of the frames stream (as above)."),
        (k.held_slots(stage), doc(Keys.held_slots)),
        (k.placements(stage), doc(Keys.placements)),
        (k.tenant_sessions(tenant), doc(Keys.tenant_sessions)),
        (k.tenant_seconds_used(tenant), doc(Keys.tenant_seconds_used)),
        (k.unmetered_sessions(), doc(Keys.unmetered_sessions)),
        (k.unmetered_seconds_used(), doc(Keys.unmetered_seconds_used)),
        (k.workers(stage), doc(Keys.workers)),
        (k.addresses(stage), doc(Keys.addresses)),
        (k.replicas(), doc(Keys.replicas)),
        (k.store_marker(replica), doc(Keys.store_marker)),
        (k.epoch(sid), doc(Keys.epoch)),
        (k.avatar_source(tenant, avatar), doc(Keys.avatar_source)),
        (k.avatar_info(tenant, avatar), doc(Keys.avatar_info)),
        (k.avatar_quota(tenant), doc(Keys.avatar_quota)),
    ]
    return [(key, hash_tag(key) if "{" in key else "(whole name)", what) for key, what in rows]


def markdown() -> str:
    lines = ["| Key | Hash tag | What it holds |", "|---|---|---|"]
    lines += [f"| `{key}` | `{tag}` | {what} |" if tag != "(whole name)" else f"| `{key}` | {tag} | {what} |"
              for key, tag, what in table()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        print("usage: python -m ditto.keys --markdown", file=sys.stderr)
        sys.exit(2)
    sys.stdout.write(markdown())

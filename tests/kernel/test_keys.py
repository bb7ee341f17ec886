"""The key names of ditto.keys: the documented table is the generated one, and the keys each atomic step touches
share a hash slot (what a Redis Cluster requires)."""

from __future__ import annotations

from pathlib import Path

from redis.crc import key_slot

from ditto.keys import APPEND_MARKER, APPLIED_MARKER, Keys, beside, hash_tag, markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def test_the_architecture_docs_key_table_is_generated_from_ditto_keys():
    text = DOC.read_text()
    begin, end = "<!-- keys:begin -->\n", "<!-- keys:end -->"
    assert begin in text and end in text, "docs/architecture.md lost its generated keys table markers"
    documented = text[text.index(begin) + len(begin):text.index(end)]
    assert documented == markdown(), "docs/architecture.md is stale: paste `python -m ditto.keys --markdown` in it"


def _slot(key: str) -> int:
    return key_slot(key.encode())


def test_each_atomic_step_touches_one_hash_slot():
    k = Keys("p")
    for stage in ("audio_encoder", "renderer"):
        for slot in (0, 7, 63):
            stream = k.slot_stream(stage, slot)
            commit = [stream, k.lease(stage, slot), k.checkpoint(stage, slot, "s1"),
                      beside(stream, APPLIED_MARKER, stage, "s1"), beside(stream, APPEND_MARKER, "x", "s1")]
            assert len({_slot(key) for key in commit}) == 1, commit
            assert Keys.slot_of(stream) == slot
    admission = [k.tenant_sessions("t"), k.tenant_seconds_used("t"), k.unmetered_sessions(),
                 k.unmetered_seconds_used(), *(f(st) for st in ("a", "b") for f in (k.held_slots, k.placements))]
    assert len({_slot(key) for key in admission}) == 1, admission
    frames = k.frames_stream("r", 3, 12)
    assert _slot(beside(frames, APPEND_MARKER, "renderer", "s")) == _slot(frames)


def test_stage_slots_and_frames_shards_spread_over_the_cluster_slots():
    k = Keys("ditto")
    tags = {hash_tag(k.slot_stream(stage, slot)) for stage in ("a", "b", "c") for slot in range(64)}
    assert len(tags) == 192 and len({key_slot(t.encode()) for t in tags}) > 180
    # each of a replica's 12 frames shards hashes into its own twelfth of the 16384 slots, whatever the replica id
    for replica in ("r1", "orch-7f3a", "x"):
        slots = [_slot(k.frames_stream(replica, shard, 12)) for shard in range(12)]
        assert [s * 12 // 16384 for s in slots] == list(range(12)), slots

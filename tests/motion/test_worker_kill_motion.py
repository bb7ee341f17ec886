"""The motion stage as served (`ditto worker --stage motion_generator`, default windowing: overlap 70, conditioning
frame reset every window, 10 steps), in real processes on a real Redis: the keypoints of a session do not depend on
how its features were chunked, and a session whose worker is SIGKILLed mid-stream continues on the next worker from
its checkpoint with exactly the keypoints an uninterrupted run gives (bit for bit; same CPU, one torch thread)."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from ditto import codec
from ditto.bus import RedisBus
from ditto_app.cluster import LocalCluster
from ditto_app.synthetic import ensure_synthetic
from ditto_client.v1 import bus_pb2, common_pb2
from tests.motion.helpers import avatar, features

pytestmark = pytest.mark.e2e

STAGE = "motion_generator"
REAL_FRAMES = 137
OVERLAP = 70


def _start_entry(session: str, seq: int, route: dict[str, str]) -> bus_pb2.StreamEntry:
    """The START the audio encoder hands the motion stage: the spec (service defaults) and the silence pre-fill."""
    a = avatar()
    info = common_pb2.AvatarMotionInfo(is_video=False)
    info.tensors.extend(codec.named({**a.info, "eye_open": a.eye_open, "eye_ball": a.eye_ball}))
    spec = bus_pb2.SessionSpec(seed=11, avatar=info)           # steps and overlap unset: the service's defaults
    e = bus_pb2.StreamEntry(session_id=session, seq=seq, kind=bus_pb2.ENTRY_KIND_START,
                            meta=spec.SerializeToString())
    e.tensors.extend(codec.named({"prefill": features(OVERLAP, seed=99)}))
    e.route.update(route)
    return e


def _entries(session: str, sizes: list[int], route: dict[str, str]) -> list[bus_pb2.StreamEntry]:
    """START, the features in chunks of `sizes` rows, END: what the motion stage's slot stream receives."""
    feats = features(REAL_FRAMES)
    assert sum(sizes) == REAL_FRAMES
    out = [_start_entry(session, 0, route)]
    pos = 0
    for n in sizes:
        e = bus_pb2.StreamEntry(session_id=session, seq=len(out), kind=bus_pb2.ENTRY_KIND_DATA,
                                meta=common_pb2.FeatureChunk(first_frame=pos).SerializeToString())
        e.tensors.extend(codec.named({"features": feats[pos:pos + n]}))
        e.route.update(route)
        out.append(e)
        pos += n
    end = bus_pb2.StreamEntry(session_id=session, seq=len(out), kind=bus_pb2.ENTRY_KIND_END)
    end.route.update(route)
    return [*out, end]


class Harness:
    """One Redis key prefix, one slot, motion workers started and killed as processes."""

    def __init__(self, redis_url: str, log_dir: Path) -> None:
        ensure_synthetic("tiny")
        self.cluster = LocalCluster(redis_url=redis_url, prefix=f"ditto-motion-kill-{uuid.uuid4().hex[:8]}",
                                    slots=1, log_dir=log_dir,
                                    env={"DITTO_BUS__LEASE_TTL_MS": "600", "OMP_NUM_THREADS": "1"})
        self.bus = RedisBus(redis_url, self.cluster.prefix)
        self.workers = 0
        self.seen: dict[str, list[bus_pb2.StreamEntry]] = {}

    def start_worker(self) -> str:
        self.workers += 1
        name = f"{STAGE}-{self.workers}"
        self.cluster.start_worker(STAGE, name=name)
        self.cluster.wait_ready(120, [name])
        return name

    async def publish(self, entries: list[bus_pb2.StreamEntry]) -> None:
        stream = self.bus.keys.slot_stream(STAGE, 0)
        await self.bus.ensure_group(stream, STAGE)
        for e in entries:
            await self.bus.publish(stream, e)

    async def outputs(self, stream: str, block_ms: int = 0) -> list[bus_pb2.StreamEntry]:
        """Every entry the stage wrote to `stream` so far, in order (read through a group of this test's own),
        after waiting up to block_ms for a new one."""
        got = self.seen.setdefault(stream, [])
        while batch := await self.bus.read("reader", "test", [stream], count=500, block_ms=block_ms):
            got += [d.entry for d in batch]
            block_ms = 0
        return got

    async def wait_for(self, stream: str, what: Callable[[list[bus_pb2.StreamEntry]], bool],
                       timeout: float = 120) -> list[bus_pb2.StreamEntry]:
        deadline = time.monotonic() + timeout
        while True:
            got = await self.outputs(stream, block_ms=200)
            if what(got):
                return got
            assert time.monotonic() < deadline, f"{len(got)} entries in {stream} after {timeout} s"

    async def close(self) -> None:
        await self.bus.close()
        self.cluster.stop()
        self.cluster.purge()


@pytest.fixture
async def harness(redis_url, tmp_path) -> AsyncIterator[Harness]:
    h = Harness(redis_url, tmp_path)
    try:
        yield h
    finally:
        await h.close()


def _keypoints(entries: list[bus_pb2.StreamEntry]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(frame index of every keypoint frame, x_s, x_d) from the DATA entries to the renderer, in order."""
    index, xs, xd = [], [], []
    for e in entries:
        if e.kind != bus_pb2.ENTRY_KIND_DATA:
            continue
        meta = common_pb2.KeypointFrames()
        meta.ParseFromString(e.meta)
        t = codec.unnamed(e.tensors)
        index += range(meta.first_frame, meta.first_frame + len(t["x_d"]))
        xs.append(t["x_s"])
        xd.append(t["x_d"])
    return index, np.concatenate(xs), np.concatenate(xd)


def _ended(entries: list[bus_pb2.StreamEntry]) -> bool:
    return any(e.kind == bus_pb2.ENTRY_KIND_END for e in entries)


async def test_a_killed_motion_worker_resumes_with_identical_keypoints_whatever_the_chunking(harness):
    h = harness
    rng = np.random.default_rng(3)
    irregular: list[int] = []
    while sum(irregular) < REAL_FRAMES:
        irregular.append(int(min(REAL_FRAMES - sum(irregular), rng.integers(1, 17))))
    straight_route = {"renderer": h.bus.keys.key("to-renderer-a"), "frames": h.bus.keys.key("frames-a")}
    killed_route = {"renderer": h.bus.keys.key("to-renderer-b"), "frames": h.bus.keys.key("frames-b")}

    # uninterrupted: 5-row chunks, as the audio encoder sends them
    victim = h.start_worker()
    await h.publish(_entries("straight", [5] * (REAL_FRAMES // 5) + [REAL_FRAMES % 5], straight_route))
    straight = _keypoints(await h.wait_for(straight_route["renderer"], _ended))
    assert straight[0] == list(range(REAL_FRAMES))

    # then irregular chunks, on the same worker, killed after its first keypoints with entries published that it may
    # have read and not finished
    entries = _entries("killed", irregular, killed_route)
    cut = len(entries) // 2
    await h.publish(entries[:cut])
    await h.wait_for(killed_route["renderer"], lambda got: any(e.kind == bus_pb2.ENTRY_KIND_DATA for e in got))
    await h.publish(entries[cut:cut + 4])
    h.cluster.kill(victim)
    assert h.cluster.procs[victim].popen.returncode == -signal.SIGKILL
    assert not _ended(await h.outputs(killed_route["renderer"])), "the session ended before the kill"
    h.start_worker()                      # takes the slot over, claims what the victim left, resumes the checkpoint
    await h.publish(entries[cut + 4:])
    resumed = _keypoints(await h.wait_for(killed_route["renderer"], _ended))
    assert resumed[0] == list(range(REAL_FRAMES)), "every frame exactly once, in order"
    np.testing.assert_array_equal(resumed[1], straight[1])
    np.testing.assert_array_equal(resumed[2], straight[2])

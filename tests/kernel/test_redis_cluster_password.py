"""A Redis Cluster behind a password: the same REDIS_URL form as for one Redis (`redis://:PASSWORD@node:port/0`),
naming any node, connects in cluster mode and carries the bus; a wrong password is refused with a message that says
where and why, and neither password appears in it."""

from __future__ import annotations

import pytest

from ditto.bus import BusError, RedisBus
from ditto.keys import Keys
from ditto_client.v1 import bus_pb2

PASSWORD = "s3cret-cluster-pw"  # noqa: S105 - the test cluster's own


@pytest.fixture(scope="module")
def password_cluster(tmp_path_factory):
    from tests.redis_cluster import LocalRedisCluster

    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster-auth"), password=PASSWORD).start()
    yield cluster
    cluster.stop()


async def test_redis_cluster_with_a_password_in_the_url_carries_the_bus(password_cluster):
    bus = RedisBus(password_cluster.url, prefix="auth")
    try:
        assert await bus.ping()
        assert type(await bus.client()).__name__ == "RedisCluster"  # detected from the one node the URL names
        streams = [Keys("auth").slot_stream("stage", k) for k in range(6)]  # over several hash tags, so primaries
        for s in streams:
            await bus.ensure_group(s, "stage")
            await bus.publish(s, bus_pb2.StreamEntry(session_id="a", seq=0, kind=bus_pb2.ENTRY_KIND_DATA))
        got = await bus.read("stage", "w1", streams, count=10)
        assert sorted(d.stream for d in got) == sorted(streams)
        assert PASSWORD not in bus.url and PASSWORD not in repr(bus.__dict__.get("url"))
    finally:
        await bus.close()


async def test_redis_cluster_refuses_a_wrong_password_without_printing_it(password_cluster):
    wrong = "not-the-password-123"
    bus = RedisBus(password_cluster.url.replace(PASSWORD, wrong), prefix="auth")
    try:
        assert not await bus.ping()
        with pytest.raises(BusError) as err:
            await bus.publish(Keys("auth").slot_stream("stage", 0), bus_pb2.StreamEntry(session_id="a"))
        message = str(err.value)
        assert "Redis" in message and wrong not in message and PASSWORD not in message, message
    finally:
        await bus.close()

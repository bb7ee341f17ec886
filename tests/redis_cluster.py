"""A real Redis Cluster on loopback for the tests: 6 `redis-server --cluster-enabled yes` processes (3 primaries, 3
replicas) in a temporary folder, joined by `redis-cli --cluster create`. A short node timeout, so a killed primary's
replica takes over within a few seconds."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

NODE_TIMEOUT_MS = 1000


def _free_port() -> int:
    # A cluster node also listens on port + 10000 (the cluster bus): both must be free.
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def _answers(port: int, password: str | None = None) -> bool:
    try:
        c = redis.Redis(port=port, password=password, socket_connect_timeout=0.5, socket_timeout=1)
        try:
            return bool(c.ping())
        finally:
            c.close()
    except redis.RedisError:
        return False


@dataclass
class LocalRedisCluster:
    folder: Path
    nodes: int = 6
    ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen] = field(default_factory=dict)
    password: str | None = None  # requirepass (and masterauth, so replicas can follow) on every node

    @property
    def url(self) -> str:
        """Any node will do: the client discovers the others."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.ports[0]}/0"

    def _client(self, port: int, **kw) -> redis.Redis:
        return redis.Redis(port=port, password=self.password, socket_connect_timeout=0.5, socket_timeout=1, **kw)

    def _spawn(self, port: int) -> None:
        d = self.folder / str(port)
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "redis.conf"  # the password lives in a file, never on a command line
        conf.write_text(f"requirepass {self.password}\nmasterauth {self.password}\n" if self.password else "")
        log = open(d / "redis.log", "ab")  # noqa: SIM115 - handed to the process
        self.procs[port] = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", str(conf), "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf"),
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no", "--dir", str(d),
             "--daemonize", "no"], stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def start(self) -> LocalRedisCluster:
        self.ports = [_free_port() for _ in range(self.nodes)]
        for port in self.ports:
            self._spawn(port)
        for port in self.ports:
            _wait(lambda p=port: _answers(p, self.password), 20, f"redis-server on port {port}")
        # the password goes through the environment (REDISCLI_AUTH), never a command line
        env = {**os.environ, "REDISCLI_AUTH": self.password} if self.password else None
        subprocess.run([shutil.which("redis-cli") or "redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.ports], "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60, env=env)
        self.wait_ok()
        return self

    def _state_ok(self, port: int) -> bool:
        try:
            c = self._client(port, decode_responses=True)
            try:
                info = c.execute_command("CLUSTER", "INFO")
            finally:
                c.close()
        except redis.RedisError:
            return False
        text = info if isinstance(info, str) else str(info)
        return "cluster_state:ok" in text

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every running node says cluster_state:ok and the slots are all served by running primaries."""
        _wait(lambda: all(self._state_ok(p) for p in self.live_ports()) and len(self.primaries()) == 3, timeout,
              "Redis Cluster state ok")

    def primaries(self) -> list[int]:
        """Ports of the running primaries that serve slots (as a running node sees them)."""
        for port in self.live_ports():
            try:
                c = self._client(port)
                try:
                    slots = c.execute_command("CLUSTER", "SLOTS")
                finally:
                    c.close()
            except redis.RedisError:
                continue
            live = set(self.live_ports())
            return sorted({int(r[2][1]) for r in slots} & live)
        return []

    def primary_of(self, key: str) -> int:
        """The port of the primary serving `key`'s hash slot."""
        port = self.live_ports()[0]
        c = self._client(port)
        try:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(primary[1])
        finally:
            c.close()
        raise AssertionError(f"no primary serves slot {slot}")

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.kill()
        proc.wait(10)

    def restart(self, port: int) -> None:
        """Start a killed node again: with its nodes.conf it rejoins (as a replica of whoever took its slots)."""
        if self.procs[port].poll() is None:
            return
        self._spawn(port)
        _wait(lambda: _answers(port, self.password), 20, f"redis-server on port {port} again")
        self.wait_ok()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

"""A local multi-process stack on loopback: Redis (started when none answers), one `ditto worker` per stage and a
`ditto serve --redis` orchestrator, each its own process. `ditto up`, the end-to-end tests and the serving
benchmark use it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import redis as redis_lib

from ditto import pipeline
from ditto.config import load_settings
from ditto.redaction import redact_url

ROOT = Path(__file__).resolve().parents[1]  # the checkout (or site-packages): where `-m ditto_app.cli` runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(url: str) -> bool:
    try:
        client = redis_lib.Redis.from_url(url, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis_lib.RedisError:
        return False


def stop_group(popen: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM to a process started with start_new_session=True and its children; SIGKILL after `grace_s`."""
    try:
        os.killpg(popen.pid, signal.SIGTERM)
        popen.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


EMBEDDED_TINY = ("--weights", "synthetic", "--profile", "tiny", "--device", "cpu")


@dataclass
class ServeProcess:
    """A `ditto serve` started by `start_serve`: its process (own process group), address and log file."""

    popen: subprocess.Popen
    address: str
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


def start_ditto(args: Sequence[str], log: Path, ready: str, env: Mapping[str, str] | None = None,
                timeout_s: float = 300) -> subprocess.Popen:
    """`ditto ARGS` in a process group of its own, its output in `log`; returns once `ready` appears in the log. If
    it exits or `timeout_s` passes first: stops it and raises RuntimeError with the end of its log."""
    with open(log, "wb") as out:
        popen = subprocess.Popen([sys.executable, "-m", "ditto_app.cli", *args], cwd=ROOT,
                                 env=None if env is None else dict(env), stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while ready.encode() not in log.read_bytes():
        if popen.poll() is not None or time.monotonic() > deadline:
            stop_group(popen, 10)
            raise RuntimeError(f"ditto {args[0]} did not start (log: {log}):\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    return popen


def start_serve(log: Path, args: Sequence[str] = EMBEDDED_TINY, env: Mapping[str, str] | None = None,
                timeout_s: float = 300) -> ServeProcess:
    """`ditto serve ARGS --port <free>` (see `start_ditto`)."""
    port = free_port()
    popen = start_ditto(["serve", *args, "--port", str(port)], log, "READY orchestrator", env, timeout_s)
    return ServeProcess(popen, f"127.0.0.1:{port}", log)


@contextmanager
def serve_process(log: Path, args: Sequence[str] = EMBEDDED_TINY, env: Mapping[str, str] | None = None,
                  timeout_s: float = 300, grace_s: float = 30) -> Iterator[ServeProcess]:
    """`start_serve`, stopped (SIGTERM, SIGKILL after `grace_s`) when the block ends."""
    server = start_serve(log, args, env, timeout_s)
    try:
        yield server
    finally:
        stop_group(server.popen, grace_s)


def start_redis(port: int) -> subprocess.Popen:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("no Redis answers and redis-server is not installed: apt-get install redis-server, or set "
                         "REDIS_URL to a running server")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if redis_answers(url):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not start on port {port}")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    ready_line: str = ""
    metrics_port: int = 0  # Prometheus endpoint of this process (0 = none)

    @property
    def owner(self) -> str:
        """The worker id this process leases slots under (the default `worker_id`: host name and pid)."""
        return f"{os.uname().nodename}-{self.popen.pid}"


@dataclass
class LocalCluster:
    weights: str = "synthetic"
    profile: str = "tiny"
    redis_url: str = field(default_factory=lambda: load_settings().bus.redis_url)
    prefix: str = "ditto"
    port: int = 0
    slots: int = 8
    device: str = "cpu"
    env: dict[str, str] = field(default_factory=dict)
    metrics: bool = False  # give every process its own Prometheus port (Proc.metrics_port)
    log_dir: Path | None = None
    procs: dict[str, Proc] = field(default_factory=dict)
    redis_proc: subprocess.Popen | None = None
    webrtc_port: int | None = None  # start the WebRTC gateway on this HTTP port (0 = any free port); None = not

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.log_dir = Path(self.log_dir or tempfile.mkdtemp(prefix="ditto-up-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def webrtc_url(self) -> str:
        return f"http://127.0.0.1:{self.webrtc_port}" if self.webrtc_port else ""

    def _env(self) -> dict[str, str]:
        e = dict(os.environ)
        e.update({"REDIS_URL": self.redis_url, "DITTO_BUS__PREFIX": self.prefix, "DITTO_BUS__SLOTS": str(self.slots),
                  "DITTO_BUS__KIND": "redis", "PYTHONUNBUFFERED": "1", "DITTO_TELEMETRY__LOG_LEVEL": "info"})
        e.update(self.env)
        return e

    def ensure_redis(self) -> None:
        if redis_answers(self.redis_url):
            return
        u = urlparse(self.redis_url)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"no Redis answers at {redact_url(self.redis_url)}")
        self.redis_proc = start_redis(u.port or 6379)

    def _spawn(self, name: str, args: list[str], ready: str) -> Proc:
        assert self.log_dir is not None
        log = self.log_dir / f"{name}.log"
        metrics_port = free_port() if self.metrics else 0
        if metrics_port:
            args = [*args, "--metrics-port", str(metrics_port)]
        f = open(log, "wb")  # noqa: SIM115 - lives as long as the process
        popen = subprocess.Popen([sys.executable, "-m", "ditto_app.cli", *args], cwd=ROOT, env=self._env(),
                                 stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(name, popen, log, ready, metrics_port)
        self.procs[name] = proc
        return proc

    def start_worker(self, stage: str, name: str | None = None) -> Proc:
        return self._spawn(name or stage, ["worker", "--stage", stage, "--weights", self.weights, "--profile",
                                           self.profile, "--device", self.device, "--port", "0"], f"READY {stage}")

    def start(self, timeout: float = 180) -> LocalCluster:
        self.ensure_redis()
        if self.weights == "synthetic":  # generate once here, not three times in parallel
            from ditto_app.synthetic import ensure_synthetic

            ensure_synthetic(self.profile)
        for stage in pipeline.active().names:  # one worker per stage of the pipeline
            self.start_worker(stage)
        # distributed by DITTO_BUS__KIND=redis and REDIS_URL in its environment: no URL (maybe with a password) on
        # the command line, where any local user could read it
        self._spawn("orchestrator", ["serve", "--port", str(self.port)], "READY orchestrator")
        if self.webrtc_port is not None:  # a client of the orchestrator's public API, like any other
            self.webrtc_port = self.webrtc_port or free_port()
            self._spawn("webrtc-gateway", ["webrtc-gateway", "--port", str(self.webrtc_port), "--orchestrator",
                                           self.address], "READY webrtc-gateway")
        deadline = time.monotonic() + timeout
        self.wait_ready(timeout)
        self.wait_serving(max(1.0, deadline - time.monotonic()))
        return self

    def wait_serving(self, timeout: float = 60) -> None:
        """Until the orchestrator's gRPC health says SERVING: every stage has a live worker holding its slots."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        status = "no answer"
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.RpcError as err:
                    status = err.code().name
                orch = self.procs.get("orchestrator")
                if orch is not None and orch.popen.poll() is not None:
                    raise RuntimeError(f"orchestrator exited with {orch.popen.returncode}:\n"
                                       f"{orch.log.read_text()[-3000:]}")
                time.sleep(0.2)
        raise TimeoutError(f"the orchestrator at {self.address} is not SERVING after {timeout:.0f}s ({status}): "
                           f"a stage has no live worker; see the logs in {self.log_dir}")

    def wait_ready(self, timeout: float = 180, names: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        for name in names or list(self.procs):
            p = self.procs[name]
            while p.ready_line.encode() not in p.log.read_bytes():
                if p.popen.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.popen.returncode}:\n{p.log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not ready in {timeout}s:\n{p.log.read_text()[-3000:]}")
                time.sleep(0.1)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs[name]
        if p.popen.poll() is None:
            os.killpg(p.popen.pid, sig)
            p.popen.wait(30)

    def purge(self) -> None:
        """Delete every Redis key under this cluster's prefix (streams have no TTL; tests share one Redis)."""
        if not redis_answers(self.redis_url):
            return
        from ditto.bus.redis_streams import sync_client
        from ditto.keys import Keys

        client = sync_client(self.redis_url)  # on a Redis Cluster: scans every primary, deletes key by key
        try:
            for pattern in Keys(self.prefix).patterns():
                for key in list(client.scan_iter(match=pattern, count=1000)):
                    client.delete(key)
        finally:
            client.close()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.popen.poll() is None:
                try:
                    os.killpg(p.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for p in self.procs.values():
            try:
                p.popen.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.popen.pid, signal.SIGKILL)
        if self.redis_proc is not None:
            self.redis_proc.terminate()
            self.redis_proc.wait(10)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tail_logs(cluster: LocalCluster, stop: threading.Event) -> None:
    """Follow every process's log on stdout until `stop` is set (for `ditto up`)."""
    positions = {name: 0 for name in cluster.procs}
    while not stop.is_set():
        for name, p in cluster.procs.items():
            data = p.log.read_bytes()
            if len(data) > positions[name]:
                for line in data[positions[name]:].decode(errors="replace").splitlines():
                    print(f"[{name}] {line}", flush=True)
                positions[name] = len(data)
        time.sleep(0.3)

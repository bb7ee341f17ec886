"""Real processes of the hardening tests: a private redis-server and a `ditto serve` orchestrator (a module of its
own: test modules import it, never `conftest`, whose name other test folders share)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test alone on a free loopback port: it may be stopped, or have its commands counted,
    without touching the shared one."""

    def __init__(self, password: str | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.password = password
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if password:
            args += ["--requirepass", password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=1, decode_responses=True)

    def command_calls(self) -> dict[str, int]:
        """Calls per command since the last CONFIG RESETSTAT (INFO commandstats), e.g. {"scan": 3, ...}."""
        stats = self.client().info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


ROOT = Path(__file__).resolve().parents[2]


class Orchestrator:
    """`ditto serve` as its own process, orchestrator only (DITTO_BUS__KIND=redis, REDIS_URL from the environment,
    never the command line), its log in a file."""

    def __init__(self, log: Path, env: dict[str, str], timeout: float = 120) -> None:
        import os

        self.log = log
        e = dict(os.environ)
        e.update({"DITTO_BUS__KIND": "redis", "PYTHONUNBUFFERED": "1", "DITTO_TELEMETRY__LOG_LEVEL": "info",
                  "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python")])})
        e.update(env)
        self.args = [sys.executable, "-m", "ditto_app.cli", "serve", "--port", "0"]
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=e, stdout=f, stderr=subprocess.STDOUT)
        self.port = 0
        deadline = time.monotonic() + timeout
        while not self.port:
            text = log.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("READY orchestrator grpc="):
                    self.port = int(line.rsplit(":", 1)[1])
            if self.proc.poll() is not None and not self.port:
                raise RuntimeError(f"ditto serve exited with {self.proc.returncode}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"ditto serve not ready in {timeout} s:\n{text[-3000:]}")
            time.sleep(0.1)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cmdline(self) -> str:
        return Path(f"/proc/{self.proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()

    def kill(self, sig: int = 9) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

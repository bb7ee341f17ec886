"""The operator's kit against a real distributed stack (Redis, one `ditto worker` per stage, a `ditto serve --redis`
orchestrator; tiny profile), one stack for the module:
- every metric a dashboard panel or an alert rule names is exported by the running processes, with the labels the
  queries group and match by;
- `ditto loadtest` runs its steps against it;
- `ditto status` shows the workers, their slots and load, sessions per tenant, and pending entries and lag that grow
  while a stage is paused;
- a real Prometheus (Debian's package) scraping the stack fires "no live worker" once the motion stage's only worker
  is killed, and resolves it once a new one runs. Short scrape, evaluation and `for:` settings; every wait is a
  condition polled through Prometheus' HTTP API, with a deadline.
This module kills and restarts a worker in its last test, so that test runs last.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import yaml
from ops_helpers import (
    RULES,
    alert_rules,
    dashboard_exprs,
    exported_names,
    metric_names,
    portrait_png,
    requires_prometheus,
    scrape,
    tool,
)

from ditto_app.cluster import ROOT, LocalCluster, free_port
from ditto_app.loadtest.driver import synthetic_speech
from ditto_client import AsyncAvatarClient
from ditto_client.v1 import avatar_pb2

pytestmark = pytest.mark.e2e
LEASE_MS = 1000  # a killed worker's presence is gone after a second


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.2)
    return value


@pytest.fixture(scope="module")
def stack(redis_url, tmp_path_factory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(redis_url=redis_url, prefix=f"ditto-ops-{uuid.uuid4().hex[:10]}", slots=4, metrics=True,
                           env={"DITTO_BUS__LEASE_TTL_MS": str(LEASE_MS)}, log_dir=tmp_path_factory.mktemp("stack"))
    try:
        cluster.start(timeout=240)
        yield cluster
    except BaseException:
        for p in cluster.procs.values():
            print(f"----- {p.name} (exit {p.popen.poll()}) -----\n{p.log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        cluster.stop()
        cluster.purge()


@pytest.fixture(scope="module")
def avatar_id(stack) -> str:
    async def register() -> str:
        async with AsyncAvatarClient(stack.address) as client:
            return (await client.register_avatar(portrait_png())).avatar_id

    return asyncio.run(register())


def env_of(cluster: LocalCluster) -> dict[str, str]:
    """What a `ditto` command needs to find the cluster's keys."""
    return {**os.environ, "REDIS_URL": cluster.redis_url, "DITTO_BUS__PREFIX": cluster.prefix,
            "DITTO_BUS__SLOTS": str(cluster.slots)}


async def talk(address: str, avatar: str, seconds: float = 1.0) -> int:
    """One short session through the SDK, every frame read; returns the final status code (0: OK)."""
    async with AsyncAvatarClient(address) as client:
        stream = await client.open_session(avatar, idle_policy=avatar_pb2.IDLE_POLICY_FREEZE)
        for chunk in synthetic_speech(seconds).chunks(200):
            await stream.send_audio(chunk)
        await stream.end_audio()
        code = -1
        async for msg in stream:
            if msg.WhichOneof("kind") == "final":
                code = msg.final.status.code
        return code


# ---------------------------------------------------------------------------------------------- metrics
_BY = re.compile(r"\bby\s*\(([^)]*)\)\s*\(")
_SELECTOR = re.compile(r"\b(ditto_\w+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"")


def label_uses(expr: str) -> set[tuple[str, str]]:
    """(metric, label) pairs a PromQL expression relies on: the labels of its selectors' matchers, and those an
    aggregation groups by, for every metric inside that aggregation's parentheses."""
    uses = {(name, label) for name, body in _SELECTOR.findall(expr) for label in _MATCHER.findall(body)}
    for m in _BY.finditer(expr):
        depth, end = 1, m.end()
        while depth:  # to the parenthesis that closes the aggregated expression
            depth += {"(": 1, ")": -1}.get(expr[end], 0)
            end += 1
        labels = {x.strip() for x in m.group(1).split(",") if x.strip()}
        uses |= {(name, label) for name in metric_names(expr[m.end():end]) for label in labels}
    return uses


def _samples(texts: list[str]) -> dict[str, list[dict[str, str]]]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[dict[str, str]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, []).append(dict(s.labels))
    return out


def test_every_metric_the_dashboard_and_the_rules_name_is_exported(stack, avatar_id):
    assert asyncio.run(talk(stack.address, avatar_id)) == 0

    async def refused() -> None:  # an unknown avatar: one refusal, so the refusals counter has a sample
        async with AsyncAvatarClient(stack.address, retry_for_s=0) as client:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.open_session("no-such-avatar")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND

    asyncio.run(refused())
    procs = [stack.procs[name] for name in ("orchestrator", "audio_encoder", "motion_generator", "renderer")]
    texts = [scrape(p.metrics_port) for p in procs]
    exported = set().union(*(exported_names(t) for t in texts))
    samples = _samples(texts)
    queries = [r["expr"] for r in alert_rules()] + dashboard_exprs()
    for expr in queries:
        missing = metric_names(expr) - exported
        assert not missing, f"{expr!r} names metrics no process exports: {sorted(missing)}"
        # the labels it groups and matches by are on the series it reads (where those have samples yet); `le` is
        # on every histogram bucket, `instance` is added by Prometheus when it scrapes
        for name, label in label_uses(expr):
            if samples.get(name) and label not in ("le", "instance"):
                have = set().union(*(s.keys() for s in samples[name]))
                assert label in have, f"{expr!r}: {name} has labels {sorted(have)}, no {label!r}"

    # the new series are set by the code paths that should set them
    orch = _samples(texts[:1])
    assert sorted(s["stage"] for s in orch["ditto_stage_workers"]) == ["audio_encoder", "motion_generator", "renderer"]
    assert {"tenant": "default"} in orch["ditto_sessions_admitted_total"]
    assert {"code": "OK"} in orch["ditto_sessions_ended_total"]
    assert {"reason": "request", "code": "NOT_FOUND"} in orch["ditto_sessions_refused_total"]
    for text, stage in zip(texts[1:], ("audio_encoder", "motion_generator", "renderer"), strict=True):
        assert {"stage": stage} in _samples([text])["ditto_stage_forward_seconds_count"]
    assert "ditto_gpu_memory_bytes" in exported  # the family, with samples only where a GPU is in use


# ---------------------------------------------------------------------------------------------- loadtest
def test_loadtest_against_the_distributed_stack(stack, avatar_id, tmp_path):
    out = subprocess.run([sys.executable, "-m", "ditto_app.cli", "loadtest", "--server", stack.address,
                          "--avatar-id", avatar_id, "--sessions", "1,2", "--step-s", "1", "--speech-s", "1.2",
                          "--session-timeout-s", "600", "--keep-going", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((tmp_path / "loadtest.json").read_text())
    assert [s["users"] for s in summary["steps"]] == [1, 2]
    assert all(r["code"] == "OK" and r["frames"] == r["frames_expected"] == 30 for r in summary["sessions"]), \
        summary["sessions"]
    assert [len([r for r in summary["sessions"] if r["step"] == k]) for k in (1, 2)] == [1, 2]
    for step in summary["steps"]:
        assert step["first_frame_ms"]["p95"] > 0 and step["fps"]["min"] > 0 and step["errors"] == {}
    held = 0
    for step in summary["steps"]:  # the verdict agrees with the step table
        if not step["holds"]:
            break
        held = step["users"]
    assert summary["held_sessions"] == held
    assert re.fullmatch(r"holds (\d+ sessions?|no tested load) at p95 first frame <= 1000 ms and >= 24 fps(; .+)?",
                        summary["verdict"]), summary["verdict"]
    assert out.stdout.strip().splitlines()[-1] == summary["verdict"]


# ---------------------------------------------------------------------------------------------- ditto status
def status(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "ditto_app.cli", "status", *args], cwd=ROOT, env=env_of(cluster),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def snapshot(cluster: LocalCluster) -> dict:
    return json.loads(status(cluster, "--json", "--server", cluster.address).stdout)


def stage(snap: dict, name: str) -> dict:
    return next(s for s in snap["stages"] if s["stage"] == name)


def test_status_shows_workers_load_sessions_pending_and_lag(stack, avatar_id):
    idle = snapshot(stack)
    assert idle["server"] == {stack.address: "SERVING"} and len(idle["orchestrators"]) == 1
    for name in ("audio_encoder", "motion_generator", "renderer"):
        st = stage(idle, name)
        (worker,) = st["workers"]
        assert worker["worker"] == stack.procs[name].owner
        assert worker["slots"] == list(range(stack.slots)) and worker["capacity"] == 4 * stack.slots
        assert st["slots_held"] == stack.slots and list(st["addresses"].values()) == ["SERVING"]

    encoder = stack.procs["audio_encoder"]

    async def paused_encoder() -> tuple[dict, str]:
        """A session whose audio waits in the audio encoder's stream while that worker is stopped."""
        async with AsyncAvatarClient(stack.address) as client:
            stream = await client.open_session(avatar_id, idle_policy=avatar_pb2.IDLE_POLICY_FREEZE)
            os.killpg(encoder.popen.pid, signal.SIGSTOP)
            try:
                for chunk in synthetic_speech(1.0).chunks(200):
                    await stream.send_audio(chunk)
                # all said: however long the pause lasts on a loaded machine, the session has no idle timeout now
                await stream.end_audio()

                def waiting() -> dict | None:
                    snap = snapshot(stack)
                    return snap if stage(snap, "audio_encoder")["pending"] >= 5 else None

                seen = await asyncio.to_thread(wait_for, waiting, 120, "the paused stage's pending entries")
                page = await asyncio.to_thread(lambda: status(stack).stdout)
            finally:
                os.killpg(encoder.popen.pid, signal.SIGCONT)
            async for msg in stream:  # the session goes on once the worker runs again
                if msg.WhichOneof("kind") == "final":
                    assert msg.final.status.code == 0, msg.final.status.message
            return seen, page

    busy, page = asyncio.run(paused_encoder())
    enc = stage(busy, "audio_encoder")
    assert enc["lag_s"] is not None and enc["lag_s"] > 0
    # a stopped process answers no health check
    assert list(enc["addresses"].values())[0] in ("DEADLINE_EXCEEDED", "UNAVAILABLE"), enc
    assert busy["tenants"] == {"default": 1}
    assert all(stage(busy, n)["sessions"] == 1 for n in ("audio_encoder", "motion_generator", "renderer"))
    assert re.search(r"^audio_encoder\s+[01]\s+\d+/4\s+1\s+\d+\s+[\d.]+ s", page, re.M), page
    assert "sessions per tenant: default 1" in page

    def drained() -> bool:
        snap = snapshot(stack)
        return not snap["tenants"] and all(s["pending"] == 0 and s["lag_s"] is None for s in snap["stages"])

    wait_for(drained, 30, "the session's entries and keys gone after it ended")
    watched = status(stack, "--watch", "--interval", "0.2", "--count", "2").stdout
    assert watched.count("ditto status ") == 2, watched


# ---------------------------------------------------------------------------------------------- Prometheus
def prometheus_api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]


def alert_state(port: int, name: str, stage_name: str) -> str:
    """'firing', 'pending' or '' (not active) for one alert of one stage."""
    for a in prometheus_api(port, "alerts")["alerts"]:
        if a["labels"].get("alertname") == name and a["labels"].get("stage") == stage_name:
            return a["state"]
    return ""


@pytest.fixture
def prometheus(stack, tmp_path) -> Iterator[int]:
    """A real Prometheus scraping the four processes every second, evaluating the rules every second, with the
    "no live worker" alert's `for:` shortened to 2 s (the rules file itself is used as is otherwise)."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            if rule.get("alert") == "DittoStageNoLiveWorker":
                rule["for"] = "2s"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    targets = [f"127.0.0.1:{p.metrics_port}" for p in stack.procs.values() if p.metrics_port]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "scrape_configs": [{"job_name": "ditto", "static_configs": [{"targets": targets}]}]}))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{(tmp_path / 'prometheus.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_for(ready, 60, "Prometheus ready")
        yield port
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@requires_prometheus
def test_prometheus_fires_no_live_worker_when_the_only_worker_dies_and_resolves_it(stack, prometheus):
    port, stage_name = prometheus, "motion_generator"

    def scraped() -> bool:
        targets = prometheus_api(port, "targets")["activeTargets"]
        workers = prometheus_api(port, "query", query=f'ditto_stage_workers{{stage="{stage_name}"}}')["result"]
        return len(targets) == 4 and all(t["health"] == "up" for t in targets) and \
            [float(r["value"][1]) for r in workers] == [1.0]

    wait_for(scraped, 60, "all four processes scraped, one live motion worker seen")
    assert alert_state(port, "DittoStageNoLiveWorker", stage_name) == ""

    stack.kill(stage_name)  # SIGKILL: the stage's only worker, gone without handing anything over
    wait_for(lambda: alert_state(port, "DittoStageNoLiveWorker", stage_name) == "firing", 60,
             "DittoStageNoLiveWorker firing for the motion stage")
    assert alert_state(port, "DittoStageNoLiveWorker", "renderer") == ""  # the other stages are fine

    stack.start_worker(stage_name)
    stack.wait_ready(240, [stage_name])
    wait_for(lambda: alert_state(port, "DittoStageNoLiveWorker", stage_name) == "", 120,
             "DittoStageNoLiveWorker resolved once a motion worker runs again")
    stack.wait_serving(60)

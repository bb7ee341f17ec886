import io
import json
import subprocess
import sys

import pytest

from ditto import telemetry
from ditto.config import Settings, load_settings


def test_environment_overrides_nested_settings(monkeypatch):
    monkeypatch.setenv("DITTO_BUS__SLOTS", "8")
    monkeypatch.setenv("DITTO_BUS__KIND", "redis")
    monkeypatch.setenv("DITTO_MODEL__PROFILE", "tiny")
    s = load_settings()
    assert s.bus.slots == 8 and s.bus.kind == "redis" and s.model.profile == "tiny"
    assert load_settings(grpc_port=1234).grpc_port == 1234


def test_invalid_configuration_stops_with_the_variable_named(monkeypatch):
    monkeypatch.setenv("DITTO_BUS__SLOTS", "0")
    with pytest.raises(SystemExit, match="DITTO_BUS__SLOTS"):
        load_settings()
    monkeypatch.setenv("DITTO_BUS__SLOTS", "4")
    monkeypatch.setenv("DITTO_MODEL__DEVICE", "tpu")
    with pytest.raises(SystemExit, match="DITTO_MODEL__DEVICE"):
        load_settings(Settings)


def test_json_logs_carry_bound_ids_and_trace_ids():
    code = r"""
import sys
from ditto import telemetry
from ditto.config import TelemetrySettings
telemetry.setup(TelemetrySettings(trace_exporter="console"), "test-svc")
telemetry.bind(tenant="t1", session="s1")
log = telemetry.get_logger("x")
with telemetry.tracer().start_as_current_span("work"):
    carrier = telemetry.inject()
    log.info("hello", n=1)
ctx = telemetry.extract(carrier)
from opentelemetry import trace
with telemetry.tracer().start_as_current_span("child", context=ctx) as span:
    log.info("child", same=span.get_span_context().trace_id == int(carrier["traceparent"].split("-")[1], 16))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{") and '"event"' in line]
    hello = next(line for line in lines if line["event"] == "hello")
    assert hello["tenant"] == "t1" and hello["session"] == "s1" and hello["service"] == "test-svc"
    assert len(hello["trace_id"]) == 32
    child = next(line for line in lines if line["event"] == "child")
    assert child["same"] is True and child["trace_id"] == hello["trace_id"]


def test_metrics_are_registered_once_and_exposed():
    from prometheus_client import generate_latest

    c1 = telemetry.counter("ditto_test_things_total", "things", ("k",))
    c2 = telemetry.counter("ditto_test_things_total", "things", ("k",))
    assert c1 is c2
    c1.labels("a").inc(3)
    text = generate_latest(telemetry.REGISTRY).decode()
    assert 'ditto_test_things_total{k="a"} 3.0' in text
    assert io  # keep import used

"""Shared by the operator's-kit tests: where the dashboard and the rules are, the metric names a PromQL expression
uses and a /metrics page exports, Prometheus' own tools (Debian's `prometheus` package), a portrait."""

from __future__ import annotations

import os
import re
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from serving_helpers import portrait_png  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
RULES = OBSERVABILITY / "alerts.rules.yml"
RULE_TESTS = OBSERVABILITY / "alerts.test.yml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"

__all__ = ["portrait_png"]

# .ci/run runs `make setup` as root, which installs the package: there a missing tool fails the test instead.
INSTALL_PROMETHEUS = ("needs promtool and prometheus from Debian's prometheus package (apt-get install prometheus; "
                      "`make setup` installs it as root)")
requires_prometheus = pytest.mark.skipif(
    (shutil.which("promtool") is None or shutil.which("prometheus") is None) and not os.environ.get("CI"),
    reason=INSTALL_PROMETHEUS)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: {INSTALL_PROMETHEUS}")
    return path


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def dashboard_exprs() -> list[str]:
    import json

    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]


_METRIC = re.compile(r"\b(ditto_[a-z0-9_]+)\b")


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (every service metric is `ditto_`-prefixed)."""
    return set(_METRIC.findall(expr))


def exported_names(exposition: str) -> set[str]:
    """Every series name a /metrics page can carry, from its TYPE lines: a family that has no sample yet (a labelled
    counter before its first increment) is exported all the same, and a histogram exports its _bucket, _sum and
    _count series."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
    return names


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()

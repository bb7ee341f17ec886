"""The dashboard and the alert rules of deploy/observability, checked by the tools they are for: `promtool check
rules` and `promtool test rules` (one unit test that fires each alert, and a broken rule that makes them fail), the
dashboard's queries parsed by promtool too, the generated PrometheusRule and dashboard current, and the kustomize
component rendering them. Whether the metrics they name exist is tests/ops/test_ops_stack.py's job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ops_helpers import (
    DASHBOARD,
    OBSERVABILITY,
    ROOT,
    RULE_TESTS,
    RULES,
    alert_rules,
    dashboard_exprs,
    requires_prometheus,
    tool,
)

sys.path.insert(0, str(ROOT / "tests" / "deploy"))
from deploy_support import K8S_VERSIONS, kubectl, validate_k8s  # noqa: E402


def promtool(*args: str, cwd: Path = OBSERVABILITY) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@requires_prometheus
def test_rules_pass_promtool_check():
    out = promtool("check", "rules", RULES.name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in out.stdout


@requires_prometheus
def test_every_alert_has_a_unit_test_that_fires_it_and_they_pass():
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {check["alertname"] for case in cases for check in case["alert_rule_test"] if check["exp_alerts"]}
    quiet = {check["alertname"] for case in cases for check in case["alert_rule_test"] if not check["exp_alerts"]}
    names = {r["alert"] for r in alert_rules()}
    assert names <= fired, f"alerts no unit test fires: {sorted(names - fired)}"
    assert names <= quiet, f"alerts no unit test shows quiet (before `for:`, or on harmless series): " \
                           f"{sorted(names - quiet)}"
    out = promtool("test", "rules", RULE_TESTS.name)
    assert out.returncode == 0, out.stdout + out.stderr


@requires_prometheus
@pytest.mark.parametrize(("alert", "before", "after"), [
    ("DittoStageNoLiveWorker", "(ditto_stage_workers) < 1", "(ditto_stage_workers) < 0"),
    ("DittoRefusalsHigh", 'reason=~"capacity|unavailable"', 'reason=~"capacity|unavailable|quota"'),
])
def test_the_unit_tests_catch_a_broken_rule(tmp_path, alert, before, after):
    """The same unit tests against a copy of the rules with one alert broken: promtool must report that alert."""
    text = RULES.read_text()
    assert before in text
    (tmp_path / RULES.name).write_text(text.replace(before, after))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    out = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert out.returncode != 0 and f"alertname: {alert}" in out.stdout + out.stderr, out.stdout + out.stderr


@requires_prometheus
def test_dashboard_queries_parse(tmp_path):
    """Every panel query as a recording rule, `$__rate_interval` as Grafana would fill it: promtool parses them."""
    exprs = dashboard_exprs()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "1m")} for i, e in enumerate(exprs)]}]}
    (tmp_path / "dashboard.rules.yml").write_text(yaml.safe_dump(rules))
    out = promtool("check", "rules", "dashboard.rules.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def _run_tool(name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "deploy" / "tools" / name), "--check"], capture_output=True,
                          text=True, timeout=60)


def test_generated_files_are_current():
    for name in ("gen_dashboard.py", "gen_prometheusrule.py"):
        out = _run_tool(name)
        assert out.returncode == 0, out.stderr


def test_dashboard_is_well_formed():
    d = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert [v["name"] for v in d["templating"]["list"]] == ["datasource"]
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] and t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
    titles = " ".join(p["title"] for p in d["panels"]).lower()
    for topic in ("tenant", "refusals", "first-frame", "lag", "frames delivered", "batch", "forward",
                  "pending", "workers", "gpu memory"):
        assert topic in titles, f"no panel about {topic}"


def test_component_provisions_the_dashboard_the_rules_and_the_scrape(tmp_path):
    """The component on top of a production overlay, as an operator adds it (see its kustomization.yaml)."""
    overlay = tmp_path / "with-observability"
    overlay.mkdir()
    rel = Path(os.path.relpath(ROOT / "deploy", overlay))
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "ditto",
        "resources": [str(rel / "k8s" / "overlays" / "prod-gpu")], "components": [str(rel / "observability")]}))
    out = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    objs = [o for o in yaml.safe_load_all(out.stdout) if o]
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}

    cm = by[("ConfigMap", "ditto-grafana-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and cm["metadata"]["namespace"] == "ditto"
    assert json.loads(cm["data"]["ditto.json"]) == json.loads(DASHBOARD.read_text())
    for version in K8S_VERSIONS:
        validate_k8s(cm, version)

    rule = by[("PrometheusRule", "ditto-alerts")]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]

    monitor = by[("PodMonitor", "ditto")]
    selector = monitor["spec"]["selector"]["matchLabels"]
    port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    scraped = [o for o in objs if o["kind"] == "Deployment"
               and all(o["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())]
    names = {o["metadata"]["name"] for o in scraped}
    assert {"orchestrator", "audio-encoder", "motion-generator", "renderer"} <= names, names
    for o in scraped:
        ports = [p.get("name") for c in o["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
        assert port in ports, f"{o['metadata']['name']} has no {port!r} port to scrape"

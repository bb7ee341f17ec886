"""Write the Grafana dashboard of deploy/observability from the panel list below.

A dashboard's JSON is long and repetitive (ids, grid positions, field options); the panels themselves are a title,
the queries and a unit. They are listed here once, and the JSON is written from them:

    python deploy/tools/gen_dashboard.py          # rewrite deploy/observability/grafana-dashboard.json
    python deploy/tools/gen_dashboard.py --check  # exit 1 when the file is stale (the tests do this too)

Queries use `$__rate_interval` and the `$datasource` variable, so the dashboard works in any Grafana with a
Prometheus data source; every metric they name is exported by the services (tests/ops/test_ops_stack.py scrapes a
running stack and checks).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from generated import write_or_check

OUTPUT = Path(__file__).resolve().parents[1] / "observability" / "grafana-dashboard.json"
UID = "ditto-overview"
RATE = "$__rate_interval"

# (row title, [(panel title, unit, description, [(legend, expr), ...]), ...])
ROWS: list[tuple[str, list[tuple[str, str, str, list[tuple[str, str]]]]]] = [
    ("Sessions", [
        ("Open sessions by tenant", "short", "Sessions open now, over all orchestrator replicas.",
         [("{{tenant}}", "sum by (tenant) (ditto_sessions_active)")]),
        ("Admissions by tenant", "cpm", "Sessions admitted per minute.",
         [("{{tenant}}", f"sum by (tenant) (rate(ditto_sessions_admitted_total[{RATE}])) * 60")]),
        ("Refusals by code", "cpm", "Sessions refused before they started, per minute, by status code and reason "
         "(capacity and unavailable are the service's; quota and auth the tenant's; request a bad call).",
         [("{{code}} ({{reason}})", f"sum by (code, reason) (rate(ditto_sessions_refused_total[{RATE}])) * 60")]),
        ("Sessions ended by code", "cpm", "Sessions that ended after they started, per minute, by final status "
         "(CANCELLED: the client went away).",
         [("{{code}}", f"sum by (code) (rate(ditto_sessions_ended_total[{RATE}])) * 60")]),
    ]),
    ("What clients see", [
        ("First-frame latency", "s", "First audio chunk received to first frame sent, per session.",
         [(f"p{q}", f"histogram_quantile(0.{q}, sum by (le) (rate(ditto_first_frame_seconds_bucket[{RATE}])))")
          for q in (50, 95, 99)]),
        ("Lag behind realtime", "s", "How late sessions' frames leave against their realtime clock.",
         [("worst session", "max(ditto_session_lag_seconds)"),
          ("p95 of sessions", "quantile(0.95, ditto_session_lag_seconds)")]),
        ("Frames delivered", "fps", "Frames sent to clients per second, and those sent more than a frame late.",
         [("delivered", f"sum(rate(ditto_frames_sent_total[{RATE}]))"),
          ("late", f"sum(rate(ditto_frames_late_total[{RATE}]))")]),
        ("Delivered fps per session", "fps", "The frame rate sessions are delivered at (25 is realtime).",
         [("slowest session", "min(ditto_session_delivered_fps)"),
          ("median session", "quantile(0.5, ditto_session_delivered_fps)")]),
    ]),
    ("Stages", [
        ("Live workers per stage", "short", "Workers alive on the bus, as the orchestrator counts them (0: new "
         "sessions are refused).", [("{{stage}}", "max by (stage) (ditto_stage_workers)")]),
        ("Batch size", "short", "Items (sessions) per batched forward of the model, mean over the interval.",
         [("{{stage}}", f"sum by (stage) (rate(ditto_stage_batch_size_sum[{RATE}])) / "
                        f"sum by (stage) (rate(ditto_stage_batch_size_count[{RATE}]))")]),
        ("Forward time p95", "s", "One batched handler call (the model forward and the stage's work around it).",
         [("{{stage}}", "histogram_quantile(0.95, sum by (stage, le) "
                        f"(rate(ditto_stage_forward_seconds_bucket[{RATE}])))")]),
        ("Entries handled", "ops", "Stream entries each stage handled per second, by outcome.",
         [("{{stage}} {{outcome}}", f"sum by (stage, outcome) (rate(ditto_stage_entries_total[{RATE}]))")]),
    ]),
    ("Bus", [
        ("Bus lag per stage", "s", "Age of the newest entry each stage committed (creation to commit).",
         [("{{stage}}", "max by (stage) (ditto_stream_lag_seconds)")]),
        ("Stage latency p95", "s", "Entry creation to stage commit, p95.",
         [("{{stage}}", "histogram_quantile(0.95, sum by (stage, le) "
                        f"(rate(ditto_stage_latency_seconds_bucket[{RATE}])))")]),
        ("Pending entries per stage", "short", "Entries not yet done in each stage's slot streams (what the "
         "autoscalers act on).", [("{{stage}}", "sum by (stage) (ditto_stream_pending_entries)")]),
        ("GPU memory", "bytes", "Memory held on each GPU by the stage processes (empty without GPUs).",
         [("{{instance}} {{device}} {{kind}}", "sum by (instance, device, kind) (ditto_gpu_memory_bytes)")]),
    ]),
]

PANELS_PER_ROW = 4
PANEL_W, PANEL_H = 6, 8


def _panel(pid: int, x: int, y: int, title: str, unit: str, description: str,
           targets: list[tuple[str, str]]) -> dict:
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": PANEL_W, "h": PANEL_H},
        "fieldConfig": {"defaults": {"unit": unit, "min": 0, "custom": {"lineWidth": 1, "fillOpacity": 10}},
                        "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": {"type": "prometheus", "uid": "${datasource}"},
                     "expr": expr, "legendFormat": legend, "range": True}
                    for i, (legend, expr) in enumerate(targets)],
    }


def dashboard() -> dict:
    panels, pid, y = [], 1, 0
    for row_title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, spec in enumerate(row):
            panels.append(_panel(pid, (i % PANELS_PER_ROW) * PANEL_W, y + (i // PANELS_PER_ROW) * PANEL_H, *spec))
            pid += 1
        y += PANEL_H * -(-len(row) // PANELS_PER_ROW)
    return {
        "uid": UID,
        "title": "Ditto: sessions, latency, stages",
        "description": "The Ditto talking-head service: sessions and refusals by tenant, what clients see, the "
                       "stages' batching and the bus. Generated by deploy/tools/gen_dashboard.py.",
        "tags": ["ditto"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "label": "Data source", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0}]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    return write_or_check(__file__, OUTPUT, render, argv)


if __name__ == "__main__":
    sys.exit(main())

"""The load test's files: `loadtest.json` (every figure and every session) and `loadtest.html`, one self-contained
page (inline CSS and SVG, no script, nothing fetched) with the verdict, the step table and the plots: first-frame
latency per step, delivered fps per session over time, and the capacity curves (sessions against p95 first frame
and against the share of sessions keeping the frame rate)."""

from __future__ import annotations

import json
import time
from html import escape
from pathlib import Path
from typing import Any

from ditto_app.loadtest.driver import FPS_WINDOW_S
from ditto_app.loadtest.svg import Chart, color, ecdf

MAX_SESSION_ROWS = 500
MAX_FPS_LINES = 300

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1320px; color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.verdict { font-size: 18px; padding: 12px 16px; border-radius: 6px; margin: 14px 0; }
.holds { background: #e7f5e9; border-left: 6px solid #2ca02c; }
.fails { background: #fdecea; border-left: 6px solid #d62728; }
.meta { color: #555; } table { border-collapse: collapse; margin: 6px 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 9px; text-align: right; } th { background: #f6f6f6; }
td.l, th.l { text-align: left; } .no { color: #d62728; font-weight: 600; } .yes { color: #2ca02c; font-weight: 600; }
.charts { display: flex; flex-wrap: wrap; gap: 18px; }
svg.chart { background: #fff; border: 1px solid #e3e3e3; border-radius: 4px; }
svg .title { font-size: 14px; font-weight: 600; } svg .grid { stroke: #eee; }
svg .frame { fill: none; stroke: #bbb; }
svg .xtick { font-size: 11px; text-anchor: middle; fill: #555; }
svg .ytick { font-size: 11px; text-anchor: end; fill: #555; }
svg .xlabel, svg .ylabel { font-size: 12px; text-anchor: middle; fill: #333; } svg .legend { font-size: 12px; }
svg .band { font-size: 11px; text-anchor: middle; fill: #777; }
svg .ref { font-size: 11px; text-anchor: end; fill: #444; }
svg .vref { font-size: 11px; fill: #444; }
details { margin-top: 10px; }
"""


def write_reports(summary: dict[str, Any], out_dir: Path, name: str = "loadtest") -> tuple[Path, Path]:
    """Write `<name>.json` and `<name>.html` into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / f"{name}.json", out_dir / f"{name}.html"
    json_path.write_text(json.dumps(summary, indent=1) + "\n")
    html_path.write_text(html(summary))
    return json_path, html_path


def _fmt(v: Any, digits: int = 0, suffix: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}{suffix}"


def _pick(d: dict | None, key: str) -> Any:
    return None if d is None else d.get(key)


def _step_table(steps: list[dict[str, Any]]) -> str:
    head = ("sessions at once", "sessions", "admitted", "completed", "first frame p50 / p95 / p99 ms", "fps min / p50",
            "keeping fps", "lag p95 ms", "interrupt to silence p50 / p95 ms", "refusals (retry-after honoured)",
            "errors", "holds")
    rows = []
    for s in steps:
        ff, fps, lag, cut = s["first_frame_ms"], s["fps"], s["lag_ms"], s["interrupt_to_silence_ms"]
        ref = s["refusals"]
        refusals = ", ".join(f"{n} {c}" for c, n in ref["by_code"].items()) or "0"
        if ref["with_retry_after"]:
            refusals += f" ({ref['retry_after_honoured']}/{ref['with_retry_after']})"
        errors = ", ".join(f"{n} {c}" for c, n in s["errors"].items()) or "0"
        holds = '<span class="yes">yes</span>' if s["holds"] else f'<span class="no">no</span>: {escape(s["why_not"])}'
        cells = [str(s["users"]), str(s["sessions"]), str(s["admitted"]), str(s["completed"]),
                 " / ".join(_fmt(_pick(ff, q)) for q in ("p50", "p95", "p99")),
                 f"{_fmt(_pick(fps, 'min'), 1)} / {_fmt(_pick(fps, 'p50'), 1)}",
                 _fmt(None if s["fps_kept_share"] is None else 100 * s["fps_kept_share"], 0, " %"),
                 _fmt(_pick(lag, "p95")),
                 f"{_fmt(_pick(cut, 'p50'))} / {_fmt(_pick(cut, 'p95'))}" if cut else "-",
                 escape(refusals), escape(errors)]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + f'<td class="l">{holds}</td></tr>')
    return ("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


def _charts(summary: dict[str, Any]) -> list[str]:
    plan, steps, sessions = summary["plan"], summary["steps"], summary["sessions"]
    charts = []
    latency = Chart("First-frame latency per step", "first audio sent -> first frame received (ms)",
                    "sessions at or below (%)", y_min=0, y_max=100)
    for i, s in enumerate(steps):
        values = [r["first_frame_ms"] for r in sessions if r["step"] == i + 1 and r["first_frame_ms"] is not None]
        if values:
            latency.line(f"{s['users']} at once", ecdf(values), color(i))
    latency.vline(plan["target_first_frame_ms"], f"target {plan['target_first_frame_ms']:g} ms")
    charts.append(latency.svg())

    fps = Chart("Delivered fps per session over time", "time since the run started (s)",
                f"delivered fps ({FPS_WINDOW_S:g} s window)", width=1300 if len(steps) > 3 else 640, y_min=0)
    for i, s in enumerate(steps):
        mine = [r for r in sessions if r["step"] == i + 1]
        begin = min((r["opened_at"] for r in mine), default=0.0)
        end = max((r["ended_at"] or r["opened_at"] for r in mine), default=begin)
        fps.band(begin, end, f"{s['users']} at once")
    for r in sessions[:MAX_FPS_LINES]:
        fps.line("", [tuple(p) for p in r["fps_series"]], color(r["step"] - 1), opacity=0.55)
    fps.hline(plan["min_fps"], f"{plan['min_fps']:g} fps")
    charts.append(fps.svg())

    users = [s["users"] for s in steps]
    p95 = Chart("Capacity: p95 first frame", "sessions at once", "p95 first frame (ms)", x_integer=True)
    p95.line("p95", [(u, s["first_frame_ms"]["p95"]) for u, s in zip(users, steps, strict=True)
                     if s["first_frame_ms"]], color(0), markers=True)
    p95.hline(plan["target_first_frame_ms"], f"target {plan['target_first_frame_ms']:g} ms")
    charts.append(p95.svg())
    kept = Chart(f"Capacity: sessions keeping {plan['min_fps']:g} fps", "sessions at once", "sessions (%)",
                 y_min=0, y_max=100, x_integer=True)
    kept.line("keeping fps", [(u, 100 * s["fps_kept_share"]) for u, s in zip(users, steps, strict=True)
                              if s["fps_kept_share"] is not None], color(2), markers=True)
    kept.hline(100 * plan["keep_share"], f"needed {100 * plan['keep_share']:g} %")
    charts.append(kept.svg())

    cuts = [(i, [ms for r in sessions if r["step"] == i + 1 for ms in r["interrupts_ms"]]) for i in range(len(steps))]
    if any(v for _, v in cuts):
        chart = Chart("Interrupt to silence per step", "interrupt() -> Interrupted event (ms)",
                      "interrupts at or below (%)", y_min=0, y_max=100)
        for i, values in cuts:
            if values:
                chart.line(f"{steps[i]['users']} at once", ecdf(values), color(i))
        charts.append(chart.svg())
    return charts


def _session_table(sessions: list[dict[str, Any]]) -> str:
    head = ("step", "at once", "user", "status", "opened at s", "first frame ms", "frames", "fps", "lag ms",
            "interrupts ms", "refusals", "details")
    rows = []
    for r in sessions[:MAX_SESSION_ROWS]:
        cells = [r["step"], r["users"], r["user"], escape(r["code"]), _fmt(r["opened_at"], 1),
                 _fmt(r["first_frame_ms"]), r["frames"], _fmt(r["fps"], 1), _fmt(r["lag_ms"]),
                 ", ".join(f"{ms:.0f}" for ms in r["interrupts_ms"]) or "-",
                 ", ".join(f"{f['code']}" + (f" ({f['retry_after_ms']} ms)" if f["retry_after_ms"] is not None
                                             else "") for f in r["refusals"]) or "-"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells)
                    + f'<td class="l">{escape(r["details"][:200])}</td></tr>')
    more = (f"<p>{len(sessions) - MAX_SESSION_ROWS} more sessions are in the JSON file.</p>"
            if len(sessions) > MAX_SESSION_ROWS else "")
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>" + more)


def html(summary: dict[str, Any]) -> str:
    """The report page: self-contained, nothing to fetch."""
    plan = summary["plan"]
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(summary["started_unix_s"]))
    speech = (f"{plan['speech']} speech, {plan['speech_s']:g} s answers"
              + (f", barge-in {plan['barge_in_s']:g} s after each answer's first frame, {plan['answers']} answers "
                 "per session" if plan["barge_in_s"] else ""))
    verdict_class = "holds" if summary["held_sessions"] else "fails"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ditto loadtest: {escape(summary['verdict'])}</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>ditto loadtest</h1>",
        f'<p class="meta">{escape(plan["server"])} &middot; started {started} &middot; '
        f'{summary["duration_s"]:.0f} s &middot; client {escape(summary["client"]["host"])} '
        f'({summary["client"]["cpus"]} CPUs) &middot; {escape(speech)} &middot; steps of {plan["step_s"]:g} s</p>',
        f'<div class="verdict {verdict_class}" id="verdict">{escape(summary["verdict"])}</div>',
        "<h2>Steps</h2>", _step_table(summary["steps"]),
        "<h2>Plots</h2>", '<div class="charts">', *_charts(summary), "</div>",
        f"<details><summary>Every session ({len(summary['sessions'])})</summary>",
        _session_table(summary["sessions"]), "</details>",
        '<p class="meta">Measured at the client, through the public API: first frame = first audio chunk handed to '
        "the SDK to first frame received; fps = frames delivered per second over each answer's frames; lag = the "
        "latest a frame arrived against the realtime clock its answer's first frame started; interrupt to silence "
        "= interrupt() to the server's Interrupted event, after which no frame of the old answer arrives.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)

"""Per-step figures and the verdict.

A step *holds* when every session of it was admitted (refusals waited out are fine, given up are not), none ended in
an error, its p95 first frame is within the target and at least `keep_share` of its sessions were delivered at
`min_fps` or more. The service holds N sessions when the steps up to N all held: the verdict is the largest such
N, with the reason the next step did not hold.
"""

from __future__ import annotations

import os
import platform
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from ditto_app.loadtest.plan import LoadPlan

if TYPE_CHECKING:
    from ditto_app.loadtest.driver import LoadRun, SessionRecord

QUANTILES = (50, 95, 99)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def _spread(values: list[float], qs: tuple[int, ...] = QUANTILES) -> dict[str, float] | None:
    if not values:
        return None
    out = {f"p{q}": round(percentile(values, q), 1) for q in qs}
    out["max"] = round(max(values), 1)
    return out


def step_summary(plan: LoadPlan, users: int, records: list[SessionRecord]) -> dict[str, Any]:
    """One step's figures (the report's table row) and whether it held, with the reason when it did not."""
    admitted = [r for r in records if r.admitted]
    finished = [r for r in admitted if r.code == "OK"]
    errors = Counter(r.code for r in records if r.code not in ("OK", "REFUSED"))
    first = [r.first_frame_ms for r in admitted if r.first_frame_ms is not None]
    fps = [r.fps for r in finished if r.fps is not None]
    kept = sum(1 for f in fps if f >= plan.min_fps)
    refusals = [f for r in records for f in r.refusals]
    hinted = [f for f in refusals if f.retry_after_ms is not None]
    complete = [r.frames >= r.frames_expected for r in finished if r.frames_expected is not None]
    out: dict[str, Any] = {
        "users": users,
        "sessions": len(records),
        "admitted": len(admitted),
        "completed": len(finished),
        "first_frame_ms": _spread(first),
        "fps": {"min": round(min(fps), 2), "p5": round(percentile(fps, 5), 2), "p50": round(percentile(fps, 50), 2)}
        if fps else None,
        "fps_kept_share": round(kept / len(fps), 3) if fps else None,
        "lag_ms": _spread([r.lag_ms for r in finished if r.lag_ms is not None]),
        "interrupt_to_silence_ms": _spread([ms for r in admitted for ms in r.interrupts_ms]),
        "interrupts": sum(len(r.interrupts_ms) for r in admitted),
        "refusals": {
            "by_code": dict(sorted(Counter(f.code for f in refusals).items())),
            "with_retry_after": len(hinted),
            # the hint was honoured: this client waited at least as long as told before trying again
            "retry_after_honoured": sum(1 for f in hinted if f.waited_ms is not None
                                        and f.waited_ms >= (f.retry_after_ms or 0)),
            "admitted_after_retry": sum(1 for r in admitted if r.refusals),
            "gave_up": sum(1 for r in records if r.code == "REFUSED"),
        },
        "errors": dict(sorted(errors.items())),
        "frames_complete": all(complete) if complete else None,
    }
    out["why_not"] = _why_not(plan, out)
    out["holds"] = not out["why_not"]
    return out


def _why_not(plan: LoadPlan, s: dict[str, Any]) -> str:
    if s["refusals"]["gave_up"]:
        refused = s["refusals"]
        return f"{refused['gave_up']} of {s['sessions']} sessions were refused ({_codes(refused['by_code'])})"
    if s["errors"]:
        return f"sessions ended in errors ({_codes(s['errors'])})"
    if not s["completed"]:
        return "no session completed"
    p95 = s["first_frame_ms"]["p95"] if s["first_frame_ms"] else None
    if p95 is None or p95 > plan.target_first_frame_ms:
        return f"p95 first frame {p95:.0f} ms > {plan.target_first_frame_ms:g} ms" if p95 is not None \
            else "no first frame"
    if s["fps_kept_share"] is None or s["fps_kept_share"] < plan.keep_share:
        share = s["fps_kept_share"] or 0.0
        return f"{share:.0%} of sessions kept {plan.min_fps:g} fps (needs {plan.keep_share:.0%})"
    if s["frames_complete"] is False:
        return "frames missing from completed sessions"
    return ""


def _sessions(n: int) -> str:
    return f"{n} session" if n == 1 else f"{n} sessions"


def _codes(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {code}" for code, n in counts.items())


def verdict(plan: LoadPlan, steps: list[dict[str, Any]], stopped: str = "") -> tuple[int, str]:
    """(sessions held, the one-line verdict)."""
    bar = f"p95 first frame <= {plan.target_first_frame_ms:g} ms and >= {plan.min_fps:g} fps"
    held, failed = 0, None
    for s in steps:
        if not s["holds"]:
            failed = s
            break
        held = max(held, s["users"])
    if failed is None and not steps:
        return 0, "no step ran"
    tail = f"; at {_sessions(failed['users'])}: {failed['why_not']}" if failed else ""
    if stopped and failed is None:
        tail = f"; {stopped}"
    if held:
        return held, f"holds {_sessions(held)} at {bar}{tail}"
    return 0, f"holds no tested load at {bar}{tail}"


def summarize(run: LoadRun) -> dict[str, Any]:
    """Everything the report shows: the plan, the client machine, one summary per step, every session, the
    verdict."""
    from dataclasses import asdict

    plan = run.plan
    steps = [step_summary(plan, users, [r for r in run.sessions if r.step == k])
             for k, users in enumerate(run.steps_run, 1)]
    held, line = verdict(plan, steps, run.stopped)
    sessions = []
    for r in run.sessions:
        d = asdict(r)
        d["first_frame_ms"] = None if r.first_frame_ms is None else round(r.first_frame_ms, 1)
        sessions.append(d)
    return {
        "tool": "ditto loadtest",
        "plan": plan.public(),
        "avatar_id": run.avatar_id,
        "client": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "started_unix_s": round(run.started_unix_s, 3),
        "duration_s": round(run.duration_s, 2),
        "stopped": run.stopped,
        "steps": steps,
        "held_sessions": held,
        "verdict": line,
        "sessions": sessions,
    }

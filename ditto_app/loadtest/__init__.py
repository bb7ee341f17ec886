"""`ditto loadtest`: how many sessions a running service holds, measured the way its users talk to it.

A client of the public `ditto.v1.Avatar` API through the SDK (`ditto_client`) only, so it runs against any
deployment (address, API key, TLS) and what it measures is what a user's application sees. Load comes in steps:
each step runs N virtual users at once for a duration, every user opening sessions back to back, each session
speaking one answer (realtime-paced or handed over at once, as text-to-speech does), optionally barged in on. Per
step it reports first-frame latency, the frame rate each session was delivered at, lag behind realtime,
interrupt-to-silence latency, refusals and errors, and at the end writes a JSON file, a self-contained HTML report
with plots, and a one-line verdict.

- `plan.py`: what to run (typed, validated) and how steps are written (`1,2,4`, `1..32`).
- `driver.py`: the virtual users and their sessions, the step runner, the progress line.
- `summary.py`: per-step statistics and the verdict.
- `report.py` / `svg.py`: the JSON and HTML report, charts drawn as inline SVG.
"""

from ditto_app.loadtest.driver import run_load
from ditto_app.loadtest.plan import LoadPlan, parse_ramp, parse_steps
from ditto_app.loadtest.report import write_reports
from ditto_app.loadtest.summary import summarize

__all__ = ["LoadPlan", "parse_ramp", "parse_steps", "run_load", "summarize", "write_reports"]

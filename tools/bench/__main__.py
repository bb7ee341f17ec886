"""`make bench` (`python -m tools.bench [--only PART ...]`): run every stage's benchmark and the serving benchmark;
write JSON per part under bench/results/ and one readable table, bench/results/SUMMARY.md, naming the machine each
number came from."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from tools.bench import machine, record

PARTS = {
    "audio": "tools.bench.audio",
    "motion": "tools.bench.motion",
    "renderer": "tools.bench.renderer",
    "postprocess": "tools.bench.postprocess",
    "matte": "tools.bench.matte",  # the person matte: per source frame at registration, per output frame
    "onnxruntime": "tools.bench.onnxruntime",
    "serving": "tools.bench.serving",
    "bus_reliability": "tools.bench.bus_reliability",
    "bus_capacity": "tools.bench.bus_capacity",  # entries/s, MB/s and Redis CPU per entry: one Redis, a cluster
    "agents": "tools.bench.agents",
    "webrtc": "tools.bench.webrtc",
    "edges": "tools.bench.edges",  # reliability: bombs, quota reclaim, non-reading clients
}


def _rows(name: str, result: object, prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if isinstance(result, dict):
        for k, v in result.items():
            if k in ("machine",):
                continue
            rows += _rows(name, v, f"{prefix}{k}." if isinstance(v, (dict, list)) else f"{prefix}{k}")
    elif isinstance(result, list):
        for i, v in enumerate(result):
            rows += _rows(name, v, f"{prefix}{i}.")
    else:
        value = f"{result:.4g}" if isinstance(result, float) else str(result)
        rows.append((prefix.rstrip("."), value))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench", description="run the benchmarks (make bench)")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--only", nargs="*", choices=sorted(PARTS), default=None)
    ap.add_argument("--summary", action="store_true", help="only rewrite SUMMARY.md from the JSON files there")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine()
    summary = [f"# Benchmarks\n\nMachine: {json.dumps(info)}\nDate: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"]
    failed = []
    for name, module in PARTS.items():
        if args.summary or (args.only and name not in args.only):
            continue
        print(f"== {name} ({module})", flush=True)
        try:
            record(name, args.out, importlib.import_module(module).run)
        except Exception:
            traceback.print_exc()
            failed.append(name)
    # The table covers every part with results in the folder, so `--only` refreshes one part and keeps the rest.
    for name in PARTS:
        path = args.out / f"{name}.json"
        if name in failed:
            summary.append(f"\n## {name}\n\nFAILED, see the log.\n")
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        machine_line = json.dumps(result.get("machine", {}))
        summary.append(f"\n## {name}\n\nMachine: {machine_line}\n\n| metric | value |\n|---|---|")
        summary += [f"| {k} | {v} |" for k, v in _rows(name, result)]
    (args.out / "SUMMARY.md").write_text("\n".join(summary) + "\n")
    print((args.out / "SUMMARY.md").read_text())
    return 1 if failed else 0



if __name__ == "__main__":
    sys.exit(main())

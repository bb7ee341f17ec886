"""Benchmarks, all in one place: one module per part (`audio`, `motion`, `renderer`: each stage's model speed;
`serving`: first-frame latency and delivered frame rate under concurrent sessions), each with `run(out_dir) -> dict`.
`python -m tools.bench` (`make bench`) runs them and writes bench/results/ with a SUMMARY.md naming the machine.
A part's `run` returns its result and never writes `<part>.json` itself: `record` does, once, with the machine and
the duration, whether the part runs under `make bench` or on its own (`python -m tools.bench.<part>`)."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return info


def record(name: str, out_dir: Path, run: Callable[..., dict | None], **options: Any) -> dict:
    """Run a part (`run(out_dir, **options)`) and write bench/results/<name>.json: its result, the machine it ran on
    and how long it took. Returns what was written; a part that raises writes nothing."""
    out_dir = Path(out_dir)
    started = time.time()
    result = {**(run(out_dir, **options) or {}), "machine": machine(), "seconds": round(time.time() - started, 1)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    return result

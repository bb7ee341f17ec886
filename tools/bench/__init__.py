"""Benchmarks, all in one place: one module per part (`audio`, `motion`, `renderer`: each stage's model speed;
`serving`: first-frame latency and delivered frame rate under concurrent sessions), each with `run(out_dir) -> dict`.
`python -m tools.bench` (`make bench`) runs them and writes bench/results/ with a SUMMARY.md naming the machine."""

from __future__ import annotations

import os
import platform
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

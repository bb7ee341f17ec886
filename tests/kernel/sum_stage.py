"""A tiny stage for bus tests: keeps a running sum per session, so a lost or doubly applied entry shows up in the
numbers. Used in-process and by `sum_worker_proc.py` (a real process that the tests SIGKILL)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from ditto import codec
from ditto.bus.worker import Output, WorkItem, WorkResult

STAGE = "summer"


class RunningSum:
    stage = STAGE
    max_batch = 64  # sessions per round

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []

    async def process(self, items: Sequence[WorkItem]) -> list[WorkResult]:
        self.batch_sizes.append(len(items))
        out = []
        for item in items:
            total = int(item.state or b"0")
            x = int(codec.unnamed(item.entry.tensors)["x"])
            total += x
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            out.append(WorkResult(outputs=[Output("out", tensors={"sum": np.array(total), "x": np.array(x)})],
                                  state=str(total).encode()))
        return out

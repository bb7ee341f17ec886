"""The jobs a decoder helper may run, by name: the decoding functions of this package and nothing else."""

from __future__ import annotations

import importlib
from typing import Any

JOBS = {
    "decode_frames": "ditto.media.visual:decode_frames",
    "normalise": "ditto.media.visual:normalise",
    "decode_for_render": "ditto.media.audio:decode_for_render",
}


def job(name: str) -> Any:
    module, function = JOBS[name].split(":")
    return getattr(importlib.import_module(module), function)

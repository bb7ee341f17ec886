"""The control timeline of one session: overall controls, time-coded spans and per-frame controls, keyed by the
session's 25 fps frame index. `at(frame)` gives the merged control dict motion stitch reads for that frame.

Precedence: overall < spans (later added wins) < per-frame. Keys are those of `stitch.py` plus `emotion` (any form
`condition.emotion_probs` accepts) and `blink_interval_s`. The whole timeline serialises to JSON (session state).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KNOWN_KEYS = {
    "delta_pitch", "delta_yaw", "delta_roll", "alpha_pitch", "alpha_yaw", "alpha_roll", "delta_exp", "vad_alpha",
    "fade_alpha", "fade_out_keys", "emotion", "blink_now", "blink_interval_s", "gaze_fix",
}


def check_controls(ctrl: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and normalise one control dict (clear errors for bad input)."""
    out: dict[str, Any] = {}
    for k, v in ctrl.items():
        if k not in KNOWN_KEYS:
            raise ValueError(f"unknown motion control {k!r}; known: {', '.join(sorted(KNOWN_KEYS))}")
        if k == "delta_exp":
            arr = np.asarray(v, np.float32).reshape(-1)
            if arr.size != 63:
                raise ValueError(f"delta_exp needs 63 values (21 keypoints x 3), got {arr.size}")
            out[k] = arr.tolist()
        elif k == "emotion":
            from .condition import emotion_probs

            out[k] = emotion_probs(v).tolist()                         # validated, stored as probabilities
        elif k == "fade_out_keys":
            out[k] = [str(x) for x in v]
        elif k in ("blink_now", "gaze_fix"):
            out[k] = bool(v)
        else:
            f = float(v)
            if not np.isfinite(f):
                raise ValueError(f"control {k} must be finite, got {v}")
            out[k] = f
    return out


@dataclass
class ControlTimeline:
    overall: dict[str, Any] = field(default_factory=dict)
    spans: list[tuple[int, int | None, dict[str, Any]]] = field(default_factory=list)  # [start, end) or open
    frames: dict[int, dict[str, Any]] = field(default_factory=dict)

    def set_overall(self, ctrl: Mapping[str, Any]) -> None:
        self.overall.update(check_controls(ctrl))

    def add_span(self, start: int, end: int | None, ctrl: Mapping[str, Any]) -> None:
        """Controls for frames [start, end); end None (or 0 from the API) = until replaced."""
        if end is not None and end <= start:
            end = None if end == 0 else end
            if end is not None:
                raise ValueError(f"control span end {end} must be after its start {start}")
        self.spans.append((int(start), end, check_controls(ctrl)))
        self._drop_replaced()  # spans the new one wholly replaces are gone at once, not at the next window

    def set_frame(self, frame: int, ctrl: Mapping[str, Any]) -> None:
        self.frames.setdefault(int(frame), {}).update(check_controls(ctrl))

    def at(self, frame: int) -> dict[str, Any]:
        out = dict(self.overall)
        for start, end, ctrl in self.spans:
            if start <= frame and (end is None or frame < end):
                out.update(ctrl)
        out.update(self.frames.get(frame, {}))
        return out

    def prune(self, before: int) -> None:
        """Forget what can no longer apply, keeping the checkpointed state small: frames already emitted, spans
        that ended, and spans wholly replaced by a later open span over the same controls (later spans win)."""
        self.frames = {f: c for f, c in self.frames.items() if f >= before}
        self.spans = [s for s in self.spans if s[1] is None or s[1] > before]
        self._drop_replaced(before)

    def _drop_replaced(self, before: int | None = None) -> None:
        live = []
        for i, (start, end, ctrl) in enumerate(self.spans):
            first = start if before is None else max(start, before)
            if any(e2 is None and s2 <= first and ctrl.keys() <= c2.keys() for s2, e2, c2 in self.spans[i + 1:]):
                continue
            live.append((start, end, ctrl))
        self.spans = live

    def to_json(self) -> str:
        return json.dumps({"overall": self.overall, "spans": self.spans,
                           "frames": {str(k): v for k, v in self.frames.items()}})

    @classmethod
    def from_json(cls, text: str) -> ControlTimeline:
        d = json.loads(text)
        return cls(d["overall"], [(int(s), None if e is None else int(e), c) for s, e, c in d["spans"]],
                   {int(k): v for k, v in d["frames"].items()})

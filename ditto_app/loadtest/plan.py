"""What a load test runs: the target, the steps, the speech, the bounds and the targets of the verdict."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator

MAX_STEPS = 64
MAX_USERS = 4096


class LoadPlan(BaseModel):
    """A load test, validated before anything connects."""

    model_config = {"extra": "forbid"}

    server: str = Field(description="host:port of the public Avatar API")
    api_key: SecretStr | None = Field(None, description="sent as x-api-key; never printed or written to the report")
    tls: bool = False
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    avatar_id: str | None = Field(None, description="an avatar registered before")
    portrait: Path | None = Field(None, description="an image (or short video) to register first")

    steps: list[int] = Field(description="concurrent sessions per step, in order")
    step_s: float = Field(30.0, gt=0, description="each step starts sessions for this long")
    max_sessions_per_step: int = Field(0, ge=0, description="stop starting sessions in a step after this many "
                                       "(0: no limit but the step's time)")
    max_total_s: float = Field(3600.0, gt=0, description="the whole run stops starting sessions after this; "
                               "sessions still open then are cut")
    session_timeout_s: float = Field(0.0, ge=0, description="a session open longer is cut and counted as an "
                                     "error (0: 60 s plus 4x the speech)")

    speech: Literal["realtime", "bursty"] = "realtime"
    speech_s: float = Field(8.0, gt=0, le=600, description="one answer's length")
    audio: Path | None = Field(None, description="a PCM WAV file to speak (looped or cut to speech_s); "
                               "default: a synthetic voice")
    chunk_ms: int = Field(200, ge=20, le=1000, description="audio chunk length (realtime pacing step)")
    barge_in_s: float = Field(0.0, ge=0, description="interrupt this long after an answer's first frame "
                              "(0: never)")
    answers: int = Field(1, ge=1, le=100, description="answers per session; with barge-in all but the last are "
                         "interrupted")
    idle: Literal["alive", "freeze"] = Field("freeze", description="the sessions' idle policy")
    overlap: int = Field(0, ge=0, le=79, description="window overlap (0: the server's default)")
    sampling_steps: int = Field(0, ge=0, le=1000, description="DDIM steps (0: the server's default)")

    target_first_frame_ms: float = Field(1000.0, gt=0, description="a step holds when its p95 first frame is at "
                                         "most this")
    min_fps: float = Field(24.0, gt=0, le=25, description="a session keeps realtime when delivered at this rate")
    keep_share: float = Field(0.95, gt=0, le=1, description="...and a step holds when this share of its sessions do")
    keep_going: bool = Field(False, description="run every step, even after one did not hold")

    @model_validator(mode="after")
    def _coherent(self) -> LoadPlan:
        if not self.steps or len(self.steps) > MAX_STEPS or any(n < 1 or n > MAX_USERS for n in self.steps):
            raise ValueError(f"steps must be 1 to {MAX_STEPS} values, each 1..{MAX_USERS} sessions")
        if (self.avatar_id is None) == (self.portrait is None):
            raise ValueError("give exactly one of an avatar id or a portrait to register")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("give both a client certificate and its key, or neither")
        if self.barge_in_s and self.barge_in_s >= self.speech_s:
            raise ValueError(f"barge-in after {self.barge_in_s:g} s never happens in a {self.speech_s:g} s answer; "
                             "make it shorter than the speech")
        if self.barge_in_s and self.answers < 2:
            self.answers = 2  # an interrupted answer is followed by the one that interrupted it
        return self

    @property
    def timeout_s(self) -> float:
        """How long one session may stay open before it is cut."""
        return self.session_timeout_s or 60.0 + 4 * self.speech_s * self.answers

    def public(self) -> dict:
        """The plan as the report shows it: everything but the secret."""
        out = self.model_dump(mode="json", exclude={"api_key"})
        out["api_key"] = "(set)" if self.api_key else None
        return out


def parse_steps(text: str) -> list[int]:
    """`1,2,4,8` -> [1, 2, 4, 8]."""
    try:
        steps = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--sessions takes comma-separated counts like 1,2,4,8, not {text!r}") from None
    if not steps:
        raise ValueError("--sessions needs at least one count")
    return steps


_RAMP = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*(?::\s*(\d+))?\s*$")


def parse_ramp(text: str) -> list[int]:
    """`A..B` doubles from A up to B (B included as the last step); `A..B:K` goes up by K."""
    m = _RAMP.match(text)
    if not m:
        raise ValueError(f"--ramp takes A..B (doubling) or A..B:K (steps of K), not {text!r}")
    lo, hi, by = int(m[1]), int(m[2]), int(m[3]) if m[3] else 0
    if lo < 1 or hi < lo:
        raise ValueError(f"--ramp {text}: need 1 <= A <= B")
    steps: list[int] = []
    n = lo
    while n < hi and len(steps) <= MAX_STEPS:
        steps.append(n)
        n = n + by if by else n * 2
    steps.append(hi)
    return steps

"""The load itself: virtual users opening sessions through the SDK, step after step, with a progress line.

Each step runs `users` virtual users at once. A user opens a session, speaks `answers` answers of `speech_s` seconds
(realtime-paced: a chunk when it would be spoken; bursty: each answer handed over whole, as text-to-speech does,
the SDK writing it as fast as the server reads), barges in `barge_in_s` after an answer's first frame when asked,
ends the audio and reads every frame until the final status; then it opens the next session, until the step's
time (or session count) is used up. A user refused for good (no retry hint, or one that would pass the step's end)
stops for the step; one whose session failed pauses a second before the next. A step ends when its last session
has; the next begins after it, so every step's figures are its own. Nothing runs unbounded: a session is cut after
the plan's timeout, the whole run after `max_total_s`.

What a session records (`SessionRecord`) is measured on this side of the API: first frame = first audio chunk
handed to the SDK -> first frame received; delivered fps over each epoch's frames; lag = how late a frame arrives
against the realtime clock its epoch's first frame starts; interrupt-to-silence = `interrupt()` -> the server's
Interrupted event, after which no frame of the old answer comes.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ditto_app.loadtest.plan import LoadPlan
from ditto_client.timeline import FPS, FRAME_S

FPS_WINDOW_S = 2.0  # the fps-over-time series counts frames over this window, once a second
FAILURE_PAUSE_S = 1.0  # a user whose session failed waits this long before its next one


# ---------------------------------------------------------------------------------------------- the speech
@dataclass(frozen=True)
class Speech:
    """One answer's audio, PCM16 little-endian."""

    pcm: bytes
    rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (2 * self.channels * self.rate)

    def chunks(self, chunk_ms: int) -> list[bytes]:
        step = self.rate * chunk_ms // 1000 * 2 * self.channels
        return [self.pcm[i:i + step] for i in range(0, len(self.pcm), step)]


def synthetic_speech(seconds: float, rate: int = 16000) -> Speech:
    """A voice-like signal (a few harmonics under a 4 Hz syllable envelope)."""
    t = np.arange(int(rate * seconds)) / rate
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t))
    voice = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((130, 260, 650, 1100)))
    return Speech((np.clip(0.25 * envelope * voice, -1, 1) * 32767).astype("<i2").tobytes(), rate, 1)


def wav_speech(path: Any, seconds: float) -> Speech:
    """A 16-bit PCM WAV file, looped or cut to `seconds`."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getcomptype() != "NONE":
            raise ValueError(f"{path}: give a 16-bit PCM WAV file (e.g. ffmpeg -i IN -ac 1 -ar 16000 -c:a pcm_s16le "
                             "OUT.wav)")
        rate, channels, pcm = w.getframerate(), w.getnchannels(), w.readframes(w.getnframes())
    if not pcm:
        raise ValueError(f"{path}: no audio")
    want = int(rate * seconds) * 2 * channels
    return Speech((pcm * math.ceil(want / len(pcm)))[:want], rate, channels)


# ---------------------------------------------------------------------------------------------- one session
@dataclass
class Refusal:
    code: str
    retry_after_ms: int | None
    waited_ms: float | None = None  # how long this client waited before trying again (None: it gave up)


@dataclass
class SessionRecord:
    """One session as its client saw it. Times are seconds since the run started."""

    step: int
    users: int
    user: int
    opened_at: float
    code: str = ""                      # final status name; REFUSED (never admitted), TIMEOUT, CUT (run's end)
    details: str = ""
    admitted_at: float | None = None
    first_audio_at: float | None = None
    first_frame_at: float | None = None
    ended_at: float | None = None
    frames: int = 0
    frames_expected: int | None = None  # known when nothing interrupts and the idle policy adds no frames
    fps: float | None = None
    lag_ms: float | None = None         # the latest any frame came against its epoch's realtime clock
    interrupts_ms: list[float] = field(default_factory=list)  # interrupt() -> Interrupted event
    refusals: list[Refusal] = field(default_factory=list)
    fps_series: list[tuple[float, float]] = field(default_factory=list)  # (time, fps over the window before it)

    @property
    def first_frame_ms(self) -> float | None:
        if self.first_frame_at is None or self.first_audio_at is None:
            return None
        return (self.first_frame_at - self.first_audio_at) * 1000

    @property
    def admitted(self) -> bool:
        return self.admitted_at is not None


class _Frames:
    """Frame arrivals of one session, per epoch: fps, lag and the per-second series come from them."""

    def __init__(self) -> None:
        self.epochs: dict[int, list[tuple[float, int]]] = {}  # epoch -> [(arrival, index)]

    def add(self, epoch: int, index: int, at: float) -> None:
        self.epochs.setdefault(epoch, []).append((at, index))

    def fps(self) -> float | None:
        frames = sum(len(a) - 1 for a in self.epochs.values() if len(a) > 1)
        span = sum(a[-1][0] - a[0][0] for a in self.epochs.values() if len(a) > 1)
        return frames / span if span > 0 else None

    def lag_ms(self) -> float | None:
        late = [at - (a[0][0] + (i - a[0][1]) * FRAME_S) for a in self.epochs.values() for at, i in a]
        return max(0.0, max(late)) * 1000 if late else None

    def series(self) -> list[tuple[float, float]]:
        """Delivered fps over the FPS_WINDOW_S before each whole second from the first frame to the last."""
        times = sorted(at for a in self.epochs.values() for at, _ in a)
        if len(times) < 2:
            return []
        out, t = [], times[0] + 1.0
        while t < times[-1] + 1.0:
            start = max(t - FPS_WINDOW_S, times[0])  # frames after `start` up to t: each one frame interval's worth
            lo, hi = np.searchsorted(times, [start, t], side="right")
            out.append((round(t, 3), round(float(hi - lo) / (t - start), 2)))
            t += 1.0
        return out


async def run_session(client: Any, plan: LoadPlan, avatar_id: str, speech: Speech, clock: Callable[[], float],
                      rec: SessionRecord, admit_until: float) -> None:
    """Open one session (waiting out refusals that carry a retry hint, until `admit_until`), speak, read it to the
    end. Fills `rec`; raises nothing but cancellation."""
    import grpc

    from ditto_client import session_config
    from ditto_client.status import retry_hint_ms
    from ditto_client.v1 import avatar_pb2

    cfg = session_config(avatar_id, sample_rate_hz=speech.rate, channels=speech.channels, seed=rec.user + 1,
                         idle_policy=avatar_pb2.IDLE_POLICY_FREEZE if plan.idle == "freeze"
                         else avatar_pb2.IDLE_POLICY_ALIVE, overlap=plan.overlap, sampling_steps=plan.sampling_steps)
    stream = None
    while stream is None:
        try:
            stream = await client.open_session(avatar_id, config=cfg, retry_for_s=0)
        except grpc.aio.AioRpcError as err:
            refusal = Refusal(err.code().name, retry_hint_ms(err.trailing_metadata()))
            rec.refusals.append(refusal)
            if refusal.retry_after_ms is None or clock() + refusal.retry_after_ms / 1000 > admit_until:
                rec.code, rec.details, rec.ended_at = "REFUSED", f"{err.code().name}: {err.details()}", clock()
                return
            t0 = clock()
            await asyncio.sleep(refusal.retry_after_ms / 1000)  # the server's hint, honoured
            refusal.waited_ms = (clock() - t0) * 1000
    rec.admitted_at = clock()
    chunks = speech.chunks(plan.chunk_ms)
    if not plan.barge_in_s and plan.idle == "freeze":
        rec.frames_expected = plan.answers * math.ceil(speech.seconds * FPS)
    frames = _Frames()
    answer_heard = asyncio.Event()   # the current answer's first frame came
    interrupted = asyncio.Event()    # the server confirmed the last interrupt
    epoch = 0

    async def speak() -> None:
        nonlocal epoch
        for answer in range(plan.answers):
            answer_heard.clear()
            interrupted.clear()
            t0 = clock()
            for i, chunk in enumerate(chunks):
                if plan.speech == "realtime":
                    await asyncio.sleep(max(0.0, t0 + i * plan.chunk_ms / 1000 - clock()))
                    if plan.barge_in_s and answer < plan.answers - 1 and answer_heard.is_set() \
                            and clock() >= heard_at + plan.barge_in_s:
                        break  # the barge-in comes below; the rest of this answer is never spoken
                if rec.first_audio_at is None:
                    rec.first_audio_at = clock()
                await stream.send_audio(chunk)
            if plan.barge_in_s and answer < plan.answers - 1:
                await answer_heard.wait()
                await asyncio.sleep(max(0.0, heard_at + plan.barge_in_s - clock()))
                asked = clock()
                await stream.interrupt()
                await interrupted.wait()
                rec.interrupts_ms.append((clock() - asked) * 1000)
                epoch += 1
        await stream.end_audio()

    heard_at = 0.0
    speaker = asyncio.create_task(speak())
    try:
        async for msg in stream:
            kind = msg.WhichOneof("kind")
            now = clock()
            if kind == "frame":
                frames.add(msg.frame.epoch, msg.frame.index, now)
                rec.frames += 1
                if rec.first_frame_at is None:
                    rec.first_frame_at = now
                if not answer_heard.is_set() and msg.frame.epoch >= epoch:
                    heard_at = now
                    answer_heard.set()
            elif kind == "event" and msg.event.WhichOneof("event") == "interrupted":
                interrupted.set()
            elif kind == "final":
                rec.code, rec.details = _code_name(msg.final.status.code), msg.final.status.message
        rec.code = rec.code or "OK"
    except grpc.aio.AioRpcError as err:
        if rec.code in ("", "OK"):  # else the in-band FinalStatus already said why
            rec.code, rec.details = err.code().name, err.details() or ""
    finally:
        speaker.cancel()
        await asyncio.gather(speaker, return_exceptions=True)
        stream.cancel()
        rec.ended_at = clock()
        rec.fps, rec.lag_ms, rec.fps_series = frames.fps(), frames.lag_ms(), frames.series()


def _code_name(value: int) -> str:
    import grpc

    return next((c.name for c in grpc.StatusCode if c.value[0] == value), "UNKNOWN")


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class LoadRun:
    """What `run_load` returns: the plan, every session, when it ran, and why it stopped."""

    plan: LoadPlan
    avatar_id: str
    sessions: list[SessionRecord]
    steps_run: list[int]            # the user counts of the steps that ran, in order
    started_unix_s: float
    duration_s: float
    stopped: str = ""               # why steps were left out ("" = all ran)


class Progress:
    """One status line while the load runs: rewritten in place on a terminal, a line every 10 s otherwise."""

    def __init__(self, out: Any = None, every_s: float | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.every_s = every_s if every_s is not None else (1.0 if self.tty else 10.0)
        self._last = ""

    def line(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K" + text)
        else:
            self.out.write(text + "\n")
        self._last = text
        self.out.flush()

    def done(self, text: str) -> None:
        """The step's last line, kept on screen."""
        if self.tty:
            self.line(text)
            self.out.write("\n")
            self.out.flush()
        elif text != self._last:
            self.line(text)


def _status(step: int, steps: int, users: int, elapsed: float, plan: LoadPlan, done: list[SessionRecord],
            open_now: int) -> str:
    from ditto_app.loadtest.summary import percentile

    first = [r.first_frame_ms for r in done if r.first_frame_ms is not None]
    fps = [r.fps for r in done if r.fps is not None]
    refused = sum(len(r.refusals) for r in done)
    errors = sum(1 for r in done if r.code not in ("OK", "REFUSED"))
    p95 = f"{percentile(first, 95):.0f} ms" if first else "-"
    low = f"{min(fps):.1f}" if fps else "-"
    return (f"step {step}/{steps}: {users} at once, {min(elapsed, plan.step_s):.0f}/{plan.step_s:g} s | sessions "
            f"{len(done)} done, {open_now} open | first frame p95 {p95} | lowest fps {low} | refusals {refused} | "
            f"errors {errors}")


async def run_load(plan: LoadPlan, progress: Progress | None = None) -> LoadRun:
    """Run the plan, step by step; unless `keep_going`, stop after the first step that does not hold (the verdict
    would not change). `progress` gets the status line."""
    from ditto_app.loadtest.summary import step_summary
    from ditto_client import AsyncAvatarClient, tls_credentials

    progress = progress or Progress()
    speech = wav_speech(plan.audio, plan.speech_s) if plan.audio else synthetic_speech(plan.speech_s)
    credentials = (tls_credentials(plan.ca_cert, plan.client_cert, plan.client_key)
                   if plan.tls or plan.ca_cert or plan.client_cert else None)
    api_key = plan.api_key.get_secret_value() if plan.api_key else None
    t_start, started_unix = time.monotonic(), time.time()

    def clock() -> float:
        return time.monotonic() - t_start

    sessions: list[SessionRecord] = []
    steps_run: list[int] = []
    stopped = ""
    async with AsyncAvatarClient(plan.server, api_key, credentials=credentials, retry_for_s=0) as client:
        if plan.avatar_id:
            avatar_id = plan.avatar_id
        else:
            assert plan.portrait is not None
            progress.line(f"registering {plan.portrait.name} ...")
            avatar_id = (await client.register_avatar(plan.portrait)).avatar_id
        for k, users in enumerate(plan.steps, 1):
            if clock() >= plan.max_total_s:
                stopped = f"the run's time ({plan.max_total_s:g} s) was used up before {users} sessions"
                break
            records = await _step(client, plan, avatar_id, speech, clock, k, users, progress)
            sessions += records
            steps_run.append(users)
            if not plan.keep_going and not step_summary(plan, users, records)["holds"] and k < len(plan.steps):
                stopped = f"stopped after {users} sessions did not hold (--keep-going runs every step)"
                break
    return LoadRun(plan, avatar_id, sessions, steps_run, started_unix, clock(), stopped)


async def _step(client: Any, plan: LoadPlan, avatar_id: str, speech: Speech, clock: Callable[[], float], k: int,
                users: int, progress: Progress) -> list[SessionRecord]:
    t0 = clock()
    step_end = min(t0 + plan.step_s, plan.max_total_s)
    done: list[SessionRecord] = []
    open_now = 0
    started = 0

    async def user(u: int) -> None:
        nonlocal open_now, started
        while clock() < step_end and (not plan.max_sessions_per_step or started < plan.max_sessions_per_step):
            started += 1
            rec = SessionRecord(step=k, users=users, user=u, opened_at=clock())
            open_now += 1
            try:
                await asyncio.wait_for(run_session(client, plan, avatar_id, speech, clock, rec, step_end),
                                       plan.timeout_s)
            except TimeoutError:
                rec.code, rec.details = "TIMEOUT", f"open longer than {plan.timeout_s:g} s; cut"
                rec.ended_at = clock()
            except asyncio.CancelledError:
                rec.code, rec.details = "CUT", "the run's time was up"
                rec.ended_at = clock()
                raise
            finally:
                open_now -= 1
                done.append(rec)
            if rec.code == "REFUSED":
                return  # refused for good (no hint, or none that fits the step): this user's step is over
            if rec.code != "OK":
                await asyncio.sleep(FAILURE_PAUSE_S)  # a server failing fast must not get a tight loop of calls

    tasks = [asyncio.create_task(user(u)) for u in range(users)]
    try:
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=progress.every_s)
            progress.line(_status(k, len(plan.steps), users, clock() - t0, plan, done, open_now))
            if clock() > plan.max_total_s:
                for t in tasks:
                    t.cancel()  # the run's time is up: what is still open is cut
    finally:
        await asyncio.gather(*tasks, return_exceptions=True)
    progress.done(_status(k, len(plan.steps), users, clock() - t0, plan, done, 0))
    return done

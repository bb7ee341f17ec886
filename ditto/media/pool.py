"""Decoder helper processes: where client media meets native decoders.

FFmpeg, libpng, libjpeg and friends are large C code bases fed with bytes a client chose. A crash there (a
segmentation fault, an abort) would take the whole server with every tenant's sessions; a decompression bomb would
take its memory. So a server process decodes client media only through a `DecoderPool`: a few helper processes
(`python -m ditto.media.helper`), started on first use and reused, each with an address-space limit
(`RLIMIT_AS`: its start-up footprint plus `max_memory_mb`) and each call with a time limit.

A call that crashes its helper, breaches the memory limit or runs past the time limit fails with a `DecodeFailed`
(a `MediaError`: the client's INVALID_ARGUMENT) that says which; the helper is killed and a fresh one started in
its place; every other call, on other helpers or in the server itself, goes on. The pool is not a
`concurrent.futures.ProcessPoolExecutor` on purpose: one dead worker breaks such an executor for every caller.

Jobs are named (`JOBS`), not pickled callables: a helper runs only the decoding functions of this package. Results
travel back with pickle protocol 5, numpy arrays as out-of-band raw buffers read straight into their final memory,
so a video's frames are never held twice. `InProcess` runs the same jobs in the calling process (local tools, tests
of the decoding itself).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Protocol

from ditto import telemetry
from ditto.config import DecodeSettings
from ditto.media.errors import DecodeFailed, DecoderCrashed, DecodeTimeout, DecodeTooLarge, MediaError, MediaTooLong
from ditto.media.jobs import JOBS, job

log = telemetry.get_logger("ditto.media")
START_TIMEOUT_S = 120.0  # a helper's start (importing its decoders) on a loaded machine; not part of a call's limit
_failures = telemetry.counter("ditto_decoder_failures_total", "Decodes that crashed their helper process or broke "
                              "its memory or time limit", ("reason",))


class Cancelled(Exception):
    """The caller gave up on the call (its client left); the helper was killed."""


class InProcess:
    """Runs the jobs in this process: for files the user chose on their own machine, and for tests of the decoding
    itself. A server never uses it for client media."""

    def run(self, name: str, *args: Any, stop: threading.Event | None = None, **kwargs: Any) -> Any:
        return job(name)(*args, **kwargs)

    async def run_async(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.run, name, *args, **kwargs)


class Decoder(Protocol):
    """Where jobs run: `InProcess` or a `DecoderPool`."""

    def run(self, name: str, *args: Any, stop: threading.Event | None = None, **kwargs: Any) -> Any: ...

    async def run_async(self, name: str, *args: Any, **kwargs: Any) -> Any: ...


class _Helper:
    """One helper process and the socket to it."""

    def __init__(self, memory_mb: int) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ditto.media.helper", str(theirs.fileno()), str(memory_mb)],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.healthy = True
        self.ready = False  # it says so once its decoders are imported: a call's time limit starts after that

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.healthy = False
        with contextlib.suppress(OSError):
            self.conn.close()
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def _how_it_ended(self) -> str:
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with status {code}"

    def _wait(self, deadline: float, stop: threading.Event | None, timeout_s: float) -> None:
        """Until the helper has something to say (or has died: then recv raises EOFError)."""
        while not self.conn.poll(min(0.1, max(0.0, deadline - time.monotonic()))):
            if stop is not None and stop.is_set():
                raise Cancelled("the call was cancelled")
            if time.monotonic() >= deadline:
                raise DecodeTimeout(f"decoding this file took longer than {timeout_s:g} s (DITTO_DECODE__TIMEOUT_S) "
                                    "and was stopped; send a shorter or simpler file")

    def _await_ready(self, stop: threading.Event | None) -> None:
        try:
            self._wait(time.monotonic() + START_TIMEOUT_S, stop, START_TIMEOUT_S)
            if self.conn.recv() != ("ready",):
                raise EOFError("unexpected first message")
        except (EOFError, OSError, DecodeTimeout) as err:
            self.healthy = False
            raise RuntimeError(f"a media decoder process could not start: it {self._how_it_ended()}") from err
        self.ready = True

    def _read_raw(self, size: int, deadline: float, stop: threading.Event | None, timeout_s: float) -> bytearray:
        """`size` raw bytes, read from the socket straight into their final buffer (Connection.recv_bytes_into
        would read them into a temporary first: a second copy of a video's frames or a file's samples)."""
        buf = bytearray(size)
        view = memoryview(buf)
        done = 0
        while done < size:
            self._wait(deadline, stop, timeout_s)
            n = os.readv(self.conn.fileno(), [view[done:]])
            if n == 0:
                raise EOFError("the helper closed its socket")
            done += n
        return buf

    def call(self, name: str, args: tuple, kwargs: dict, timeout_s: float, memory_mb: int,
             stop: threading.Event | None) -> Any:
        if not self.ready:
            self._await_ready(stop)
        deadline = time.monotonic() + timeout_s
        try:
            self.conn.send((name, args, kwargs))
            self._wait(deadline, stop, timeout_s)
            message = self.conn.recv()
            if message[0] == "result":
                _, sizes, head = message
                buffers = [self._read_raw(size, deadline, stop, timeout_s) for size in sizes]
                return pickle.loads(head, buffers=buffers)
        except (EOFError, OSError) as err:
            self.healthy = False
            raise DecoderCrashed(f"the media decoder {self._how_it_ended()} while reading this file: it is damaged "
                                 "or made to break decoders. Nothing else was affected; send another file") from err
        kind, text = message[1], message[2]
        if kind == "media":
            raise MediaError(text)
        if kind == "too_long":
            raise MediaTooLong(text, message[3], message[4])
        self.healthy = False  # the helper exits after these: it is replaced
        if kind == "memory":
            log.warning("decode over the memory limit", detail=text)
            raise DecodeTooLarge(f"decoding this file needs more memory than the decoder's limit of {memory_mb} MB "
                                 "(DITTO_DECODE__MAX_MEMORY_MB) and was stopped; send a smaller file")
        raise DecodeFailed(f"the media decoder failed on this file ({text}); it is damaged or in a form this "
                           "service does not read")


class DecoderPool:
    """`helpers` helper processes, each decode under `max_memory_mb` (beyond the helper's footprint) and
    `timeout_s`. Thread-safe; `run` blocks its thread (waiting for a free helper first), `run_async` does not block
    the event loop and kills the helper when the awaiting task is cancelled."""

    def __init__(self, helpers: int = 2, max_memory_mb: int = 1024, timeout_s: float = 60.0) -> None:
        self.max_memory_mb = max_memory_mb
        self.timeout_s = timeout_s
        self._free: list[_Helper | None] = [None] * helpers  # None: not started yet (started on first use)
        self._cond = threading.Condition()
        self._all: set[_Helper] = set()
        self._closed = False
        self.replaced = 0  # helpers replaced after a crash, a limit breach or a cancel

    @classmethod
    def from_settings(cls, settings: DecodeSettings) -> DecoderPool:
        return cls(settings.helpers, settings.max_memory_mb, settings.timeout_s)

    def pids(self) -> list[int]:
        with self._cond:
            return sorted(h.pid for h in self._all if h.proc.poll() is None)

    def _acquire(self, stop: threading.Event | None) -> _Helper | None:
        with self._cond:
            while not self._free:
                if self._closed:
                    raise RuntimeError("the decoder pool is closed")
                if stop is not None and stop.is_set():
                    raise Cancelled("the call was cancelled")
                self._cond.wait(0.1)
            if self._closed:
                raise RuntimeError("the decoder pool is closed")
            return self._free.pop()

    def _release(self, helper: _Helper | None) -> None:
        with self._cond:
            if self._closed and helper is not None:
                helper.kill()
                helper = None
            self._free.append(helper)
            self._cond.notify()

    def _start(self) -> _Helper:
        helper = _Helper(self.max_memory_mb)
        with self._cond:
            self._all.add(helper)
        return helper

    def _retire(self, helper: _Helper) -> None:
        helper.kill()
        with self._cond:
            self._all.discard(helper)

    def run(self, name: str, *args: Any, stop: threading.Event | None = None, **kwargs: Any) -> Any:
        if name not in JOBS:
            raise KeyError(f"no decoder job {name!r}")
        helper = self._acquire(stop)
        try:
            if helper is None or not helper.healthy or helper.proc.poll() is not None:
                if helper is not None:
                    self._retire(helper)
                helper = self._start()
            try:
                return helper.call(name, args, kwargs, self.timeout_s, self.max_memory_mb, stop)
            except (DecodeFailed, Cancelled) as err:
                reason = type(err).__name__
                _failures.labels(reason).inc()
                log.warning("decoder helper replaced", reason=reason, pid=helper.pid, error=str(err)[:200])
                self._retire(helper)
                self.replaced += 1
                helper = self._start()  # in place at once: the next call does not wait for a start
                raise
            except MediaError:
                if not helper.healthy:  # it ended itself (it does after a memory breach)
                    self._retire(helper)
                    helper = self._start()
                raise
        finally:
            self._release(helper)

    async def run_async(self, name: str, *args: Any, **kwargs: Any) -> Any:
        stop = threading.Event()
        task = asyncio.ensure_future(asyncio.to_thread(self.run, name, *args, stop=stop, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            stop.set()  # the thread kills the helper within 0.1 s and gives it back to the pool
            with contextlib.suppress(BaseException):
                await task
            raise

    def close(self) -> None:
        with self._cond:
            self._closed = True
            helpers = list(self._all)
            self._all.clear()
            self._cond.notify_all()
        for helper in helpers:
            helper.kill()


_shared: dict[tuple, DecoderPool] = {}
_shared_lock = threading.Lock()


def shared_pool(settings: DecodeSettings | None = None) -> DecoderPool:
    """This process's pool for `settings` (one per distinct setting, so the embedded stack's orchestrator and
    renderer share theirs); closed at exit."""
    settings = settings or DecodeSettings()
    key = (settings.helpers, settings.max_memory_mb, settings.timeout_s)
    with _shared_lock:
        pool = _shared.get(key)
        if pool is None or pool._closed:
            if not _shared:
                atexit.register(close_shared_pools)
            pool = _shared[key] = DecoderPool.from_settings(settings)
        return pool


def close_shared_pools() -> None:
    with _shared_lock:
        pools = list(_shared.values())
        _shared.clear()
    for pool in pools:
        pool.close()

"""A decoder helper process: `python -m ditto.media.helper FD MEMORY_MB`, started by `ditto.media.pool`.

It imports the decoders first, then limits its own address space to that footprint plus MEMORY_MB (RLIMIT_AS) and
turns off core dumps, then serves jobs on the socket FD one at a time until the socket closes. A job's result goes
back as a pickle with its numpy arrays as separate buffers; an error goes back as its kind and message. After a
memory breach or an unexpected error the helper exits (its heap may be in any state) and the pool starts another.

Test-only fault hook: when the environment variable DITTO_TEST_DECODER_FAULTS is "1" in the helper's environment,
a job whose first argument starts with b"DITTO-TEST-FAULT:abort" (or ":hang", ":exit") makes the helper call
os.abort() (or sleep past any time limit, or exit at once). Only tests set that variable, for the server process
they start; a production process never has it, and without it those bytes are just an unrecognised file.
"""

from __future__ import annotations

import os
import sys

FAULTS_ENV = "DITTO_TEST_DECODER_FAULTS"
FAULT_MARK = b"DITTO-TEST-FAULT:"
EXIT_AFTER_MEMORY = 3
EXIT_AFTER_ERROR = 4


def _vm_size_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _limit_memory(memory_mb: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # an abort must not write a core file of the bomb
    try:  # if the container runs out of memory anyway, the kernel kills a helper before the server it serves
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("800")
    except OSError:
        pass
    base = _vm_size_bytes()
    if base is not None:
        limit = base + memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _trim() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _test_fault(args: tuple) -> None:
    data = args[0] if args and isinstance(args[0], bytes | bytearray) else b""
    if not data.startswith(FAULT_MARK):
        return
    action = bytes(data[len(FAULT_MARK):len(FAULT_MARK) + 8]).split(b"\n")[0]
    if action.startswith(b"abort"):
        os.abort()
    elif action.startswith(b"hang"):
        import time

        time.sleep(3600)
    elif action.startswith(b"exit"):
        os._exit(9)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def _out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    text = str(err)
    return type(err).__name__ == "error" and ("Insufficient memory" in text or "Failed to allocate" in text)


def serve(fd: int, memory_mb: int) -> int:
    import pickle
    import traceback
    from multiprocessing.connection import Connection

    # the decoders, loaded before the memory limit: their footprint is not a decode's
    try:
        import av  # noqa: F401
    except ImportError:  # a slim install (the GPU kit leaves PyAV out) still decodes pictures and WAV
        pass
    import cv2
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401

    from ditto.media import audio, visual  # noqa: F401
    from ditto.media.errors import MediaError, MediaTooLong
    from ditto.media.jobs import job

    cv2.setNumThreads(1)
    _limit_memory(memory_mb)
    faults = os.environ.get(FAULTS_ENV) == "1"
    conn = Connection(fd)
    conn.send(("ready",))
    while True:
        try:
            name, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return 0
        status = 0
        try:
            if faults:
                _test_fault(args)
            value = job(name)(*args, **kwargs)
            buffers: list[pickle.PickleBuffer] = []
            head = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
            conn.send(("result", [b.raw().nbytes for b in buffers], head))
            for b in buffers:  # raw, unframed: the pool reads each straight into its final memory
                _write_all(fd, b.raw())
            del value, buffers, head
        except MediaTooLong as err:
            conn.send(("error", "too_long", str(err), err.seconds, err.from_header))
        except MediaError as err:
            conn.send(("error", "media", str(err)))
        except Exception as err:
            if _out_of_memory(err):
                conn.send(("error", "memory", f"{type(err).__name__}: {str(err)[:200]}"))
                return EXIT_AFTER_MEMORY
            traceback.print_exc(file=sys.stderr)
            conn.send(("error", "internal", f"{type(err).__name__}: {str(err)[:200]}"))
            status = EXIT_AFTER_ERROR
        finally:
            _trim()
        if status:
            return status


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]), int(sys.argv[2])))

"""`ditto loadtest`: how many sessions a running service holds (see ditto_app/loadtest/).

    ditto loadtest --server HOST:PORT --portrait face.png --sessions 1,2,4,8 --step-s 30 --out out/loadtest
    ditto loadtest --server HOST:PORT --avatar-id ID --ramp 1..32 --speech bursty --barge-in-s 3

The API key comes from $DITTO_API_KEY or --api-key-file, never from the command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loadtest", help="load a running service step by step and report how many sessions it holds",
                       description="Ramps sessions up against a running service through the public API and writes "
                                   "a JSON file, an HTML report with plots and a one-line verdict.")
    target = p.add_argument_group("target")
    target.add_argument("--server", default="127.0.0.1:50051",
                        help="host:port of the Avatar API (default: %(default)s)")
    target.add_argument("--api-key-file", type=Path, default=None,
                        help="file holding the API key (default: $DITTO_API_KEY; none: an open server)")
    target.add_argument("--tls", action="store_true", help="connect over TLS with the system's roots")
    target.add_argument("--ca-cert", type=Path, default=None, help="CA to trust (implies --tls)")
    target.add_argument("--client-cert", type=Path, default=None, help="client certificate (mutual TLS)")
    target.add_argument("--client-key", type=Path, default=None, help="its key")
    who = target.add_mutually_exclusive_group(required=True)
    who.add_argument("--avatar-id", default=None, help="an avatar registered before")
    who.add_argument("--portrait", type=Path, default=None, help="an image (or short video) to register first")

    load = p.add_argument_group("load")
    steps = load.add_mutually_exclusive_group()
    steps.add_argument("--sessions", default=None, help="concurrent sessions per step, e.g. 1,2,4,8 (default: 1,2,4)")
    steps.add_argument("--ramp", default=None, help="A..B doubles from A to B, A..B:K goes up by K (e.g. 1..32)")
    load.add_argument("--step-s", type=float, default=30.0, help="each step starts sessions for this long (default: "
                      "%(default)s); a step ends when its last session has")
    load.add_argument("--max-sessions-per-step", type=int, default=0, help="stop starting sessions in a step after "
                      "this many (default: no limit)")
    load.add_argument("--max-total-s", type=float, default=3600.0, help="the whole run's limit; sessions open then "
                      "are cut (default: %(default)s)")
    load.add_argument("--session-timeout-s", type=float, default=0.0,
                      help="cut a session open longer (default: 60 s plus 4x its speech)")
    load.add_argument("--keep-going", action="store_true", help="run every step, also after one did not hold")

    speech = p.add_argument_group("speech")
    speech.add_argument("--speech", choices=("realtime", "bursty"), default="realtime",
                        help="realtime: a chunk when it would be spoken; bursty: each answer at once, as text-to-"
                             "speech hands it over (default: %(default)s)")
    speech.add_argument("--speech-s", type=float, default=8.0, help="one answer's length (default: %(default)s)")
    speech.add_argument("--audio", type=Path, default=None, help="a 16-bit PCM WAV to speak (default: a synthetic "
                        "voice)")
    speech.add_argument("--chunk-ms", type=int, default=200, help="audio chunk length (default: %(default)s)")
    speech.add_argument("--barge-in-s", type=float, default=0.0, help="interrupt this long after an answer's first "
                        "frame, then the next answer starts (default: never)")
    speech.add_argument("--answers", type=int, default=1, help="answers per session (default: 1; 2 with barge-in)")
    speech.add_argument("--idle", choices=("alive", "freeze"), default="freeze",
                        help="the sessions' idle policy (default: %(default)s)")
    speech.add_argument("--overlap", type=int, default=0, help="window overlap (default: the server's)")
    speech.add_argument("--sampling-steps", type=int, default=0, help="DDIM steps (default: the server's)")

    goal = p.add_argument_group("verdict")
    goal.add_argument("--target-first-frame-ms", type=float, default=1000.0,
                      help="a step holds when its p95 first frame is at most this (default: %(default)s)")
    goal.add_argument("--min-fps", type=float, default=24.0, help="a session keeps realtime at this delivered rate "
                      "(default: %(default)s)")
    goal.add_argument("--keep-share", type=float, default=0.95, help="share of a step's sessions that must keep it "
                      "(default: %(default)s)")
    goal.add_argument("--fail-under", type=int, default=0, help="exit 1 when fewer sessions than this hold")
    p.add_argument("--out", type=Path, default=Path("out/loadtest"), help="folder for loadtest.json and "
                   "loadtest.html (default: %(default)s)")
    p.set_defaults(handler=_run)


def plan_from_args(args: argparse.Namespace) -> object:
    """The validated plan (SystemExit with the reasons when the options do not fit together)."""
    from pydantic import ValidationError

    from ditto_app.loadtest import LoadPlan, parse_ramp, parse_steps

    api_key = os.environ.get("DITTO_API_KEY") or None
    if args.api_key_file is not None:
        api_key = args.api_key_file.read_text().strip()
    try:
        steps = parse_ramp(args.ramp) if args.ramp else parse_steps(args.sessions or "1,2,4")
        return LoadPlan(
            server=args.server, api_key=api_key, tls=args.tls, ca_cert=args.ca_cert, client_cert=args.client_cert,
            client_key=args.client_key, avatar_id=args.avatar_id, portrait=args.portrait, steps=steps,
            step_s=args.step_s, max_sessions_per_step=args.max_sessions_per_step, max_total_s=args.max_total_s,
            session_timeout_s=args.session_timeout_s, speech=args.speech, speech_s=args.speech_s, audio=args.audio,
            chunk_ms=args.chunk_ms, barge_in_s=args.barge_in_s, answers=args.answers, idle=args.idle,
            overlap=args.overlap, sampling_steps=args.sampling_steps,
            target_first_frame_ms=args.target_first_frame_ms, min_fps=args.min_fps, keep_share=args.keep_share,
            keep_going=args.keep_going)
    except ValueError as err:  # ValidationError included
        reasons = ([f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in err.errors()]
                   if isinstance(err, ValidationError) else [str(err)])
        raise SystemExit("ditto loadtest: " + "; ".join(reasons)) from None


def _run(args: argparse.Namespace) -> int:
    import grpc

    from ditto_app.loadtest import run_load, summarize, write_reports

    plan = plan_from_args(args)
    try:
        run = asyncio.run(run_load(plan))  # type: ignore[arg-type]
    except grpc.aio.AioRpcError as err:  # before any load: the avatar could not be registered
        print(f"ditto loadtest: {err.code().name}: {err.details()} (is the service at {args.server} up, and the "
              "API key right?)", file=sys.stderr)
        return 1
    summary = summarize(run)
    json_path, html_path = write_reports(summary, args.out)
    print(f"wrote {json_path} and {html_path}")
    print(summary["verdict"])
    return 1 if args.fail_under and summary["held_sessions"] < args.fail_under else 0

"""`ditto converse`: stream an audio file to a server at realtime pace, write what comes back as an MP4."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("converse", help="talk to a running server: stream a file, record the video")
    p.add_argument("--server", default="127.0.0.1:50051")
    p.add_argument("--avatar", required=True, type=Path, help="portrait image or short video")
    p.add_argument("--audio", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--api-key", default=None)
    p.add_argument("--emotion", default="neutral")
    p.add_argument("--chunk-ms", type=int, default=200)
    p.add_argument("--no-pace", action="store_true", help="send as fast as the server takes it")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import cv2
    import grpc
    import numpy as np
    from tqdm import tqdm

    from ditto.media.writers import Mp4Writer
    from ditto_client import AvatarClient, emotion_control
    from ditto_client.timeline import FPS
    from ditto_client.v1 import avatar_pb2, common_pb2
    from services.audio_encoder.formats import decode_file

    audio = decode_file(args.audio)
    rate, channels = audio.sample_rate, audio.channels
    pcm = (np.clip(audio.samples, -1, 1) * 32767).astype("<i2")
    step = max(1, rate * args.chunk_ms // 1000)
    total = int(np.ceil(audio.seconds * FPS))

    def chunks():
        t0 = time.monotonic()
        for i, start in enumerate(range(0, len(pcm), step)):
            if not args.no_pace:
                delay = t0 + i * args.chunk_ms / 1000 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield pcm[start:start + step].tobytes()

    writer = None
    first_frame_at = None
    started = time.monotonic()
    try:
        with AvatarClient(args.server, args.api_key) as client:
            avatar = client.register_avatar(args.avatar)
            config = avatar_pb2.SessionConfig(
                avatar_id=avatar.avatar_id,
                audio_format=common_pb2.AudioFormat(sample_format=common_pb2.SAMPLE_FORMAT_PCM_S16LE,
                                                    sample_rate_hz=rate, channels=channels),
                output=common_pb2.OutputOptions(encoding=common_pb2.FRAME_ENCODING_JPEG, paste_back=True),
                emotion=emotion_control(args.emotion.split("+")), idle_policy=avatar_pb2.IDLE_POLICY_FREEZE,
                seed=args.seed)
            bar = tqdm(total=total, unit="frame", desc="receiving")
            for msg in client.converse(avatar.avatar_id, chunks(), config=config):
                kind = msg.WhichOneof("kind")
                if kind == "frame":
                    img = cv2.imdecode(np.frombuffer(msg.frame.data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
                    if writer is None:
                        first_frame_at = time.monotonic() - started
                        writer = Mp4Writer(args.out, img.shape[1], img.shape[0], audio=args.audio)
                    writer.write(np.ascontiguousarray(img))
                    bar.update(1)
                elif kind == "final" and msg.final.status.code:
                    print(f"server ended the session: {msg.final.status.message}", file=sys.stderr)
            bar.close()
    except grpc.RpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        print("error: the server sent no frames", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({writer.frames} frames; first frame after {first_frame_at:.2f} s)")
    return 0

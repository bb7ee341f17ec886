"""A changed pipeline definition reaches every consumer: with a test-only relay stage inserted between the motion
generator and the renderer (`relay_stage.extra_stage`, the same two lines a real stage adds), the worker CLI offers
it, placement gives sessions a slot on it, the motion stage routes to it and it to the renderer, its metrics carry
its name, the generated ScaledObjects scale it, and frames still come out of the whole service, through it."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import grpc
import yaml
from relay_stage import NAME, extra_stage
from serving_helpers import chunks, collect, config, embedded_service, frames_of, portrait_png, requests, speech_pcm16

from ditto import pipeline, telemetry
from ditto.keys import Keys
from ditto.pipeline import PIPELINE
from ditto_app.cli import build_parser
from ditto_client.v1 import avatar_pb2

DEPLOY_TOOLS = Path(__file__).resolve().parents[2] / "deploy" / "tools"
EXPECTED = ("audio_encoder", "motion_generator", NAME, "renderer")


def _worker_stage_choices() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # noqa: SLF001 - argparse has no public lookup
    worker = sub.choices["worker"]  # type: ignore[index]
    return list(next(a for a in worker._actions if a.dest == "stage").choices)  # noqa: SLF001


def test_the_worker_cli_and_the_scaled_objects_follow_the_pipeline(monkeypatch):
    monkeypatch.syspath_prepend(str(DEPLOY_TOOLS))  # the generator imports its sibling `generated`, as a script does
    render = runpy.run_path(str(DEPLOY_TOOLS / "gen_scaledobjects.py"))["render"]
    assert _worker_stage_choices() == list(PIPELINE.names)
    assert NAME not in PIPELINE.names
    with extra_stage() as changed:
        assert changed.names == EXPECTED
        assert _worker_stage_choices() == list(EXPECTED)
        assert build_parser().parse_args(["worker", "--stage", NAME]).stage == NAME
        docs = list(yaml.safe_load_all(render(3)))
        assert [d["metadata"]["name"] for d in docs] == ["audio-encoder", "motion-generator", NAME, "renderer"]
        relay = docs[2]["spec"]["triggers"]
        assert [t["metadata"]["stream"] for t in relay] == [Keys("ditto").slot_stream(NAME, k) for k in range(3)]
        assert {t["metadata"]["consumerGroup"] for t in relay} == {NAME}
    # the block's end puts the written pipeline back
    assert pipeline.active() is PIPELINE and _worker_stage_choices() == list(PIPELINE.names)
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(render(3))] == [s.deployment for s in PIPELINE.stages]


def _sample(name: str, **labels: str) -> float:
    return telemetry.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_frames_pass_through_an_extra_stage_and_every_consumer_knows_it():
    done_before = _sample("ditto_stage_entries_total", stage=NAME, outcome="done")
    with extra_stage():
        async with embedded_service() as (stub, orch):
            stages = stub.stack.stages
            assert tuple(stages) == EXPECTED  # the stack built (and runs a worker for) every stage
            # routing: the stage before the relay sends to it, the relay to the renderer, the renderer to the
            # orchestrator; the orchestrator publishes to the first stage
            assert stages["motion_generator"].session_stage.next == NAME
            assert stages[NAME].session_stage.next == "renderer"
            assert stages["renderer"].session_stage.next == pipeline.FRAMES
            assert stages["audio_encoder"].session_stage.next == "motion_generator"
            # placement: admission looks for a slot on every stage, in order
            assert [s.stage for s in await orch.placer.stage_slots()] == list(EXPECTED)
            assert await orch.check_stages() == []
            assert _sample("ditto_stage_workers", stage=NAME) == 1

            avatar = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=portrait_png(),
                                                                                filename="p.png"))
            seconds = 1.5
            out, code, _ = await collect(stub, requests(config(avatar.avatar_id), chunks(speech_pcm16(seconds))))
            assert code == grpc.StatusCode.OK, out[-1]
            frames = frames_of(out)
            assert len(frames) == math.ceil(seconds * 25) == out[-1].final.frames_sent
            assert [f.index for f in frames] == list(range(len(frames)))
            # every frame's keypoints went through the relay, and its metrics carry its name
            assert stages[NAME].session_stage.frames_relayed == len(frames)
            assert _sample("ditto_stage_entries_total", stage=NAME, outcome="done") > done_before
            assert _sample("ditto_stage_batch_size_count", stage=NAME) > 0

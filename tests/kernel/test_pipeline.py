"""The pipeline definition (`ditto.pipeline`) is consistent, every stage of it can be built, and the numbers of the
frame timeline that the client package keeps its own public copies of agree with the kernel's."""

from __future__ import annotations

import pytest

from ditto import pipeline
from ditto.pipeline import FPS, FRAMES, PIPELINE, Pipeline, StageSpec
from ditto_app.stages import FACTORIES, factory
from ditto_client import timeline
from ditto_client.v1 import bus_pb2, common_pb2
from services.audio_encoder.encoder import SAMPLES_PER_FRAME


def test_the_stages_chain_from_audio_to_frames():
    assert PIPELINE.first.name == "audio_encoder" and PIPELINE.first.consumes is bus_pb2.AudioMeta
    assert PIPELINE.last.name == "renderer" and PIPELINE.last.produces is bus_pb2.FrameMeta
    for before, after in zip(PIPELINE.stages, PIPELINE.stages[1:], strict=False):
        assert PIPELINE.next_of(before.name) == after.name
        assert (before.produces, before.produces_tensors) == (after.consumes, after.consumes_tensors), \
            f"{before.name} writes what {after.name} does not read"
    assert PIPELINE.next_of(PIPELINE.last.name) == FRAMES
    assert len({s.cache_folder for s in PIPELINE.stages}) == len(PIPELINE.stages)


def test_every_stage_of_the_pipeline_has_a_factory():
    assert set(FACTORIES) == set(PIPELINE.names)
    with pytest.raises(ValueError, match="one of audio_encoder, motion_generator, renderer"):
        factory("upscaler")


def test_a_stage_in_the_pipeline_without_a_factory_says_where_to_register_it():
    extra = StageSpec("upscaler", bus_pb2.FrameMeta, ("frame",), bus_pb2.FrameMeta, ("frame",), "upscaler")
    with pipeline.use(PIPELINE.inserted(extra, after="renderer")) as changed:
        assert changed.names[-2:] == ("renderer", "upscaler") and changed.next_of("renderer") == "upscaler"
        assert changed.next_of("upscaler") == FRAMES
        with pytest.raises(ValueError, match="ditto_app.stages.FACTORIES"):
            factory("upscaler")
    assert pipeline.active() is PIPELINE


def test_a_pipeline_refuses_duplicate_names_and_the_frames_route_key():
    with pytest.raises(ValueError, match="unique names"):
        Pipeline((PIPELINE.first, PIPELINE.first))
    frames = StageSpec(FRAMES, common_pb2.KeypointFrames, (), bus_pb2.FrameMeta, (), "x")
    with pytest.raises(ValueError, match="none called 'frames'"):
        Pipeline((frames,))
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        PIPELINE.next_of("nope")


def test_the_client_package_and_the_kernel_count_frames_alike():
    # ditto_client must not import the kernel, so it keeps public copies; they must say what the service does
    assert timeline.FPS == FPS
    assert timeline.FRAME_SAMPLES == SAMPLES_PER_FRAME == timeline.SESSION_RATE // FPS

"""The SDK's speech/frame timeline on its own (the served checks are in tests/webrtc and tests/integrations): which
samples a frame shows across an interrupt, and utterances handed out whole and ended once."""

from __future__ import annotations

import numpy as np

from ditto_client.timeline import FRAME_SAMPLES, SpeechTimeline
from ditto_client.v1 import avatar_pb2


def frame(index: int, epoch: int = 0, idle: bool = False) -> avatar_pb2.VideoFrame:
    return avatar_pb2.VideoFrame(index=index, epoch=epoch, idle=idle)


def pcm16(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(-9000, 9000, n).astype("<i2").tobytes()


def test_frames_after_an_interrupt_skip_the_rest_frames_and_show_the_new_speech_from_its_start():
    timeline = SpeechTimeline()
    first = pcm16(16000, seed=1)
    timeline.push(first, 16000)
    assert timeline.take_chunk(3200, min_samples=3200) == first[:6400]
    while timeline.take_chunk(3200) is not None:
        pass
    placed = [timeline.place(frame(i)) for i in range(5)]
    assert placed[2].start == 2 * FRAME_SAMPLES
    assert placed[2].speech[0].pcm == first[2 * 2 * FRAME_SAMPLES:3 * 2 * FRAME_SAMPLES]
    timeline.interrupt()
    timeline.interrupted(avatar_pb2.InterruptedEvent(last_frame_index=4, new_epoch=1))
    second = pcm16(8000, seed=2)
    timeline.push(second, 16000)
    assert timeline.place(frame(5, epoch=0)) is None and timeline.frames_dropped == 1  # sent before the interrupt
    rest = [timeline.place(frame(i, epoch=1, idle=True)) for i in range(5, 13)]
    assert all(p.at_rest and not p.speech for p in rest)
    speech = timeline.place(frame(13, epoch=1))
    assert speech.start == 16000 and speech.speech[0].pcm == second[:2 * FRAME_SAMPLES]
    assert timeline.ahead_s == (8000 - FRAME_SAMPLES) / 16000


def test_an_utterance_is_handed_out_whole_and_ends_once_also_across_a_change_of_rate():
    timeline = SpeechTimeline()
    mono24, stereo48 = pcm16(12000, seed=3), pcm16(2 * 9600, seed=4)
    timeline.push(mono24, 24000)
    timeline.push(stereo48, 48000, channels=2)  # the same utterance goes on at another rate
    assert timeline.in_utterance and not timeline.end_speech()
    timeline.add_silence(2 * FRAME_SAMPLES)
    handed: dict[tuple[int, int], bytes] = {(24000, 1): b"", (48000, 2): b""}
    ended = 0
    for i in range(-(-timeline.received // FRAME_SAMPLES)):
        placed = timeline.place(frame(i))
        for piece in placed.speech:
            assert 0 <= piece.offset < FRAME_SAMPLES
            handed[piece.rate, piece.channels] += piece.pcm
        ended += placed.ended
    assert handed == {(24000, 1): mono24, (48000, 2): stereo48} and ended == 1
    assert not timeline.speaking
    assert timeline.end_speech()  # nothing in progress: the caller says the end itself


def test_speech_not_shown_can_still_be_played():
    timeline = SpeechTimeline()
    speech = pcm16(4000, seed=5)
    timeline.push(speech, 16000)
    timeline.place(frame(0))
    assert timeline.unshown() == [(speech[2 * FRAME_SAMPLES:], 16000, 1, False)] and not timeline.speaking

"""Golden parity of the condition vector (condition case) and its emotion forms."""

from __future__ import annotations

import numpy as np
import pytest

from services.motion_generator.condition import ConditionBuilder, emotion_probs, mirror_index
from tests.conftest import golden_case


@pytest.mark.golden
def test_condition() -> None:
    _, io, _ = golden_case("condition")
    video = ConditionBuilder(io["eye_open"], io["eye_ball"], io["sc"], emotion=3)
    assert np.max(np.abs(video(io["hubert"], 0) - io["cond_emo3"])) <= 1e-6
    video.set_emotion([1, 3])
    assert np.max(np.abs(video(io["hubert"], 0) - io["cond_emo13"])) <= 1e-6
    video.set_emotion(io["emo_arr"])
    assert np.max(np.abs(video(io["hubert"], 0) - io["cond_emoarr"])) <= 1e-6
    assert np.max(np.abs(video(io["hubert"][:80], -30) - io["cond_emoarr_online"])) <= 1e-6
    image = ConditionBuilder(io["eye_open"][:1], io["eye_ball"][:1], io["sc"], emotion=3)
    assert np.max(np.abs(image(io["hubert"][:80], 0) - io["cond_emo3_image"])) <= 1e-6


def test_emotion_forms_and_errors() -> None:
    one = emotion_probs(3)
    assert one.shape == (1, 8) and abs(one[0, 3] - 0.9976573) < 1e-6
    assert np.allclose(emotion_probs("happy"), one)
    mix = emotion_probs([3, 4])
    assert abs(mix[0, 3] - 0.49949732) < 1e-6 and abs(mix[0, 4] - mix[0, 3]) < 1e-7
    seq = emotion_probs([[3], [5], [3, 4]])
    assert seq.shape == (3, 8) and seq[1].argmax() == 5
    assert [mirror_index(i, 3) for i in range(9)] == [0, 1, 2, 2, 1, 0, 0, 1, 2]
    with pytest.raises(ValueError, match="out of range"):
        emotion_probs(9)
    with pytest.raises(ValueError, match="unknown emotion"):
        emotion_probs("bored")
    b = ConditionBuilder(np.ones((1, 2)), np.zeros((1, 6)), np.zeros(63))
    with pytest.raises(ValueError, match=r"\[n, 1024\]"):
        b(np.zeros((5, 1000)), 0)

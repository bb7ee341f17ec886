"""How much audio a session needs beyond a frame before that frame can be made (`SessionStarted.audio_look_ahead_ms`).

Two stages decide it, and both are fixed by the method, not by compute speed:
- the audio encoder turns 16 kHz audio into 25 fps features five at a time: the window that yields features
  5k..5k+4 ends 3200k + 4560 samples into the audio, so the first n features (n a multiple of 5) need
  n * 40 ms + 85 ms of audio (services/audio_encoder/windows.py);
- the motion stage samples 80-frame windows that advance by V = 80 - overlap frames and fuses each with the next
  over F = min(overlap, V) frames, so after window k (which needs (k + 1) * V features) the frames up to
  k * V + V - F are final (services/motion_generator/streaming.py).
The look-ahead is the most audio any block's first frame waits for. At the default overlap of 70 (V = 10) that is
20 features + the encoder's 85 ms = 885 ms; a smaller overlap means longer blocks (more audio to wait for, fewer
windows to sample per second), a larger one the reverse. Compute time comes on top.
tests/serving/test_look_ahead.py checks these constants against the stages and the value against real frames.
"""

from __future__ import annotations

from ditto.pipeline import FPS

MOTION_WINDOW = 80             # frames per MotionDiT window (streaming.SEQ)
FRAME_MS = 1000 // FPS         # 40: one frame
ENCODER_FEATURES_PER_WINDOW = 5
ENCODER_RIGHT_CONTEXT_MS = 85  # audio past the last feature frame that the encoder window needs: (4560 - 3200) / 16


def features_for_frame(frame: int, overlap: int) -> int:
    """Features the motion stage needs before `frame` (0-based) is final."""
    if not 0 <= overlap < MOTION_WINDOW:
        raise ValueError(f"overlap must be in 0..{MOTION_WINDOW - 1} frames, got {overlap}")
    valid = MOTION_WINDOW - overlap
    fused = min(overlap, valid)
    window = max(0, (frame - (valid - fused)) // valid + 1)  # the first window after which `frame` is final
    return (window + 1) * valid


def audio_needed_ms(frame: int, overlap: int) -> int:
    """Milliseconds of audio after the session's start that `frame` waits for."""
    n = features_for_frame(frame, overlap)
    n = -(-n // ENCODER_FEATURES_PER_WINDOW) * ENCODER_FEATURES_PER_WINDOW  # the encoder emits five at a time
    return n * FRAME_MS + ENCODER_RIGHT_CONTEXT_MS


def audio_look_ahead_ms(overlap: int) -> int:
    """The most audio beyond a frame's own time that any frame waits for: the first frame of each block of frames
    that one window makes final waits longest (the pattern repeats every 5 windows)."""
    valid = MOTION_WINDOW - overlap
    fused = min(overlap, valid)
    firsts = [0] + [max(0, k * valid - fused) for k in range(1, 2 * ENCODER_FEATURES_PER_WINDOW + 1)]
    return max(audio_needed_ms(f, overlap) - f * FRAME_MS for f in firsts)

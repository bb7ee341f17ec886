"""The streaming state machine against a literal transcription of the reference's online worker (docs/model.md §3.7),
driven by a deterministic stand-in sampler that depends on every input (features, frame indices, kp_cond), so a
wrong window, fusion, smoothing, kp_cond update or reset shows up. The project emits the same values for the frames
the reference emits; it also emits the frames the reference loses (O < 40 start) and drops frames from padding.
With `emit="reference"` it emits exactly the reference's frames."""

from __future__ import annotations

import numpy as np
import pytest

from services.motion_generator.streaming import MotionStream, StreamParams, smooth
from tests.motion.helpers import drive_stream


def fake_sample(kp_cond: np.ndarray, feats: np.ndarray, cond_start: int) -> np.ndarray:
    idx = np.maximum(np.arange(cond_start, cond_start + 80), 0)[:, None]
    base = np.tanh(feats[:, :265] + 0.01 * idx) + 0.5 * kp_cond[None, :]
    return base.astype(np.float32)


def reference_online(feats: np.ndarray, O: int, src: np.ndarray, fix_kp_cond: int = 1,
                     dims: tuple[int, int] | None = (0, 202), chunk: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """-> (emitted frames [m,265], d0). Transcribed from the reference (no trimming: it does not change values)."""
    V = 80 - O
    F = min(O, V)
    feat = np.zeros((O, feats.shape[1]), np.float32)
    pending: list[np.ndarray] = []
    res = None
    valid_start = None
    local = glob = clip = 0
    kp_cond = src.copy()
    out, d0 = [], None
    chunks = [feats[i:i + chunk] for i in range(0, len(feats), chunk)] + [None]
    for ch in chunks:
        end = ch is None
        if not end:
            pending.append(ch)
            if sum(len(p) for p in pending) < V:
                continue
        if pending:
            feat = np.concatenate([feat, *pending])
            pending = []
        while True:
            a = feat[local:local + 80]
            r, real = len(a), V
            if r == 0 or (r < 80 and not end):
                break
            if r < 80:
                real = r
                a = np.concatenate([a, np.repeat(a[-1:], 80 - r, 0)])
            pred = fake_sample(kp_cond, a, glob - O)
            if res is None:
                res = pred.copy()
                smooth(res, 0, 80, 3)
            else:
                L = len(res)
                alpha = (np.arange(F, dtype=np.float32) / np.float32(F))[:, None]
                res[L - F:L] = res[L - F:L] * (1 - alpha) + pred[O - F:O] * alpha
                res = np.concatenate([res, pred[O:]])
                smooth(res, L - F, L + 1, 3)
            clip += 1
            q = len(res) - O - 1
            if fix_kp_cond and clip % fix_kp_cond == 0:
                kp_cond = src.copy()
                if dims:
                    kp_cond[dims[0]:dims[1]] = res[q, dims[0]:dims[1]]
            else:
                kp_cond = res[q].copy()
            if valid_start is None:
                valid_start = len(res) - F
                d0 = res[0].copy()
            else:
                out.append(res[valid_start:valid_start + real])
                valid_start += real
            local += real
            glob += real
            if local >= len(feat):
                break
        if end:
            break
    return (np.concatenate(out) if out else np.zeros((0, 265), np.float32)), d0


def project_online(feats: np.ndarray, O: int, src: np.ndarray, chunk: int = 5, **kw) -> tuple[np.ndarray, int]:
    """-> (emitted frames [m,265], the first one's frame index)."""
    st = MotionStream(StreamParams(overlap=O, **kw), src)
    chunks = drive_stream(st, feats, chunk, lambda w: fake_sample(st.kp_cond, w.features, w.cond_start))
    assert np.array_equal(st.d0, reference_online(feats, O, src)[1])
    if not chunks:
        return np.zeros((0, 265), np.float32), st.emitted - st.pre
    return np.concatenate([rows for _, rows in chunks]), chunks[0][0]


@pytest.mark.parametrize("n_real", [45, 101, 150])
def test_overlap_70_equals_reference_on_every_real_frame(n_real: int) -> None:
    rng = np.random.default_rng(n_real)
    feats = rng.standard_normal((n_real, 1024)).astype(np.float32)
    src = rng.standard_normal(265).astype(np.float32)
    ref, _ = reference_online(feats, 70, src)
    got, first = project_online(feats, 70, src)
    assert first == 0 and len(got) == n_real
    assert len(ref) >= n_real                          # the reference also emits frames made from padding
    np.testing.assert_array_equal(got, ref[:n_real])


def test_overlap_10_keeps_the_frames_the_reference_drops() -> None:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((150, 1024)).astype(np.float32)
    src = rng.standard_normal(265).astype(np.float32)
    ref, _ = reference_online(feats, 10, src)
    got, _ = project_online(feats, 10, src, fix_kp_cond=1)
    assert len(got) == 150 and len(ref) == 90          # reference: real frames 0-59 never emitted
    np.testing.assert_array_equal(got[60:150], ref[:90])


@pytest.mark.parametrize(("overlap", "n_real"), [(10, 250), (10, 30), (40, 101), (70, 5), (70, 133), (75, 64)])
def test_reference_emission_gives_exactly_the_reference_frames(overlap: int, n_real: int) -> None:
    rng = np.random.default_rng(overlap + n_real)
    feats = rng.standard_normal((n_real, 1024)).astype(np.float32)
    src = rng.standard_normal(265).astype(np.float32)
    ref, _ = reference_online(feats, overlap, src)
    got, first = project_online(feats, overlap, src, emit="reference")
    assert len(got) == len(ref)
    np.testing.assert_array_equal(got, ref)
    every, _ = project_online(feats, overlap, src)
    if len(ref):                     # the same values, another choice of frames (first = 80 - F - O, 0 for O >= 40)
        assert first == max(0, 80 - 2 * overlap)
        np.testing.assert_array_equal(every[first:], ref[:n_real - first])

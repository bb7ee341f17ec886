"""Post-processing benchmark: the CPU work per output frame after the networks (paste-back into the source frame,
then encoding), at 512x512 and 1920x1080, and how many 25 fps sessions a 16-core node can post-process.

CPU time is process time (all threads counted), one OpenCV thread, the median of interleaved repetitions, so the
figures are per core and hold up on a shared machine better than wall time. The paste-back variants, the other
encoders and H.264 are timed in separate groups: x264 finishes a frame in its own threads after `encode` returns,
and that time would otherwise land on whatever is measured next. The face box is a real-sized one: the
512 crop covers a 400 px square of the 512x512 frame and a 700 px square of the 1080p frame, turned by 0.1 rad.
`paste_back_whole_frame_ms` is the first implementation (the render warped over the whole frame, then cut) and
`paste_back_remap_ms` the second (OpenCV's float32 remap of the face box alone, then the blend as numpy operations),
both with the same bytes, for ratios measured in the same run; `paste_back_new_matrix_ms` is a frame whose matrix
is not cached yet (a source frame seen for the first time).
`python -m tools.bench` (`make bench`) calls `run`.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from ditto.pipeline import FPS

SIZES = {"512x512": ((512, 512), 400), "1920x1080": ((1080, 1920), 700)}  # (h, w), face box side in px
NODE_CORES = 16
REPS = 30


def _matrix(hw: tuple[int, int], side: int, angle: float = 0.1) -> np.ndarray:
    h, w = hw
    s = side / 512
    c, si = s * np.cos(angle), s * np.sin(angle)
    return np.array([[c, -si, w / 2 - (c * 256 - si * 256)], [si, c, h / 2 - (si * 256 + c * 256)], [0, 0, 1]],
                    dtype=np.float32)


def _frame(hw: tuple[int, int]) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(cv2.resize(data.astronaut(), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR))


def _cpu_ms(fns: dict[str, Callable[[], object]], reps: int = REPS) -> dict[str, float]:
    """Median CPU milliseconds per call of each function, repetitions interleaved so load shifts hit all alike."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up: caches, encoder start
    for _ in range(reps):
        for k, f in fns.items():
            t = time.process_time()
            f()
            samples[k].append((time.process_time() - t) * 1000)
    return {k: round(statistics.median(v), 3) for k, v in samples.items()}


def _fixed_point_map(grid) -> tuple[np.ndarray, np.ndarray]:
    """The box's map in `cv2.remap`'s fixed-point form (int16 (x, y) and the 5+5-bit fraction), as warpAffine builds
    it internally: the previous implementation's input."""
    xq = (grid.row_x.astype(np.int64)[:, None] + grid.col_x[None, :]) >> 5
    yq = (grid.row_y.astype(np.int64)[:, None] + grid.col_y[None, :]) >> 5
    xy = np.stack([np.clip(xq >> 5, -32768, 32767), np.clip(yq >> 5, -32768, 32767)], axis=-1).astype(np.int16)
    return xy, ((yq & 31) * 32 + (xq & 31)).astype(np.uint16)


def jpeg_encoders(quality: int = 90) -> dict[str, Callable[[np.ndarray], object]]:
    from services.renderer.encode import JpegEncoder, jpeg_backends

    return {f"jpeg_{name}": JpegEncoder(quality, backend=name).encode for name in jpeg_backends()}


def run(out_dir: Path, sizes: tuple[str, ...] = tuple(SIZES), reps: int = REPS) -> dict:
    from services.renderer.encode import H264Encoder, JpegEncoder, RawEncoder
    from services.renderer.putback import PutBack, blend

    cv2.setNumThreads(1)
    result: dict = {"setup": {"cpu_time": "process time, median of interleaved repetitions", "opencv_threads": 1,
                              "reps": reps, "face_box_px": {k: v[1] for k, v in SIZES.items()},
                              "jpeg_quality": 90, "node_cores": NODE_CORES, "fps": FPS,
                              "jpeg_default": JpegEncoder().backend}}
    rng = np.random.default_rng(0)
    render = rng.uniform(0, 255, (512, 512, 3)).astype(np.float32)
    for name in sizes:
        hw, side = SIZES[name]
        frame, m = _frame(hw), _matrix(hw, side)
        pb = PutBack()
        grid = pb.grid(m, hw[1], hw[0])
        box = grid.box
        y0, y1, x0, x1 = box
        mask_w = np.clip(cv2.warpAffine(pb.mask, m[:2], (hw[1], hw[0]), flags=cv2.INTER_LINEAR), 0, 1)[y0:y1, x0:x1]
        mask3 = np.ascontiguousarray(np.broadcast_to(mask_w[..., None], (*mask_w.shape, 3)))
        xy, frac = _fixed_point_map(grid)

        def whole_frame(frame=frame, m=m, box=box, mask3=mask3, hw=hw):
            y0, y1, x0, x1 = box
            out = frame.copy()
            rw = cv2.warpAffine(render, m[:2], (hw[1], hw[0]), flags=cv2.INTER_LINEAR)[y0:y1, x0:x1]
            out[y0:y1, x0:x1] = blend(mask3, rw, out[y0:y1, x0:x1])
            return out

        def box_remap(frame=frame, box=box, mask3=mask3, xy=xy, frac=frac):
            y0, y1, x0, x1 = box
            out = frame.copy()
            rw = cv2.remap(render, xy, frac, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            out[y0:y1, x0:x1] = blend(mask3, rw, out[y0:y1, x0:x1])
            return out

        def new_matrix(frame=frame, m=m, pb=pb):
            pb._grids.clear()
            return pb(frame, render, m)

        pasted = pb(frame, render, m)
        assert np.array_equal(pasted, whole_frame()), "box-only paste-back differs from the whole-frame warp"
        assert np.array_equal(pasted, box_remap()), "paste-back differs from OpenCV's remap of the box"
        h264 = H264Encoder(hw[1], hw[0])
        encoders: dict[str, Callable[[np.ndarray], object]] = {"raw_rgb": RawEncoder().encode, **jpeg_encoders(),
                                                               "h264": h264.encode}
        ms = _cpu_ms({"paste_back_ms": functools.partial(pb, frame, render, m),
                      "paste_back_new_matrix_ms": new_matrix,
                      "paste_back_whole_frame_ms": whole_frame,
                      "paste_back_remap_ms": box_remap}, reps)
        # x264 last and alone, so its threads' tail lands on nothing else
        ms.update(_cpu_ms({f"{k}_ms": functools.partial(e, pasted) for k, e in encoders.items() if k != "h264"}, reps))
        ms.update(_cpu_ms({"h264_ms": functools.partial(h264.encode, pasted)}, reps))
        per_frame = {k: round(ms["paste_back_ms"] + ms[f"{k}_ms"], 3) for k in encoders}
        result[name] = {
            **ms,
            "face_box": list(box),
            "paste_back_speedup_vs_whole_frame": round(ms["paste_back_whole_frame_ms"] / ms["paste_back_ms"], 2),
            "paste_back_speedup_vs_remap": round(ms["paste_back_remap_ms"] / ms["paste_back_ms"], 2),
            "face_box_pixels": (box[1] - box[0]) * (box[3] - box[2]),
            "cpu_ms_per_output_frame": per_frame,
            "sessions_per_16_core_node_at_25fps": {k: int(NODE_CORES * 1000 // (FPS * v))
                                                   for k, v in per_frame.items()},
        }
        print(f"  {name}: {json.dumps(result[name])}", flush=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return result


if __name__ == "__main__":
    from tools.bench import record

    print(json.dumps(record("postprocess", Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results"), run), indent=2))

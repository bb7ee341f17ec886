"""What the person matte costs: once per source frame at registration, and per output frame when a session asks for
a transparent or green background, at 512x512 and 1920x1080 (the astronaut portrait scaled up), one core.

Per source frame (registration): the selfie-segmentation model (256x256 in LiteRT, one thread) with the scaling and
edge narrowing of its output (`matte_ms`), the head's room inside the crop (`head_ms`), and next to them the face
finding that registration runs anyway (detection, mesh, iris: `faces_ms`).

Per output frame: the paste-back for the original background (`paste_original_ms`, what every session pays), and
for transparent (`paste_transparent_ms`: RGBA with the avatar's alpha) and green (`paste_green_ms`: that, composited
onto green), each with the same face box as `postprocess.py`; `extra_*_ms` is what the matte adds. Outside the face
box the cut-out depends on the source frame alone and is kept per source frame (`PutBack`'s cut-out cache);
`*_uncached_ms` is a frame whose cut-out must be made again (a 1080p video source longer than the cache holds).

CPU time is process time, the median of interleaved repetitions (`postprocess._cpu_ms`). `python -m tools.bench
--only matte` refreshes this part.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import cv2
import numpy as np

from tools.bench.postprocess import SIZES, _cpu_ms, _frame, _matrix

REPS = 20


def run(out_dir: Path, reps: int = REPS) -> dict:
    from services.renderer.avatar.crop import CropSettings
    from services.renderer.avatar.framing import frame_faces
    from services.renderer.avatar.matte import with_head
    from services.renderer.avatar.sessions import AuxModels
    from services.renderer.putback import Background, PasteOptions, PutBack, feather_mask

    cv2.setNumThreads(1)
    aux = AuxModels.open("mediapipe")
    matte = aux.matte
    assert matte is not None
    feather = feather_mask()
    pb = PutBack()
    uncached = PutBack(cut_bytes=1)  # keeps no cut-out: every frame makes its own
    transparent, green = PasteOptions(Background.TRANSPARENT), PasteOptions(Background.GREEN)
    render = np.random.default_rng(0).uniform(0, 255, (512, 512, 3)).astype(np.float32)
    out: dict = {"source_frame": {}, "output_frame": {}}
    for name, (hw, side) in SIZES.items():
        frame = _frame(hw)
        framing = frame_faces([frame], CropSettings(), aux)
        alpha = with_head(matte(frame), framing.mats[0], feather)
        reg = _cpu_ms({"faces_ms": partial(frame_faces, [frame], CropSettings(), aux),
                       "matte_ms": partial(matte, frame),
                       "head_ms": partial(with_head, alpha, framing.mats[0], feather)}, max(5, reps // 2))
        out["source_frame"][name] = reg
        c2o = _matrix(hw, side)
        per = _cpu_ms({
            "paste_original_ms": partial(pb, frame, render, c2o),
            "paste_transparent_ms": partial(pb, frame, render, c2o, transparent, alpha),
            "paste_green_ms": partial(pb, frame, render, c2o, green, alpha),
            # a source frame whose cut-out is not kept (a long 1080p video source past the cache)
            "paste_transparent_uncached_ms": partial(uncached, frame, render, c2o, transparent, alpha),
            "paste_green_uncached_ms": partial(uncached, frame, render, c2o, green, alpha),
        }, reps)
        per["extra_transparent_ms"] = round(per["paste_transparent_ms"] - per["paste_original_ms"], 3)
        per["extra_green_ms"] = round(per["paste_green_ms"] - per["paste_original_ms"], 3)
        out["output_frame"][name] = per
        print(f"  {name}: per source frame {reg}; per output frame {per}", flush=True)
    return out

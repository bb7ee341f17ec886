"""The five LivePortrait-derived renderer networks of Ditto, one per file (docs/model.md §5).

| short | class | file |
|---|---|---|
| F | `AppearanceFeatureExtractor` | `appearance_extractor.py` |
| M | `MotionExtractor` | `motion_extractor.py` |
| S | `StitchingNetwork` | `stitching_network.py` |
| W | `WarpingNetwork` (+ `DenseMotionNetwork`) | `warping_network.py` |
| G | `SPADEDecoder` | `decoder.py` |

Each network is built from a config dataclass with `full()` (the official sizes, loads the released checkpoints
strictly) and `tiny()` (same architecture and key structure, narrow widths, for fast CPU tests).
"""

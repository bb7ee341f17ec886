"""Avatar registration: detection, landmarks, crop, eye state and the source's appearance and motion.

| module | role |
|---|---|
| `detection.py` | SCRFD (det_10g) letterbox, decode, NMS, largest face |
| `landmarks.py` | 2d106det and the 203-point landmark model (with tracking seeds) |
| `crop.py` | landmarks -> 512 roll-corrected crop, M_o2c / M_c2o, 256 extractor input |
| `mesh.py` | 478-point mesh from the ONNX pair blaze_face + face_mesh (MediaPipe's pipeline, no MediaPipe) |
| `eyes.py` | 478-point mesh -> eye_open [2], eye_ball [6] |
| `sessions.py` | ONNX Runtime sessions of the auxiliary models, from a weights folder |
| `register.py` | `register_avatar(...) -> Avatar`, with a content-addressed cache |
"""

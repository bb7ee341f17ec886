"""Avatar registration: detection, landmarks, crop, eye state and the source's appearance and motion.

| module | role |
|---|---|
| `framing.py` | the face models' choice per registration: crop matrices, eyes, the `FaceReport`, refusals |
| `faces.py` | MediaPipe: detection, the 468-point mesh, frame-to-frame tracking, iris-refined eyes (478 points) |
| `matte.py` | the person matte (selfie segmentation) with room for the head: what transparent / green cut along |
| `litert.py` | LiteRT interpreters behind ONNX Runtime's session interface (the MediaPipe .tflite files) |
| `detection.py` | SCRFD (det_10g) letterbox, decode, NMS, largest face (insightface) |
| `landmarks.py` | 2d106det and the 203-point landmark model (with tracking seeds) (insightface) |
| `crop.py` | landmarks or mesh -> 512 roll-corrected crop, M_o2c / M_c2o, 256 extractor input |
| `mesh.py` | BlazeFace decoding (any runtime); the 478-point mesh from the ONNX pair blaze_face + face_mesh |
| `eyes.py` | 478-point mesh -> eye_open [2], eye_ball [6] |
| `sessions.py` | `AuxModels`: the chosen face models (MediaPipe in LiteRT, or ONNX sessions from a weights folder) |
| `register.py` | `register_avatar(...) -> Avatar`, with a content-addressed cache |
"""

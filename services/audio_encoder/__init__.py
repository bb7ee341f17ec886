"""Stage 1, the audio encoder: speech of unknown length -> 25 fps HuBERT features [n, 1024] (docs/model.md §2).

- `formats`: chunk validation and decoding (PCM16 / float32, any rate 8-192 kHz, 1-8 channels), whole files via PyAV.
- `resample`: a chunk-size-invariant streaming polyphase FIR resampler to 16 kHz.
- `windows`: the reference's online windows (1920 zeros in front, 6480 samples every 3200, end flush).
- `hubert_model` / `hubert`: the HuBERT network, its ONNX export, and the ONNX Runtime / TensorRT / PyTorch backends.
- `encoder`: `StreamingEncoder` (push / end / state) and `encode_many` (many sessions, one backend call).
- `server`: the `ditto.v1.AudioEncoder` gRPC service; `cli`: `ditto features`; `bench`: `make bench` numbers.
"""

"""MotionDiT training: data preparation (`prepare`), the Stage-2 dataset, losses, the trainer and ONNX export.

It sits above the stages: it uses the audio encoder (HuBERT features), the renderer (crop, motion extraction, eye
features) and the motion generator (the MotionDiT itself), and nothing below imports it. Its commands, `ditto prepare`
and `ditto train`, live in the application layer (`ditto_app`).
"""

"""Small real ONNX models with the official auxiliary models' interfaces (names, shapes) that 'see' one face at a
chosen place. They let tests run registration through real ONNX Runtime sessions loaded from a weights folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ditto.weights import resolve


def _const_model(path: Path, input_name: str, input_shape: list[int], outputs: dict[str, np.ndarray]) -> None:
    """A graph whose outputs are constants plus 0 * mean(input), so that the input is really consumed."""
    nodes = [helper.make_node("ReduceMean", [input_name], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["z"])]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    outs = []
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), name + "_c"))
        nodes.append(helper.make_node("Add", [name + "_c", "z"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                                                                input_shape)], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def _layout(n: int, eyes: tuple[tuple[int, ...], tuple[int, ...]], lip: tuple[int, int], centre: float, r: float,
            seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = centre + rng.uniform(-r, r, (n, 2)) * np.array([1.0, 1.25])
    pts[list(eyes[0])] = (centre - 0.42 * r, centre - 0.38 * r)
    pts[list(eyes[1])] = (centre + 0.42 * r, centre - 0.38 * r)
    pts[list(lip)] = (centre, centre + 0.55 * r)
    return pts


def write_aux_models(root: Path, face_box: tuple[float, float, float, float] | None, image_hw: tuple[int, int]) -> None:
    """det_10g / 2d106det / landmark203 stand-ins under `root` in the official layout. `face_box` is in image
    pixels (None: the detector finds nothing)."""
    h, w = image_hw
    det_scale = (512 / w) if h / w <= 1 else 512 / h        # the letterbox scale
    outs: dict[str, np.ndarray] = {}
    for i, stride in enumerate((8, 16, 32)):
        k = (512 // stride) ** 2 * 2
        scores = np.zeros((k, 1), np.float32)
        boxes = np.ones((k, 4), np.float32)
        kps = np.zeros((k, 10), np.float32)
        if face_box is not None and stride == 32:
            x0, y0, x1, y1 = (v * det_scale for v in face_box)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            gx, gy = int(round(cx / stride)), int(round(cy / stride))
            ax, ay = gx * stride, gy * stride
            row = (gy * (512 // stride) + gx) * 2
            scores[row] = 0.9
            boxes[row] = np.array([ax - x0, ay - y0, x1 - ax, y1 - ay]) / stride
        outs[f"score_{stride}"], outs[f"bbox_{stride}"], outs[f"kps_{stride}"] = scores, boxes, kps
        del i
    ordered = {n: outs[n] for kind in ("score", "bbox", "kps") for n in (f"{kind}_8", f"{kind}_16", f"{kind}_32")}
    _const_model(resolve(root, "det_10g"), "input.1", [1, 3, 512, 512], ordered)
    lmk106 = _layout(106, ((33, 35, 40, 39), (87, 89, 94, 93)), (52, 61), 0.0, 0.45, 1)
    _const_model(resolve(root, "landmark106"), "data", [1, 3, 192, 192], {"fc1": lmk106.reshape(1, 212)})
    lmk203 = _layout(203, ((0, 6, 12, 18), (24, 30, 36, 42)), (48, 66), 0.5, 0.2, 2)
    _const_model(resolve(root, "landmark203"), "input", [1, 3, 224, 224], {"landmarks": lmk203.reshape(1, 406)})

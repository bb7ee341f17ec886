"""Tensor codec: numpy / torch arrays <-> `ditto.v1.Tensor` (dtype enum, shape, raw little-endian C-order bytes),
keeping dtype and shape; named tensors; a session state dict <-> bytes (`pack` / `unpack`).

Decoding never copies: the array is a read-only view on the received buffer. Encoding copies exactly once (into
the outgoing bytes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ditto_client.v1 import common_pb2

_NP_BY_CODE: dict[int, np.dtype] = {
    common_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    common_pb2.DTYPE_FLOAT16: np.dtype("<f2"),
    common_pb2.DTYPE_INT64: np.dtype("<i8"),
    common_pb2.DTYPE_UINT8: np.dtype("u1"),
    common_pb2.DTYPE_INT32: np.dtype("<i4"),
    common_pb2.DTYPE_FLOAT64: np.dtype("<f8"),
    common_pb2.DTYPE_INT16: np.dtype("<i2"),
    common_pb2.DTYPE_BOOL: np.dtype("?"),
}
_CODE_BY_KIND: dict[str, int] = {dt.str.lstrip("<|"): code for code, dt in _NP_BY_CODE.items()}

class CodecError(ValueError):
    """A tensor could not be encoded or decoded; the message says why."""


def dtype_code(dtype: np.dtype) -> Any:
    key = np.dtype(dtype).newbyteorder("<").str.lstrip("<|")
    try:
        return _CODE_BY_KIND[key]
    except KeyError:
        supported = ", ".join(str(d) for d in _NP_BY_CODE.values())
        raise CodecError(f"dtype {np.dtype(dtype)} is not supported on the wire (supported: {supported})") from None


def numpy_dtype(code: int) -> np.dtype:
    try:
        return _NP_BY_CODE[code]
    except KeyError:
        raise CodecError(f"unknown tensor dtype code {code}") from None


def as_numpy(array: Any) -> np.ndarray:
    """A numpy view of a numpy array or a (CPU or GPU) torch tensor."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "detach"):  # torch.Tensor without importing torch here
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _little_endian_contiguous(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    # (np.ascontiguousarray would turn a 0-d array into 1-d)
    return arr if arr.flags.c_contiguous else np.array(arr, order="C")


def to_proto(array: Any, out: common_pb2.Tensor | None = None) -> common_pb2.Tensor:
    arr = _little_endian_contiguous(as_numpy(array))
    msg = out if out is not None else common_pb2.Tensor()
    msg.dtype = dtype_code(arr.dtype)
    del msg.shape[:]
    msg.shape.extend(int(d) for d in arr.shape)
    msg.data = arr.tobytes()
    return msg


def _check_size(shape: tuple[int, ...], dtype: np.dtype, nbytes: int) -> None:
    if any(d < 0 for d in shape):
        raise CodecError(f"negative dimension in shape {shape}")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != nbytes:
        raise CodecError(f"tensor of shape {shape} and dtype {dtype} needs {expected} bytes, got {nbytes}")


def from_proto(msg: common_pb2.Tensor) -> np.ndarray:
    """Read-only numpy view on the message's bytes (no copy)."""
    dtype = numpy_dtype(msg.dtype)
    shape = tuple(int(d) for d in msg.shape)
    _check_size(shape, dtype, len(msg.data))
    return np.frombuffer(msg.data, dtype=dtype).reshape(shape)


def named(tensors: dict[str, Any]) -> list[common_pb2.NamedTensor]:
    return [common_pb2.NamedTensor(name=k, tensor=to_proto(v)) for k, v in tensors.items()]


def unnamed(items: Any) -> dict[str, np.ndarray]:
    return {item.name: from_proto(item.tensor) for item in items}


def pack(state: dict[str, Any]) -> bytes:
    """A flat dict of numpy arrays and JSON-able scalars/strings -> bytes (an .npz; no pickle), for checkpoints."""
    import io
    import json

    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in state.items() if k not in arrays}
    buf = io.BytesIO()
    payload: dict[str, Any] = {"__json__": np.frombuffer(json.dumps(scalars).encode(), np.uint8), **arrays}
    np.savez(buf, **payload)
    return buf.getvalue()


def unpack(data: bytes) -> dict[str, Any]:
    import io
    import json

    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        out: dict[str, Any] = json.loads(z["__json__"].tobytes().decode())
        out.update({k: z[k] for k in z.files if k != "__json__"})
    return out

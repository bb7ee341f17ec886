"""Tensor codec: numpy / torch arrays <-> bytes and <-> `ditto.v1.Tensor`, keeping dtype and shape.

Two encodings of the same thing:
- `ditto.v1.Tensor` (dtype enum, shape, raw little-endian C-order bytes) for protobuf messages, and
- a self-describing frame for plain byte channels: b"DT1" | dtype code (1 byte) | ndim (1 byte) | ndim x int64 |
  raw bytes.

Decoding never copies: the array is a read-only view on the received buffer. Encoding copies exactly once (into
the outgoing bytes), and not at all for the raw-bytes part when the caller passes a memoryview sink.
"""

from __future__ import annotations

import struct
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

_MAGIC = b"DT1"
_HEADER = struct.Struct("<3sBB")


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


def encode(array: Any) -> bytes:
    arr = _little_endian_contiguous(as_numpy(array))
    code = dtype_code(arr.dtype)
    if arr.ndim > 255:
        raise CodecError("more than 255 dimensions")
    header = _HEADER.pack(_MAGIC, code, arr.ndim) + struct.pack(f"<{arr.ndim}q", *arr.shape)
    return b"".join((header, arr.data.cast("B") if arr.size else b""))


def decode(buf: bytes | bytearray | memoryview) -> np.ndarray:
    """Read-only numpy view on `buf` (no copy)."""
    view = memoryview(buf)
    if len(view) < _HEADER.size:
        raise CodecError(f"tensor frame too short ({len(view)} bytes)")
    magic, code, ndim = _HEADER.unpack_from(view, 0)
    if magic != _MAGIC:
        raise CodecError("not a tensor frame (bad magic)")
    dtype = numpy_dtype(code)
    off = _HEADER.size
    if len(view) < off + 8 * ndim:
        raise CodecError("tensor frame truncated in its shape")
    shape = struct.unpack_from(f"<{ndim}q", view, off)
    off += 8 * ndim
    _check_size(shape, dtype, len(view) - off)
    return np.frombuffer(view[off:], dtype=dtype).reshape(shape)


def to_torch(array: np.ndarray, device: str | None = None, copy: bool = False) -> Any:
    """torch tensor sharing memory with `array` where possible (read-only inputs are copied once, as torch
    cannot wrap read-only memory)."""
    import torch

    arr = array
    if copy or not arr.flags.writeable:
        arr = arr.copy()
    t = torch.from_numpy(arr)
    return t.to(device) if device else t


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

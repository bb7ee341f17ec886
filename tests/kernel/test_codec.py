import numpy as np
import pytest
import torch
from ditto_client.v1 import common_pb2

from ditto import codec


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "uint8", "int32", "float64", "int16", "bool"])
@pytest.mark.parametrize("shape", [(), (0,), (0, 5), (3,), (2, 3, 4)])
def test_round_trip_bytes_and_proto(dtype, shape):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(shape) * 100).astype(dtype)
    for back in (codec.decode(codec.encode(a)), codec.from_proto(codec.to_proto(a))):
        assert back.dtype == a.dtype and back.shape == a.shape
        np.testing.assert_array_equal(back, a)


def test_large_tensor_decodes_without_copy():
    a = np.random.default_rng(1).standard_normal((16, 1024, 1024)).astype(np.float32)  # 64 MB
    buf = codec.encode(a)
    b = codec.decode(buf)
    assert not b.flags.owndata and not b.flags.writeable  # a view on the received bytes
    np.testing.assert_array_equal(a, b)
    msg = codec.to_proto(a)
    v = codec.from_proto(msg)
    assert not v.flags.owndata
    np.testing.assert_array_equal(a, v)


def test_torch_tensors_and_views():
    t = torch.arange(24, dtype=torch.float32).reshape(4, 6)[:, ::2]  # non-contiguous view
    back = codec.decode(codec.encode(t))
    np.testing.assert_array_equal(back, t.numpy())
    tt = codec.to_torch(back)
    assert torch.equal(tt, t.contiguous())
    big_endian = np.arange(5, dtype=">f4")
    np.testing.assert_array_equal(codec.decode(codec.encode(big_endian)), big_endian.astype("<f4"))


def test_bad_input_is_a_clear_error():
    with pytest.raises(codec.CodecError, match="needs 12 bytes"):
        codec.from_proto(common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[3], data=b"\0" * 8))
    with pytest.raises(codec.CodecError, match="unknown tensor dtype"):
        codec.from_proto(common_pb2.Tensor(dtype=99, shape=[1], data=b"\0"))
    with pytest.raises(codec.CodecError, match="bad magic"):
        codec.decode(b"XXXXXXXX")
    with pytest.raises(codec.CodecError, match="truncated"):
        codec.decode(codec.encode(np.zeros((2, 2), np.float32))[:8])
    with pytest.raises(codec.CodecError, match="not supported"):
        codec.encode(np.zeros(2, dtype=np.complex64))
    named = codec.unnamed(codec.named({"a": np.ones(2, np.float32), "b": np.zeros((), np.int64)}))
    assert set(named) == {"a", "b"}

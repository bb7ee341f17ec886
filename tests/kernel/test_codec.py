import numpy as np
import pytest
import torch

from ditto import codec
from ditto_client.v1 import common_pb2


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "uint8", "int32", "float64", "int16", "bool"])
@pytest.mark.parametrize("shape", [(), (0,), (0, 5), (3,), (2, 3, 4)])
def test_round_trip_proto(dtype, shape):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(shape) * 100).astype(dtype)
    back = codec.from_proto(codec.to_proto(a))
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, a)


def test_large_tensor_decodes_without_copy():
    a = np.random.default_rng(1).standard_normal((16, 1024, 1024)).astype(np.float32)  # 64 MB
    v = codec.from_proto(codec.to_proto(a))
    assert not v.flags.owndata and not v.flags.writeable  # a view on the received bytes
    np.testing.assert_array_equal(a, v)


def test_torch_tensors_and_views():
    t = torch.arange(24, dtype=torch.float32).reshape(4, 6)[:, ::2]  # non-contiguous view
    np.testing.assert_array_equal(codec.from_proto(codec.to_proto(t)), t.numpy())
    big_endian = np.arange(5, dtype=">f4")
    np.testing.assert_array_equal(codec.from_proto(codec.to_proto(big_endian)), big_endian.astype("<f4"))


def test_bad_input_is_a_clear_error():
    with pytest.raises(codec.CodecError, match="needs 12 bytes"):
        codec.from_proto(common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[3], data=b"\0" * 8))
    with pytest.raises(codec.CodecError, match="unknown tensor dtype"):
        codec.from_proto(common_pb2.Tensor(dtype=99, shape=[1], data=b"\0"))
    with pytest.raises(codec.CodecError, match="not supported"):
        codec.to_proto(np.zeros(2, dtype=np.complex64))
    named = codec.unnamed(codec.named({"a": np.ones(2, np.float32), "b": np.zeros((), np.int64)}))
    assert set(named) == {"a", "b"}


def test_state_pack_round_trip():
    state = {"frames": np.arange(6, dtype=np.int64).reshape(2, 3), "step": np.int64(7), "name": "s1", "done": False}
    back = codec.unpack(codec.pack(state))
    np.testing.assert_array_equal(back["frames"], state["frames"])
    assert (back["step"], back["name"], back["done"]) == (7, "s1", False)

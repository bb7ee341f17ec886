import numpy as np
import pytest
import torch
from torch import nn

from ditto.weights import CheckpointError, golden_init_v1, golden_state_dict, load_module, read_state_dict


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("freqs", torch.zeros(4))


class Toy(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.rotary = Shared()
        self.conv = nn.Conv2d(3, width, 3)
        self.bn = nn.BatchNorm2d(width)
        self.inner = nn.Sequential(nn.Linear(width, 2))
        self.inner.rotary = self.rotary  # the same module twice: aliased state_dict entries
        self.sn = nn.utils.spectral_norm(nn.Conv2d(width, width, 1))


def test_golden_init_rules():
    m = Toy()
    sd = golden_state_dict(m, seed=7)
    assert list(sd) == list(m.state_dict())
    assert torch.equal(sd["inner.rotary.freqs"], sd["rotary.freqs"])  # alias copies the first key
    assert sd["bn.num_batches_tracked"].dtype == torch.int64 and int(sd["bn.num_batches_tracked"]) == 0
    assert (sd["bn.running_var"] >= 1).all()
    assert abs(float(sd["bn.weight"].mean()) - 1) < 0.2
    # deterministic and keyed by name
    again = golden_state_dict(Toy(), seed=7)
    assert all(torch.equal(sd[k], again[k]) for k in sd)
    other = golden_state_dict(Toy(), seed=8)
    assert not torch.equal(sd["conv.weight"], other["conv.weight"])
    # spectral norm buffers: u, v are the leading singular vectors of weight_orig
    w = sd["sn.weight_orig"].double().reshape(8, -1).numpy()
    sigma = float(sd["sn.weight_u"].double() @ torch.from_numpy(w) @ sd["sn.weight_v"].double())
    assert sigma == pytest.approx(np.linalg.svd(w, compute_uv=False)[0], rel=1e-4)
    m.load_state_dict(sd)


def test_golden_init_matches_the_documented_formula():
    import zlib

    out = golden_init_v1([("a.weight", (3, 4), "float32"), ("a.bias", (3,), "float32")], seed=5)
    z = np.random.Generator(np.random.PCG64([5, zlib.crc32(b"a.weight")])).standard_normal((3, 4))
    np.testing.assert_array_equal(out["a.weight"], (z / 2.0).astype(np.float32))
    zb = np.random.Generator(np.random.PCG64([5, zlib.crc32(b"a.bias")])).standard_normal(3)
    np.testing.assert_array_equal(out["a.bias"], (0.05 * zb).astype(np.float32))


def test_checkpoint_errors_name_file_and_key(tmp_path):
    m = Toy()
    sd = golden_state_dict(m, 1)
    good = tmp_path / "good.pth"
    torch.save(sd, good)
    load_module(Toy(), good)
    missing = dict(sd)
    del missing["conv.bias"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth: missing key 'conv\.bias'"):
        load_module(Toy(), tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"key 'conv\.weight' has shape \(8, 3, 3, 3\), the network expects"):
        load_module(Toy(width=4), good)
    raw = good.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_module(Toy(), tmp_path / "trunc.pth")
    with pytest.raises(CheckpointError, match="file not found"):
        read_state_dict(tmp_path / "nope.pth")
    torch.save({"retarget_shoulder": {"module." + k: v for k, v in sd.items()}}, tmp_path / "wrapped.pth")
    assert set(read_state_dict(tmp_path / "wrapped.pth", "retarget_shoulder")) == set(sd)
    with pytest.raises(CheckpointError, match="model_state_dict"):
        read_state_dict(good, "model_state_dict")


def test_every_network_gets_the_value_checks(tmp_path):
    # formerly the MotionDiT's own checks, now the kernel's for every checkpoint: shared tensors agree, values finite
    sd = golden_state_dict(Toy(), 1)
    aliased = dict(sd, **{"inner.rotary.freqs": sd["rotary.freqs"] + 1})
    torch.save(aliased, tmp_path / "aliased.pth")
    with pytest.raises(CheckpointError, match=r"aliased\.pth: key 'inner\.rotary\.freqs' differs from 'rotary\.freqs'"):
        load_module(Toy(), tmp_path / "aliased.pth")
    nan = dict(sd, **{"conv.weight": torch.full_like(sd["conv.weight"], float("nan"))})
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"nan\.pth: key 'conv\.weight' holds NaN"):
        load_module(Toy(), tmp_path / "nan.pth")
    torch.save(dict(sd, **{"conv.bias": [0.0] * 8}), tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"key 'conv\.bias' is list, not a tensor"):
        load_module(Toy(), tmp_path / "list.pth")

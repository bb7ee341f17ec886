"""RendererModels: loading from a weights folder, checkpoint errors, batching, input validation (tiny profile)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ditto.weights import OFFICIAL_FILES, CheckpointError, golden_state_dict, load_module, resolve
from services.renderer.models import NETWORKS, RendererConfig, RendererModels, build_networks, load_networks
from services.renderer.networks.blocks import SpectralNormConv2d
from services.renderer.synthetic import write_synthetic


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    write_synthetic(root, "tiny", seed=0)
    return root


@pytest.fixture(scope="module")
def models(tiny_dir) -> RendererModels:
    return RendererModels.load(tiny_dir, profile="tiny", device="cpu", backend="torch")


def _inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = RendererConfig.tiny()
    gen = torch.Generator().manual_seed(seed)
    img = torch.rand(batch, 3, 256, 256, generator=gen)
    f_s = torch.randn(batch, *cfg.feature_shape, generator=gen)
    x_s = 0.3 * torch.randn(batch, 21, 3, generator=gen)
    x_d = 0.3 * torch.randn(batch, 21, 3, generator=gen)
    return img, f_s, x_s, x_d


def test_synthetic_folder_layout_and_containers(tiny_dir) -> None:
    for name in NETWORKS:
        assert resolve(tiny_dir, name).is_file(), name
    stitch = torch.load(resolve(tiny_dir, "stitch_network"), map_location="cpu", weights_only=True)
    assert set(stitch) == {"retarget_shoulder"}
    assert all(k.startswith("module.mlp.") for k in stitch["retarget_shoulder"])
    plain = torch.load(resolve(tiny_dir, "motion_extractor"), map_location="cpu", weights_only=True)
    assert all(k.startswith("detector.") for k in plain)
    decoder = torch.load(resolve(tiny_dir, "decoder"), map_location="cpu", weights_only=True)
    assert "G_middle_0.conv_0.weight_orig" in decoder and "G_middle_0.conv_0.weight" not in decoder


def test_folder_equals_in_memory_synthetic(models) -> None:
    ref = RendererModels.load("synthetic", profile="tiny", seed=0)
    img, f_s, x_s, x_d = _inputs(2)
    assert torch.equal(models.appearance(img), ref.appearance(img))
    assert torch.equal(models.warp_decode(f_s, x_s, x_d), ref.warp_decode(f_s, x_s, x_d))
    other = RendererModels.load("synthetic", profile="tiny", seed=1)
    assert not torch.allclose(other.stitch(x_s, x_d), ref.stitch(x_s, x_d))


def test_shapes_and_ranges(models) -> None:
    img, f_s, x_s, x_d = _inputs(2)
    assert models.appearance(img).shape == (2, *models.feature_shape)
    motion = models.motion(img)
    assert list(motion) == ["pitch", "yaw", "roll", "t", "exp", "scale", "kp"]
    assert {k: tuple(v.shape) for k, v in motion.items()} == {
        "pitch": (2, 66), "yaw": (2, 66), "roll": (2, 66), "t": (2, 3), "exp": (2, 63), "scale": (2, 1),
        "kp": (2, 63)}
    stitched = models.stitch(x_s, x_d)
    assert stitched.shape == (2, 21, 3) and not torch.allclose(stitched, x_d)
    frame = models.warp_decode(f_s, x_s, x_d)
    assert frame.shape == (2, 3, models.output_size, models.output_size) and models.output_size == 256
    assert frame.dtype == torch.float32 and 0 <= frame.min() and frame.max() <= 1 and frame.std() > 1e-3


def test_batch_of_three_equals_single_calls(models) -> None:
    img, f_s, x_s, x_d = _inputs(3, seed=5)
    batched = {
        "appearance": models.appearance(img),
        "stitch": models.stitch(x_s, x_d),
        "warp_decode": models.warp_decode(f_s, x_s, x_d),
        **{f"motion.{k}": v for k, v in models.motion(img).items()},
    }
    for i in range(3):
        one = {
            "appearance": models.appearance(img[i:i + 1]),
            "stitch": models.stitch(x_s[i:i + 1], x_d[i:i + 1]),
            "warp_decode": models.warp_decode(f_s[i:i + 1], x_s[i:i + 1], x_d[i:i + 1]),
            **{f"motion.{k}": v for k, v in models.motion(img[i:i + 1]).items()},
        }
        for key, value in one.items():
            torch.testing.assert_close(batched[key][i:i + 1], value, rtol=1e-5, atol=1e-5, msg=key)
    # Rows are independent: different sessions in one batch do not leak into each other.
    assert not torch.allclose(batched["warp_decode"][0], batched["warp_decode"][1])


def test_numpy_inputs_and_clear_errors(models) -> None:
    img, f_s, x_s, x_d = _inputs(1)
    torch.testing.assert_close(models.stitch(x_s.numpy(), x_d.numpy()), models.stitch(x_s, x_d))
    with pytest.raises(ValueError, match=r"img: expected shape \['B', 3, 256, 256\], got \[1, 3, 128, 128\]"):
        models.appearance(img[:, :, :128, :128])
    with pytest.raises(ValueError, match="floating-point"):
        models.motion((img * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="batch 2 does not match"):
        models.stitch(x_s, torch.cat([x_d, x_d]))
    with pytest.raises(ValueError, match="f_s: expected shape"):
        models.warp_decode(torch.zeros(1, 32, 16, 64, 64), x_s, x_d)     # a full-size volume for tiny networks
    with pytest.raises(TypeError, match="x_s"):
        models.stitch([[0.0] * 3] * 21, x_d)
    with pytest.raises(ValueError, match="profile"):
        RendererModels.load("synthetic", profile="small")
    with pytest.raises(ValueError, match="backend"):
        RendererModels.load("synthetic", profile="tiny", backend="tvm")  # type: ignore[arg-type]


# -- checkpoint errors: files the test writes itself -------------------------------------------------------------


def _copy_weights(src: Path, dst: Path) -> Path:
    for name in NETWORKS:
        target = resolve(dst, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(resolve(src, name).read_bytes())
    return dst


def test_missing_checkpoint(tiny_dir, tmp_path) -> None:
    root = _copy_weights(tiny_dir, tmp_path)
    resolve(root, "warp_network").unlink()
    with pytest.raises(CheckpointError, match=r"warp_network\.pth: file not found"):
        load_networks(root, "tiny")


def test_truncated_checkpoint(tiny_dir, tmp_path) -> None:
    root = _copy_weights(tiny_dir, tmp_path)
    path = resolve(root, "decoder")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"decoder\.pth: cannot be read.*truncated"):
        load_networks(root, "tiny")


@pytest.mark.parametrize("damage", ["shape", "missing", "unexpected"])
def test_mismatched_checkpoint_names_file_and_key(tiny_dir, tmp_path, damage: str) -> None:
    root = _copy_weights(tiny_dir, tmp_path)
    path = resolve(root, "appearance_extractor")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if damage == "shape":
        state["down_blocks.1.conv.weight"] = state["down_blocks.1.conv.weight"][:, :-1]
        pattern = r"appearance_extractor\.pth: key 'down_blocks\.1\.conv\.weight' has shape"
    elif damage == "missing":
        del state["resblocks_3d.3dr1.norm2.running_var"]
        pattern = r"appearance_extractor\.pth: missing key 'resblocks_3d\.3dr1\.norm2\.running_var'"
    else:
        state["resblocks_3d.3dr9.conv1.weight"] = torch.zeros(1)
        pattern = r"appearance_extractor\.pth: unexpected key 'resblocks_3d\.3dr9\.conv1\.weight'"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=pattern):
        load_networks(root, "tiny")


def test_wrong_container_and_wrong_profile(tiny_dir, tmp_path) -> None:
    root = _copy_weights(tiny_dir, tmp_path)
    stitch = resolve(root, "stitch_network")
    inner = torch.load(stitch, map_location="cpu", weights_only=True)["retarget_shoulder"]
    torch.save(inner, stitch)                                     # a bare state_dict, no 'retarget_shoulder'
    with pytest.raises(CheckpointError, match=r"stitch_network\.pth: expected a dict with key 'retarget_shoulder'"):
        load_networks(root, "tiny")
    # Full-size networks against tiny checkpoints: the first key of the first file already differs.
    full_f = build_networks("full", ("appearance_extractor",))["appearance_extractor"]

    with pytest.raises(CheckpointError, match=r"key 'first\.conv\.weight' has shape \(8, 3, 3, 3\)"):
        load_module(full_f, resolve(tiny_dir, "appearance_extractor"), OFFICIAL_FILES["appearance_extractor"].container)


def test_spectral_norm_folded_on_load() -> None:
    decoder = build_networks("tiny", ("decoder",))["decoder"]
    decoder.load_state_dict(golden_state_dict(decoder, seed=3))
    conv = decoder.up_1.conv_s
    assert isinstance(conv, SpectralNormConv2d)
    w = conv.weight_orig.detach().reshape(conv.weight_orig.shape[0], -1).double()
    sigma = float(conv.weight_u.double() @ (w @ conv.weight_v.double()))
    np.testing.assert_allclose(conv.weight.numpy(), (conv.weight_orig.detach().double() / sigma).numpy(),
                               rtol=1e-6, atol=0)
    # The folded weight is not a checkpoint entry, and golden-init's u, v make sigma the top singular value.
    assert "up_1.conv_s.weight" not in decoder.state_dict()
    assert abs(sigma - float(torch.linalg.matrix_norm(w, ord=2))) < 1e-4 * sigma

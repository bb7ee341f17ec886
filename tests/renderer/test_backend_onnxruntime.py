"""Our ONNX exports on real ONNX Runtime sessions against PyTorch on the same weights (tiny profile)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from services.renderer.backends import OnnxRuntimeBackend
from services.renderer.export import GRID_SAMPLE_SCOPE, NETWORK_IO, export_cached, export_network
from services.renderer.models import NETWORKS, RendererConfig, RendererModels, load_networks
from tests.conftest import scaled_error

BATCH = 3          # not the export's example batch (2): proves the batch axis is dynamic


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("renderer-cache")


@pytest.fixture(scope="module")
def torch_models() -> RendererModels:
    return RendererModels.load("synthetic", profile="tiny", seed=7)


@pytest.fixture(scope="module")
def ort_models(cache) -> RendererModels:
    return RendererModels.load("synthetic", profile="tiny", seed=7, backend="onnxruntime", cache_dir=cache)


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    return {
        "img": torch.rand(BATCH, 3, 256, 256, generator=gen),
        "f_s": torch.randn(BATCH, *RendererConfig.tiny().feature_shape, generator=gen),
        "x_s": 0.3 * torch.randn(BATCH, 21, 3, generator=gen),
        "x_d": 0.3 * torch.randn(BATCH, 21, 3, generator=gen),
    }


def _close(got: torch.Tensor, ref: torch.Tensor, name: str, tol: float = 1e-4) -> None:
    assert got.shape == ref.shape, name
    err = scaled_error(got.numpy(), ref.numpy())
    assert err <= tol, f"{name}: ONNX Runtime vs PyTorch scaled error {err:.3g}"


def test_graphs_have_reference_io_names_and_dynamic_batch(ort_models, cache) -> None:
    assert isinstance(ort_models.backend, OnnxRuntimeBackend)
    files = sorted((cache / "onnx").glob("*.onnx"))
    assert len(files) == len(NETWORKS)
    for path in files:
        name = path.name.split("-")[0]
        graph = onnx.load(str(path)).graph
        assert [i.name for i in graph.input] == list(NETWORK_IO[name].inputs)
        assert [o.name for o in graph.output] == list(NETWORK_IO[name].outputs)
        assert all(v.type.tensor_type.shape.dim[0].dim_param == "batch" for v in [*graph.input, *graph.output])
        assert {op.version for op in onnx.load(str(path)).opset_import if op.domain in ("", "ai.onnx")} == {20}


def test_appearance(ort_models, torch_models, inputs) -> None:
    _close(ort_models.appearance(inputs["img"]), torch_models.appearance(inputs["img"]), "appearance")


def test_motion_bound_by_name(ort_models, torch_models, inputs) -> None:
    got, ref = ort_models.motion(inputs["img"]), torch_models.motion(inputs["img"])
    assert list(got) == list(ref) == list(NETWORK_IO["motion_extractor"].outputs)
    for key in ref:
        _close(got[key], ref[key], f"motion.{key}")


def test_stitch(ort_models, torch_models, inputs) -> None:
    _close(ort_models.stitch(inputs["x_s"], inputs["x_d"]), torch_models.stitch(inputs["x_s"], inputs["x_d"]),
           "stitch", tol=1e-5)


def test_warp_decode_native_grid_sample(ort_models, torch_models, inputs) -> None:
    args = inputs["f_s"], inputs["x_s"], inputs["x_d"]
    _close(ort_models.warp(*args), torch_models.warp(*args), "warp")
    _close(ort_models.warp_decode(*args), torch_models.warp_decode(*args), "warp_decode")


def test_warp_decode_decomposed_grid_sample(torch_models, inputs, tmp_path) -> None:
    nets = load_networks("synthetic", "tiny", seed=7)
    paths = {name: export_network(name, nets[name], tmp_path / f"{name}.onnx",
                                  "decomposed" if name == "warp_network" else "native")
             for name in ("warp_network", "decoder")}
    graph = onnx.load(str(paths["warp_network"])).graph
    assert not any(node.op_type == "GridSample" for node in graph.node)
    tagged = [node for node in graph.node if node.name.startswith(GRID_SAMPLE_SCOPE)]
    assert {node.op_type for node in tagged} >= {"Gather", "Floor"}      # the TensorRT fp32 island is tagged
    models = RendererModels(OnnxRuntimeBackend(paths, torch.device("cpu")), RendererConfig.tiny())
    args = inputs["f_s"], inputs["x_s"], inputs["x_d"]
    _close(models.warp_decode(*args), torch_models.warp_decode(*args), "warp_decode (decomposed)")


def test_export_cache_is_reused(cache) -> None:
    nets = load_networks("synthetic", "tiny", seed=7)
    path = export_cached("stitch_network", nets["stitch_network"], cache)
    stamp = path.stat().st_mtime_ns
    assert export_cached("stitch_network", nets["stitch_network"], cache) == path
    assert path.stat().st_mtime_ns == stamp
    # Different weights, different file.
    other = load_networks("synthetic", "tiny", seed=8)["stitch_network"]
    assert export_cached("stitch_network", other, cache) != path


@pytest.mark.golden
@pytest.mark.parametrize("case_name", ["warp_network"], ids=["warp_network"])
def test_full_warp_network_export_decomposed_matches_golden(case_name: str, tmp_path) -> None:
    """The official-size warp network, exported with the TensorRT-ready decomposition, on ONNX Runtime."""
    import onnxruntime as ort

    from ditto.weights import golden_state_dict
    from services.renderer.models import build_networks
    from tests.conftest import golden_case

    case, io, _ = golden_case(case_name)
    net = build_networks("full", ("warp_network",))["warp_network"]
    net.load_state_dict(golden_state_dict(net, case["seed"]))
    path = export_network("warp_network", net, tmp_path / "warp_network.onnx", "decomposed")
    del net
    assert not any(node.op_type == "GridSample" for node in onnx.load(str(path)).graph.node)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["out"], {name: io[name] for name in NETWORK_IO["warp_network"].inputs})
    assert scaled_error(out, io["out"]) <= 1e-4

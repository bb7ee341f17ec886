"""The renderer benchmark runs end to end and writes its table (tiny profile to stay fast here)."""

from __future__ import annotations

import json

from tools.bench import renderer as bench


def test_bench_writes_rows_for_every_network(tmp_path) -> None:
    result = bench.run(tmp_path, profile="tiny", batches=(1, 2), iterations=1, budget_s=60)
    assert not (tmp_path / "renderer.json").exists(), "a part returns its result; tools.bench.record writes it"
    networks = {r["network"] for r in result["rows"]}
    assert networks == {"appearance_extractor", "motion_extractor", "stitch_network", "warp_network", "decoder",
                        "frame (warp + decoder)"}
    for row in result["rows"]:
        if "skipped" not in row:
            # fps is rounded to 4 significant digits and ms to 0.001: their product is 1000 within what that allows
            fps, ms = row["fps"], row["ms_per_frame"]
            assert ms > 0 and abs(fps * ms / 1000 - 1) <= 5e-4 + 0.0005 / ms + 1e-6
    assert all(r["batch"] == 1 and "ms_per_frame" in r for r in result["rows"] if r["batch"] == 1)
    assert "| decoder | 1 |" in (tmp_path / "renderer.md").read_text()


def test_postprocess_bench_reports_cpu_ms_per_encoding_and_node_capacity(tmp_path) -> None:
    from tools.bench import postprocess as bench_post

    result = bench_post.run(tmp_path, sizes=("512x512",), reps=2)
    row = result["512x512"]
    assert set(row["cpu_ms_per_output_frame"]) >= {"raw_rgb", "jpeg_opencv", "jpeg_simplejpeg", "h264"}
    for enc, ms in row["cpu_ms_per_output_frame"].items():
        assert ms > row["paste_back_ms"] > 0
        assert row["sessions_per_16_core_node_at_25fps"][enc] == int(16 * 1000 // (25 * ms))


def test_onnxruntime_bench_compares_every_configuration_with_torch(tmp_path) -> None:
    from tools.bench import onnxruntime as bench_ort

    result = bench_ort.run(tmp_path, profile="tiny", reps=1, budget_s=5, networks=("warp_network",))
    saved = json.loads((tmp_path / "onnxruntime.json").read_text())
    warp = saved["networks"]["warp_network"]
    assert set(warp["ratio_ort_over_torch"]) == set(warp["ort_ms"]) == set(warp["max_abs_diff_vs_torch"])
    assert any("decomposed" in k for k in warp["ort_ms"]) and "all+1thread" in warp["ort_ms"]
    assert max(warp["max_abs_diff_vs_torch"].values()) < 1e-3, "ORT must compute what PyTorch computes"
    assert warp["best_ratio"] == min(warp["ratio_ort_over_torch"].values()) and result["networks"]


def test_onnxruntime_bench_says_where_a_slow_network_spends_its_time(tmp_path) -> None:
    """The evidence the bench records for a network above the target: ORT's own per-operator profile, and the
    slowest 3-D convolution timed alone in both runtimes."""
    import torch

    from services.renderer.export import export_cached
    from services.renderer.models import RendererConfig, load_networks
    from tools.bench import onnxruntime as bench_ort

    cfg = RendererConfig.for_profile("tiny")
    path = export_cached("warp_network", load_networks("synthetic", "tiny", 0)["warp_network"], tmp_path, "native")
    feeds = {"feature_3d": torch.rand(1, *cfg.feature_shape).numpy(),
             "kp_source": 0.3 * torch.rand(1, cfg.num_kp, 3).numpy(),
             "kp_driving": 0.3 * torch.rand(1, cfg.num_kp, 3).numpy()}
    why = bench_ort.explain(path, feeds, reps=1, threads=1)
    shares = why["ort_time_share_by_op"]
    assert "Conv (3-D)" in shares and 0 < sum(shares.values()) <= 1.001
    alone = why["slowest_conv3d_alone"]
    assert len(alone["input"]) == 5 and len(alone["weight"]) == 5 and alone["ratio_ort_over_torch"] > 0

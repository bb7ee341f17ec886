"""The renderer benchmark runs end to end and writes its JSON and table (tiny profile to stay fast here)."""

from __future__ import annotations

import json

from tools.bench import renderer as bench


def test_bench_writes_rows_for_every_network(tmp_path) -> None:
    result = bench.run(tmp_path, profile="tiny", batches=(1, 2), iterations=1, budget_s=60)
    saved = json.loads((tmp_path / "renderer.json").read_text())
    assert saved == result
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

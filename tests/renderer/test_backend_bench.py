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
            # fps and ms are each rounded (to 0.01 and 0.001): their product is 1000 within what rounding allows
            fps, ms = row["fps"], row["ms_per_frame"]
            assert ms > 0 and abs(fps * ms - 1000) <= 0.005 * ms + 0.0005 * fps + 1e-6
    assert all(r["batch"] == 1 and "ms_per_frame" in r for r in result["rows"] if r["batch"] == 1)
    assert "| decoder | 1 |" in (tmp_path / "renderer.md").read_text()

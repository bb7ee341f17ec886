"""The compact parity data: a packed case loads back to the reference's exact arrays, a rule that does not give the
reference's bytes is refused when packing, and a loader whose numpy draws differently stops instead of testing on
other data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ditto.weights import input_rng
from tools import golden_pack
from tools.golden_pack import GoldenDataError, load_case, pack


def _reference_case(root: Path, name: str = "tiny_case", seed: int = 77) -> Path:
    """A case folder in the reference's layout: drawn inputs, a derived condition, an output."""
    folder = root / name
    folder.mkdir(parents=True)
    feats = input_rng(seed, "feats").standard_normal((6, 4)).astype(np.float32)
    image = input_rng(seed, "image").integers(0, 256, size=(5, 5, 3), dtype=np.int64).astype(np.uint8)
    tail = np.arange(3, dtype=np.float32)
    arrays = {"feats": feats, "image": image, "cond": np.concatenate([feats, np.tile(tail, (6, 1))], axis=1),
              "out": np.tanh(feats).astype(np.float32), "flags": np.array([1, 2, 3], np.int64)}
    np.savez_compressed(folder / "io.npz", **arrays)
    (folder / "case.json").write_text(json.dumps({"seed": seed}))
    return folder


@pytest.fixture
def rules(monkeypatch):
    table = {"feats": golden_pack._normal("feats"), "image": golden_pack._bytes("image"),
             "cond": golden_pack._condition_rows(["feats"], "cond_tail")}
    monkeypatch.setitem(golden_pack.RULES, "tiny_case", table)
    monkeypatch.setitem(golden_pack.PARTS, "tiny_case", {"cond_tail": ("cond", (slice(0, 1), slice(4, None)))})
    return table


def test_a_packed_case_loads_back_to_the_reference_arrays(tmp_path, rules):
    src = _reference_case(tmp_path / "full")
    pack(src, tmp_path / "repo" / "tiny_case")
    with np.load(tmp_path / "repo" / "tiny_case" / "io.npz") as z:
        assert sorted(z.files) == ["cond_tail", "flags", "out"]       # what no rule rebuilds, and the tail
    _, got = load_case(tmp_path / "repo" / "tiny_case")
    _, want = load_case(src)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k


def test_a_rule_that_does_not_give_the_reference_bytes_is_refused(tmp_path, rules):
    src = _reference_case(tmp_path / "full")
    rules["feats"] = golden_pack._normal("feats", std=1.0000001)
    with pytest.raises(GoldenDataError, match="tiny_case/feats"):
        pack(src, tmp_path / "repo" / "tiny_case")
    assert not (tmp_path / "repo" / "tiny_case").exists()


def test_the_loader_stops_when_numpy_draws_other_values(tmp_path, rules):
    src = _reference_case(tmp_path / "full")
    target = tmp_path / "repo" / "tiny_case"
    pack(src, target)
    spec = json.loads((target / golden_pack.REGENERATE).read_text())
    spec["arrays"]["image"]["sha256"] = "0" * 64
    (target / golden_pack.REGENERATE).write_text(json.dumps(spec))
    with pytest.raises(GoldenDataError, match="DITTO_GOLDEN_DIR"):
        load_case(target)

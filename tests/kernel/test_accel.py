"""ditto.accel: the export cache and atomic writes under concurrent writers (real processes, real ONNX Runtime)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from ditto import accel

RACE_TIMEOUT_S = 300


def _export_tiny_graph(path: Path, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).eval()
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 8),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False)


def _race_export(path: str, inside: mp.synchronize.Barrier, results: mp.Queue) -> None:
    ran = []

    def export(tmp: Path) -> None:
        ran.append(str(tmp))
        # Both writers are inside their export before either writes: neither saw the other's file.
        inside.wait(RACE_TIMEOUT_S)
        _export_tiny_graph(tmp, seed=0)

    out = accel.cached_export(path, export)
    results.put((str(out), ran))


def _race_dir(folder: str, writer: int, inside: mp.synchronize.Barrier, results: mp.Queue) -> None:
    with accel.atomic_dir(folder) as tmp:
        (tmp / "a.bin").write_bytes(bytes([writer]) * 1000)
        inside.wait(RACE_TIMEOUT_S)
        (tmp / "b.bin").write_bytes(bytes([writer]) * 1000)
    results.put(writer)


def _run_two(target, args_for) -> list:
    ctx = mp.get_context("spawn")
    inside, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for(i), inside, results)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(RACE_TIMEOUT_S)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [results.get(timeout=10) for _ in procs]


def test_two_processes_build_the_same_cached_export_at_once(tmp_path):
    path = tmp_path / "cache" / "tiny-0123abcd.onnx"
    got = _run_two(_race_export, lambda i: (str(path),))
    temps = [ran[0] for _, ran in got]
    assert [out for out, _ in got] == [str(path)] * 2
    assert all(len(ran) == 1 for _, ran in got), "each writer exported once"
    assert len(set(temps)) == 2, f"the two writers shared a temporary file: {temps}"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "a temporary file was left behind"

    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    (y,) = session.run(["y"], {"x": x})
    assert y.shape == (3, 4) and np.isfinite(y).all()
    # the cache is used from then on: no export runs
    assert accel.cached_export(path, lambda tmp: pytest.fail("exported again")) == path


def test_a_failed_export_leaves_neither_the_file_nor_a_temporary(tmp_path):
    path = tmp_path / "broken.onnx"

    def export(tmp: Path) -> None:
        tmp.write_bytes(b"half a graph")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError, match="exporter crashed"):
        accel.cached_export(path, export)
    assert list(tmp_path.iterdir()) == []


def test_files_written_in_one_block_are_published_when_it_ends_and_removed_when_it_fails(tmp_path):
    paths = [tmp_path / "onnx" / f"{name}.onnx" for name in ("a", "b")]
    with pytest.raises(RuntimeError, match="second export crashed"), accel.atomic_paths(paths) as tmp:
        tmp[paths[0]].write_bytes(b"a")
        assert not paths[0].exists()                     # nothing is published before the block ends
        raise RuntimeError("second export crashed")
    assert list((tmp_path / "onnx").iterdir()) == []
    with accel.atomic_paths(paths) as tmp:
        for path in paths:
            tmp[path].write_bytes(path.stem.encode())
    assert [p.read_bytes() for p in paths] == [b"a", b"b"]
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["a.onnx", "b.onnx"]


def test_two_processes_publish_the_same_folder_at_once(tmp_path):
    folder = tmp_path / "avatars" / "abc"
    writers = _run_two(_race_dir, lambda i: (str(folder), i))
    assert sorted(writers) == [0, 1]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["abc"], "a temporary folder was left behind"
    a, b = (folder / "a.bin").read_bytes(), (folder / "b.bin").read_bytes()
    assert len(a) == len(b) == 1000 and a == b, "the folder mixes two writers' files"


def test_write_bytes_atomic_replaces_whole_files(tmp_path):
    path = tmp_path / "x" / "engine.bin"
    accel.write_bytes_atomic(path, b"first")
    accel.write_bytes_atomic(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["engine.bin"]


def test_file_sha256_and_digest(tmp_path):
    import hashlib

    path = tmp_path / "f"
    path.write_bytes(b"x" * (3 << 20))
    assert accel.file_sha256(path) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()
    assert accel.digest("a", 1) == hashlib.sha256(b"a|1").hexdigest() != accel.digest("a", 2)


def test_tensorrt_missing_or_without_cuda_is_a_clear_error(tmp_path):
    import importlib.util

    import torch

    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        pytest.skip("TensorRT can run here: the stages' gpu tests cover it")
    with pytest.raises(accel.BackendError, match=r"TensorRT 10 Python package.*pip install|needs a CUDA GPU"):
        accel.TensorRTEngine(tmp_path / "g.onnx", "cuda", tmp_path, accel.EngineSpec())

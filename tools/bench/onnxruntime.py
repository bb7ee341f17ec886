"""ONNX Runtime on the CPU against our PyTorch, network by network, on the same inputs: the ratio ORT / PyTorch of
each renderer network under several session configurations (graph optimisation level, threads, spinning,
execution mode; for the warp network the native 5-D GridSample against the gather decomposition), so the default
session options are the measured best and a network that stays above 0.8x shows why. Configurations named
"1thread" are compared with PyTorch on one thread too (the per-core figure; an oversubscribed machine hurts
multi-threaded PyTorch's OpenMP more than ONNX Runtime's pool, so the multi-threaded ratios depend on the load).

Times are the best of a few calls (least disturbed by the other processes of a shared machine), PyTorch and every
ORT configuration interleaved call by call, so a load change hits all alike and the ratios hold within one run.
Full-size networks with synthetic weights. `tools/bench.py` (`make bench`, part "onnxruntime") calls `run`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET_RATIO = 0.8


def configs(threads: int) -> dict[str, dict[str, Any]]:
    """Session configurations tried for every network (names are what the JSON reports)."""
    return {
        "ort-default": {},
        "all+threads": {"level": "ORT_ENABLE_ALL", "intra": threads},
        "all+threads+nospin": {"level": "ORT_ENABLE_ALL", "intra": threads, "spin": False},
        "extended+threads": {"level": "ORT_ENABLE_EXTENDED", "intra": threads},
        "basic+threads": {"level": "ORT_ENABLE_BASIC", "intra": threads},
        # one thread each side: the per-core comparison, which an oversubscribed machine disturbs least
        "all+1thread": {"level": "ORT_ENABLE_ALL", "intra": 1, "spin": False},
    }


def session_options(level: str | None = None, intra: int = 0, spin: bool | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if level:
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if intra:
        so.intra_op_num_threads = intra
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if spin is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return so


def _one_thread(fn: Callable[..., Any], *args: Any) -> Any:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


def _best(fns: dict[str, Callable[[], Any]], reps: int, budget_s: float) -> dict[str, float]:
    """Best seconds per call of each function, calls interleaved; fewer repetitions when the budget runs out."""
    best = {k: float("inf") for k in fns}
    deadline = time.monotonic() + budget_s
    for f in fns.values():
        f()  # warm-up
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
        if time.monotonic() > deadline:
            break
    return best


def run(out_dir: Path, profile: str = "full", reps: int = 3, budget_s: float = 90.0,
        networks: tuple[str, ...] = ("appearance_extractor", "motion_extractor", "warp_network", "decoder")) -> dict:
    import onnxruntime as ort
    import torch

    from services.renderer.backends import OnnxRuntimeBackend, TorchBackend
    from services.renderer.export import NETWORK_IO, export_cached
    from services.renderer.models import RendererConfig, load_networks
    from services.renderer.networks.grid_sample import GridSampleMode

    threads = torch.get_num_threads()
    cfg = RendererConfig.for_profile(profile)
    nets = load_networks("synthetic", profile, 0)
    gen = torch.Generator().manual_seed(0)
    shapes = {"image": (3, 256, 256), "feature_3d": cfg.feature_shape, "kp_source": (cfg.num_kp, 3),
              "kp_driving": (cfg.num_kp, 3),
              "feature": (cfg.decoder.input_channels, cfg.decoder.feature_size, cfg.decoder.feature_size)}
    result: dict[str, Any] = {"profile": profile, "onnxruntime": ort.__version__, "torch": torch.__version__,
                              "torch_threads": threads, "cpus": os.cpu_count(), "target_ratio": TARGET_RATIO,
                              "timing": "best of interleaved calls, batch 1",
                              "project_default": "all+threads+nospin (ditto.accel.onnx_cpu_options)", "networks": {}}
    cache = Path(tempfile.gettempdir()) / "ditto-bench-ort"
    torch_backend = TorchBackend(nets, torch.device("cpu"))
    for name in networks:
        io = NETWORK_IO[name]
        feeds = {k: (0.3 if k.startswith("kp") else 1.0) * torch.rand(1, *shapes[k], generator=gen) for k in io.inputs}
        modes: tuple[GridSampleMode, ...] = ("native", "decomposed") if name == "warp_network" else ("native",)
        fns: dict[str, Callable[[], Any]] = {"torch": functools.partial(torch_backend.run, name, feeds),
                                             "torch-1thread": functools.partial(_one_thread, torch_backend.run, name,
                                                                                feeds)}
        ref = torch_backend.run(name, feeds)
        max_diff: dict[str, float] = {}
        paths: dict[str, Path] = {}
        for mode in modes:
            path = paths[mode] = export_cached(name, nets[name].float().cpu(), cache, mode)
            for cname, c in configs(threads).items():
                key = cname if mode == "native" else f"{cname} (gridsample decomposed)"
                backend = OnnxRuntimeBackend({name: path}, torch.device("cpu"), session_options(**c))
                got = backend.run(name, feeds)
                max_diff[key] = max(float((got[k] - ref[k]).abs().max()) for k in ref)
                fns[key] = functools.partial(backend.run, name, feeds)
        best = _best(fns, reps, budget_s)
        t_torch, t_torch1 = best.pop("torch"), best.pop("torch-1thread")
        ratios = {k: round(v / (t_torch1 if "1thread" in k else t_torch), 3) for k, v in best.items()}
        winner = min(ratios, key=lambda k: ratios[k])
        result["networks"][name] = {
            "torch_ms": round(1000 * t_torch, 2), "torch_1thread_ms": round(1000 * t_torch1, 2),
            "ort_ms": {k: round(1000 * v, 2) for k, v in best.items()},
            "ratio_ort_over_torch": ratios,
            "best": winner, "best_ratio": ratios[winner], "meets_target": ratios[winner] <= TARGET_RATIO,
            "max_abs_diff_vs_torch": max_diff,
        }
        if ratios[winner] > TARGET_RATIO:  # say why: where ORT spends its time, and that op alone against torch
            slowest_path = paths["decomposed" if "decomposed" in winner else "native"]
            result["networks"][name]["why_not"] = explain(slowest_path, {k: feeds[k].numpy() for k in io.inputs},
                                                          reps, threads)
        print(f"  {name}: torch {1000 * t_torch:.1f} ms; {json.dumps(ratios)}", flush=True)
        _save(Path(out_dir), result)  # after every network: the big ones take minutes on a small CPU
    return _with_earlier(Path(out_dir), result)


def op_time_shares(path: Path, feeds: dict[str, Any], threads: int) -> tuple[dict[str, float], list[Any]]:
    """ONNX Runtime's own profile of one call: the share of node time per operator type (a convolution over a 5-D
    input is reported as "Conv (3-D)"), and the input shapes of the slowest 3-D convolution node."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = session_options("ORT_ENABLE_ALL", threads, False)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    slowest: tuple[float, list[Any]] = (0.0, [])
    for e in events:
        args = e.get("args", {})
        if e.get("cat") != "Node" or "op_name" not in args or not e["name"].endswith("_kernel_time"):
            continue
        shapes = [next(iter(d.values())) for d in args.get("input_type_shape", [])]
        op = args["op_name"]
        if op in ("Conv", "FusedConv") and shapes and len(shapes[0]) == 5:
            op = "Conv (3-D)"
            if e["dur"] > slowest[0]:
                slowest = (e["dur"], shapes)
        per_op[op] = per_op.get(op, 0.0) + e["dur"]
    total = sum(per_op.values()) or 1.0
    shares = {k: round(v / total, 3) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])[:8]}
    return shares, slowest[1]


def conv3d_alone(shapes: list[Any], reps: int, threads: int) -> dict[str, Any]:
    """One 3-D convolution of the given [input, weight(, bias)] shapes, exported and run by ONNX Runtime and by
    PyTorch on the same input: whether the gap is the operator itself."""
    import onnxruntime as ort
    import torch

    x_shape, w_shape = shapes[0], shapes[1]
    pad = (w_shape[2] // 2, w_shape[3] // 2, w_shape[4] // 2)
    conv = torch.nn.Conv3d(w_shape[1], w_shape[0], tuple(w_shape[2:]), padding=pad, bias=len(shapes) > 2).eval()
    x = torch.rand(*x_shape)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conv3d.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(conv, (x,), input_names=["x"], output_names=["y"], dynamo=True,
                                        external_data=False, verbose=False)
        assert program is not None
        program.save(str(path))
        session = ort.InferenceSession(str(path), session_options("ORT_ENABLE_ALL", threads, False),
                                       providers=["CPUExecutionProvider"])
        feeds = {"x": x.numpy()}
        with torch.inference_mode():
            best = _best({"torch": lambda: conv(x), "ort": lambda: session.run(None, feeds)}, max(reps, 3), 60)
    return {"input": x_shape, "weight": w_shape, "torch_ms": round(1000 * best["torch"], 2),
            "ort_ms": round(1000 * best["ort"], 2), "ratio_ort_over_torch": round(best["ort"] / best["torch"], 3)}


def explain(path: Path, feeds: dict[str, Any], reps: int, threads: int) -> dict[str, Any]:
    shares, slowest_conv3d = op_time_shares(path, feeds, threads)
    why: dict[str, Any] = {"ort_time_share_by_op": shares}
    if slowest_conv3d:
        alone = why["slowest_conv3d_alone"] = conv3d_alone(slowest_conv3d, reps, threads)
        share = shares.get("Conv (3-D)", 0.0)
        if share >= 0.5 and alone["ratio_ort_over_torch"] > TARGET_RATIO:
            why["reading"] = (f"3-D convolutions are {share:.0%} of ONNX Runtime's time here, and the slowest one "
                              f"alone runs at {alone['ratio_ort_over_torch']}x PyTorch: ONNX Runtime's CPU provider "
                              "gives only 2-D convolutions its blocked (NCHWc) kernels, PyTorch runs Conv3d through "
                              "oneDNN, so no session option brings this network to the target.")
    return why


def _with_earlier(out_dir: Path, result: dict) -> dict:
    """The result with the networks of an earlier onnxruntime.json that this run did not measure."""
    path = out_dir / "onnxruntime.json"
    if path.is_file():
        earlier = json.loads(path.read_text()).get("networks", {})
        result["networks"] = {**{k: v for k, v in earlier.items() if k not in result["networks"]},
                              **result["networks"]}
    return result


def _save(out_dir: Path, result: dict) -> None:
    """A checkpoint of the run so far (`tools.bench.record` writes the final file): the big networks take minutes
    each on a small CPU, and an interrupted run keeps what it measured."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "onnxruntime.json").write_text(json.dumps(_with_earlier(out_dir, result), indent=1))


if __name__ == "__main__":
    names = tuple(sys.argv[2:]) or ("appearance_extractor", "motion_extractor", "warp_network", "decoder")
    from tools.bench import record

    print(json.dumps(record("onnxruntime", Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results"), run,
                            networks=names, reps=2, budget_s=60), indent=1))

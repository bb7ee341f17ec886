"""`make gpu-check`: everything that needs CUDA, in one command that fits in 8 minutes on one GPU.

1. what the machine has: CUDA device, TensorRT, ONNX Runtime's CUDA/TensorRT providers, torchvision's GPU JPEG;
   what is missing is listed with the checks it makes us skip;
2. the `gpu`-marked tests (pytest -m gpu);
3. full-profile benchmarks in fp16 of the renderer networks, the MotionDiT and HuBERT at batch 1, 4, 16 (the
   `tools/bench` parts' own measurements, run under autocast with this check's batches and budgets);
4. warp + decoder eager, torch.compile, torch.compile with CUDA graphs (mode reduce-overhead) and a hand-captured
   CUDA graph, at batch 1, 4, 16 (each checked against eager);
5. post-processing per output frame at 512x512 and 1080p: the paste-back on the device (`blend_torch`, checked
   against the CPU kernel's bytes) and JPEG on the device (nvJPEG through torchvision) next to the CPU path;
6. a serving run (full profile, synthetic weights, `ditto serve` on the GPU) with more and more realtime 25 fps
   sessions, to find how many one GPU holds with first frame p95 under 1 s and every frame delivered at 25 fps.

Writes bench/results/gpu-<part>.json and gpu-summary.md. Every step has a time budget and the run a deadline, so a
slow step is cut short (the JSON says so) rather than the run overrunning. `--dry-run` runs the same steps on the
CPU with the tiny profile, batch 1 and one short session, into a temporary folder: the test suite runs it
(tests/tools/test_gpu_check.py) so the command cannot rot on machines without a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ditto.pipeline import FPS

ROOT = Path(__file__).resolve().parents[1]
FIRST_FRAME_P95_S = 1.0


@dataclass
class Plan:
    dry_run: bool
    device: str
    profile: str
    batches: tuple[int, ...]
    iterations: int
    serving_levels: tuple[int, ...]
    serving_seconds: float
    compile_backend: str
    deadline_s: float
    budgets_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def make(cls, dry_run: bool) -> Plan:
        if dry_run:
            return cls(True, "cpu", "tiny", (1,), 1, (1,), 1.2, "eager", 600,
                       {"tests": 120, "renderer": 60, "motion": 60, "audio": 60, "compile": 60, "postprocess": 30,
                        "serving": 240})
        return cls(False, "cuda", "full", (1, 4, 16), 5, (1, 2, 4, 8, 12, 16, 24, 32, 48), 6.0, "inductor", 470,
                   {"tests": 110, "renderer": 60, "motion": 40, "audio": 30, "compile": 95, "postprocess": 15,
                    "serving": 110})


class Clock:
    def __init__(self, deadline_s: float) -> None:
        self.t0 = time.monotonic()
        self.deadline = self.t0 + deadline_s

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def budget(self, step_s: float) -> float:
        return max(0.0, min(step_s, self.left()))


# ---- 1. the machine -----------------------------------------------------------------------------------------------

def environment() -> dict:
    import torch

    env: dict[str, Any] = {"torch": torch.__version__, "cuda": bool(torch.cuda.is_available()),
                           "cpus": os.cpu_count()}
    skipped: list[str] = []
    if env["cuda"]:
        env["gpu"] = torch.cuda.get_device_name(0)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        env["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        skipped.append("CUDA: no device visible; a dry run on the CPU replaces every GPU step")
    try:
        import tensorrt  # type: ignore[import-not-found,import-untyped,unused-ignore]

        env["tensorrt"] = tensorrt.__version__
    except Exception as err:  # ImportError, or a library that fails to load
        env["tensorrt"] = None
        skipped.append(f"TensorRT: not importable ({type(err).__name__}); the TensorRT tests skip themselves and "
                       "no engine is built (install the gpu extra: pip install '.[gpu]')")
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except Exception:
        providers = []
    env["onnxruntime_providers"] = providers
    if "CUDAExecutionProvider" not in providers:
        skipped.append("onnxruntime-gpu: no CUDAExecutionProvider; ONNX Runtime runs on the CPU only (the gpu extra "
                       "installs onnxruntime-gpu in place of onnxruntime)")
    from services.renderer.gpu_post import gpu_jpeg_available

    env["gpu_jpeg"] = gpu_jpeg_available("cuda")
    if not env["gpu_jpeg"]:
        skipped.append("torchvision GPU JPEG: not available; frames are pasted back and encoded on the CPU")
    try:
        import av  # noqa: F401  (only H.264 needs it; the offline kit leaves it out)
    except ImportError:
        skipped.append("PyAV: not importable; H.264 sessions cannot be served (the check serves JPEG)")
    env["differs_from_the_pins"] = _versions_off_the_pins()
    env["skipped"] = skipped
    return env


def _versions_off_the_pins() -> dict[str, dict[str, str]]:
    """{distribution: {pinned, found}} where this machine's version is not pyproject.toml's (on a GPU image that
    brings its own torch, the numbers are for its versions); what is not installed at all is not listed."""
    import importlib.metadata as metadata

    from tools.gpu_kit import pinned

    off: dict[str, dict[str, str]] = {}
    for name, version in pinned().items():
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if found.split("+")[0] != version:
            off[name] = {"pinned": version, "found": found}
    return off


# ---- 2. the gpu-marked tests --------------------------------------------------------------------------------------

def gpu_test_files() -> list[str]:
    """The test modules that hold `gpu`-marked tests. Only these are collected: the rest of the suite imports what a
    GPU node's image need not have (the browser, the voice-agent frameworks, PyAV), see tools/gpu_kit.py."""
    return sorted(str(f.relative_to(ROOT)) for f in (ROOT / "tests").rglob("test_*.py")
                  if "pytest.mark.gpu" in f.read_text())


def gpu_tests(plan: Plan, budget_s: float, out: Path) -> dict:
    args = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra",
            f"--junitxml={out / 'gpu-tests.xml'}", *gpu_test_files()]
    if plan.dry_run:
        args.append("--collect-only")  # no CUDA here: list them, so a broken import or marker still fails
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python"),
                                                       os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(budget_s, 1))
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or b"")[-3000:]
        return {"ok": False, "error": f"cut at the {budget_s:.0f} s budget",
                "output_tail": tail.decode(errors="replace") if isinstance(tail, bytes) else tail}
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors", "collected")}
    for number, word in re.findall(r"(\d+)(?:/\d+)? (passed|failed|skipped|errors?|tests? collected)", summary):
        counts[{"error": "errors"}.get(word, "collected" if "collected" in word else word)] = int(number)
    ok = proc.returncode == 0 or (plan.dry_run and proc.returncode == 5)  # 5: none selected
    return {"ok": ok, "returncode": proc.returncode, "summary": summary, **counts,
            "collect_only": plan.dry_run, "output_tail": proc.stdout[-3000:] + proc.stderr[-2000:]}


# ---- 3. stage benchmarks in fp16 ----------------------------------------------------------------------------------

def _autocast(device: str) -> contextlib.AbstractContextManager:
    import torch

    # fp16 on CUDA (the reference's precision for the big networks); the CPU dry run stays in fp32
    return torch.autocast("cuda", dtype=torch.float16) if device == "cuda" else contextlib.nullcontext()


def _time(fn: Callable[[], Any], device: str, iterations: int) -> float:
    import torch

    fn()  # warm-up
    best = float("inf")
    for _ in range(iterations):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def renderer_bench(plan: Plan, budget_s: float) -> dict:
    from tools.bench import renderer as bench

    with tempfile.TemporaryDirectory() as tmp:
        return bench.run(Path(tmp), profile=plan.profile, device=plan.device, batches=plan.batches,
                         iterations=plan.iterations, budget_s=budget_s)


def motion_bench(plan: Plan, budget_s: float) -> dict:
    from tools.bench import motion as bench

    gen = bench.generator(plan.profile, plan.device)
    with _autocast(plan.device):
        rows = bench.by_batch(gen, plan.batches, steps=10, repeats=plan.iterations, budget_s=budget_s)
    return {"profile": plan.profile, "device": plan.device, "precision": _precision(plan), "rows": rows}


def audio_bench(plan: Plan, budget_s: float) -> dict:
    from services.audio_encoder.hubert import TorchHubert
    from services.audio_encoder.hubert_model import HubertShape, random_hubert
    from tools.bench import audio as bench

    hubert = TorchHubert(random_hubert(HubertShape.profile(plan.profile), seed=0), plan.device)
    with _autocast(plan.device):
        rows = bench.rows(f"torch-{plan.device}", hubert, plan.batches, plan.iterations, budget_s)
    return {"profile": plan.profile, "device": plan.device, "precision": _precision(plan), "rows": rows}


def _precision(plan: Plan) -> str:
    return "fp16 autocast" if plan.device == "cuda" else "fp32 (dry run on the CPU)"


# ---- 4. torch.compile and CUDA graphs for warp + decoder ----------------------------------------------------------

def compile_variants(plan: Plan, budget_s: float) -> dict:
    import torch

    from services.renderer.models import RendererModels

    models = RendererModels.load("synthetic", profile=plan.profile, device=plan.device)
    cfg = models.cfg
    deadline = time.monotonic() + budget_s
    gen = torch.Generator().manual_seed(0)

    def eager(f_s: Any, x_s: Any, x_d: Any) -> Any:
        return models.warp_decode(f_s, x_s, x_d)

    compiled = torch.compile(eager, backend=plan.compile_backend, dynamic=False)
    variants: dict[str, Callable[..., Any] | None] = {"eager": eager, f"compile-{plan.compile_backend}": compiled}
    skipped: list[str] = []
    if plan.device == "cuda":
        variants["compile-reduce-overhead (CUDA graphs)"] = torch.compile(eager, mode="reduce-overhead", dynamic=False)
        variants["cuda-graph (captured eager)"] = None  # built per batch below
    else:
        skipped.append("CUDA graphs: need CUDA")
    rows: list[dict] = []
    for b in plan.batches:
        x = [t.to(plan.device) for t in (torch.randn(b, *cfg.feature_shape, generator=gen),
                                          0.3 * torch.randn(b, cfg.num_kp, 3, generator=gen),
                                          0.3 * torch.randn(b, cfg.num_kp, 3, generator=gen))]
        with torch.no_grad():
            reference = eager(*x).float()
            base_ms = None
            for name, fn in variants.items():
                if time.monotonic() > deadline:
                    rows.append({"variant": name, "batch": b, "skipped": f"over the {budget_s:.0f} s budget"})
                    continue
                try:
                    if fn is None:
                        fn = _captured_graph(eager, x)
                    t0 = time.monotonic()
                    out = fn(*x)  # first call: compilation / capture
                    first_s = time.monotonic() - t0
                    sec = _time(functools.partial(fn, *x), plan.device, plan.iterations)
                    ms = 1000 * sec / b
                    base_ms = base_ms or ms
                    rows.append({"variant": name, "batch": b, "ms_per_frame": round(ms, 3),
                                 "speedup_vs_eager": round(base_ms / ms, 2), "first_call_s": round(first_s, 1),
                                 "max_abs_diff_vs_eager": float((out.float() - reference).abs().max())})
                except Exception as err:  # a variant that does not work on this stack is a result, not a crash
                    rows.append({"variant": name, "batch": b, "error": f"{type(err).__name__}: {err}"[:500]})
    return {"profile": plan.profile, "device": plan.device, "precision": "fp16 autocast (W, G)"
            if plan.device == "cuda" else "fp32", "rows": rows, "skipped": skipped}


def _captured_graph(fn: Callable[..., Any], static_inputs: list[Any]) -> Callable[..., Any]:
    """fn captured once into a CUDA graph on static input buffers; calling it copies inputs in and replays."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn(*static_inputs)  # warm-up on a side stream, as capture requires
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(*static_inputs)

    def replay(*inputs: Any) -> Any:
        for dst, src in zip(static_inputs, inputs, strict=True):
            if dst.data_ptr() != src.data_ptr():
                dst.copy_(src)
        graph.replay()
        return static_out

    return replay


# ---- 5. post-processing -------------------------------------------------------------------------------------------

def postprocess_bench(plan: Plan, budget_s: float) -> dict:
    """Wall milliseconds per output frame of the paste-back and JPEG q90, on the device and on one CPU core, at the
    post-processing benchmark's sizes and face boxes; the device's paste-back bytes against the CPU kernel's."""
    import cv2
    import torch

    from services.renderer.encode import JpegEncoder
    from services.renderer.gpu_post import GpuJpegEncoder, gpu_jpeg_available
    from services.renderer.putback import PutBack
    from tools.bench.postprocess import SIZES, _frame, _matrix

    cv2.setNumThreads(1)
    pb = PutBack()
    render = np.random.default_rng(0).uniform(0, 255, (512, 512, 3)).astype(np.float32)
    gpu_jpeg = gpu_jpeg_available(plan.device)
    cpu_jpeg, dev_jpeg = JpegEncoder(90), (GpuJpegEncoder(90) if gpu_jpeg else None)
    deadline = time.monotonic() + budget_s
    rows: list[dict] = []
    for name, (hw, side) in SIZES.items():
        if time.monotonic() > deadline:
            rows.append({"size": name, "skipped": f"over the {budget_s:.0f} s budget"})
            continue
        frame, m = _frame(hw), _matrix(hw, side)
        frame_dev, render_dev = torch.from_numpy(frame).to(plan.device), torch.from_numpy(render).to(plan.device)
        on_cpu = pb(frame, render, m)
        on_dev = pb.blend_torch(frame_dev, render_dev, m)
        differ = np.abs(on_dev.cpu().numpy().astype(np.int16) - on_cpu)
        row = {"size": name,
               "paste_back_device_ms": round(1000 * _time(functools.partial(pb.blend_torch, frame_dev, render_dev, m),
                                                          plan.device, plan.iterations), 3),
               "paste_back_cpu_ms": round(1000 * _time(functools.partial(pb, frame, render, m), "cpu",
                                                       plan.iterations), 3),
               # CUDA may fuse the blend's multiply-add: one grey level where the float blend is near an integer
               "device_vs_cpu_max_diff": int(differ.max()), "device_vs_cpu_pixels_differing": int((differ > 0).sum()),
               "jpeg_cpu_ms": round(1000 * _time(functools.partial(cpu_jpeg.encode, on_cpu), "cpu", plan.iterations),
                                    3)}
        if dev_jpeg is not None:
            row["jpeg_device_ms"] = round(1000 * _time(functools.partial(dev_jpeg.encode_many, [on_dev]),
                                                       plan.device, plan.iterations), 3)
        rows.append(row)
    return {"device": plan.device, "gpu_jpeg": gpu_jpeg, "rows": rows,
            "note": "" if gpu_jpeg else "no JPEG on the device (torchvision with CUDA): CPU JPEG only"}


# ---- 6. serving capacity ------------------------------------------------------------------------------------------

def serving_capacity(plan: Plan, budget_s: float, logs: Path) -> dict:
    from ditto_app.cluster import EMBEDDED_TINY, serve_process

    deadline = time.monotonic() + budget_s
    args = [*EMBEDDED_TINY[:2], "--profile", plan.profile, "--device", plan.device]
    # no face models: registration is not what this measures, and the kit leaves LiteRT (22 MB) to the image
    env = dict(os.environ, DITTO_MEDIA__FACE_MODELS="none")
    with serve_process(logs / "gpu-serve.log", args, env=env, timeout_s=180) as server:
        return asyncio.run(_ramp(plan, server.address, deadline))


async def _ramp(plan: Plan, address: str, deadline: float) -> dict:
    import grpc

    from ditto import rpc
    from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc
    from tools.bench import serving as bench

    levels: list[dict] = []
    holds = 0
    async with grpc.aio.insecure_channel(address, options=rpc.channel_options()) as channel:
        stub = avatar_pb2_grpc.AvatarStub(channel)
        avatar = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=bench._portrait(), filename="p.png"),
                                           timeout=300)
        await bench._session(stub, avatar.avatar_id, 0, seconds=plan.serving_seconds)  # warm-up
        for n in plan.serving_levels:
            if time.monotonic() + plan.serving_seconds * 2 + 10 > deadline:
                levels.append({"sessions": n, "skipped": "over the serving budget"})
                break
            results = await asyncio.gather(*(bench._session(stub, avatar.avatar_id, 10 + k,
                                                            seconds=plan.serving_seconds) for k in range(n)))
            first = np.array([r.first_frame_s for r in results])
            row: dict[str, Any] = {"sessions": n,
                   "first_frame_ms": {f"p{q}": round(float(np.nanpercentile(first, q)) * 1000, 1) for q in (50, 95)},
                   "delivered_fps_min": round(min(r.fps for r in results), 2),
                   "frames_complete": all(r.frames == r.expected for r in results),
                   "errors": sorted({r.code for r in results if r.code != "OK"})}
            row["holds"] = bool(row["first_frame_ms"]["p95"] < FIRST_FRAME_P95_S * 1000
                                and row["delivered_fps_min"] >= FPS * 0.96
                                and row["frames_complete"] and not row["errors"])
            levels.append(row)
            print(f"  serving {n}: {json.dumps(row)}", flush=True)
            if not row["holds"]:
                break
            holds = n
    return {"profile": plan.profile, "device": plan.device, "audio_s_per_session": plan.serving_seconds,
            "criterion": f"first frame p95 < {FIRST_FRAME_P95_S:.0f} s, every session >= 24 fps, every frame",
            "realtime_sessions_held": holds, "levels": levels}


# ---- the run ------------------------------------------------------------------------------------------------------

def _step(name: str, fn: Callable[[], dict], results: dict, out: Path) -> None:
    t0 = time.monotonic()
    print(f"== gpu-check: {name}", flush=True)
    try:
        result = fn()
    except Exception as err:
        result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = round(time.monotonic() - t0, 1)
    results[name] = result
    (out / f"gpu-{name}.json").write_text(json.dumps(result, indent=1, default=str))


def summary(results: dict, plan: Plan, total_s: float) -> str:
    env = results.get("environment", {})
    lines = [f"# gpu-check{' (DRY RUN on the CPU: no GPU numbers)' if plan.dry_run else ''}", "",
             f"Machine: {env.get('gpu', 'no CUDA device')}, torch {env.get('torch')}, TensorRT "
             f"{env.get('tensorrt') or 'missing'}, ONNX Runtime providers {env.get('onnxruntime_providers')}",
             f"Total: {total_s:.0f} s (deadline {plan.deadline_s:.0f} s)", "", "## Skipped", ""]
    lines += [f"- {s}" for s in env.get("skipped", [])] or ["- nothing"]
    lines += ["", "## Steps", "", "| step | result | seconds |", "|---|---|---|"]
    for name, r in results.items():
        if name == "environment":
            continue
        if "error" in r:
            verdict = f"ERROR {r['error'][:120]}"
        elif name == "tests":
            verdict = r.get("summary", "")
        elif name == "serving":
            verdict = f"{r['realtime_sessions_held']} realtime sessions held"
        elif name in ("renderer", "motion", "audio", "compile", "postprocess"):
            rows = r.get("rows", [])
            errors = sum("error" in x for x in rows)
            verdict = f"{len(rows)} rows" + (f", {errors} errors" if errors else "")
        else:
            verdict = "done"
        lines.append(f"| {name} | {verdict} | {r.get('seconds', '')} |")
    comp = results.get("compile", {}).get("rows", [])
    if comp:
        lines += ["", "## warp + decoder variants", "", "| variant | batch | ms / frame | vs eager |",
                  "|---|---|---|---|"]
        lines += [f"| {x['variant']} | {x['batch']} | {x.get('ms_per_frame', x.get('error', x.get('skipped')))} | "
                  f"{x.get('speedup_vs_eager', '')} |" for x in comp]
    post = [x for x in results.get("postprocess", {}).get("rows", []) if "paste_back_device_ms" in x]
    if post:
        lines += ["", "## post-processing per output frame (ms)", "",
                  "| size | paste-back device | paste-back CPU core | JPEG device | JPEG CPU core | max diff |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {x['size']} | {x['paste_back_device_ms']} | {x['paste_back_cpu_ms']} | "
                  f"{x.get('jpeg_device_ms', 'n/a')} | {x['jpeg_cpu_ms']} | {x['device_vs_cpu_max_diff']} |"
                  for x in post]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="run every step on the CPU, tiny and short")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for gpu-*.json (default bench/results; a temporary folder for --dry-run)")
    ap.add_argument("--only", nargs="*", default=None,
                    choices=["tests", "renderer", "motion", "audio", "compile", "postprocess", "serving"])
    args = ap.parse_args(argv)
    plan = Plan.make(args.dry_run)
    out = args.out or (Path(tempfile.mkdtemp(prefix="ditto-gpu-check-")) if plan.dry_run else ROOT / "bench/results")
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(plan.deadline_s)
    results: dict[str, dict] = {}
    _step("environment", environment, results, out)
    if not plan.dry_run and not results["environment"].get("cuda"):
        print("gpu-check needs a CUDA device; none is visible. `--dry-run` checks the command on the CPU.",
              file=sys.stderr)
        return 2
    steps: dict[str, Callable[[float], dict]] = {
        "tests": lambda b: gpu_tests(plan, b, out),
        "renderer": lambda b: renderer_bench(plan, b),
        "motion": lambda b: motion_bench(plan, b),
        "audio": lambda b: audio_bench(plan, b),
        "compile": lambda b: compile_variants(plan, b),
        "postprocess": lambda b: postprocess_bench(plan, b),
        "serving": lambda b: serving_capacity(plan, b, out),
    }
    for name, run in steps.items():
        if args.only and name not in args.only:
            continue
        budget = clock.budget(plan.budgets_s[name])
        if budget <= 1:
            results[name] = {"skipped": "the run's deadline has passed"}
            continue
        _step(name, functools.partial(run, budget), results, out)
    total = time.monotonic() - clock.t0
    (out / "gpu-summary.md").write_text(summary(results, plan, total))
    (out / "gpu-plan.json").write_text(json.dumps(asdict(plan), indent=1))
    print((out / "gpu-summary.md").read_text())
    print(f"results in {out}")
    failed = [k for k, r in results.items() if "error" in r or (k == "tests" and not r.get("ok", True))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

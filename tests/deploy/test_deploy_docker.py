"""The images: a small Dockerfile parser checks every build target (multi-stage, pinned bases, non-root user,
gRPC health check), the build context keeps what the build copies, compose and Kubernetes name real targets, and
the health check script answers correctly against a real gRPC server. (No Docker engine here: nothing is built.)"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import sys
from dataclasses import dataclass, field

import pytest
import yaml
from deploy_support import DEPLOY, OVERLAYS, ROOT, STAGE_DEPLOYMENTS, containers, pod_spec, render, workloads

from ditto.pipeline import PIPELINE

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
HEALTH_CHECK = DEPLOY / "docker" / "grpc_health_check.py"
GPU_TARGETS = {"audio-encoder", "motion-generator", "renderer"}
CPU_TARGETS = {"orchestrator", "worker-cpu"}
WEB_TARGETS = {"webrtc-gateway"}  # HTTP services: health over HTTP, not gRPC


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, rest of the line)


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)


def parse(text: str) -> dict[str, Stage]:
    """Stages of a Dockerfile in order, with global ARG defaults substituted into FROM lines."""
    text = re.sub(r"\\\n", " ", text)  # line continuations
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and current is None:
            name, _, default = rest.partition("=")
            global_args[name.strip()] = default.strip()
        elif instruction == "FROM":
            words = rest.split()
            base = _substitute(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = stages[name] = Stage(name, base)
        elif current is not None:
            # a stage's `ARG X` without a default takes the global default: substitute those everywhere
            current.instructions.append((instruction, _substitute(rest, global_args)))
    return stages


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    out = [stages[name]]
    while out[-1].base in stages:
        out.append(stages[out[-1].base])
    return out


def effective(stages: dict[str, Stage], name: str, instruction: str) -> str | None:
    """The last value of an instruction the image of `name` ends up with (USER, HEALTHCHECK, ENTRYPOINT...)."""
    for stage in chain(stages, name):
        values = [rest for ins, rest in stage.instructions if ins == instruction]
        if values:
            return values[-1]
    return None


def target_problems(stages: dict[str, Stage], name: str) -> list[str]:
    problems = []
    if name not in stages:
        return [f"{name}: no such target"]
    lineage = chain(stages, name)
    root = lineage[-1].base
    repo, _, tag = root.rpartition(":")
    if not repo or tag in ("", "latest"):
        problems.append(f"{name}: base image {root!r} is not pinned to a tag")
    wanted = "nvcr.io/nvidia/" if name in GPU_TARGETS else "python:"
    if not root.startswith(wanted) or (name in CPU_TARGETS | WEB_TARGETS and "slim" not in tag):
        problems.append(f"{name}: base image {root!r} is not {wanted}...")
    user = effective(stages, name, "USER")
    if user is None or not user.split(":")[0].isdigit() or int(user.split(":")[0]) == 0:
        problems.append(f"{name}: runs as {user!r}, not a numeric non-root user")
    health = effective(stages, name, "HEALTHCHECK")
    if name in WEB_TARGETS:
        if health is None or "/healthz" not in health:
            problems.append(f"{name}: no HEALTHCHECK over its HTTP /healthz")
    elif health is None or "grpc_health_check.py" not in health:
        problems.append(f"{name}: no HEALTHCHECK over gRPC health")
    copied_from = {m for s in lineage for ins, rest in s.instructions if ins == "COPY"
                   for m in re.findall(r"--from=(\S+)", rest)}
    builders = copied_from - {s.name for s in lineage}
    if not builders or not builders <= set(stages):
        problems.append(f"{name}: not multi-stage (copies nothing from a build stage)")
    runs = " ".join(rest for s in lineage for ins, rest in s.instructions if ins == "RUN")
    if "pip install" in runs:
        problems.append(f"{name}: installs packages in the runtime image instead of a build stage")
    entry = effective(stages, name, "ENTRYPOINT") or ""
    if "tini" not in entry or "ditto" not in entry:
        problems.append(f"{name}: ENTRYPOINT {entry!r} does not run ditto under tini")
    return problems


STAGES_OF_DOCKERFILE = parse(DOCKERFILE.read_text())
TARGETS = sorted(GPU_TARGETS | CPU_TARGETS | WEB_TARGETS)


def runtime_uid(name: str) -> int:
    user = effective(STAGES_OF_DOCKERFILE, name, "USER")
    assert user is not None
    return int(user.split(":")[0])


@pytest.mark.parametrize("target", TARGETS)
def test_target_is_multi_stage_pinned_non_root_and_health_checked(target):
    assert target_problems(STAGES_OF_DOCKERFILE, target) == []


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda t: t.replace("USER ${UID}:${UID}", "USER root", 2), "not a numeric non-root user"),
    (lambda t: re.sub(r"HEALTHCHECK[^\n]*\\\n[^\n]*\n", "", t), "no HEALTHCHECK"),
    (lambda t: t.replace("COPY --from=build-gpu", "COPY"), "not multi-stage"),
    (lambda t: t.replace("ARG CUDA_IMAGE=nvcr.io/nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04",
                         "ARG CUDA_IMAGE=ubuntu"), "not pinned"),
])
def test_the_dockerfile_checks_can_fail(edit, problem):
    broken = parse(edit(DOCKERFILE.read_text()))
    assert any(problem in p for p in target_problems(broken, "renderer"))


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a pattern also covers what is below it."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/").removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p.split("/")[-1], pat) and "/" not in pat
               for p in prefixes):
            ignored = not negate
    return ignored


def test_build_context_holds_what_the_build_copies_and_nothing_generated():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    needed = ["pyproject.toml", "setup.py", "services/renderer/_paste.c", "protos/ditto/v1/common.proto",
              "clients/python/ditto_client/v1/common_pb2.py", "ditto/config.py", "services/__init__.py",
              "deploy/docker/grpc_health_check.py"]
    for path in needed:
        assert (ROOT / path).exists() and not _ignored(path, patterns), f"{path} must reach the build"
    for path in ["tests/conftest.py", ".venv/bin/python", "deploy/k8s/base/config.yaml",
                 "ditto/__pycache__/cli.cpython-312.pyc", "services/renderer/_paste.abi3.so"]:
        assert _ignored(path, patterns), f"{path} must stay out of the build context"
    for stage in STAGES_OF_DOCKERFILE.values():
        for ins, rest in stage.instructions:
            if ins == "COPY" and "--from=" not in rest:
                for src in rest.split()[:-1]:
                    assert src == "." or not _ignored(src, patterns), f"COPY {src} is excluded by the dockerignore"


def test_kubernetes_and_compose_use_existing_targets_and_the_image_user():
    named = set()
    for overlay in OVERLAYS:
        for w in workloads(render(overlay)):
            for c in containers(w):
                target = c["image"].split("/")[-1].split(":")[0]
                if target in STAGES_OF_DOCKERFILE:
                    named.add(target)
                    assert pod_spec(w)["securityContext"]["runAsUser"] == runtime_uid(target)
                else:
                    assert target == "redis", f"{c['image']} is neither a Ditto target nor Redis"
    assert named == set(TARGETS)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    published = set()
    stages = set()
    for name, service in compose["services"].items():
        if "build" in service:
            assert service["build"]["target"] in STAGES_OF_DOCKERFILE
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        if service.get("ports"):
            published.add(name)
        command = service.get("command", [])
        if command[:1] == ["worker"]:
            stages.add(command[command.index("--stage") + 1])
    assert published == {"orchestrator"}
    assert stages == set(PIPELINE.names) == set(STAGE_DEPLOYMENTS.values())


# ---- the health check script against a real gRPC server


async def _run_check(port: int, *extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HEALTH_CHECK), "--port", str(port), "--timeout", "2", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode()


async def test_health_check_script_follows_the_server_state():
    from ditto.rpc import start_server

    server = await start_server([], host="127.0.0.1", port=0)
    try:
        code, out = await _run_check(server.port)
        assert code == 0 and "SERVING" in out
        code, out = await _run_check(server.port, "--service", "ditto.v1.NoSuchService")
        assert code == 1 and "NOT_FOUND" in out
        await server.set_serving(False)  # what a draining process reports
        code, out = await _run_check(server.port)
        assert code == 1 and "NOT_SERVING" in out
    finally:
        await server.stop(grace=None)
    code, out = await _run_check(server.port)  # nobody listening any more
    assert code == 1 and "UNAVAILABLE" in out

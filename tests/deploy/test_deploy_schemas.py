"""Every rendered object is valid offline: Kubernetes kinds against the strict OpenAPI schemas of the oldest and
newest supported Kubernetes (kubernetes-validate), KEDA resources against the schemas embedded in deploy_support."""

from __future__ import annotations

import copy

import jsonschema
import pytest
from deploy_support import K8S_VERSIONS, OVERLAYS, render, validate_k8s


def _ids(overlay: str) -> list[str]:
    return [f"{overlay}:{o['kind']}/{o['metadata']['name']}" for o in render(overlay)]


CASES = [(overlay, i) for overlay in OVERLAYS for i in range(len(render(overlay)))]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("overlay", "index"), CASES, ids=[_ids(o)[i] for o, i in CASES])
def test_object_is_valid(overlay, index, version):
    validate_k8s(render(overlay)[index], version)


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if any(x["kind"] == "ScaledObject" for x in render(o))])
def test_keda_hpa_behavior_is_a_valid_hpa_behavior(overlay):
    """KEDA passes `advanced.horizontalPodAutoscalerConfig.behavior` to the HPA it creates: check it as one."""
    for so in (o for o in render(overlay) if o["kind"] == "ScaledObject"):
        behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        hpa = {
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "probe"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                     "maxReplicas": so["spec"]["maxReplicaCount"], "behavior": behavior},
        }
        for version in K8S_VERSIONS:
            validate_k8s(hpa, version)


def _first(kind: str, trigger: str = "") -> dict:
    """The first rendered object of `kind` (a ScaledObject with `trigger`s, when given)."""
    for overlay in OVERLAYS:
        for o in render(overlay):
            if o["kind"] == kind and (not trigger or o["spec"]["triggers"][0]["type"] == trigger):
                return copy.deepcopy(o)
    raise AssertionError(f"no {kind} {trigger} rendered")


def _break_probe_port(d):
    d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"


def _misspell_resources(d):
    d["spec"]["template"]["spec"]["containers"][0]["resource"] = d["spec"]["template"]["spec"]["containers"][0].pop(
        "resources")


def _drop_scale_target(d):
    del d["spec"]["scaleTargetRef"]


def _redis_trigger_without_stream(d):
    del d["spec"]["triggers"][0]["metadata"]["stream"]


def _pending_without_group(d):
    del d["spec"]["triggers"][0]["metadata"]["consumerGroup"]


def _integer_metadata(d):
    d["spec"]["triggers"][0]["metadata"]["pendingEntriesCount"] = 4


def _cluster_trigger_without_nodes(d):
    del d["spec"]["triggers"][0]["metadata"]["addressesFromEnv"]


def _cluster_trigger_with_a_single_address(d):
    # the single-node field on a cluster scaler: KEDA would not find the cluster's other primaries
    meta = d["spec"]["triggers"][0]["metadata"]
    meta["addressFromEnv"] = meta.pop("addressesFromEnv")


@pytest.mark.parametrize(("kind", "breakage"), [
    ("Deployment", _break_probe_port),          # gRPC probes take a number, not a port name
    ("Deployment", _misspell_resources),        # strict: unknown fields are errors
    ("ScaledObject", _drop_scale_target),
    ("ScaledObject", _redis_trigger_without_stream),
    ("ScaledObject", _pending_without_group),
    ("ScaledObject", _integer_metadata),        # trigger metadata values are strings
    ("ScaledObject:redis-cluster-streams", _cluster_trigger_without_nodes),
    ("ScaledObject:redis-cluster-streams", _cluster_trigger_with_a_single_address),
    ("ScaledObject:redis-cluster-streams", _redis_trigger_without_stream),
])
def test_validation_catches_broken_objects(kind, breakage):
    obj = _first(*kind.split(":"))
    validate_k8s(obj, K8S_VERSIONS[-1])
    breakage(obj)
    with pytest.raises(jsonschema.ValidationError):
        validate_k8s(obj, K8S_VERSIONS[-1])


def test_unknown_custom_resource_is_not_waved_through():
    obj = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob", "metadata": {"name": "x"}, "spec": {}}
    with pytest.raises(AssertionError, match="no embedded schema"):
        validate_k8s(obj, K8S_VERSIONS[-1])

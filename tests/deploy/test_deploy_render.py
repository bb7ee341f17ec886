"""The overlays render with `kubectl kustomize` into one namespace of uniquely named objects."""

from __future__ import annotations

import pytest
from deploy_support import OVERLAYS, render


def test_expected_overlays_exist():
    assert {"dev-cpu", "prod-gpu", "prod-gpu-redis-cluster"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_namespaced_unique_objects(overlay):
    objs = render(overlay)
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"} <= kinds
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    declared = [o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"]
    assert len(namespaces) == 1 and declared == list(namespaces), f"{overlay}: objects in {namespaces}, {declared}"
    keys = [(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), f"{overlay}: duplicate objects"

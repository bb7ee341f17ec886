"""The overlays render, the Python renderer agrees with kubectl, and it refuses what it does not implement."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from deploy_support import K8S, OVERLAYS, kubectl_render, kustomize_lite, render


def test_expected_overlays_exist():
    assert {"dev-cpu", "prod-gpu"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_namespaced_unique_objects(overlay):
    objs = render(overlay)
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"} <= kinds
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    declared = [o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"]
    assert len(namespaces) == 1 and declared == list(namespaces), f"{overlay}: objects in {namespaces}, {declared}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: nothing to compare with")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_python_renderer_matches_kubectl_kustomize(overlay):
    ours = render(overlay)
    theirs = kubectl_render(K8S / "overlays" / overlay)
    assert theirs is not None
    # same objects, same order, same content (values compared after YAML parsing)
    assert [(o["kind"], o["metadata"]["name"]) for o in ours] == [(o["kind"], o["metadata"]["name"]) for o in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert a == b, f"{overlay}: {a['kind']}/{a['metadata']['name']} differs from kubectl"


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


DEPLOYMENT = """
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web, labels: {tier: a}}
    spec:
      replicas: 3
      template:
        spec:
          tolerations: [{key: x, operator: Exists}]
          containers:
            - name: app
              image: registry.local:5000/team/app:1.0
              env: [{name: E1, value: "1"}, {name: E2, value: "2"}, {name: E3, value: "3"}]
              ports: [{name: http, containerPort: 80}]
          volumes: [{name: v1, emptyDir: {}}, {name: v2, emptyDir: {}}]
"""


def test_strategic_merge_semantics(tmp_path):
    _write(tmp_path, {
        "base/kustomization.yaml": "resources: [deployment.yaml]\n",
        "base/deployment.yaml": DEPLOYMENT,
        "comp/kustomization.yaml": """
            apiVersion: kustomize.config.k8s.io/v1alpha1
            kind: Component
            patches:
              - path: patch.yaml
                target: {kind: Deployment, labelSelector: tier=a}
        """,
        "comp/patch.yaml": """
            apiVersion: apps/v1
            kind: Deployment
            metadata: {name: ignored}
            spec:
              replicas: null
              template:
                spec:
                  tolerations: [{key: y, operator: Exists}]
                  containers:
                    - name: app
                      env: [{name: E3, value: x}, {name: N1, value: n}, {name: E1, value: y}]
                  volumes: [{name: v2, emptyDir: null, hostPath: {path: /data}}, {name: v3, emptyDir: {}}]
        """,
        "overlay/kustomization.yaml": """
            namespace: team
            resources: [../base]
            components: [../comp]
            images:
              - {name: registry.local:5000/team/app, newName: example.org/app, newTag: "2.0"}
        """,
    })
    objs = kustomize_lite.build(tmp_path / "overlay")
    (dep,) = objs
    spec = dep["spec"]["template"]["spec"]
    assert "replicas" not in dep["spec"]                       # null deletes
    assert dep["metadata"]["namespace"] == "team"
    assert spec["tolerations"] == [{"key": "y", "operator": "Exists"}]  # no merge key: replaced
    (app,) = spec["containers"]
    assert app["image"] == "example.org/app:2.0"
    # merged by name: patch items first in patch order, then the untouched ones
    assert app["env"] == [{"name": "E3", "value": "x"}, {"name": "N1", "value": "n"},
                          {"name": "E1", "value": "y"}, {"name": "E2", "value": "2"}]
    assert app["ports"] == [{"name": "http", "containerPort": 80}]
    assert spec["volumes"] == [{"name": "v2", "hostPath": {"path": "/data"}}, {"name": "v3", "emptyDir": {}},
                               {"name": "v1", "emptyDir": {}}]
    kubectl = kubectl_render(tmp_path / "overlay")
    if kubectl is not None:
        assert kubectl == objs


@pytest.mark.parametrize(("files", "message"), [
    ({"kustomization.yaml": "resources: [d.yaml]\nnamePrefix: x-\n"}, "unsupported fields"),
    ({"kustomization.yaml": "resources: [d.yaml]\npatches: [{path: p.yaml, target: {kind: Deployment}}]\n",
      "p.yaml": "- {op: remove, path: /spec/replicas}\n"}, "JSON 6902"),
    ({"kustomization.yaml": "resources: [d.yaml]\npatches: [{path: p.yaml}]\n",
      "p.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: other}\nspec: {replicas: 1}\n"},
     "matches no resource"),
    ({"kustomization.yaml": "resources: [missing.yaml]\n"}, "does not exist"),
    ({"kustomization.yaml": "resources: [d.yaml, d.yaml]\n"}, "two resources"),
    ({"kustomization.yaml": "resources: [d.yaml]\ncomponents: [c]\n", "c/kustomization.yaml": "resources: []\n"},
     "not kind: Component"),
])
def test_renderer_refuses_what_it_does_not_implement(tmp_path, files, message):
    _write(tmp_path, {"d.yaml": DEPLOYMENT, **files})
    with pytest.raises(kustomize_lite.KustomizeError, match=message):
        kustomize_lite.build(tmp_path)

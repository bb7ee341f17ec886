"""Secrets stay off command lines, and the TLS component turns TLS on for the public port (issue 12)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from deploy_support import K8S, OVERLAYS, by_kind, containers, kustomize, render, workloads


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_container_gets_the_redis_url_on_its_command_line(overlay):
    for w in workloads(render(overlay)):
        for c in containers(w):
            words = " ".join([*c.get("command", []), *c.get("args", [])])
            assert "REDIS_URL" not in words and "redis://" not in words and "rediss://" not in words, (
                f"{w['metadata']['name']}/{c['name']}: the Redis URL (it may carry a password) is in argv: {words}")


def test_the_tls_component_serves_the_public_port_over_tls(tmp_path: Path):
    overlay = tmp_path / "prod-tls"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        # kustomize takes only relative roots
        "resources": [os.path.relpath(K8S / "overlays" / "prod-gpu", overlay)],
        "components": [os.path.relpath(K8S / "components" / "tls", overlay)]}))
    objs = kustomize(overlay)
    (orch,) = [c for c in containers(by_kind(objs, "Deployment")["orchestrator"]) if c["name"] == "orchestrator"]
    env = {e["name"]: e.get("value") for e in orch["env"]}
    assert env["DITTO_TLS__CERT_FILE"] == "/etc/ditto/tls/tls.crt"
    assert env["DITTO_TLS__KEY_FILE"] == "/etc/ditto/tls/tls.key"
    assert "REDIS_URL" in env  # still from the Secret
    mounts = {m["name"]: m["mountPath"] for m in orch["volumeMounts"]}
    assert mounts["tls"] == "/etc/ditto/tls"
    volumes = {v["name"]: v for v in by_kind(objs, "Deployment")["orchestrator"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "ditto-orchestrator-tls"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # kubelet's gRPC probe has no TLS: it would fail against a TLS port
        assert "grpc" not in orch[probe] and orch[probe]["tcpSocket"]["port"] == 50051, orch[probe]
    readme = (K8S.parent / "README.md").read_text()
    assert "create secret tls ditto-orchestrator-tls" in readme


def test_the_redis_cluster_overlay_changes_where_redis_is_and_nothing_else():
    """On a Redis Cluster the processes need no other setting than REDIS_URL (from the Secret, naming any node): the
    workloads are those of prod-gpu exactly; only the Redis alias, the node list for KEDA and the scaler type differ."""
    cluster, single = render("prod-gpu-redis-cluster"), render("prod-gpu")
    assert by_kind(cluster, "Deployment") == by_kind(single, "Deployment")
    assert not by_kind(cluster, "Secret"), "the Redis password lives in the out-of-band ditto-redis Secret only"
    for w in workloads(cluster):
        for c in containers(w):
            for e in c.get("env", []):
                if e["name"] == "REDIS_URL":
                    assert e["valueFrom"]["secretKeyRef"] == {"name": "ditto-redis", "key": "url"}
    (cfg,) = [o for o in cluster if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "ditto-config"]
    assert not any("redis://" in v or "rediss://" in v or "@" in v for v in cfg["data"].values()), \
        "no URL (which may carry a password) in the ConfigMap"
    triggers = [t for so in by_kind(cluster, "ScaledObject").values() for t in so["spec"]["triggers"]]
    assert triggers and {t["type"] for t in triggers} == {"redis-cluster-streams"}
    assert {t["metadata"]["stream"] for t in triggers} == {
        t["metadata"]["stream"] for so in by_kind(single, "ScaledObject").values() for t in so["spec"]["triggers"]}

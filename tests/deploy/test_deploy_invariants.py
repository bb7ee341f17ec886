"""What every rendered overlay must guarantee: probes and limits, GPUs where the stages run, one public entry
point, graceful shutdown that outlasts the drain, autoscaling that matches the bus layout, settings the kernel
accepts, and nothing referenced that the overlay (or the documented out-of-band secrets) does not provide."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from deploy_support import (
    DEPLOY,
    DEV_OVERLAYS,
    K8S,
    OVERLAYS,
    PROD_OVERLAYS,
    STAGE_DEPLOYMENTS,
    Obj,
    by_kind,
    containers,
    load_tool,
    one,
    pod_labels,
    pod_spec,
    render,
    selects,
    workloads,
)

from ditto.config import Settings, load_settings
from ditto.keys import Keys
from ditto.pipeline import PIPELINE

# Drain budget a stage worker needs after SIGTERM: finish the chunks in flight, acknowledge, checkpoint, release
# the leases. A chunk is 200 ms of audio; 30 s is the budget the manifests promise to leave.
DRAIN_BUDGET_S = 30
# HTTP services (health over HTTP, not gRPC), each a client of the orchestrator's public API only
GATEWAYS = {"webrtc-gateway"}
# Secrets production creates out of band (never in git); deploy/README.md must say how.
EXTERNAL_SECRETS = {"ditto-redis", "ditto-api-keys"}


def config(objs: list[Obj]) -> dict[str, str]:
    return one(objs, "ConfigMap", "ditto-config")["data"]


def is_ditto(container: Obj) -> bool:
    return container["image"].split("/")[-1].split(":")[0] in {
        "orchestrator", "worker-cpu", "audio-encoder", "motion-generator", "renderer"}


# ---- probes, limits, GPUs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_container_has_requests_and_limits(overlay):
    for w in workloads(render(overlay)):
        for c in containers(w):
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(part, {}))
                assert not missing, f"{overlay}: {w['metadata']['name']}/{c['name']} has no {part} for {missing}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_long_running_container_has_probes(overlay):
    for w in workloads(render(overlay)):
        if w["kind"] == "Job":
            continue
        for c in pod_spec(w)["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in c, f"{overlay}: {w['metadata']['name']}/{c['name']} has no {probe}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ditto_probes_use_grpc_health_on_the_served_port(overlay):
    objs = render(overlay)
    settings = settings_of(objs)
    for w in by_kind(objs, "Deployment").values():
        if w["metadata"]["name"] in GATEWAYS:
            continue
        (c,) = pod_spec(w)["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["grpc"] == settings.grpc_port
        assert ports["metrics"] == settings.telemetry.metrics_port
        assert w["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == settings.grpc_port, f"{w['metadata']['name']} {probe}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_webrtc_gateway_probes_its_http_health_and_finds_the_orchestrator_service(overlay):
    from services.webrtc_gateway.config import GatewaySettings

    objs = render(overlay)
    gateway = one(objs, "Deployment", "webrtc-gateway")
    (c,) = pod_spec(gateway)["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    settings = GatewaySettings(**{k[len("DITTO_WEBRTC_"):].lower(): v for k, v in env.items()
                                  if k.startswith("DITTO_WEBRTC_") and "__" not in k})
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == settings.port and settings.host == "0.0.0.0"
    assert str(ports["metrics"]) == env["DITTO_WEBRTC_TELEMETRY__METRICS_PORT"]
    assert gateway["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"  # ready = the orchestrator answers
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    host, _, port = settings.orchestrator.partition(":")
    orchestrator = one(objs, "Service", host)
    assert [p["port"] for p in orchestrator["spec"]["ports"] if p["name"] == "grpc"] == [int(port)]
    assert "envFrom" not in c and not any("valueFrom" in e for e in c["env"]), "the gateway needs no secret"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_webrtc_gateway_may_reach_only_the_orchestrator(overlay):
    objs = render(overlay)
    labels = pod_labels(one(objs, "Deployment", "webrtc-gateway"))
    orchestrator = pod_labels(one(objs, "Deployment", "orchestrator"))
    egress = [p for p in by_kind(objs, "NetworkPolicy").values()
              if "Egress" in p["spec"].get("policyTypes", []) and selects(p["spec"]["podSelector"].get(
                  "matchLabels", {}), labels)]
    assert egress, "no egress policy isolates the gateway"
    for policy in egress:
        for rule in policy["spec"]["egress"]:
            (peer,) = rule["to"]
            ports = {(p["port"], p["protocol"]) for p in rule["ports"]}
            if "namespaceSelector" in peer:  # cluster DNS, to resolve the orchestrator's Service name
                assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
                assert ports <= {(53, "UDP"), (53, "TCP")}
            else:
                assert selects(peer["podSelector"]["matchLabels"], orchestrator)
                assert not any(selects(peer["podSelector"]["matchLabels"], pod_labels(w))
                               for w in workloads(objs) if w["metadata"]["name"] != "orchestrator")
                assert ports == {(50051, "TCP")}


@pytest.mark.parametrize("overlay", PROD_OVERLAYS)
def test_gpu_stages_request_a_gpu_and_build_engines(overlay):
    objs = render(overlay)
    deployments = by_kind(objs, "Deployment")
    cache_dir = config(objs)["DITTO_MODEL__CACHE_DIR"]
    for name in STAGE_DEPLOYMENTS:
        spec = pod_spec(deployments[name])
        (worker,) = spec["containers"]
        for c in [worker, *spec.get("initContainers", [])]:
            res = c["resources"]
            assert int(res["limits"]["nvidia.com/gpu"]) >= 1, f"{name}/{c['name']} has no GPU"
            assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]
        assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))
        # the TensorRT engine build: same image, same cache volume at the cache dir, before the worker starts
        (build,) = [c for c in spec["initContainers"] if "build-engines" in c["args"]]
        assert build["image"] == worker["image"]
        mount = {m["mountPath"]: m["name"] for m in build["volumeMounts"]}
        assert mount[cache_dir] == {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}[cache_dir]
        volume = {v["name"]: v for v in spec["volumes"]}[mount[cache_dir]]
        assert "persistentVolumeClaim" in volume and "emptyDir" not in volume, "engines must outlive the pod"
    orchestrator = pod_spec(deployments["orchestrator"])["containers"][0]
    assert "nvidia.com/gpu" not in str(orchestrator["resources"])


@pytest.mark.parametrize("overlay", DEV_OVERLAYS)
def test_dev_overlay_needs_no_gpu_and_no_weights(overlay):
    objs = render(overlay)
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(objs)
    settings = settings_of(objs)
    assert settings.model.weights == "synthetic" and settings.model.profile == "tiny"
    assert settings.model.device == "cpu"


# ---- exposure


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_orchestrator_is_exposed_outside_the_cluster(overlay):
    objs = render(overlay)
    orchestrator = pod_labels(one(objs, "Deployment", "orchestrator"))
    for svc in by_kind(objs, "Service").values():
        if svc["spec"].get("type") in ("LoadBalancer", "NodePort"):
            assert selects(svc["spec"]["selector"], orchestrator), f"{svc['metadata']['name']} is public"
            assert not any(selects(svc["spec"]["selector"], pod_labels(w))
                           for w in workloads(objs) if w["metadata"]["name"] != "orchestrator")
    for ingress in by_kind(objs, "Ingress").values():
        backends = re.findall(r"'name': '([^']+)'", str(ingress["spec"]))
        assert set(backends) <= {"orchestrator"}, f"Ingress {ingress['metadata']['name']} routes to {backends}"
    public = [s for s in by_kind(objs, "Service").values() if s["spec"].get("type") == "LoadBalancer"]
    expected = ["orchestrator"] if overlay in PROD_OVERLAYS else []
    assert [s["metadata"]["name"] for s in public] == expected


def _port_matches(policy_port: Any, container_port: Obj) -> bool:
    return policy_port in (container_port.get("name"), container_port["containerPort"])


def reachable_from_outside(objs: list[Obj], labels: dict[str, str], port: Obj) -> bool:
    """Whether a client outside the cluster (or in any namespace) may open `port` on pods with `labels`."""
    policies = [p for p in by_kind(objs, "NetworkPolicy").values()
                if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                and selects(p["spec"]["podSelector"].get("matchLabels", {}), labels)]
    if not policies:
        return True  # not isolated: everything may connect
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if rule.get("ports") and not any(_port_matches(p["port"], port) for p in rule["ports"]):
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                if "ipBlock" in peer or peer.get("namespaceSelector") == {}:
                    return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_open_only_the_public_ports(overlay):
    """The orchestrator's gRPC API and the WebRTC gateway's signalling (HTTP, behind the platform's Ingress)."""
    objs = render(overlay)
    opened = set()
    for w in workloads(objs):
        for c in containers(w, init=False):
            for port in c.get("ports", []):
                if reachable_from_outside(objs, pod_labels(w), port):
                    opened.add((w["metadata"]["name"], port.get("name", port["containerPort"])))
    assert opened == {("orchestrator", "grpc"), ("webrtc-gateway", "http")}


def test_reachability_model_sees_an_open_pod():
    """The check above must be able to fail: without the default deny, stage ports are open."""
    objs = [o for o in render(OVERLAYS[0]) if o["metadata"]["name"] != "default-deny-ingress"]
    for o in objs:
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "stages-grpc-from-orchestrator":
            o["spec"]["ingress"][0].pop("from")
    renderer = one(objs, "Deployment", "renderer")
    grpc = pod_spec(renderer)["containers"][0]["ports"][0]
    assert reachable_from_outside(objs, pod_labels(renderer), grpc)


# ---- disruption and shutdown


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_long_running_workload_has_its_own_pdb(overlay):
    objs = render(overlay)
    pdbs = by_kind(objs, "PodDisruptionBudget").values()
    for w in workloads(objs):
        if w["kind"] == "Job":
            continue
        mine = [p for p in pdbs if selects(p["spec"]["selector"]["matchLabels"], pod_labels(w))]
        assert len(mine) == 1, f"{overlay}: {w['metadata']['name']} is covered by {len(mine)} PDBs"
        others = [o for o in workloads(objs) if o is not w and selects(mine[0]["spec"]["selector"]["matchLabels"],
                                                                    pod_labels(o))]
        assert not others, f"PDB {mine[0]['metadata']['name']} also covers {others[0]['metadata']['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_graceful_shutdown_outlasts_the_drain(overlay):
    for w in by_kind(render(overlay), "Deployment").values():
        spec = pod_spec(w)
        (c,) = spec["containers"]
        command = c["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep", "preStop waits for endpoint removal, then SIGTERM starts the drain"
        pre_stop = int(command[1])
        grace = spec["terminationGracePeriodSeconds"]
        assert grace >= pre_stop + DRAIN_BUDGET_S, f"{w['metadata']['name']}: {grace}s grace is too short"
        live = c["livenessProbe"]
        # a draining process reports NOT_SERVING: liveness must not kill it before the grace period is over
        assert live["periodSeconds"] * live["failureThreshold"] >= grace - pre_stop


# ---- security


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_runs_unprivileged_on_a_read_only_root(overlay):
    objs = render(overlay)
    settings_env = config(objs)
    for w in workloads(objs):
        pod = pod_spec(w)
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod.get("automountServiceAccountToken") is False
        for c in containers(w):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            if is_ditto(c):
                # with a read-only root, every place Ditto writes must be a volume
                mounts = {m["mountPath"] for m in c["volumeMounts"]}
                for path in ("/tmp", settings_env["DITTO_MODEL__CACHE_DIR"], settings_env["HOME"]):
                    assert path in mounts, f"{w['metadata']['name']}/{c['name']} cannot write {path}"


# ---- references


def _references(objs: list[Obj]) -> dict[str, set[tuple[str, str | None]]]:
    """kind -> {(name, key or None)} of ConfigMaps, Secrets and PVCs the objects use."""
    refs: dict[str, set[tuple[str, str | None]]] = {"ConfigMap": set(), "Secret": set(),
                                                     "PersistentVolumeClaim": set()}
    for w in workloads(objs):
        for c in containers(w):
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    refs["ConfigMap"].add((src["configMapRef"]["name"], None))
                if "secretRef" in src:
                    refs["Secret"].add((src["secretRef"]["name"], None))
            for env in c.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    refs["Secret"].add((ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]))
                if "configMapKeyRef" in ref:
                    refs["ConfigMap"].add((ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]))
        for v in pod_spec(w).get("volumes", []):
            if "secret" in v:
                refs["Secret"].add((v["secret"]["secretName"], None))
            if "configMap" in v:
                refs["ConfigMap"].add((v["configMap"]["name"], None))
            if "persistentVolumeClaim" in v:
                refs["PersistentVolumeClaim"].add((v["persistentVolumeClaim"]["claimName"], None))
    for auth in by_kind(objs, "TriggerAuthentication").values():
        for ref in auth["spec"].get("secretTargetRef", []):
            refs["Secret"].add((ref["name"], ref["key"]))
    return refs


def _missing(objs: list[Obj]) -> dict[str, set[tuple[str, str | None]]]:
    out: dict[str, set[tuple[str, str | None]]] = {}
    for kind, wanted in _references(objs).items():
        present = by_kind(objs, kind)
        if kind == "PersistentVolumeClaim":
            present.update({t["metadata"]["name"] + "-" + s["metadata"]["name"]: s
                            for s in by_kind(objs, "StatefulSet").values()
                            for t in s["spec"].get("volumeClaimTemplates", [])})
        for name, k in wanted:
            obj = present.get(name)
            data = {**(obj or {}).get("data", {}), **(obj or {}).get("stringData", {})}
            if obj is None or (k is not None and k not in data):
                out.setdefault(kind, set()).add((name, k))
    return out


@pytest.mark.parametrize("overlay", DEV_OVERLAYS)
def test_dev_overlay_provides_everything_it_references(overlay):
    assert _missing(render(overlay)) == {}


@pytest.mark.parametrize("overlay", PROD_OVERLAYS)
def test_prod_overlay_references_only_documented_external_secrets(overlay):
    missing = _missing(render(overlay))
    assert set(missing) == {"Secret"}, f"missing non-secrets: {missing}"
    assert {name for name, _ in missing["Secret"]} == EXTERNAL_SECRETS
    # no secret values in the production render, and the README shows how to create each key that is used
    assert not by_kind(render(overlay), "Secret")
    readme = (DEPLOY / "README.md").read_text()
    for name, k in missing["Secret"]:
        command = re.search(rf"kubectl [^\n]*create secret generic {name}\b[^\n]*(\\\n[^\n]*)*", readme)
        assert command, f"deploy/README.md does not show how to create secret {name}"
        if k is not None:
            assert re.search(rf"--from-(literal|file)={k}=", command.group(0)), f"README: {name} lacks key {k}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods_and_name_their_ports(overlay):
    objs = render(overlay)
    for svc in by_kind(objs, "Service").values():
        if svc["spec"].get("type") == "ExternalName":
            continue
        pods = [w for w in workloads(objs) if selects(svc["spec"]["selector"], pod_labels(w))]
        assert pods, f"Service {svc['metadata']['name']} selects no pods"
        names = {p.get("name") for w in pods for c in containers(w, init=False) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, f"Service {svc['metadata']['name']}: no port {port['targetPort']}"


# ---- settings and commands


def settings_of(objs: list[Obj]) -> Settings:
    """The kernel's Settings built from the ConfigMap exactly as a pod's environment would present it."""
    mp = pytest.MonkeyPatch()
    try:
        import os

        for name in [n for n in os.environ if n.startswith("DITTO_") or n == "REDIS_URL"]:
            mp.delenv(name)
        for name, value in config(objs).items():
            mp.setenv(name, value)
        mp.setenv("REDIS_URL", "redis://redis:6379/0")
        return load_settings()
    finally:
        mp.undo()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kernel_accepts_the_configuration(overlay):
    settings = settings_of(render(overlay))
    assert settings.bus.kind == "redis"
    assert settings.grpc_host == "0.0.0.0", "a pod must listen on all interfaces for probes and Services"
    assert settings.grpc_port == 50051 and settings.telemetry.metrics_port == 9100
    assert settings.model.profile == ("full" if overlay in PROD_OVERLAYS else "tiny")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_stage_commands_name_kernel_stages_and_defined_variables(overlay):
    objs = render(overlay)
    cfg = config(objs)
    stages = {}
    for w in workloads(objs):
        for c in containers(w):
            if not is_ditto(c):
                continue
            defined = set(cfg) | {e["name"] for e in c.get("env", [])}
            words = [*c.get("command", []), *c.get("args", [])]
            for ref in re.findall(r"\$\((\w+)\)", " ".join(words)):
                # kubelet leaves an undefined $(VAR) in place, so a typo would reach the CLI as literal text
                assert ref in defined, f"{w['metadata']['name']}/{c['name']}: $({ref}) is not defined"
            if words and words[0] == "worker":
                stages[w["metadata"]["name"]] = words[words.index("--stage") + 1]
    assert stages == STAGE_DEPLOYMENTS
    assert set(stages.values()) == set(PIPELINE.names)


# ---- images


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay):
    for w in workloads(render(overlay)):
        for c in containers(w):
            name, _, tag = c["image"].rpartition(":")
            assert name and "/" not in tag and tag not in ("", "latest"), f"{c['image']} has no fixed tag"
            if overlay in PROD_OVERLAYS and is_ditto(c):
                assert "." in c["image"].split("/")[0], f"{c['image']}: production images come from a registry"


# ---- autoscaling


def _stage_deployments(objs: list[Obj]) -> dict[str, Obj]:
    return {n: d for n, d in by_kind(objs, "Deployment").items() if n in STAGE_DEPLOYMENTS}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(overlay):
    objs = render(overlay)
    targets = {so["spec"]["scaleTargetRef"]["name"] for so in by_kind(objs, "ScaledObject").values()}
    targets |= {h["spec"]["scaleTargetRef"]["name"] for h in by_kind(objs, "HorizontalPodAutoscaler").values()}
    for name, d in by_kind(objs, "Deployment").items():
        assert ("replicas" in d["spec"]) == (name not in targets), name
    if overlay in PROD_OVERLAYS:
        assert targets == set(STAGE_DEPLOYMENTS), "production autoscales every stage, one way"
        assert not (by_kind(objs, "ScaledObject") and by_kind(objs, "HorizontalPodAutoscaler"))


def test_scaledobjects_file_is_generated_from_the_slot_count():
    assert load_tool("gen_scaledobjects").main(["--check"]) == 0


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if by_kind(render(o), "ScaledObject")])
def test_keda_watches_every_slot_stream_of_each_stage(overlay):
    objs = render(overlay)
    settings = settings_of(objs)
    slots = settings.bus.slots
    cluster = "REDIS_CLUSTER_ADDRESSES" in config(objs)
    namespace = one(objs, "Deployment", "orchestrator")["metadata"]["namespace"]
    auths = by_kind(objs, "TriggerAuthentication")
    for name, deployment in _stage_deployments(objs).items():
        so = one(objs, "ScaledObject", name)
        stage = STAGE_DEPLOYMENTS[name]
        assert so["spec"]["scaleTargetRef"]["name"] == name
        assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= slots
        streams = []
        for t in so["spec"]["triggers"]:
            # a Redis Cluster needs the cluster scaler (the plain one talks to one node and gets MOVED), one Redis
            # the plain one
            assert t["type"] == ("redis-cluster-streams" if cluster else "redis-streams"), (overlay, t["type"])
            meta = t["metadata"]
            assert meta["consumerGroup"] == stage and int(meta["pendingEntriesCount"]) >= 1
            assert t["authenticationRef"]["name"] in auths
            # KEDA reads the address from the target's first container environment, from the operator's namespace
            if cluster:
                nodes = config(objs)[meta["addressesFromEnv"]].split(",")
                assert len(nodes) >= 3, f"{overlay}: list a node of every primary, not {nodes}"
                for node in nodes:
                    host, _, port = node.strip().rpartition(":")
                    assert host and 0 < int(port) < 65536, node
            else:
                env = config(objs) if meta["addressFromEnv"] in config(objs) else {}
                host, _, port = env[meta["addressFromEnv"]].partition(":")
                service, _, rest = host.partition(".")
                assert rest == f"{namespace}.svc.cluster.local", f"{host}: not resolvable from the KEDA namespace"
                assert service in by_kind(objs, "Service") and int(port) == 6379
            streams.append(meta["stream"])
        assert streams == [Keys(settings.bus.prefix).slot_stream(stage, k) for k in range(slots)]
        assert pod_spec(deployment)["containers"][0]["envFrom"][0]["configMapRef"]["name"] == "ditto-config"


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if by_kind(render(o), "HorizontalPodAutoscaler")])
def test_hpa_metrics_are_served_by_the_prometheus_adapter_rules(overlay):
    objs = render(overlay)
    slots = settings_of(objs).bus.slots
    values = yaml.safe_load((K8S / "components" / "hpa" / "prometheus-adapter-values.yaml").read_text())
    served = {rule["name"]["as"]: rule for rule in values["rules"]["external"]}
    for name in STAGE_DEPLOYMENTS:
        hpa = one(objs, "HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["maxReplicas"] <= slots
        for metric in hpa["spec"]["metrics"]:
            m = metric["external"]["metric"]
            assert m["name"].startswith("ditto_") and m["name"] in served
            assert m["selector"]["matchLabels"] == {"stage": STAGE_DEPLOYMENTS[name]}
            # the adapter keeps the stage label, so the HPA's selector can pick the stage
            assert "by (stage)" in served[m["name"]]["metricsQuery"]

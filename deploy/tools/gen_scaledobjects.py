"""Write the KEDA ScaledObjects of deploy/k8s/components/keda (one Redis) and components/keda-redis-cluster (a Redis
Cluster) from the slot count in the base ConfigMap.

The redis-streams scalers watch one stream and one consumer group per trigger, and each stage has one stream per
slot (named by the kernel, `Bus.slot_stream`; group `<stage>`), so a stage's ScaledObject carries one trigger per
slot. On a Redis Cluster the trigger is `redis-cluster-streams` with the addresses of the cluster's nodes: KEDA asks
the cluster which node holds each stream. Writing them by hand would drift from `DITTO_BUS__SLOTS` and from the
kernel's key names; run this after changing either:

    python deploy/tools/gen_scaledobjects.py          # rewrite both files
    python deploy/tools/gen_scaledobjects.py --check  # exit 1 when a file is stale (the tests do this too)
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from generated import write_or_check

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CONFIG = K8S / "base" / "config.yaml"
OUTPUT = K8S / "components" / "keda" / "scaledobjects.yaml"
CLUSTER_OUTPUT = K8S / "components" / "keda-redis-cluster" / "scaledobjects.yaml"
# How each variant's trigger finds Redis: the scaler type and the ConfigMap variable it reads the address(es) from.
VARIANTS = {
    "single": ("redis-streams", {"addressFromEnv": "REDIS_ADDRESS"}),
    # comma-separated host:port of the cluster's nodes (components/redis-cluster); any reachable node will do, more
    # than one so that KEDA still finds the cluster while one of them is down
    "cluster": ("redis-cluster-streams", {"addressesFromEnv": "REDIS_CLUSTER_ADDRESSES"}),
}

# Deployment name -> stage name (the stream infix and the consumer group)
STAGES = {"audio-encoder": "audio_encoder", "motion-generator": "motion_generator", "renderer": "renderer"}
# Pending (delivered, not yet acknowledged) entries per slot before another replica is asked for. One entry is one
# 200 ms audio chunk's work, so 4 pending entries is about 0.8 s of backlog on that slot.
PENDING_PER_SLOT = 4
# Warm workers keep first-frame latency low, so stages never scale to zero.
MIN_REPLICAS = 1


def slot_count(config_path: Path = CONFIG) -> int:
    """`DITTO_BUS__SLOTS` of the ditto-config ConfigMap."""
    for doc in yaml.safe_load_all(config_path.read_text()):
        if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "ditto-config":
            return int(doc["data"]["DITTO_BUS__SLOTS"])
    raise SystemExit(f"{config_path}: no ConfigMap ditto-config with DITTO_BUS__SLOTS")


def slot_stream(stage: str, slot: int, prefix: str = "ditto") -> str:
    """The stream name the kernel uses for a stage slot (so a change of key names reaches the scalers)."""
    for path in (ROOT, ROOT / "clients" / "python"):
        if str(path) not in sys.path:
            sys.path.append(str(path))
    from ditto.bus.memory import MemoryBus

    return MemoryBus(prefix=prefix).slot_stream(stage, slot)


def scaled_object(deployment: str, stage: str, slots: int, variant: str = "single") -> dict:
    trigger_type, address = VARIANTS[variant]
    triggers = [
        {
            "type": trigger_type,
            "name": f"slot-{k}",
            "metadata": {
                # where Redis is, read from the worker container's environment (ConfigMap ditto-config)
                **address,
                "stream": slot_stream(stage, k),
                "consumerGroup": stage,
                "pendingEntriesCount": str(PENDING_PER_SLOT),
            },
            "authenticationRef": {"name": "ditto-redis"},
        }
        for k in range(slots)
    ]
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {
            "name": deployment,
            "labels": {"app.kubernetes.io/name": deployment, "app.kubernetes.io/part-of": "ditto"},
        },
        "spec": {
            "scaleTargetRef": {"name": deployment},
            "minReplicaCount": MIN_REPLICAS,
            # a worker holds at least one slot, so more replicas than slots would sit idle
            "maxReplicaCount": slots,
            "pollingInterval": 5,
            "cooldownPeriod": 300,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        # scale up at once (GPUs take minutes to warm), down slowly and one pod at a time
                        "scaleUp": {
                            "stabilizationWindowSeconds": 0,
                            "policies": [{"type": "Pods", "value": 4, "periodSeconds": 30}],
                        },
                        "scaleDown": {
                            "stabilizationWindowSeconds": 300,
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                        },
                    }
                }
            },
            "triggers": triggers,
        },
    }


def render(slots: int, variant: str = "single") -> str:
    header = (
        "# Generated by deploy/tools/gen_scaledobjects.py from DITTO_BUS__SLOTS in deploy/k8s/base/config.yaml.\n"
        "# Do not edit by hand: change the generator or the slot count and run it again.\n"
    )
    docs = [scaled_object(d, s, slots, variant) for d, s in STAGES.items()]
    return header + yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True, width=120)


def main(argv: list[str] | None = None) -> int:
    status = write_or_check(__file__, OUTPUT, lambda: render(slot_count()), argv)
    return status or write_or_check(__file__, CLUSTER_OUTPUT, lambda: render(slot_count(), "cluster"), argv)


if __name__ == "__main__":
    sys.exit(main())

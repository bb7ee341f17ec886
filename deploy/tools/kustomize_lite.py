"""A small kustomize renderer for the manifests in deploy/k8s, for machines without `kubectl`.

It implements the part of kustomize these manifests use, with kustomize's semantics, and refuses everything
else with an error naming the file and the field (so a new feature in a kustomization fails loudly here instead of
rendering something different from `kubectl kustomize`):

- `resources` (YAML files, possibly multi-document, and directories holding a kustomization),
- `components` (directories whose kustomization has `kind: Component`),
- `patches` with `path` or inline `patch`: strategic merge patches, optionally with a `target`
  (kind, name, namespace, group, version, labelSelector, annotationSelector),
- `namespace`, `images` (newName, newTag, digest).

Strategic merge follows Kubernetes: maps merge, `null` deletes a key, lists of known Kubernetes types merge by
their patch merge key (containers by name, volumeMounts by mountPath, ...; patch items first in patch order, then
the untouched items in their old order), every other list is replaced. Custom resources merge like JSON merge
patch (lists replaced), as kustomize does without their OpenAPI schema.

    python deploy/tools/kustomize_lite.py deploy/k8s/overlays/dev-cpu   # prints the YAML stream
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "components", "patches", "namespace", "images"}
PATCH_FIELDS = {"path", "patch", "target"}
TARGET_FIELDS = {"group", "version", "kind", "name", "namespace", "labelSelector", "annotationSelector"}
IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}

# Kinds that live outside namespaces: the namespace transformer leaves them alone.
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
    "StorageClass", "PriorityClass", "IngressClass", "RuntimeClass", "CSIDriver", "Node", "APIService",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "ClusterIssuer",
}
# API groups whose types carry strategic-merge metadata; "" is the core group.
BUILTIN_GROUPS = {
    "", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io",
    "storage.k8s.io", "scheduling.k8s.io", "coordination.k8s.io", "discovery.k8s.io",
}
# List field -> merge key, for the Kubernetes types (ports is resolved by its items: container or service ports).
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "volumes": "name",
    "volumeMounts": "mountPath", "volumeDevices": "devicePath", "env": "name", "imagePullSecrets": "name",
    "hostAliases": "ip", "topologySpreadConstraints": "topologyKey", "resourceClaims": "name",
}
SMP_DIRECTIVES = ("$patch", "$retainKeys", "$deleteFromPrimitiveList", "$setElementOrder")

# kustomize's legacy output order: these kinds first (in this order), the rest by group/version/kind, then name
KIND_ORDER = [
    "Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount", "PodSecurityPolicy",
    "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap", "Secret", "Endpoints", "Service",
    "LimitRange", "PriorityClass", "PersistentVolume", "PersistentVolumeClaim", "Deployment", "StatefulSet",
    "CronJob", "PodDisruptionBudget",
]
KIND_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


class KustomizeError(ValueError):
    """A kustomization this renderer cannot build, with the file and the reason."""


def build(path: str | Path) -> list[Resource]:
    """Render the kustomization in directory `path`, like `kubectl kustomize path`."""
    resources = _build_dir(Path(path).resolve(), expect_component=False)
    return sorted(resources, key=_order_key)


def to_yaml(resources: list[Resource]) -> str:
    return yaml.safe_dump_all(resources, sort_keys=True, explicit_start=False, width=1000)


# ---- kustomization files


def _kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def _build_dir(directory: Path, expect_component: bool) -> list[Resource]:
    file = _kustomization_file(directory)
    spec = yaml.safe_load(file.read_text()) or {}
    unknown = set(spec) - KUSTOMIZATION_FIELDS
    if unknown:
        supported = sorted(KUSTOMIZATION_FIELDS)
        raise KustomizeError(f"{file}: unsupported fields {sorted(unknown)} (supported: {supported})")
    is_component = spec.get("kind") == "Component"
    if is_component != expect_component:
        what = "a Component" if expect_component else "a Kustomization"
        raise KustomizeError(f"{file}: expected {what}, found kind {spec.get('kind', 'Kustomization')!r}")

    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        resources.extend(_load_resource(directory, entry, file))
    for entry in spec.get("components", []):
        # a component sees (and transforms) everything accumulated so far, plus its own resources
        resources = _apply_component(directory / entry, resources)
    for patch in spec.get("patches", []):
        _apply_patch_entry(directory, patch, resources, file)
    if "namespace" in spec:
        _set_namespace(resources, spec["namespace"])
    for image in spec.get("images", []):
        _apply_image(image, resources, file)
    _check_unique(resources, file)
    return resources


def _apply_component(directory: Path, resources: list[Resource]) -> list[Resource]:
    file = _kustomization_file(directory)
    spec = yaml.safe_load(file.read_text()) or {}
    if spec.get("kind") != "Component":
        raise KustomizeError(f"{file}: listed under components but is not kind: Component")
    # a component is built like a kustomization whose resources start with the parent's
    accumulated = [*resources]
    for entry in spec.get("resources", []):
        accumulated.extend(_load_resource(directory, entry, file))
    for sub in spec.get("components", []):
        accumulated = _apply_component(directory / sub, accumulated)
    unknown = set(spec) - KUSTOMIZATION_FIELDS
    if unknown:
        raise KustomizeError(f"{file}: unsupported fields {sorted(unknown)}")
    for patch in spec.get("patches", []):
        _apply_patch_entry(directory, patch, accumulated, file)
    if "namespace" in spec:
        _set_namespace(accumulated, spec["namespace"])
    for image in spec.get("images", []):
        _apply_image(image, accumulated, file)
    return accumulated


def _load_resource(directory: Path, entry: str, file: Path) -> list[Resource]:
    target = (directory / entry).resolve()
    if target.is_dir():
        return _build_dir(target, expect_component=False)
    if not target.is_file():
        raise KustomizeError(f"{file}: resource {entry!r} does not exist")
    docs = [d for d in yaml.safe_load_all(target.read_text()) if d]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
            raise KustomizeError(f"{target}: every document must be a Kubernetes object with kind and metadata")
    return docs


def _check_unique(resources: list[Resource], file: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for r in resources:
        key = (r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"{file}: two resources are {key[0]} {key[2]!r}")
        seen.add(key)


def _order_key(r: Resource) -> tuple[int, str, str, str]:
    kind = r["kind"]
    if kind in KIND_ORDER:
        rank = KIND_ORDER.index(kind)
    elif kind in KIND_LAST:
        rank = len(KIND_ORDER) + 1 + KIND_LAST.index(kind)
    else:
        rank = len(KIND_ORDER)
    return rank, f"{r['apiVersion']}/{kind}", r["metadata"].get("namespace", ""), r["metadata"]["name"]


# ---- patches


def _apply_patch_entry(directory: Path, entry: dict[str, Any], resources: list[Resource], file: Path) -> None:
    unknown = set(entry) - PATCH_FIELDS
    if unknown:
        raise KustomizeError(f"{file}: unsupported patch fields {sorted(unknown)}")
    if "path" in entry:
        source = directory / entry["path"]
        if not source.is_file():
            raise KustomizeError(f"{file}: patch file {entry['path']!r} does not exist")
        text = source.read_text()
    elif "patch" in entry:
        source, text = file, entry["patch"]
    else:
        raise KustomizeError(f"{file}: a patch needs `path` or `patch`")
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    target = entry.get("target")
    for doc in docs:
        if not isinstance(doc, dict):
            raise KustomizeError(f"{source}: only strategic merge patches are supported (JSON 6902 is not)")
        if target is not None:
            matches = [r for r in resources if _matches_target(r, target, source)]
        else:
            matches = [r for r in resources if r["kind"] == doc.get("kind")
                       and r["metadata"]["name"] == doc.get("metadata", {}).get("name")]
        if not matches:
            raise KustomizeError(f"{source}: the patch matches no resource")
        for r in matches:
            builtin = _group(r["apiVersion"]) in BUILTIN_GROUPS
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
            if target is not None:
                # with an explicit target the patch's own name is a placeholder
                body["metadata"] = {k: v for k, v in body.get("metadata", {}).items() if k != "name"}
            merged = _merge(r, body, builtin, f"{source}")
            r.clear()
            r.update(merged)


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def _matches_target(r: Resource, target: dict[str, Any], source: Path) -> bool:
    unknown = set(target) - TARGET_FIELDS
    if unknown:
        raise KustomizeError(f"{source}: unsupported target fields {sorted(unknown)}")
    group, _, version = r["apiVersion"].rpartition("/")
    meta = r["metadata"]
    checks = [
        ("kind", r["kind"]), ("group", group), ("version", version),
        ("name", meta["name"]), ("namespace", meta.get("namespace", "")),
    ]
    for field, actual in checks:
        # kustomize reads names and kinds in a target as anchored regular expressions
        if field in target and not re.fullmatch(str(target[field]), actual):
            return False
    if "labelSelector" in target and not _selector_matches(target["labelSelector"], meta.get("labels") or {}):
        return False
    annotations = meta.get("annotations") or {}
    return "annotationSelector" not in target or _selector_matches(target["annotationSelector"], annotations)


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based selectors: `a=b,c!=d,e` (e: the key exists, !e: it does not)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif " in " in term or " notin " in term:
            raise KustomizeError(f"set-based selector {term!r} is not supported")
        elif term not in labels:
            return False
    return True


def _merge(dest: Any, patch: Any, builtin: bool, where: str, field: str = "") -> Any:
    """Strategic merge of `patch` into a copy of `dest`."""
    if isinstance(patch, dict):
        for directive in SMP_DIRECTIVES:
            if directive in patch:
                raise KustomizeError(f"{where}: strategic merge directive {directive} is not supported")
        if not isinstance(dest, dict):
            return _strip_nulls(patch)
        out = copy.deepcopy(dest)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = _merge(out[key], value, builtin, where, key)
            else:
                out[key] = _strip_nulls(value)
        return out
    if isinstance(patch, list):
        key = _merge_key(field, dest, patch) if builtin else None
        if key is None or not isinstance(dest, list):
            return _strip_nulls(patch)
        return _merge_list(dest, patch, key, builtin, where)
    return copy.deepcopy(patch)


def _merge_key(field: str, dest: Any, patch: list[Any]) -> str | None:
    if field == "ports":
        items = [*(dest if isinstance(dest, list) else []), *patch]
        return "containerPort" if any(isinstance(i, dict) and "containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(field)


def _merge_list(dest: list[Any], patch: list[Any], key: str, builtin: bool, where: str) -> list[Any]:
    by_key = {item.get(key): item for item in dest if isinstance(item, dict)}
    out: list[Any] = []
    touched = set()
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise KustomizeError(f"{where}: list items need their merge key {key!r}: {item!r}")
        k = item[key]
        touched.add(k)
        out.append(_merge(by_key[k], item, builtin, where) if k in by_key else _strip_nulls(item))
    out.extend(copy.deepcopy(i) for i in dest if not (isinstance(i, dict) and i.get(key) in touched))
    return out


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return copy.deepcopy(value)


# ---- namespace and images


def _set_namespace(resources: list[Resource], namespace: str) -> None:
    for r in resources:
        if r["kind"] not in CLUSTER_SCOPED:
            r["metadata"]["namespace"] = namespace


def _split_image(image: str) -> tuple[str, str, str]:
    """`registry:5000/name:tag@sha256:...` -> (name, tag, digest); tag and digest may be empty."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest


def _apply_image(spec: dict[str, Any], resources: list[Resource], file: Path) -> None:
    unknown = set(spec) - IMAGE_FIELDS
    if unknown or "name" not in spec:
        raise KustomizeError(f"{file}: an images entry takes {sorted(IMAGE_FIELDS)} and needs name")

    def rewrite(image: str) -> str:
        name, tag, digest = _split_image(image)
        if name != spec["name"]:
            return image
        name = spec.get("newName", name)
        if "digest" in spec:
            return f"{name}@{spec['digest']}"
        if "newTag" in spec:
            return f"{name}:{spec['newTag']}"
        return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for container in value:
                        if isinstance(container, dict) and isinstance(container.get("image"), str):
                            container["image"] = rewrite(container["image"])
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for r in resources:
        walk(r)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: kustomize_lite.py DIR", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(to_yaml(build(args[0])))
    except KustomizeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

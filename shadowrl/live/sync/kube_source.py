"""A live deployment from Kubernetes: manifests in files, or a cluster through the official
``kubernetes`` client.

Both go through one path, :func:`from_objects`, on manifest-shaped mappings (what
``kubectl get -o yaml`` prints and what the client's ``sanitize_for_serialization`` gives):

- Deployments and StatefulSets become components: ``spec.replicas``, the first container's
  image (or the container an ``shadowrl.io/container`` annotation names), annotations
  ``shadowrl.io/...`` (on the workload, then its pod template) for what the image cannot
  say, and the label ``app.kubernetes.io/version`` as the version before the image tag;
- ConfigMaps a workload's pod template refers to (``envFrom``, ``env.valueFrom``, volumes)
  are its configuration: their data and the container's literal ``env`` are hashed as its
  config identity, so a ConfigMap change is drift;
- Services map their names to the workloads they select, so ``shadowrl.io/calls`` may name
  either; a LoadBalancer or NodePort Service marks its workload as the edge when no
  annotation does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from shadowrl.live.sync.compose_source import line_of, load_yaml_documents
from shadowrl.live.sync.model import (
    LiveComponent,
    LiveDeployment,
    SourceError,
    component,
    component_name,
    deployment,
    shadowrl_labels,
)

WORKLOADS = ("Deployment", "StatefulSet")
KINDS = (*WORKLOADS, "Service", "ConfigMap")
VERSION_LABEL = "app.kubernetes.io/version"
SUFFIXES = (".yaml", ".yml", ".json")


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def read_manifests(path: Path, namespace: str | None = None) -> LiveDeployment:
    """The deployment the manifests in ``path`` (a file, or a folder's ``*.yaml``, ``*.yml``
    and ``*.json`` files, not recursing) describe; ``namespace`` keeps only its objects."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise SourceError(f"{path}: no .yaml, .yml or .json manifest in this folder")
    elif path.exists():
        files = [path]
    else:
        raise SourceError(f"{path}: no such file or folder")
    objects: list[tuple[dict[str, Any], str]] = []
    for file in files:
        for doc in load_yaml_documents(file):
            items = doc.get("items") if isinstance(doc, Mapping) and str(
                doc.get("kind", "")).endswith("List") else [doc]
            for item in items or []:
                if not isinstance(item, Mapping):
                    raise SourceError(f"{file}:{line_of(doc)}: a manifest must be a mapping")
                objects.append((item, f"{file}:{line_of(item)}"))  # type: ignore[arg-type]
    return from_objects(f"k8s:{path}", objects, namespace)


def read_cluster(kubeconfig: Path | None, context: str | None = None,
                 namespace: str | None = None) -> LiveDeployment:
    """The deployment in ``namespace`` (default: the context's, else ``default``) of the
    cluster ``kubeconfig`` and ``context`` name, read with the official client. Untested
    against a live cluster here: its objects go through the same code as manifests."""
    try:
        from kubernetes import client, config
    except ImportError as exc:
        from shadowrl.core.extras import missing_extra
        raise missing_extra("live", exc) from exc
    try:
        config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None,
                                context=context)
        _, active = config.list_kube_config_contexts(
            config_file=str(kubeconfig) if kubeconfig else None)
    except Exception as exc:  # noqa: BLE001 - the client's errors vary: all are bad input
        raise SourceError(f"--kubeconfig {kubeconfig or '~/.kube/config'}: {exc}") from None
    if namespace is None:
        chosen = active
        if context is not None:
            contexts, _ = config.list_kube_config_contexts(
                config_file=str(kubeconfig) if kubeconfig else None)
            chosen = next((c for c in contexts if c.get("name") == context), active)
        namespace = _get(chosen, "context", "namespace") or "default"
    api = client.ApiClient()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    listings = [("Deployment", apps.list_namespaced_deployment),
                ("StatefulSet", apps.list_namespaced_stateful_set),
                ("Service", core.list_namespaced_service),
                ("ConfigMap", core.list_namespaced_config_map)]
    objects: list[Any] = []
    try:
        for kind, list_fn in listings:
            for item in list_fn(namespace).items:
                objects.append((kind, item))
    except Exception as exc:  # noqa: BLE001 - an API error (forbidden, unreachable)
        raise SourceError(f"k8s-cluster: namespace {namespace}: {exc}") from None
    return from_client_objects(api, objects, f"k8s-cluster:{context or 'current'}/{namespace}")


def from_client_objects(api: Any, objects: Iterable[tuple[str, Any]],
                        source: str) -> LiveDeployment:
    """The deployment from the client's model objects (``V1Deployment`` ...), as their
    manifest JSON: list items carry no ``kind``, so it is given with each."""
    manifests = []
    for kind, obj in objects:
        data = api.sanitize_for_serialization(obj)
        data["kind"] = kind
        manifests.append((data, f"{kind}/{_get(data, 'metadata', 'name')}"))
    return from_objects(source, manifests)


def _config_maps(pod_spec: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    """The ConfigMaps a pod's container reads: envFrom, env valueFrom and volumes."""
    names: list[str] = []
    for item in container.get("envFrom") or []:
        if name := _get(item, "configMapRef", "name"):
            names.append(str(name))
    for item in container.get("env") or []:
        if name := _get(item, "valueFrom", "configMapKeyRef", "name"):
            names.append(str(name))
    for volume in pod_spec.get("volumes") or []:
        if name := _get(volume, "configMap", "name"):
            names.append(str(name))
        for src in _get(volume, "projected", "sources") or []:
            if name := _get(src, "configMap", "name"):
                names.append(str(name))
    return list(dict.fromkeys(names))


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, Any] | None) -> bool:
    return bool(selector) and all((labels or {}).get(k) == v
                                  for k, v in (selector or {}).items())


def from_objects(source: str, objects: list[tuple[Mapping[str, Any], str]],
                 namespace: str | None = None) -> LiveDeployment:
    """The deployment from manifest mappings, each with where it was read (``file:line``)."""
    warnings: list[str] = []
    by_kind: dict[str, list[tuple[Mapping[str, Any], str]]] = {k: [] for k in KINDS}
    for obj, where in objects:
        kind = str(obj.get("kind") or "")
        if namespace and (_get(obj, "metadata", "namespace") or namespace) != namespace:
            continue
        if kind in by_kind:
            if not _get(obj, "metadata", "name"):
                raise SourceError(f"{where}: {kind}: metadata.name: field required")
            by_kind[kind].append((obj, where))
    config_maps = {str(_get(o, "metadata", "name")): o for o, _ in by_kind["ConfigMap"]}
    services = by_kind["Service"]
    aliases: dict[str, str] = {}  # Kubernetes Service name -> workload component name
    comps: list[LiveComponent] = []
    for obj, where in by_kind["Deployment"] + by_kind["StatefulSet"]:
        made = _workload(obj, where, config_maps, services, warnings, aliases)
        if made is not None:
            comps.append(made)
    fixed = [replace(c, calls=tuple(dict.fromkeys(aliases.get(n, n) for n in c.calls)))
             if c.calls is not None else c for c in comps]
    if not fixed:
        raise SourceError(f"{source}: no Deployment or StatefulSet found")
    return deployment(source, fixed, warnings)


def _workload(obj: Mapping[str, Any], where: str, config_maps: Mapping[str, Any],
              services: list[tuple[Mapping[str, Any], str]], warnings: list[str],
              aliases: dict[str, str]) -> LiveComponent | None:
    kind = obj.get("kind")
    meta = obj.get("metadata") or {}
    raw_name = str(meta.get("name"))
    where = f"{where}: {kind} {raw_name}"
    template = _get(obj, "spec", "template") or {}
    pod_spec = template.get("spec") or {}
    containers = pod_spec.get("containers") or []
    if not containers:
        raise SourceError(f"{where}: spec.template.spec.containers: field required")
    annotations = {**(_get(template, "metadata", "annotations") or {}),
                   **(meta.get("annotations") or {})}
    labels = shadowrl_labels(annotations)
    chosen = labels.get("container")
    container = next((c for c in containers if c.get("name") == chosen), containers[0])
    pod_labels = _get(template, "metadata", "labels") or {}
    version = (meta.get("labels") or {}).get(VERSION_LABEL) or pod_labels.get(VERSION_LABEL)
    if version and "version" not in labels:
        labels["version"] = str(version)
    replicas = _get(obj, "spec", "replicas")
    replicas = 1 if replicas is None else replicas
    if not isinstance(replicas, int) or replicas < 0:
        raise SourceError(f"{where}: spec.replicas: must be a whole number >= 0, got "
                          f"{replicas!r}")
    if replicas == 0:
        warnings.append(f"{where}: 0 replicas: left out")
        return None
    data: dict[str, Any] = {}
    for name in _config_maps(pod_spec, container):
        cm = config_maps.get(name)
        if cm is None:
            warnings.append(f"{where}: ConfigMap {name} is not among the manifests: only its "
                            f"name counts in the config identity")
            data[f"configmap:{name}"] = None
        else:
            data[f"configmap:{name}"] = {"data": dict(cm.get("data") or {}),
                                         "binaryData": dict(cm.get("binaryData") or {})}
    for item in container.get("env") or []:
        if "value" in item:
            data[f"env:{item.get('name')}"] = item.get("value")
    made = component(raw_name, labels, replicas=replicas, image=container.get("image"),
                     config_data=data, calls=None, where=where, warnings=warnings)
    if made is None:
        return None
    edge = made.edge
    for svc, _svc_where in services:
        if _selects(_get(svc, "spec", "selector"), pod_labels):
            alias = component_name(str(_get(svc, "metadata", "name")), where)
            aliases.setdefault(alias, made.name)
            if _get(svc, "spec", "type") in ("LoadBalancer", "NodePort") and \
                    "edge" not in labels:
                edge = True
    if edge != made.edge:
        made = replace(made, edge=edge)
    return made

"""A live deployment from running containers: the containers of a compose project.

Containers are found by compose's own labels (``com.docker.compose.project=<project>``)
and grouped by ``com.docker.compose.service``; the running ones of a service are its
replicas. Each container's ``shadowrl.*`` labels say what its image cannot; its config
identity, without a ``shadowrl.config`` label, is a hash of the environment the container
adds to its image's (so ``docker compose up`` with a changed variable is a config change).
During a rollout replicas differ: the version most replicas run is the service's, and a
warning says so.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from shadowrl.live.sync.model import (
    LiveComponent,
    LiveDeployment,
    SourceError,
    component,
    deployment,
    shadowrl_labels,
)

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"  # `docker compose run` containers: not replicas


def _env(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def _image_env(client: Any, image_id: str, cache: dict[str, dict[str, str]]) -> dict[str, str]:
    """The environment an image sets (what a container adds is its configuration)."""
    if image_id not in cache:
        try:
            attrs = client.images.get(image_id).attrs
        except Exception:  # noqa: BLE001 - an image removed meanwhile: count all of the env
            attrs = {}
        cache[image_id] = _env((attrs.get("Config") or {}).get("Env"))
    return cache[image_id]


def container_view(client: Any, container: Any,
                   image_envs: dict[str, dict[str, str]]) -> dict[str, Any]:
    """What sync reads of one container: name, labels, image reference, added env."""
    attrs = container.attrs
    config = attrs.get("Config") or {}
    env = _env(config.get("Env"))
    base = _image_env(client, attrs.get("Image", ""), image_envs)
    added = {k: v for k, v in env.items() if base.get(k) != v}
    return {"name": container.name, "labels": dict(config.get("Labels") or {}),
            "image": config.get("Image") or attrs.get("Image"), "env": added}


def read_docker(project: str, client: Any = None) -> LiveDeployment:
    """The running containers of compose project ``project`` on the daemon of ``client``
    (default: the one the real shadow uses, ``DOCKER_HOST`` first)."""
    if client is None:
        from shadowrl.shadow.docker.daemon import connect
        client = connect(start=False)
    containers = client.containers.list(filters={"label": f"{PROJECT_LABEL}={project}",
                                                 "status": "running"})
    image_envs: dict[str, dict[str, str]] = {}
    views = [container_view(client, c, image_envs) for c in containers]
    return from_views(project, views)


def from_views(project: str, views: list[dict[str, Any]]) -> LiveDeployment:
    """The deployment from container views (:func:`container_view`), grouped by service:
    separate from the Docker API so the grouping is tested without a daemon."""
    source = f"docker:{project}"
    views = [v for v in views if str(v["labels"].get(ONEOFF_LABEL, "")).lower() != "true"]
    if not views:
        raise SourceError(f"{source}: no running container has the label "
                          f"{PROJECT_LABEL}={project}")
    groups: dict[str, list[dict[str, Any]]] = {}
    for view in sorted(views, key=lambda v: v["name"]):
        service = view["labels"].get(SERVICE_LABEL) or view["name"]
        groups.setdefault(service, []).append(view)
    warnings: list[str] = []
    comps: list[LiveComponent] = []
    for service in sorted(groups):
        members = groups[service]
        where = f"{source}: service {service}"
        made = [component(service, shadowrl_labels(v["labels"]), replicas=len(members),
                          image=v["image"], config_data=v["env"], calls=None, where=where,
                          warnings=warnings) for v in members]
        kept = [m for m in made if m is not None]
        if not kept:
            continue
        counts = Counter((m.version, m.config) for m in kept)
        (version, config), n = counts.most_common(1)[0]
        if len(counts) > 1:
            spread = ", ".join(f"{k} at version {v} config {c}"
                               for (v, c), k in counts.most_common())
            warnings.append(f"{where}: replicas differ ({spread}): a rollout in progress? "
                            f"version {version} (most replicas) is used")
        comps.append(next(m for m in kept if (m.version, m.config) == (version, config)))
    return deployment(source, comps, warnings)

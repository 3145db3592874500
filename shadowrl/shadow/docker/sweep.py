"""Remove what real shadows left behind: containers, networks, volumes and host rules.

A process that dies (a killed test, a crashed Ray actor) cannot close its shadow. Every
object carries the shadow label and its owner ``host:pid``, so a start-up sweep can remove
exactly the leftovers of dead processes and never touch a shadow a live process still uses.
Containers go first (they pin networks and volumes), then networks, then volumes, then the
host firewall rules whose bridge no longer exists.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shadowrl.shadow.docker.labels import LABEL, OWNER_LABEL, owner_alive
from shadowrl.shadow.docker.network import IsolationUnavailable, delete_host_rule, host_rules

WORKERS = 8  # container removal (stop + delete) dominates; the daemon handles these in parallel


@dataclass(frozen=True)
class SweepReport:
    """How many objects of each kind were removed, and what could not be."""

    containers: int = 0
    networks: int = 0
    volumes: int = 0
    rules: int = 0
    errors: tuple[str, ...] = field(default=())

    @property
    def total(self) -> int:
        return self.containers + self.networks + self.volumes + self.rules


def _selected(obj_labels: dict[str, str] | None, only_dead_owners: bool) -> bool:
    """Whether an object's labels make it a leftover to remove."""
    if not only_dead_owners:
        return True
    owner = (obj_labels or {}).get(OWNER_LABEL)
    return owner is not None and not owner_alive(owner)


def _remove_all(
    items: Iterable[Any], remove: Callable[[Any], None], what: str, errors: list[str]
) -> int:
    """Remove ``items`` on a small thread pool; count successes, collect failures.

    An object that is already gone (another sweeper, a concurrent close) is skipped quietly.
    """
    import docker.errors

    def one(item: Any) -> bool:
        try:
            remove(item)
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            errors.append(f"{what} {getattr(item, 'name', item)}: {exc.explanation or exc}")
            return False
        return True

    items = list(items)
    if not items:
        return 0
    if len(items) == 1:
        return int(one(items[0]))
    try:
        with ThreadPoolExecutor(max_workers=min(WORKERS, len(items))) as pool:
            return sum(pool.map(one, items))
    except RuntimeError:  # the interpreter is exiting (an atexit close): one by one
        return sum(one(item) for item in items)


def sweep(
    client: Any, *, shadow_id: str | None = None, only_dead_owners: bool = True
) -> SweepReport:
    """Remove labelled leftovers (of ``shadow_id`` only, when given).

    With ``only_dead_owners`` only objects whose owner label names a dead process on this
    host go (objects without an owner label are kept). With nothing to remove this costs one
    list call per kind and one ``iptables -S``.
    """
    label = LABEL if shadow_id is None else f"{LABEL}={shadow_id}"
    filters = {"label": label}
    errors: list[str] = []

    containers = [
        c
        for c in client.containers.list(all=True, filters=filters, sparse=True)
        if _selected(c.attrs.get("Labels"), only_dead_owners)
    ]
    n_containers = _remove_all(
        containers, lambda c: c.remove(force=True, v=True), "container", errors
    )

    networks = [
        n
        for n in client.networks.list(filters=filters)
        if _selected(n.attrs.get("Labels"), only_dead_owners)
    ]
    n_networks = _remove_all(networks, lambda n: n.remove(), "network", errors)

    volumes = [
        v
        for v in client.volumes.list(filters=filters)
        if _selected(v.attrs.get("Labels"), only_dead_owners)
    ]
    n_volumes = _remove_all(volumes, lambda v: v.remove(force=True), "volume", errors)

    n_rules = 0
    try:
        for rule in host_rules():
            if shadow_id is not None and rule.shadow_id != shadow_id:
                continue
            if os.path.exists(f"/sys/class/net/{rule.bridge}"):
                continue  # a live network (or one whose removal failed) still needs its fence
            n_rules += int(delete_host_rule(rule))
    except IsolationUnavailable as exc:  # a sweep reports; creating a network is what fails
        errors.append(str(exc))

    return SweepReport(n_containers, n_networks, n_volumes, n_rules, tuple(errors))

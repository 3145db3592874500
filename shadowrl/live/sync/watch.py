"""``sync --watch``: follow the live deployment, and bring a running shadow along.

Every ``interval`` seconds the source is read again; when the live deployment differs
from the last one synced (and two readings in a row agree), the scenario is synced (each
change logged) and, with a shadow, the shadow's services are rolled to the new live version
or config (a real rolling update on the Docker shadow: :meth:`DockerShadow.roll_to`) and
scaled to the new replica count.
A component added to or removed from the live side is logged: the shadow keeps the
topology it was launched with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from shadowrl.core.spec import Step
from shadowrl.live.sync.drift import Change
from shadowrl.live.sync.model import LiveDeployment, SourceError

LogFn = Callable[[str], None]


def roll_shadow(shadow: Any, changes: list[Change], live: LiveDeployment, log: LogFn,
                *, batch: int = 1) -> None:
    """Bring ``shadow`` (a launched DockerShadow) to ``live`` for ``changes``: roll each
    service whose version or config changed, then scale the ones whose replicas did."""
    running = {s.name for s in shadow.scenario.deployment.services}
    by_component: dict[str, set[str]] = {}
    for change in changes:
        by_component.setdefault(change.component, set()).add(change.field)
    for name, fields in by_component.items():
        comp = live.get(name)
        if "component" in fields or comp is None or name not in running:
            log(f"shadow: keeps the topology it was launched with ({name} "
                f"{'added' if comp is not None else 'removed'} live): restart the watch to "
                f"follow it")
            continue
        version = comp.version if {"version", "image"} & fields else None
        config = comp.config if "config" in fields else None
        if version is not None or config is not None:
            what = ", ".join(f"{k} {v}" for k, v in (("version", version), ("config", config))
                             if v is not None)
            log(f"shadow: rolling {name} to {what}, {batch} replica(s) at a time")
            result = shadow.roll_to(name, version=version, config=config, image=comp.image,
                                    batch=batch)
            log(f"shadow: {name} {result.status} in {result.end_s - result.start_s:.0f}s "
                f"(scenario time){': ' + result.message if result.message else ''}")
        if "replicas" in fields:
            step = Step(name=f"sync-scale-{name}"[:63].rstrip("-"), action="scale",
                        target=name)
            result = shadow.run_step(step, {"replicas": comp.replicas})
            log(f"shadow: scaled {name} to {comp.replicas} replicas: {result.status}")


def follow(read: Callable[[], LiveDeployment],
           apply: Callable[[LiveDeployment], list[Change]], *, interval: float,
           stop: threading.Event, log: LogFn,
           on_change: Callable[[list[Change], LiveDeployment], None] | None = None,
           last: LiveDeployment | None = None) -> None:
    """Poll ``read`` until ``stop`` is set. A new reading is acted on once the next one
    agrees (the live side held still for an interval: a rollout or a ``compose up`` caught
    half-way is not followed step by step): ``apply`` syncs the scenario and returns the
    changes (logged one by one), then ``on_change`` (the shadow's roll) runs. A reading
    that fails is logged and retried at the next poll."""
    pending: LiveDeployment | None = None
    while not stop.wait(0 if last is None else interval):
        try:
            live = read()
        except Exception as exc:  # noqa: BLE001 - a daemon or API hiccup: try again
            log(f"cannot read the live deployment: {exc}; retrying in {interval:g}s")
            last = last or LiveDeployment("", ())
            continue
        if live == last:
            pending = None
            continue
        if live != pending:
            pending = live  # changed: act once it holds still
            continue
        last, pending = live, None
        try:
            changes = apply(live)
        except (SourceError, ValueError) as exc:  # a merged scenario that would not validate
            log(f"not synced: {exc}")
            continue
        for change in changes:
            log(f"drift: {change.text()}")
        if changes and on_change is not None:
            on_change(changes, live)

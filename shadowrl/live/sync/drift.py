"""Drift: how a scenario's ``deployment:`` differs from the live deployment now.

The scenario is what the last sync (or its author) wrote; each difference is one
:class:`Change`. Only what the live side declares is compared: a service whose live
containers carry no ``shadowrl.calls`` label (and no ``depends_on``) keeps its hand-written
calls without drift, and likewise flags and the previous version or config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from shadowrl.core.spec import Scenario, Service, Versioned
from shadowrl.live.sync.model import LiveComponent, LiveDeployment

IMAGE_ANNOTATION = "shadowrl.io/image."  # + component name: the image last synced


@dataclass(frozen=True)
class Change:
    """One difference. ``field`` is ``component`` (added or removed), ``kind``,
    ``replicas``, ``version``, ``previous-version``, ``config``, ``previous-config``,
    ``flags``, ``calls`` or ``image``; ``scenario`` and ``live`` are the two sides' values
    (None where a side has none)."""

    component: str
    field: str
    scenario: Any
    live: Any
    note: str = ""

    def text(self) -> str:
        if self.field == "component":
            return (f"{self.component}: new in the live deployment ({self.live})"
                    if self.scenario is None else
                    f"{self.component}: gone from the live deployment ({self.note})")
        return f"{self.component}: {self.field} {_shown(self.scenario)} -> {_shown(self.live)}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shown(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _kind_of(scenario: Scenario, name: str) -> str | None:
    d = scenario.deployment
    for kind, items in (("service", d.services), ("datastore", d.datastores),
                        ("cache", d.caches)):
        if any(c.name == name for c in items):
            return kind
    return None


def _versioned(ours: Versioned | None, live: str | None, live_previous: str | None,
               name: str, what: str) -> list[Change]:
    out: list[Change] = []
    current = None if ours is None else str(ours.live)
    if live is not None and current != live:
        out.append(Change(name, what, current, live))
    elif live_previous is not None and ours is not None and str(ours.previous) != live_previous:
        out.append(Change(name, f"previous-{what}", str(ours.previous), live_previous))
    return out


def _service_changes(svc: Service, live: LiveComponent) -> list[Change]:
    out: list[Change] = []
    if svc.replicas != live.replicas:
        out.append(Change(svc.name, "replicas", svc.replicas, live.replicas))
    out += _versioned(svc.version, live.version, live.previous_version, svc.name, "version")
    out += _versioned(svc.config, live.config, live.previous_config, svc.name, "config")
    if live.flags is not None and sorted(svc.flags) != sorted(live.flags):
        out.append(Change(svc.name, "flags", list(svc.flags), list(live.flags)))
    if live.calls is not None and sorted(svc.calls) != sorted(live.calls):
        out.append(Change(svc.name, "calls", list(svc.calls), list(live.calls)))
    return out


def compare(scenario: Scenario, live: LiveDeployment) -> list[Change]:
    """Every difference between the scenario's deployment and ``live``, component by
    component in the live order, then the components the live side no longer has."""
    changes: list[Change] = []
    services = {s.name: s for s in scenario.deployment.services}
    annotations = scenario.metadata.annotations
    for comp in live.components:
        kind = _kind_of(scenario, comp.name)
        if kind is None:
            changes.append(Change(comp.name, "component", None, comp.kind))
            continue
        if kind != comp.kind:
            changes.append(Change(comp.name, "kind", kind, comp.kind))
            continue
        if kind == "service":
            changes += _service_changes(services[comp.name], comp)
        synced_image = annotations.get(IMAGE_ANNOTATION + comp.name)
        if comp.image and synced_image and synced_image != comp.image:
            changes.append(Change(comp.name, "image", synced_image, comp.image))
    live_names = {c.name for c in live.components}
    for name, kind in [*((s.name, "service") for s in scenario.deployment.services),
                       *((d.name, "datastore") for d in scenario.deployment.datastores),
                       *((c.name, "cache") for c in scenario.deployment.caches)]:
        if name not in live_names:
            changes.append(Change(name, "component", kind, None,
                                  note=f"a {kind}; kept in the scenario: remove it, and the "
                                       f"incidents and steps naming it, by hand"))
    return changes


def is_removal(change: Change) -> bool:
    """A component gone from the live side: reported, never applied (its incidents and
    steps are the user's)."""
    return change.field == "component" and change.live is None

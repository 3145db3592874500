"""A live deployment as every source reads it: components with what a scenario's
``deployment:`` needs (replicas, version, config identity, flags, calls, kind, edge).

Sources differ in how they find these (container labels, compose keys, Kubernetes
annotations); this model is what they agree on, so merging and drift never look at a
source again. What an image cannot say is declared by labels or annotations under a
``shadowrl.`` (Docker, compose) or ``shadowrl.io/`` (Kubernetes) prefix (docs/sync.md).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from shadowrl.core.spec import MAX_NAME_LENGTH, NAME_RE

Kind = Literal["service", "datastore", "cache"]
KINDS: tuple[Kind, ...] = ("service", "datastore", "cache")
PREFIXES = ("shadowrl.io/", "shadowrl.")
KEYS = ("version", "previous-version", "config", "previous-config", "flags", "calls", "edge",
        "kind", "name", "ignore", "container")
# images whose name says what they are, when no label does
_DATASTORE_IMAGES = re.compile(r"^(postgres|postgis|mysql|mariadb|mongo|cassandra|cockroach|"
                               r"elasticsearch|opensearch|clickhouse)")
_CACHE_IMAGES = re.compile(r"^(redis|memcached|valkey|keydb)")
_TRUE = ("1", "true", "yes", "on")


class SourceError(ValueError):
    """A live source that cannot be read as given: one line naming where (a file and line,
    a container, a manifest), for the user; the command exits 2 with it."""


@dataclass(frozen=True)
class LiveComponent:
    """One component of the live deployment. ``flags`` and ``calls`` are None when the
    source does not declare them (then the scenario's hand-written ones are kept)."""

    name: str
    kind: Kind = "service"
    replicas: int = 1
    image: str | None = None
    version: str | None = None
    previous_version: str | None = None
    config: str | None = None
    previous_config: str | None = None
    flags: tuple[str, ...] | None = None
    calls: tuple[str, ...] | None = None
    edge: bool = False
    origin: str = ""  # where it was read, for messages: "container shop-web-1"


@dataclass(frozen=True)
class LiveDeployment:
    """What a source read: its components (the edge service first) and what it noticed on
    the way (a name normalised, a rollout in progress)."""

    source: str
    components: tuple[LiveComponent, ...]
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def of_kind(self, kind: Kind) -> list[LiveComponent]:
        return [c for c in self.components if c.kind == kind]

    def get(self, name: str) -> LiveComponent | None:
        return next((c for c in self.components if c.name == name), None)

    @property
    def edge(self) -> LiveComponent | None:
        return next((c for c in self.components if c.edge), None)


# --------------------------------------------------------------------------- labels


def shadowrl_labels(labels: Mapping[str, Any] | None) -> dict[str, str]:
    """The ``shadowrl.``/``shadowrl.io/`` labels among ``labels``, keyed without prefix
    (``shadowrl.io/`` wins when both spell one key). Other keys under the prefix (the
    shadow's own ``shadowrl.shadow``, ``shadowrl.role``) are not ours and are left out."""
    out: dict[str, str] = {}
    for prefix in reversed(PREFIXES):
        for key, value in (labels or {}).items():
            if isinstance(key, str) and key.startswith(prefix) and key[len(prefix):] in KEYS:
                out[key[len(prefix):]] = "" if value is None else str(value)
    return out


def component_name(raw: str, where: str, warnings: list[str] | None = None) -> str:
    """``raw`` as a scenario name (lowercase, digits, ``-``; at most 63 characters): compose
    and container names may use ``_`` or capitals. A changed name is noted in ``warnings``."""
    name = re.sub(r"[^a-z0-9-]+", "-", raw.strip().lower()).strip("-")[:MAX_NAME_LENGTH]
    name = name.rstrip("-")
    if not name or not NAME_RE.fullmatch(name):
        raise SourceError(f"{where}: cannot make a component name of {raw!r} (use the label "
                          f"shadowrl.name)")
    if name != raw and warnings is not None:
        warnings.append(f"{where}: name {raw!r} is written as {name!r}")
    return name


def name_list(text: str, where: str, warnings: list[str]) -> tuple[str, ...]:
    """A comma (or space) separated label value as names, in order, without repeats."""
    out: list[str] = []
    for part in re.split(r"[,\s]+", text.strip()):
        if part:
            name = component_name(part, where, warnings)
            if name not in out:
                out.append(name)
    return tuple(out)


def image_tag(image: str | None) -> str | None:
    """The version an image reference carries: its tag (``latest`` when it has none), else a
    short digest."""
    if not image:
        return None
    ref, _, digest = image.partition("@")
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        return last.rsplit(":", 1)[1]
    if digest:
        return digest.split(":")[-1][:12]
    return "latest"


def config_identity(data: Mapping[str, Any]) -> str | None:
    """A short stable hash of configuration data (environment, ConfigMap data): a changed
    value is a changed identity, so a config push shows as drift. None for no data."""
    if not data:
        return None
    text = json.dumps({str(k): v for k, v in data.items()}, sort_keys=True, default=str)
    return "cfg-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def guess_kind(image: str | None) -> Kind:
    """A datastore or cache by its image's name (``postgres:16``, ``redis:7``), else a
    service. The ``kind`` label overrides it."""
    repo = (image or "").partition("@")[0].rsplit("/", 1)[-1].split(":")[0]
    if _DATASTORE_IMAGES.search(repo):
        return "datastore"
    if _CACHE_IMAGES.search(repo):
        return "cache"
    return "service"


def is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def component(raw_name: str, labels: Mapping[str, str], *, replicas: int, image: str | None,
              config_data: Mapping[str, Any] | None, calls: Iterable[str] | None,
              where: str, warnings: list[str]) -> LiveComponent | None:
    """One component from what a source found and its ``shadowrl`` labels (already without
    prefix, :func:`shadowrl_labels`); None when labelled ``ignore``.

    Precedence: a label wins; then what the source knows (``calls`` from ``depends_on``);
    the version falls back to the image tag, the config identity to a hash of
    ``config_data``."""
    if is_true(labels.get("ignore")):
        return None
    name = component_name(labels.get("name") or raw_name, where, warnings)
    kind_text = (labels.get("kind") or "").strip().lower()
    if kind_text and kind_text not in KINDS:
        raise SourceError(f"{where}: kind: must be one of {', '.join(KINDS)}, got "
                          f"{labels['kind']!r}")
    kind: Kind = kind_text if kind_text else guess_kind(image)  # type: ignore[assignment]
    declared_calls = labels.get("calls")
    call_names = (name_list(declared_calls, f"{where}: calls", warnings)
                  if declared_calls is not None
                  else tuple(component_name(c, f"{where}: calls", warnings) for c in calls)
                  if calls is not None else None)
    flags = labels.get("flags")
    return LiveComponent(
        name=name, kind=kind, replicas=replicas, image=image,
        version=_text(labels.get("version")) or image_tag(image),
        previous_version=_text(labels.get("previous-version")),
        config=_text(labels.get("config")) or config_identity(config_data or {}),
        previous_config=_text(labels.get("previous-config")),
        flags=name_list(flags, f"{where}: flags", warnings) if flags is not None else None,
        calls=call_names, edge=is_true(labels.get("edge")), origin=where)


def _text(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def deployment(source: str, components: Iterable[LiveComponent],
               warnings: list[str]) -> LiveDeployment:
    """The live deployment from a source's components (in the source's order): names
    unique, calls to components that are not there dropped (with a warning), a datastore
    or cache calling nothing, and the edge chosen: the one labelled ``edge``, else the
    first service no other service calls. The edge comes first."""
    comps = list(components)
    seen: dict[str, LiveComponent] = {}
    for c in comps:
        if c.name in seen:
            raise SourceError(f"{c.origin}: component {c.name!r} is also {seen[c.name].origin} "
                              f"(give one a shadowrl.name label)")
        seen[c.name] = c
    fixed: list[LiveComponent] = []
    for c in comps:
        if c.calls is not None:
            known = tuple(n for n in c.calls if n in seen and n != c.name)
            for n in c.calls:
                if n not in known:
                    warnings.append(f"{c.origin}: calls {n!r}, which is not in the live "
                                    f"deployment: left out")
            if c.kind != "service" and known:
                warnings.append(f"{c.origin}: a {c.kind} calls nothing: its calls are left out")
                known = ()
            c = replace(c, calls=known)
        if c.kind != "service" and (c.edge or c.flags):
            c = replace(c, edge=False, flags=None)
        fixed.append(c)
    services = [c for c in fixed if c.kind == "service"]
    if not services:
        raise SourceError(f"{source}: no service found (only datastores or caches); a "
                          f"scenario needs at least one service")
    edges = [c for c in services if c.edge]
    if len(edges) > 1:
        raise SourceError(f"{source}: several services are labelled edge: "
                          f"{', '.join(c.name for c in edges)} (at most one)")
    if not edges:
        called = {n for c in services for n in (c.calls or ())}
        roots = [c for c in services if c.name not in called] or services
        edge = roots[0]
        fixed = [replace(c, edge=True) if c is edge else c for c in fixed]
    edge_first = sorted(fixed, key=lambda c: (not c.edge, c.kind != "service"))
    return LiveDeployment(source, tuple(edge_first), tuple(warnings))

"""Write a live deployment into a scenario file: update ``deployment:`` in place, keep the
rest as written.

The file is edited round-trip (``ruamel.yaml``): comments, key order, flow style and
indentation stay, and only the keys the live side knows change: each service's
``replicas``, ``version``, ``config``, and its ``flags`` and ``calls`` where the live side
declares them. What only a person knows (``capacity_rps``, ``latency``, ``startup``,
``inflight_time``, ``max_surge``, the SLO, incidents, procedure) is never touched. A new
version moves the old live one to ``previous`` (what a rollback returns to). New components
get defaults, each marked with a comment to review; components gone from the live side are
kept (drift reports them): their incidents and steps are the user's to remove.

A scenario written from scratch also gets a starter SLO, one bad-release incident per
service the edge reaches and a procedure rolling them back, marked as starters, so it
validates and rehearses at once.
"""

from __future__ import annotations

import io
import re
from typing import Any

import yaml

from shadowrl.core.spec import MAX_NAME_LENGTH
from shadowrl.live.sync.drift import IMAGE_ANNOTATION
from shadowrl.live.sync.model import LiveComponent, LiveDeployment, SourceError

SYNCED_FROM = "shadowrl.io/synced-from"
SYNCED_AT = "shadowrl.io/synced-at"
DEFAULT_CAPACITY_RPS = 100  # per replica
DEFAULT_CAPACITY_QPS = 1000
DEFAULT_HIT_RATIO = 0.8
STARTER_UTILISATION = 0.5  # the starter traffic: half the smallest reached service's capacity
REVIEW = "default: review"


def _ruamel() -> Any:
    try:
        from ruamel.yaml import YAML
    except ImportError as exc:
        from shadowrl.core.extras import missing_extra
        raise missing_extra("live", exc) from exc
    return YAML


def _indents(text: str) -> tuple[int, int, int]:
    """The file's (mapping, sequence, offset) indentation, as ruamel.yaml takes it, read
    from its first nested mapping and its first block sequence; (2, 4, 2) by default (the
    shipped scenarios' style: ``services:`` then ``    - name: web``)."""
    mapping, offset = 2, 2
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    found_map = found_seq = False
    for before, line in zip(lines, lines[1:]):
        key = re.match(r"^( *)[^\s-][^:]*:\s*(#.*)?$", before)
        if key is None:
            continue
        base = len(key.group(1))
        indent = len(line) - len(line.lstrip(" "))
        if line.lstrip().startswith("- ") and not found_seq:
            offset, found_seq = max(0, indent - base), True
        elif not line.lstrip().startswith("- ") and not found_map and indent > base:
            mapping, found_map = indent - base, True
    return mapping, offset + 2, offset


def _yaml(text: str = "") -> Any:
    yaml_rt = _ruamel()(typ="rt")
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096
    mapping, sequence, offset = _indents(text)
    yaml_rt.indent(mapping=mapping, sequence=sequence, offset=offset)
    return yaml_rt


def _value(text: str) -> Any:
    """A label value as the scenario should hold it: an integer when it is one (``42``),
    else a string, quoted where the scenario loader (YAML 1.1) would read it as something
    else (``on``, ``1.10``, ``2024-01-01``)."""
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    if re.fullmatch(r"[1-9][0-9]{0,17}|0", text):
        return int(text)
    try:
        plain = yaml.safe_load(text)
    except yaml.YAMLError:
        plain = None
    return text if isinstance(plain, str) and plain == text else DoubleQuotedScalarString(text)


def _flow_map(**items: Any) -> Any:
    from ruamel.yaml.comments import CommentedMap

    node = CommentedMap(items)
    node.fa.set_flow_style()
    return node


def _flow_seq(items: list[Any]) -> Any:
    from ruamel.yaml.comments import CommentedSeq

    node = CommentedSeq(items)
    node.fa.set_flow_style()
    return node


def placeholder(live: str) -> str:
    """The ``previous`` of a version or config seen for the first time, when no label names
    it: distinct from ``live`` (the Docker shadow tells replicas apart by it, so a rollback
    to the same name would change nothing), and marked as a placeholder."""
    return f"before-{live}"


def _set_versioned(node: Any, key: str, live: str | None, previous: str | None) -> None:
    """``node[key]`` = ``{live, previous}`` for a live value: a new live value moves the
    old one to ``previous`` (unless the live side declares the previous one)."""
    if live is None:
        return
    current = node.get(key)
    if current is None or not hasattr(current, "get"):
        node[key] = _flow_map(live=_value(live), previous=_value(previous or placeholder(live)))
        if previous is None:
            node.yaml_add_eol_comment("previous unknown yet: a placeholder", key)
        return
    if str(current.get("live")) != live:
        current["previous"] = _value(previous) if previous else current.get("live")
        current["live"] = _value(live)
    elif previous is not None and str(current.get("previous")) != previous:
        current["previous"] = _value(previous)


def _set_list(node: Any, key: str, values: tuple[str, ...] | None) -> None:
    if values is None:
        return
    current = node.get(key)
    if current is None and not values:
        return
    if current is None or sorted(str(v) for v in current) != sorted(values):
        node[key] = _flow_seq(list(values))


def _update_service(node: Any, comp: LiveComponent) -> None:
    if node.get("replicas") != comp.replicas:
        node["replicas"] = comp.replicas
    _set_versioned(node, "version", comp.version, comp.previous_version)
    _set_versioned(node, "config", comp.config, comp.previous_config)
    _set_list(node, "flags", comp.flags)
    _set_list(node, "calls", comp.calls)


def _new_service(comp: LiveComponent, *, edge: bool) -> Any:
    from ruamel.yaml.comments import CommentedMap

    node = CommentedMap()
    node["name"] = comp.name
    if edge:
        node["edge"] = True
    node["replicas"] = comp.replicas
    node["capacity_rps"] = DEFAULT_CAPACITY_RPS
    node.yaml_add_eol_comment(f"{REVIEW} (so are latency, startup, inflight_time)",
                              "capacity_rps")
    if comp.calls:
        node["calls"] = _flow_seq(list(comp.calls))
    _set_versioned(node, "version", comp.version, comp.previous_version)
    _set_versioned(node, "config", comp.config, comp.previous_config)
    if comp.flags:
        node["flags"] = _flow_seq(list(comp.flags))
    return node


def _new_store(comp: LiveComponent) -> Any:
    from ruamel.yaml.comments import CommentedMap

    node = CommentedMap()
    node["name"] = comp.name
    if comp.kind == "datastore":
        node["capacity_qps"] = DEFAULT_CAPACITY_QPS
        node.yaml_add_eol_comment(REVIEW, "capacity_qps")
    else:
        node["hit_ratio"] = DEFAULT_HIT_RATIO
        node.yaml_add_eol_comment(REVIEW, "hit_ratio")
    return node


def _annotate(data: Any, live: LiveDeployment, synced_at: str) -> None:
    from ruamel.yaml.comments import CommentedMap

    metadata = data.get("metadata")
    if metadata is None:
        return
    notes = metadata.get("annotations")
    trailing = last_key = None
    if notes is None:
        # what followed the last key (a blank line before the next section) follows ours
        last = list(metadata)[-1] if len(metadata) else None
        entry = metadata.ca.items.get(last) if last is not None else None
        if entry is not None and len(entry) > 2 and entry[2] is not None:
            trailing, entry[2], last_key = entry[2], None, last
        notes = metadata["annotations"] = CommentedMap()
    notes[SYNCED_FROM] = live.source
    notes[SYNCED_AT] = synced_at
    for comp in live.components:
        if comp.image:
            notes[IMAGE_ANNOTATION + comp.name] = comp.image
    if trailing is not None:
        # after a block scalar the token's newline was the blank line; after ours, a plain
        # scalar, the first newline ends the line
        from ruamel.yaml.error import CommentMark
        from ruamel.yaml.tokens import CommentToken

        block = type(metadata.get(last_key)).__name__ in ("FoldedScalarString",
                                                          "LiteralScalarString")
        token = CommentToken(("\n" if block else "") + trailing.value, CommentMark(0), None)
        notes.ca.items[list(notes)[-1]] = [None, None, token, None]


def _section(node: Any, key: str) -> Any:
    from ruamel.yaml.comments import CommentedSeq

    if node.get(key) is None:
        node[key] = CommentedSeq()
    return node[key]


def merge_text(text: str, live: LiveDeployment, *, synced_at: str) -> str:
    """``text`` (a scenario file) with its ``deployment:`` brought to ``live``; everything
    else as it was. Raises :class:`SourceError` when ``text`` has no deployment to update."""
    yaml_rt = _yaml(text)
    data = yaml_rt.load(text)
    deployment = data.get("deployment") if hasattr(data, "get") else None
    if deployment is None or not hasattr(deployment.get("services"), "append"):
        raise SourceError("the scenario has no deployment.services list to update")
    services = deployment["services"]
    known: dict[str, tuple[str, Any]] = {}
    for kind, key in (("service", "services"), ("datastore", "datastores"),
                      ("cache", "caches")):
        for node in deployment.get(key) or []:
            if hasattr(node, "get") and node.get("name") is not None:
                known[str(node["name"])] = (kind, node)
    for comp in live.components:
        kind, node = known.get(comp.name, (None, None))
        if kind is None:
            if comp.kind == "service":
                services.append(_new_service(comp, edge=False))
            else:
                _section(deployment, f"{comp.kind}s" if comp.kind == "datastore"
                         else "caches").append(_new_store(comp))
        elif kind == comp.kind == "service":
            _update_service(node, comp)
    _annotate(data, live, synced_at)
    out = io.StringIO()
    yaml_rt.dump(data, out)
    return out.getvalue()


# --------------------------------------------------------------------------- new scenario


def _reached(live: LiveDeployment) -> list[LiveComponent]:
    """The services the edge's requests reach, edge first (breadth first)."""
    services = {c.name: c for c in live.of_kind("service")}
    edge = live.edge or next(iter(services.values()))
    order, queue = [edge.name], [edge.name]
    while queue:
        for callee in services[queue.pop(0)].calls or ():
            if callee in services and callee not in order:
                order.append(callee)
                queue.append(callee)
    return [services[n] for n in order]


def _short(prefix: str, name: str, suffix: str) -> str:
    room = MAX_NAME_LENGTH - len(prefix) - len(suffix)
    return f"{prefix}{name[:room].rstrip('-')}{suffix}"


def new_scenario_text(live: LiveDeployment, name: str, *, synced_at: str) -> str:
    """A whole scenario for ``live``: its deployment, plus a starter SLO, incidents and
    procedure (marked as such) so that it validates and rehearses as written."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    reached = [c for c in _reached(live) if c.version is not None]
    if not reached:
        raise SourceError(f"{live.source}: the edge service has no version (no image tag "
                          f"and no shadowrl.version label): nothing to roll back")
    top = CommentedMap()
    top["apiVersion"] = "shadowrl/v1"
    top["kind"] = "Scenario"
    metadata = top["metadata"] = CommentedMap()
    metadata["name"] = name
    metadata["description"] = f"Synced from {live.source} by shadowrl sync."
    deployment = top["deployment"] = CommentedMap()
    smallest = min(c.replicas for c in _reached(live)) * DEFAULT_CAPACITY_RPS
    rps = smallest * STARTER_UTILISATION
    deployment["traffic"] = CommentedMap(rps=int(rps) if float(rps).is_integer() else rps)
    deployment["traffic"].yaml_add_eol_comment(
        f"{REVIEW}: half the smallest reached service's capacity", "rps")
    services = deployment["services"] = CommentedSeq()
    for comp in live.of_kind("service"):
        services.append(_new_service(comp, edge=comp.edge))
    for kind, key in (("datastore", "datastores"), ("cache", "caches")):
        stores = live.of_kind(kind)  # type: ignore[arg-type]
        if stores:
            deployment[key] = CommentedSeq(_new_store(c) for c in stores)
    top["slo"] = CommentedMap(rules=CommentedSeq([
        _flow_map(name="edge-errors", metric="error_rate", scope="edge", above=0.01,
                  **{"for": "30s"}),
        _flow_map(name="edge-latency", metric="latency_p99_ms", scope="edge", above=1000,
                  **{"for": "1m"}),
    ]))
    top["incidents"] = CommentedSeq(CommentedMap(
        name=_short("bad-", c.name, "-release"),
        cause=_flow_map(kind="version", target=c.name),
        effects=CommentedSeq([_flow_map(metric="error_rate", target=c.name, add=0.05,
                                        ramp="30s")]),
    ) for c in reached)
    top["procedure"] = CommentedMap(
        name=_short("", name, "-rollback"),
        steps=CommentedSeq(_flow_map(name=_short("rollback-", c.name, ""),
                                     action="rollback_version", target=c.name)
                           for c in reached),
        verify=_flow_map(hold="2m", timeout="30m"),
    )
    top.yaml_set_start_comment(
        f"Written by `shadowrl sync` from {live.source} ({synced_at}).\n"
        f"deployment: read from the live deployment; `shadowrl sync` updates it. Values\n"
        f"marked '{REVIEW}' are guesses: measure and replace them.")
    starter = ("a STARTER to edit: written once so the scenario validates and rehearses; "
               "sync never changes it")
    for key in ("slo", "incidents", "procedure"):
        top.yaml_set_comment_before_after_key(key, before=f"{key}: {starter}")
    _annotate(top, live, synced_at)
    yaml_rt = _yaml()
    out = io.StringIO()
    yaml_rt.dump(top, out)
    return out.getvalue()

"""Use case ``sync``: read a live deployment and write it into a scenario's ``deployment:``
(docs/sync.md).

One sync reads the source, compares it with the scenario (drift) and, unless ``check``,
writes the scenario (atomically) when something changed: a new file gets the whole
scenario with starter SLO, incidents and procedure; an existing one only its deployment
(``shadowrl.live.sync.merge``). ``watch`` repeats that every ``interval`` seconds, and with
``shadow`` keeps a Docker shadow of the scenario running and rolls it to each new live
version or config.

Sources (``SOURCE``): ``docker:PROJECT`` (the running containers of a compose project),
``compose:FILE``, ``k8s:FILE_OR_DIR`` (manifests) and ``k8s-cluster:`` (a cluster, through
``--kubeconfig``, ``--context``, ``--namespace``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from shadowrl.analysis.summary import ResultModel
from shadowrl.app.common import LogFn
from shadowrl.app.errors import UsageError
from shadowrl.core.atomic import atomic_write_text
from shadowrl.core.spec import SpecError, load_scenario, load_yaml, scenario_from_data
from shadowrl.live.sync.drift import Change, compare, is_removal
from shadowrl.live.sync.merge import merge_text, new_scenario_text
from shadowrl.live.sync.model import LiveDeployment, SourceError, component_name

SOURCE_KINDS = ("docker", "compose", "k8s", "k8s-cluster")
DEFAULT_INTERVAL_S = 5.0


class SyncRequest(BaseModel):
    source: str
    scenario: Path
    check: bool = False
    watch: bool = False
    interval: float | None = Field(default=None, gt=0)  # only with watch (default 5 s)
    shadow: bool = False  # only with watch: keep a Docker shadow following the live side
    batch: int = Field(default=1, ge=1)  # replicas the shadow rolls at a time
    kubeconfig: Path | None = None  # only with k8s-cluster:
    context: str | None = None
    namespace: str | None = None  # k8s and k8s-cluster
    name: str | None = None  # metadata.name of a new scenario (default: from the source)
    seed: int = 0  # the shadow's launch seed


class DriftChange(ResultModel):
    component: str
    field: str
    scenario: Any
    live: Any
    note: str = ""
    text: str


class SyncResult(ResultModel):
    source: str
    scenario: str
    status: Literal["in_sync", "drift", "updated", "created"]
    written: bool
    changes: list[DriftChange]
    warnings: list[str]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def check_request(request: SyncRequest) -> None:
    """UsageError naming the flag for a combination that cannot run."""
    if request.check and request.watch:
        raise UsageError("--check and --watch: choose one (--check compares once, for CI)")
    if not request.watch and request.interval is not None:
        raise UsageError("--interval: only with --watch")
    if request.shadow and not request.watch:
        raise UsageError("--shadow: only with --watch (it keeps a shadow following the live "
                         "deployment)")
    kind = request.source.partition(":")[0]
    if kind != "k8s-cluster" and (request.kubeconfig or request.context):
        raise UsageError("--kubeconfig/--context: only with a k8s-cluster: source")
    if request.namespace is not None and kind not in ("k8s", "k8s-cluster"):
        raise UsageError("--namespace: only with a k8s: or k8s-cluster: source")
    if request.name is not None:
        try:
            component_name(request.name, "--name")
        except SourceError as exc:
            raise UsageError(str(exc)) from None


def reader(request: SyncRequest) -> Callable[[], LiveDeployment]:
    """A function reading the live deployment ``request.source`` names, each call anew.
    UsageError for a SOURCE that names no known kind of source."""
    kind, sep, rest = request.source.partition(":")
    if not sep or kind not in SOURCE_KINDS or (not rest and kind != "k8s-cluster"):
        raise UsageError(f"SOURCE: expected docker:PROJECT, compose:FILE, k8s:FILE_OR_DIR or "
                         f"k8s-cluster:, got {request.source!r}")
    if kind == "docker":
        from shadowrl.live.sync.docker_source import read_docker
        return lambda: read_docker(rest)
    if kind == "compose":
        from shadowrl.live.sync.compose_source import read_compose
        return lambda: read_compose(Path(rest))
    if kind == "k8s":
        from shadowrl.live.sync.kube_source import read_manifests
        return lambda: read_manifests(Path(rest), request.namespace)
    from shadowrl.live.sync.kube_source import read_cluster
    if rest:
        raise UsageError("SOURCE: k8s-cluster: takes no value; use --kubeconfig, --context "
                         "and --namespace")
    return lambda: read_cluster(request.kubeconfig, request.context, request.namespace)


def read_live(read: Callable[[], LiveDeployment]) -> LiveDeployment:
    try:
        return read()
    except SourceError as exc:
        raise UsageError(str(exc)) from None


def default_name(request: SyncRequest) -> str:
    """metadata.name of a new scenario: ``--name``, else the scenario file's stem."""
    raw = request.name or request.scenario.stem
    try:
        return component_name(raw, "--name")
    except SourceError:
        return "synced"


def _validated(text: str, path: Path) -> None:
    """The text would load as a scenario; UsageError otherwise, nothing is written."""
    try:
        data, lines = load_yaml(text.encode("utf-8"), str(path))
        scenario_from_data(data, str(path), lines)
    except SpecError as exc:
        problems = "\n".join(f"  {p.path or 'file'}: {p.message}" for p in exc.problems)
        raise UsageError(f"{path}: not written: the synced scenario would not validate "
                         f"(edit what refers to what the live deployment changed):\n"
                         f"{problems}") from None


def _result(request: SyncRequest, live: LiveDeployment, status: str, written: bool,
            changes: list[Change]) -> SyncResult:
    return SyncResult(source=live.source, scenario=str(request.scenario),
                      status=status, written=written,  # type: ignore[arg-type]
                      changes=[DriftChange(**c.as_dict(), text=c.text()) for c in changes],
                      warnings=list(live.warnings))


def apply(request: SyncRequest, live: LiveDeployment) -> SyncResult:
    """Compare ``live`` with the scenario and, unless ``check``, write what changed."""
    path = request.scenario
    if not path.exists():
        if request.check:
            raise UsageError(f"--check: {path} does not exist (run sync without --check to "
                             f"write it)")
        try:
            text = new_scenario_text(live, default_name(request), synced_at=_now())
        except SourceError as exc:
            raise UsageError(str(exc)) from None
        _validated(text, path)
        atomic_write_text(path, text)
        added = [Change(c.name, "component", None, c.kind) for c in live.components]
        return _result(request, live, "created", True, added)
    scenario = load_scenario(path)
    changes = compare(scenario, live)
    applicable = [c for c in changes if not is_removal(c)]
    if request.check or not applicable:
        return _result(request, live, "drift" if changes else "in_sync", False, changes)
    try:
        text = merge_text(path.read_text(encoding="utf-8"), live, synced_at=_now())
    except SourceError as exc:
        raise UsageError(f"{path}: {exc}") from None
    _validated(text, path)
    atomic_write_text(path, text)
    return _result(request, live, "updated", True, changes)


def sync(request: SyncRequest) -> SyncResult:
    """One sync. Raises UsageError (bad flags or source), SpecError (a bad scenario file),
    BackendUnavailable (no Docker daemon for a docker: source)."""
    check_request(request)
    read = reader(request)
    if request.watch:
        raise UsageError("--watch: use watch()")
    return apply(request, read_live(read))


def watch(request: SyncRequest, *, on_log: LogFn, stop: threading.Event | None = None,
          on_shadow: Callable[[Any], None] | None = None) -> SyncResult:
    """Sync, then follow the live deployment until ``stop`` is set (or Ctrl-C / SIGTERM),
    logging each change; with ``shadow``, a Docker shadow of the scenario runs meanwhile and
    rolls to each new live version or config (``on_shadow`` gets it once launched). The
    shadow is removed on the way out. Returns the first sync's result."""
    from shadowrl.live.sync.watch import follow, roll_shadow

    check_request(request)
    read = reader(request)
    live = read_live(read)
    first = apply(request, live)
    on_log(f"synced {request.scenario} from {live.source}: {first.status.replace('_', ' ')}")
    for warning in first.warnings:
        on_log(f"warning: {warning}")
    stop = stop or threading.Event()
    interval = request.interval or DEFAULT_INTERVAL_S

    def sync_changes(new: LiveDeployment) -> list[Change]:
        result = apply(request, new)
        if result.written:
            on_log(f"{request.scenario}: updated")
        return [Change(c.component, c.field, c.scenario, c.live, c.note) for c in result.changes]

    def loop(on_change: Callable[[list[Change], LiveDeployment], None] | None) -> None:
        on_log(f"watching {live.source} every {interval:g}s (Ctrl-C to stop)")
        follow(read, _logged(sync_changes), interval=interval, stop=stop, log=on_log,
               on_change=on_change, last=live)

    if not request.shadow:
        loop(None)
        return first
    from shadowrl.shadow.docker.backend import DockerShadow

    with DockerShadow(load_scenario(request.scenario),
                      on_progress=lambda m: on_log(f"docker shadow: {m}")) as shadow:
        shadow.launch(request.seed)
        if on_shadow is not None:
            on_shadow(shadow)
        loop(lambda changes, new: roll_shadow(shadow, changes, new, on_log,
                                              batch=request.batch))
    return first


def _logged(fn: Callable[[LiveDeployment], list[Change]]
            ) -> Callable[[LiveDeployment], list[Change]]:
    """``fn`` with its input errors as the watch reports them (one line, and on)."""
    def run(live: LiveDeployment) -> list[Change]:
        try:
            return fn(live)
        except (UsageError, SpecError) as exc:
            raise SourceError(str(exc)) from None
    return run


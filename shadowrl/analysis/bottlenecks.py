"""Bottleneck analysis: which steps cost the downtime, why, and what to change.

:func:`analyze` reads a set of rehearsals of one procedure and answers three questions:

1. **Where** does the time go? Per step, the mean share of each run's downtime, failed
   requests and rollback time (from :func:`shadowrl.analysis.profile.attribution`), plus ``verify``
   for what is left after the last step.
2. **Why**? Each step span's downtime and failed requests are split among causes from its
   ``errors_by_source`` (always present) and a small capacity model of the scenario:

   ============================  =====================================================
   ``capacity_loss``             a ``rollback_version``/``revert_config`` batch takes out
                                 so much capacity that its target overloads (shedding, or
                                 queueing that raises its p99 by half, by the simulator's
                                 M/M/c model) during the step
   ``slow_step``                 a step that dominates rollback time while the SLO is
                                 violated (batch 1 on many replicas, long startup, an
                                 online migration, a long wait)
   ``compatibility_window``      app/schema mismatch errors between a version rollback and
                                 the ``migrate_down`` that matches it (order, distance)
   ``cold_cache``                overload/latency on a datastore behind a cache after
                                 ``flush_cache`` or while it warms
   ``write_lock``                writes failing during an offline ``migrate_down``
   ``dropped_requests``          in-flight requests dropped by a drain shorter than the
                                 service's ``inflight_time``
   ``overload``                  shedding none of the above explains (load above capacity,
                                 an online migration's extra datastore load)
   ``failed_step``               a step that failed; the rest of the run is charged to it
   ``ineffective``               the SLO was never restored and the incident's own errors
                                 remained: its cause may be outside what the steps revert
   ============================  =====================================================

   Downtime of a span is split in proportion to the failed requests of each source; when
   the span's error rate is below the SLO's error threshold, the unexplained part of the
   downtime is latency and goes to the span's latency cause (``capacity_loss`` when a
   batch's queueing inflates its target's p99, ``cold_cache`` in a cold window), else to
   the incident itself (counted as ``slow_step`` for a dominating step, ``ineffective`` in
   a run that never recovered, and otherwise left unattributed: the incident lasting until
   the step that reverts it).
   When a rehearsal carries a per-second profile, it adds utilisation and latency evidence
   (max cpu of the target during the step, max edge p99).
3. **What to change**? Every finding carries a plain-language ``suggestion`` that names
   values among the step's ``settings`` choices when some exist (a batch, surge and scale
   that keep utilisation under 0.8, a drain >= ``inflight_time``, ``online: false``, running a
   step earlier or skipping an optional one), and the same change as a :class:`Proposal`
   (settings per step, steps to skip, steps to run earlier) that a program can apply to a
   plan: the optimizer measures each before it lets the advice stand beside its procedure.

Findings are ranked by share of downtime, then of failed requests.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shadowrl.analysis.profile import attribution
from shadowrl.core.plan import after_closure, ordered_steps, setting_value_text
from shadowrl.core.results import STOPPED_STATUSES
from shadowrl.core.spec import Procedure, Scenario, Service, Step, format_duration
from shadowrl.rehearsal.runner import Rehearsal
from shadowrl.shadow.sim.params import SimParams, params_of
from shadowrl.shadow.sim.topology import (
    LN100,
    compile_topology,
    edge_factors,
    load_flow,
    online_capacity,
    rollout_s,
    sojourn,
    unavailable,
    warming_s,
)

KINDS = ("capacity_loss", "slow_step", "compatibility_window", "cold_cache", "write_lock",
         "dropped_requests", "overload", "failed_step", "ineffective")

TARGET_UTIL = 0.8  # utilisation a rollback batch should stay under (headroom for load peaks)
# a batch whose queueing raises its target's p99 by this factor (the simulator's M/M/c model,
# topology.sojourn) explains latency downtime as capacity loss
LATENCY_INFLATION = 1.5
MIN_SOURCE_SHARE = 1e-4  # failed share of a span's requests that counts as an error source
SLOW_SHARE = 0.3  # share of rollback time from which a step "dominates"
SLOW_VIOLATED = 0.5  # share of the step's time the SLO must be violated to call it slow
MIN_FINDING_SHARE = 0.001  # findings below this share of downtime and failures are dropped
LOAD_MARGIN = 1.05  # peak load over a step's mean (per-minute traffic noise)
EPS = 1e-9

Key = tuple[str, str | None]  # (kind, step)


# --------------------------------------------------------------------------- report


@dataclass
class StepShare:
    """One step's mean cost over the runs (0 in runs where it was skipped)."""

    name: str
    action: str
    runs: int  # runs in which the step ran
    mean_duration_s: float  # over the runs in which it ran
    mean_downtime_s: float
    downtime_share: float
    failed_share: float
    rollback_share: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "action": self.action, "runs": self.runs,
                "mean_duration_s": round(self.mean_duration_s, 3),
                "mean_downtime_s": round(self.mean_downtime_s, 3),
                "downtime_share": round(self.downtime_share, 4),
                "failed_share": round(self.failed_share, 4),
                "rollback_share": round(self.rollback_share, 4)}


@dataclass
class Proposal:
    """What a suggestion asks to change, in a form a program can apply to a plan and measure
    (the optimizer does, so advice beside an optimized procedure never contradicts it
    unchecked): settings per step (only those to change), optional steps to skip, and
    ``(first, second)`` pairs: run ``first`` before ``second``."""

    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    skip: list[str] = field(default_factory=list)
    before: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.settings or self.skip or self.before)

    def set(self, step: str, values: dict[str, Any]) -> None:
        if values:
            self.settings.setdefault(step, {}).update(values)

    def to_json(self) -> dict[str, Any]:
        return {"settings": _jsonable(self.settings), "skip": list(self.skip),
                "before": [list(p) for p in self.before]}


@dataclass
class Bottleneck:
    """One finding: a cause, the step to blame (None: no step), its cost, a suggestion and
    the change it proposes (empty when it proposes none a plan can express)."""

    kind: str
    step: str | None
    share_of_downtime: float
    share_of_failed_requests: float
    runs_affected: int
    runs_total: int
    evidence: dict[str, Any] = field(default_factory=dict)
    suggestion: str = ""
    proposal: Proposal = field(default_factory=Proposal)

    @property
    def runs_fraction(self) -> float:
        return self.runs_affected / self.runs_total if self.runs_total else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step,
                "share_of_downtime": round(self.share_of_downtime, 4),
                "share_of_failed_requests": round(self.share_of_failed_requests, 4),
                "runs_affected": {"count": self.runs_affected,
                                  "fraction": round(self.runs_fraction, 4)},
                "evidence": _jsonable(self.evidence),
                "suggestion": self.suggestion,
                "proposal": self.proposal.to_json()}


@dataclass
class BottleneckReport:
    scenario: str
    procedure: str
    runs: int
    mean_downtime_s: float
    mean_failed_requests: float
    steps: list[StepShare]
    findings: list[Bottleneck]
    unattributed_downtime_share: float = 0.0
    unattributed_failed_share: float = 0.0

    @property
    def top(self) -> Bottleneck | None:
        return self.findings[0] if self.findings else None

    def by_kind(self, kind: str) -> list[Bottleneck]:
        return [f for f in self.findings if f.kind == kind]

    def to_json(self) -> dict[str, Any]:
        """The ``bottlenecks.json`` document (stable keys)."""
        return {"scenario": self.scenario, "procedure": self.procedure, "runs": self.runs,
                "mean_downtime_s": round(self.mean_downtime_s, 3),
                "mean_failed_requests": round(self.mean_failed_requests, 3),
                "steps": [s.to_json() for s in self.steps],
                "findings": [f.to_json() for f in self.findings],
                "unattributed": {
                    "share_of_downtime": round(self.unattributed_downtime_share, 4),
                    "share_of_failed_requests": round(self.unattributed_failed_share, 4)}}

    def to_markdown(self) -> str:
        lines = [f"## Bottlenecks: {self.procedure} ({self.runs} runs of {self.scenario})", "",
                 f"Mean downtime {self.mean_downtime_s:.0f}s, mean failed requests "
                 f"{self.mean_failed_requests:.0f}.", "",
                 "| step | runs | mean duration | share of downtime | share of failed requests "
                 "| share of rollback time |",
                 "|---|---:|---:|---:|---:|---:|"]
        for s in self.steps:
            lines.append(f"| `{s.name}` | {s.runs} | {s.mean_duration_s:.0f}s | "
                         f"{_pct(s.downtime_share)} | {_pct(s.failed_share)} | "
                         f"{_pct(s.rollback_share)} |")
        lines.append("")
        if not self.findings:
            lines.append("No bottlenecks found.")
        else:
            lines.append("Findings, by share of downtime:")
            lines.append("")
            for f in self.findings:
                where = f" at `{f.step}`" if f.step else ""
                lines.append(f"- **{f.kind}**{where}: {_pct(f.share_of_downtime)} of "
                             f"downtime, {_pct(f.share_of_failed_requests)} of failed requests, "
                             f"{f.runs_affected}/{f.runs_total} runs. {f.suggestion}")
        return "\n".join(lines) + "\n"


def _pct(share: float) -> str:
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"


# --------------------------------------------------------------------------- capacity model


class _Model:
    """The scenario's static capacity picture: who gets how much of the edge load, by the
    simulator's own topology and physics (so a calibrated simulator and its advice agree)."""

    def __init__(self, sc: Scenario, proc: Procedure, params: SimParams) -> None:
        dep = sc.deployment
        self.sc = sc
        self.proc = proc
        self.params = params
        self.topo = compile_topology(sc)
        self.services = {s.name: s for s in dep.services}
        self.datastores = {d.name: d for d in dep.datastores}
        self.caches = {c.name: c for c in dep.caches}
        self.steps = {s.name: s for s in proc.steps}
        self.deps = {s.name: after_closure(proc, s.name) for s in proc.steps}

    def _loads(self, edge_rps: float, warmth: dict[str, float] | None) -> list[float]:
        """Requests/s per component with every cache warm except as ``warmth`` says, and no
        shedding."""
        topo = self.topo
        levels = [1.0 if warmth is None else warmth.get(name, 1.0) for name in topo.names]
        return load_flow(topo, edge_rps, edge_factors(topo, levels))[0]

    def service_load(self, name: str, edge_rps: float) -> float:
        i = self.topo.index.get(name)
        if i is None or self.topo.kinds[i] != "service":
            return 0.0
        return self._loads(edge_rps, None)[i]

    def datastore_load(self, name: str, edge_rps: float, warmth: dict[str, float] | None = None
                       ) -> float:
        return self._loads(edge_rps, warmth)[self.topo.index[name]]

    def fronted(self, cache: str) -> list[str]:
        """Datastores behind ``cache``."""
        topo = self.topo
        i = topo.index.get(cache)
        return [topo.names[d] for d in topo.fronted(i)] if i is not None else []

    def callers(self, datastore: str) -> set[str]:
        """Services that call ``datastore`` directly."""
        topo = self.topo
        i = topo.index.get(datastore)
        return {topo.names[c] for c in topo.db_callers.get(i, [])} if i is not None else set()

    def scale_step_for(self, service: str) -> Step | None:
        return next((s for s in self.proc.steps if s.action == "scale" and s.target == service),
                    None)

    def can_precede(self, first: str, second: str) -> bool:
        """Can ``first`` run before ``second`` without breaking ``after``?"""
        return second not in self.deps.get(first, set())

    def choices(self, step: str, key: str) -> list[Any]:
        s = self.steps.get(step)
        if s is None:
            return []
        t = s.tunables().get(key)
        return list(t.choices) if t is not None else []


@dataclass
class _Rollout:
    replicas: int
    batch: int
    drain: float
    utilisation: float  # during a batch; inf when a batch takes every replica out
    time_s: float  # rollout estimate, including the scale-up's startup when it adds replicas
    surge: int = 0  # replacements started beside the old replicas (maxSurge)


def _rollouts(model: _Model, step: str, service: Service, load: float,
              current: tuple[int, int, float, int]) -> list[_Rollout]:
    """Every (replicas, batch, drain, surge) the procedure's choices (and the current
    settings) allow, fastest first, then fewest replicas and least surge (what they cost).
    ``current`` is (replicas before the step, batch, drain, surge)."""
    replicas, batch, drain, surge = current
    scale = model.scale_step_for(service.name)
    options = {replicas}
    if scale is not None and model.can_precede(scale.name, step):
        options |= {int(c) for c in scale.tunables()["replicas"].choices}
    batches = {int(b) for b in model.choices(step, "batch")} | {batch}
    drains = {float(d) for d in model.choices(step, "drain")} | {drain}
    surges = {int(x) for x in model.choices(step, "surge")} | {surge}
    good_drain = _best_drain(sorted(drains), service.inflight_time)
    out = []
    for r in sorted(options):
        for b in sorted(batches):
            for x in sorted(surges):
                d = good_drain if (r, b, x) != (replicas, batch, surge) else drain
                for dd in sorted({d, good_drain}):
                    out.append(_rollout(model.params, service, load, r, b, dd, replicas, x))
    out.sort(key=lambda o: (o.time_s, o.replicas, o.surge, o.utilisation))
    return out


def _rollout(params: SimParams, service: Service, load: float, replicas: int, batch: int,
             drain: float, current_replicas: int, surge: int = 0) -> _Rollout:
    """A rollout's estimate; a round leaves ``unavailable(batch, surge)`` replicas out of
    service (the rest of the round is covered by surge replicas)."""
    ready = replicas - min(unavailable(batch, surge), replicas)
    util = load / (ready * service.capacity_rps) if ready > 0 else math.inf
    t = rollout_s(replicas, batch, drain, service.startup, params, surge)
    if replicas > current_replicas:
        t += service.startup  # the scale-up before it
    return _Rollout(replicas, batch, drain, util, t, surge)


def _best_drain(choices: Sequence[Any], inflight: float) -> float:
    drains = sorted(float(c) for c in choices)
    enough = [d for d in drains if d >= inflight - EPS]
    return enough[0] if enough else drains[-1]


def _safe(rollouts: list[_Rollout]) -> _Rollout | None:
    return next((o for o in rollouts if o.utilisation <= TARGET_UTIL + EPS), None)


# --------------------------------------------------------------------------- one run


@dataclass
class _Unit:
    """One step span (or ``verify``) of one run, with what the capacity model says about it."""

    name: str
    action: str
    status: str
    settings: dict[str, Any]
    start_s: float
    end_s: float
    downtime_s: float
    failed: float
    requests: float
    errors: dict[str, float]
    replicas: dict[str, int]  # ready replicas per service when the step started
    edge_rps: float

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end_s - self.start_s)

    @property
    def is_step(self) -> bool:
        return self.action != "verify"


@dataclass
class _ColdWindow:
    flush: str
    cache: str
    start_s: float
    end_s: float
    warmed_by: str | None


class _Run:
    def __init__(self, model: _Model, r: Rehearsal) -> None:
        self.r = r
        self.model = model
        before = r.breach.before
        base_rps = (before.requests / (before.end_s - before.start_s)
                    if before and before.end_s > before.start_s and before.requests > 0
                    else model.sc.deployment.traffic.rps)
        replicas = {s.name: s.replicas for s in model.sc.deployment.services}
        self.units: list[_Unit] = []
        down = failed = 0.0
        errors: dict[str, float] = {}
        last_rps = base_rps
        for s in r.steps:
            if s.status == "skipped":
                continue
            sp = s.span
            dur = s.end_s - s.start_s
            rps = sp.requests / dur if dur > EPS and sp.requests > 0 else last_rps
            last_rps = rps
            self.units.append(_Unit(s.name, s.action, s.status, dict(s.settings), s.start_s,
                                    s.end_s, sp.downtime_s, sp.failed_requests, sp.requests,
                                    dict(sp.errors_by_source), dict(replicas), rps))
            down += sp.downtime_s
            failed += sp.failed_requests
            for k, v in sp.errors_by_source.items():
                errors[k] = errors.get(k, 0.0) + v
            if s.action == "scale" and s.status == "ok" and s.name in model.steps:
                replicas[model.steps[s.name].target or ""] = int(s.settings["replicas"])
        last_end = max((s.end_s for s in r.steps), default=r.breach.at_s)
        vdur = max(0.0, r.verify_end_s - last_end)
        self.units.append(_Unit(
            "verify", "verify", r.outcome, {}, last_end, r.verify_end_s,
            max(0.0, r.downtime_s - down), max(0.0, r.failed_requests - failed),
            vdur * last_rps, {k: max(0.0, v - errors.get(k, 0.0))
                              for k, v in r.errors_by_source.items()},
            dict(replicas), last_rps))
        self.cold = self._cold_windows()
        self.fixer = self._fixer()
        self.profile = _ProfileIndex(r.profile) if r.profile else None

    # -- derived facts

    def unit(self, name: str) -> _Unit | None:
        return next((u for u in self.units if u.name == name), None)

    def step_of(self, u: _Unit) -> Step | None:
        return self.model.steps.get(u.name)

    def target(self, u: _Unit) -> str | None:
        s = self.step_of(u)
        return s.target if s is not None else None

    def batch_utilisation(self, u: _Unit) -> tuple[float, int]:
        """Estimated utilisation of a rollback's target while one batch is out, and the
        replicas left ready."""
        svc = self.model.services.get(self.target(u) or "")
        if svc is None or u.action not in ("rollback_version", "revert_config"):
            return 0.0, 0
        r = u.replicas.get(svc.name, svc.replicas)
        ready = r - min(unavailable(int(u.settings.get("batch", 1)),
                                    int(u.settings.get("surge", 0))), r)
        load = self.model.service_load(svc.name, u.edge_rps)
        if ready <= 0:
            return (math.inf if load > 0 else 0.0), 0
        return load / (ready * svc.capacity_rps), ready

    def batch_inflation(self, u: _Unit) -> float:
        """How many times the queueing raises the rollback target's p99 while a batch is
        out (1: no waiting; inf: overloaded), by the simulator's M/M/c model."""
        util, ready = self.batch_utilisation(u)
        if util >= 1.0:
            return math.inf
        svc = self.model.services.get(self.target(u) or "")
        if svc is None or util <= 0.0:
            return 1.0
        topo = self.model.topo
        servers = round(ready * topo.concurrency[topo.index[svc.name]])
        return sojourn(servers, util)[2] / LN100

    def _cold_windows(self) -> list[_ColdWindow]:
        out = []
        steps = [u for u in self.units if u.is_step]
        for k, u in enumerate(steps):
            if u.action != "flush_cache" or u.status != "ok":
                continue
            cache = self.target(u) or ""
            if cache not in self.model.caches:
                continue
            warm = next((w for w in steps[k + 1:] if w.action == "warm_cache"
                         and self.target(w) == cache), None)
            natural_end = u.end_s + self.model.caches[cache].warmup
            end = min(natural_end, warm.end_s) if warm is not None else natural_end
            out.append(_ColdWindow(u.name, cache, u.start_s, end,
                                   warm.name if warm is not None else None))
        return out

    def cold_window(self, u: _Unit) -> _ColdWindow | None:
        return next((w for w in self.cold if u.start_s < w.end_s - EPS
                     and u.end_s > w.start_s + EPS), None)

    def _fixer(self) -> str | None:
        """The step that removed the incident's cause in this run (None: none did)."""
        inj = self.r.injection
        want = {"version": "rollback_version", "config": "revert_config",
                "schema": "migrate_down", "flag": "disable_flag"}.get(inj.cause_kind)
        for u in self.units:
            if not u.is_step or u.status != "ok":
                continue
            step = self.step_of(u)
            if step is None:
                continue
            if step.action == "command" and step.sim and inj.incident in step.sim.fixes:
                return u.name
            if want and step.action == want and step.target == inj.cause_target and (
                    want != "disable_flag" or u.settings.get("flag") == inj.cause_flag):
                return u.name
        return None

    def is_slow(self, u: _Unit) -> bool:
        total = self.r.rollback_s
        return (u.is_step and u.status == "ok" and total > 0
                and u.duration_s >= SLOW_SHARE * total
                and u.downtime_s >= SLOW_VIOLATED * u.duration_s)


class _ProfileIndex:
    """Max cpu / p99 per (step or phase, component) and a time series per component."""

    def __init__(self, p: dict[str, list[Any]]) -> None:
        self.by_step: dict[tuple[str, str], tuple[float, float]] = {}
        self.series: dict[str, list[tuple[float, float, float]]] = {}
        for t, comp, cpu, p99, step, phase in zip(p["t"], p["component"], p["cpu"],
                                                  p["latency_p99_ms"], p["step"], p["phase"]):
            key = (step if step is not None else phase, comp)
            old = self.by_step.get(key, (0.0, 0.0))
            self.by_step[key] = (max(old[0], cpu), max(old[1], p99))
            self.series.setdefault(comp, []).append((t, cpu, p99))

    def step_max(self, step: str, comp: str) -> tuple[float, float] | None:
        return self.by_step.get((step, comp))

    def window_max(self, comp: str, start: float, end: float) -> tuple[float, float] | None:
        rows = [(c, p) for t, c, p in self.series.get(comp, []) if start - EPS <= t < end]
        if not rows:
            return None
        return max(c for c, _ in rows), max(p for _, p in rows)


# --------------------------------------------------------------------------- classification


class _Ledger:
    """Per run: downtime and failed requests charged to each finding, and observations."""

    def __init__(self) -> None:
        self.down: dict[Key, float] = {}
        self.failed: dict[Key, float] = {}
        self.seen: set[Key] = set()

    def charge(self, key: Key | None, down: float, failed: float) -> None:
        if key is None:
            return
        self.down[key] = self.down.get(key, 0.0) + down
        self.failed[key] = self.failed.get(key, 0.0) + failed
        if down > EPS or failed >= 1.0:
            self.seen.add(key)


def _error_threshold(sc: Scenario) -> float | None:
    limits = [r.above for r in sc.slo.rules
              if r.metric == "error_rate" and r.scope == "edge" and r.above is not None]
    return min(limits) if limits else None


def _classify_run(run: _Run, threshold: float | None) -> _Ledger:
    ledger = _Ledger()
    failed_unit = next((u for u in run.units if u.status in STOPPED_STATUSES), None)
    for u in run.units:
        if failed_unit is not None and (u is failed_unit or not u.is_step):
            # the procedure stopped here: what follows is the failed step's cost
            ledger.charge(("failed_step", failed_unit.name), u.downtime_s, u.failed)
            ledger.seen.add(("failed_step", failed_unit.name))
            continue
        _classify_unit(run, u, threshold, ledger)
    if run.r.outcome == "rollback_ineffective":
        ledger.seen.add(("ineffective", None))
    return ledger


def _classify_unit(run: _Run, u: _Unit, threshold: float | None, ledger: _Ledger) -> None:
    requests = max(u.requests, EPS)
    sources = {k: v for k, v in u.errors.items()
               if v >= 1.0 and v / requests > MIN_SOURCE_SHARE}
    counted = sum(sources.values())
    latency_key = _latency_key(run, u)
    incident_key = _incident_key(run, u)
    keys = {src: _source_key(run, u, src, incident_key) for src in sources}
    if latency_key is None or counted <= 0:
        explained = 1.0 if counted > 0 else 0.0
    elif threshold is None or threshold <= 0:
        explained = 1.0
    else:
        explained = min(1.0, (u.failed / requests) / threshold)
    for src, value in sources.items():
        ledger.charge(keys[src], u.downtime_s * explained * value / counted, value)
    rest = u.downtime_s * (1.0 - explained)
    ledger.charge(latency_key if latency_key is not None else incident_key, rest, 0.0)


def _incident_key(run: _Run, u: _Unit) -> Key | None:
    if run.r.outcome == "rollback_ineffective" and (not u.is_step or run.fixer is None):
        return ("ineffective", None)
    if run.is_slow(u):
        return ("slow_step", u.name)
    return None


def _latency_key(run: _Run, u: _Unit) -> Key | None:
    if run.batch_inflation(u) >= LATENCY_INFLATION:
        return ("capacity_loss", u.name)
    window = run.cold_window(u)
    if window is not None and _cold_utilisation(run, window, u.edge_rps) >= TARGET_UTIL:
        return ("cold_cache", window.flush)
    return None


def _cold_utilisation(run: _Run, w: _ColdWindow, edge_rps: float) -> float:
    m = run.model
    return max((m.datastore_load(d, edge_rps, {w.cache: 0.0}) / m.datastores[d].capacity_qps
                for d in m.fronted(w.cache)), default=0.0)


def _source_key(run: _Run, u: _Unit, source: str, incident_key: Key | None) -> Key | None:
    if source == "dropped":
        return ("dropped_requests", u.name if u.is_step else None)
    if source == "write_lock":
        return ("write_lock", u.name if u.action == "migrate_down" else None)
    if source == "compatibility":
        return ("compatibility_window", _compat_step(run, u))
    if source == "overload":
        util, _ = run.batch_utilisation(u)
        window = run.cold_window(u)
        cold = window is not None and _cold_utilisation(run, window, u.edge_rps) > 1.0
        # a batch that leaves the target near saturation sheds at the noise peaks
        if util * LOAD_MARGIN > 1.0 or (util >= TARGET_UTIL and (
                not cold or _profile_saturated(run, u))):
            return ("capacity_loss", u.name)
        if cold and window is not None:
            return ("cold_cache", window.flush)
        return ("overload", u.name if u.is_step else None)
    return incident_key


def _profile_saturated(run: _Run, u: _Unit) -> bool:
    target = run.target(u)
    if run.profile is None or target is None:
        return False
    got = run.profile.step_max(u.name, target)
    return got is not None and got[0] >= 0.999


def _compat_pair(run: _Run) -> list[tuple[str, str]]:
    """(rollback step, migrate step) pairs: a version rollback of a service that calls the
    datastore a migrate_down reverts."""
    m = run.model
    pairs = []
    for mig in m.proc.steps:
        if mig.action != "migrate_down" or mig.target not in m.datastores:
            continue
        callers = m.callers(mig.target)
        for rb in m.proc.steps:
            if rb.action == "rollback_version" and rb.target in callers:
                pairs.append((rb.name, mig.name))
    return pairs


def _compat_step(run: _Run, u: _Unit) -> str | None:
    pairs = _compat_pair(run)
    if not pairs:
        return u.name if u.is_step else None
    for rb, mig in pairs:
        if u.name in (rb, mig):
            return mig if run.unit(mig) is not None else rb
    # between the two, or after: the pair whose rollback ran before this span
    for rb, mig in pairs:
        rbu = run.unit(rb)
        if rbu is not None and rbu.start_s <= u.start_s:
            return mig if run.unit(mig) is not None else rb
    return pairs[0][1]


# --------------------------------------------------------------------------- evidence


def _observe(run: _Run, key: Key, ledger: _Ledger) -> dict[str, Any]:
    """What one affected run shows about one finding (numbers, settings used)."""
    kind, step = key
    u = run.unit(step) if step else None
    obs: dict[str, Any] = {"mean_downtime_s": ledger.down.get(key, 0.0),
                           "mean_failed_requests": ledger.failed.get(key, 0.0)}
    if u is not None and u.is_step:
        obs["mean_step_duration_s"] = u.duration_s
        if u.settings:
            obs["settings"] = _jsonable(u.settings)
    if kind == "capacity_loss" and u is not None:
        util, ready = run.batch_utilisation(u)
        target = run.target(u) or ""
        obs.update({"target": target,
                    "mean_overload_failed_requests": u.errors.get("overload", 0.0),
                    "replicas_before": u.replicas.get(target),
                    "ready_replicas_during_batch": ready,
                    "mean_est_utilisation_during_batch": None if math.isinf(util) else util,
                    "outage_during_batch": ready == 0,
                    "max_edge_rps": u.edge_rps})
        _profile_evidence(run, u, target, obs)
    elif kind == "slow_step" and u is not None:
        obs.update({"mean_share_of_rollback_time": u.duration_s / max(run.r.rollback_s, EPS),
                    "mean_step_downtime_s": u.downtime_s,
                    "incident_fixed_by": run.fixer or "none",
                    "fixed_later": _fixed_later(run, u)})
        if u.action in ("rollback_version", "revert_config"):
            target = run.target(u) or ""
            obs.update({"target": target, "replicas_before": u.replicas.get(target),
                        "max_edge_rps": u.edge_rps})
    elif kind == "compatibility_window":
        obs.update(_compat_obs(run, step))
    elif kind == "cold_cache":
        obs.update(_cold_obs(run, step, u))
    elif kind == "write_lock" and u is not None:
        obs.update({"datastore": run.target(u), "mean_write_lock_failed_requests":
                    u.errors.get("write_lock", 0.0),
                    "mean_compatibility_failed_per_s": u.errors.get("compatibility", 0.0)
                    / max(u.duration_s, EPS), "max_edge_rps": u.edge_rps})
    elif kind == "dropped_requests" and u is not None:
        svc = run.model.services.get(run.target(u) or "")
        obs.update({"target": run.target(u),
                    "mean_dropped_failed_requests": u.errors.get("dropped", 0.0),
                    "drain_s": float(u.settings.get("drain", 30.0)),
                    "inflight_time_s": svc.inflight_time if svc else None})
    elif kind == "overload":
        where = u if u is not None else run.units[-1]
        obs.update(_overload_obs(run, where))
    elif kind == "failed_step" and u is not None:
        s = next((s for s in run.r.steps if s.name == step), None)
        obs.update({"action": u.action, "message": s.message if s else "",
                    "mean_downtime_after_failure_s": ledger.down.get(key, 0.0) - u.downtime_s})
    elif kind == "ineffective":
        inj = run.r.injection
        v = run.units[-1]
        obs.update({"incident": inj.incident, "cause_kind": inj.cause_kind,
                    "cause_target": inj.cause_target or "none",
                    "last_step": next((x.name for x in reversed(run.units) if x.is_step),
                                      "none"),
                    "mean_verify_downtime_s": v.downtime_s,
                    "mean_verify_error_rate": v.failed / max(v.requests, EPS)})
    return obs


def _cold_obs(run: _Run, flush: str | None, u: _Unit | None) -> dict[str, Any]:
    """The cold window ``flush`` opened: its cache, length, peak load and, with a profile,
    the fronted datastores' peak cpu and p99."""
    w = next((w for w in run.cold if w.flush == flush), None)
    if w is None:
        return {}
    rps = [x.edge_rps for x in run.units
           if x.start_s < w.end_s - EPS and x.end_s > w.start_s + EPS]
    obs: dict[str, Any] = {"cache": w.cache, "warmed_by": w.warmed_by or "none",
                           "mean_cold_window_s": w.end_s - w.start_s,
                           "max_edge_rps": max(rps, default=u.edge_rps if u else 0.0)}
    if run.profile is not None:
        for d in run.model.fronted(w.cache):
            got = run.profile.window_max(d, w.start_s, w.end_s)
            if got is not None:
                obs[f"max_{d}_cpu"], obs[f"max_{d}_p99_ms"] = got
    return obs


def _fixed_later(run: _Run, u: _Unit) -> bool:
    if run.fixer is None or run.fixer == u.name:
        return False
    f = run.unit(run.fixer)
    return f is not None and f.start_s >= u.end_s - EPS


def _profile_evidence(run: _Run, u: _Unit, target: str, obs: dict[str, Any]) -> None:
    if run.profile is None:
        return
    got = run.profile.step_max(u.name, target)
    if got is not None:
        obs["max_target_cpu"] = got[0]
    edge = run.profile.step_max(u.name, "edge")
    if edge is not None:
        obs["max_edge_p99_ms"] = edge[1]


def _compat_obs(run: _Run, step: str | None) -> dict[str, Any]:
    pair = next(((rb, mig) for rb, mig in _compat_pair(run) if step in (rb, mig)), None)
    if pair is None:
        return {}
    rb, mig = (run.unit(pair[0]), run.unit(pair[1]))
    obs: dict[str, Any] = {"rollback_step": pair[0], "migrate_step": pair[1],
                           "mean_compatibility_failed_requests_in_run":
                               sum(x.errors.get("compatibility", 0.0) for x in run.units)}
    if rb is None or mig is None:
        obs["migrate_ran"] = mig is not None
        return obs
    obs["migrate_status"] = mig.status
    obs["order"] = "rollback_first" if rb.start_s <= mig.start_s else "migrate_first"
    if rb.start_s <= mig.start_s:
        obs["mean_window_s"] = mig.end_s - rb.start_s
        obs["mean_gap_s"] = max(0.0, mig.start_s - rb.end_s)
        obs["steps_between"] = [x.name for x in run.units
                                if x.is_step and rb.end_s - EPS <= x.start_s
                                and x.end_s <= mig.start_s + EPS and x.name != rb.name]
    else:
        obs["mean_window_s"] = rb.end_s - mig.start_s
    obs["mean_rollback_duration_s"] = rb.duration_s
    obs["mean_migrate_duration_s"] = mig.duration_s
    obs["online"] = bool(mig.settings.get("online", False))
    obs["rollback_settings"] = _jsonable(rb.settings)
    obs["max_edge_rps"] = rb.edge_rps
    obs["replicas_before"] = rb.replicas.get(run.target(rb) or "")
    return obs


def _overload_obs(run: _Run, u: _Unit) -> dict[str, Any]:
    m = run.model
    utils: dict[str, float] = {}
    rolled = run.target(u) if u.action in ("rollback_version", "revert_config") else None
    for name, svc in m.services.items():
        ready = u.replicas.get(name, svc.replicas)
        if name == rolled:
            ready -= min(unavailable(int(u.settings.get("batch", 1)),
                                     int(u.settings.get("surge", 0))), ready)
        load = m.service_load(name, u.edge_rps)
        if load > 0:
            utils[name] = load / (ready * svc.capacity_rps) if ready > 0 else 1e9
    online = u.action == "migrate_down" and bool(u.settings.get("online"))
    for name, ds in m.datastores.items():
        cap = online_capacity(ds.capacity_qps, online and run.target(u) == name, m.params)
        load = m.datastore_load(name, u.edge_rps)
        if load > 0:
            utils[name] = load / cap
    worst = max(utils, key=lambda k: utils[k], default=None)
    obs: dict[str, Any] = {"mean_overload_failed_requests": u.errors.get("overload", 0.0),
                           "max_edge_rps": u.edge_rps, "online_migration": online}
    if worst is not None:
        obs["busiest_component"] = worst
        obs["mean_est_utilisation"] = utils[worst]
        obs["replicas"] = u.replicas.get(worst)
    return obs


def _aggregate(observations: list[dict[str, Any]]) -> dict[str, Any]:
    """Means of numbers (max for ``max_*``), distinct values of everything else."""
    keys: list[str] = []
    for o in observations:
        keys += [k for k in o if k not in keys]
    out: dict[str, Any] = {}
    for k in keys:
        values = [o[k] for o in observations if o.get(k) is not None]
        if not values:
            out[k] = None
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[k] = max(values) if k.startswith("max_") else sum(values) / len(values)
        else:
            distinct: list[Any] = []
            for v in values:
                if v not in distinct:
                    distinct.append(v)
            out[k] = distinct[0] if len(distinct) == 1 else distinct
    return out


# --------------------------------------------------------------------------- suggestions


def _dur(seconds: float) -> str:
    """Seconds as a short duration: ``45s``, ``5m``, ``18.6m`` beyond ten minutes."""
    if seconds >= 600 and round(seconds) % 60:
        return f"{seconds / 60:.1f}m"
    return format_duration(float(round(seconds)))


def _suggest(model: _Model, kind: str, step: str | None, ev: dict[str, Any],
             obs: list[dict[str, Any]], runs: int) -> tuple[str, Proposal]:
    """The finding's suggestion and the change it proposes (each ``_suggest_*`` fills the
    proposal where its text recommends something a plan can express)."""
    fn = {"capacity_loss": _suggest_capacity, "slow_step": _suggest_slow,
          "compatibility_window": _suggest_compat, "cold_cache": _suggest_cold,
          "write_lock": _suggest_write_lock, "dropped_requests": _suggest_dropped,
          "overload": _suggest_overload, "failed_step": _suggest_failed,
          "ineffective": _suggest_ineffective}[kind]
    proposal = Proposal()
    return fn(model, step, ev, obs, runs, proposal), proposal


@dataclass
class _Plan:
    """A rollout recommendation: the current rollout, the best safe one, and its text."""

    current: _Rollout
    best: _Rollout | None  # None: no option keeps utilisation under TARGET_UTIL
    least: _Rollout  # the lowest-utilisation option
    text: str

    step: str = ""
    scale: str | None = None  # the scale step of the rollout's service, if any

    @property
    def better(self) -> bool:
        b, c = self.best, self.current
        return b is not None and ((b.replicas, b.batch, b.drain, b.surge)
                                  != (c.replicas, c.batch, c.drain, c.surge))

    def propose(self, proposal: Proposal, model: _Model) -> None:
        """Add the rollout :attr:`text` recommends to ``proposal``."""
        b, c = self.best, self.current
        if b is None or not self.better:
            return
        tunable = model.steps[self.step].tunables()
        proposal.set(self.step, {k: new for k, new, old in (
            ("batch", b.batch, c.batch), ("drain", b.drain, c.drain),
            ("surge", b.surge, c.surge)) if k in tunable and new != old})
        if b.replicas != c.replicas and self.scale is not None:
            proposal.set(self.scale, {"replicas": b.replicas})
            proposal.before.append((self.scale, self.step))


def _rollout_plan(model: _Model, step: str, ev: dict[str, Any],
                  settings: dict[str, Any] | None = None) -> _Plan | None:
    """The fastest rollout among the procedure's choices that keeps its target under
    TARGET_UTIL at the peak load seen (plus a noise margin)."""
    s = model.steps.get(step)
    svc = model.services.get(s.target or "") if s is not None else None
    if s is None or svc is None:
        return None
    settings = settings if settings is not None else ev.get("settings")
    settings = settings if isinstance(settings, dict) else s.default_settings()
    load = model.service_load(svc.name, float(ev.get("max_edge_rps") or 0.0)) * LOAD_MARGIN
    replicas = int(round(float(ev.get("replicas_before") or svc.replicas)))
    batch = int(settings.get("batch", 1))
    drain = float(settings.get("drain", 30.0))
    surge = int(settings.get("surge", 0))
    options = _rollouts(model, step, svc, load, (replicas, batch, drain, surge))
    current = _rollout(model.params, svc, load, replicas, batch, drain, replicas, surge)
    best = _safe(options)
    least = min(options, key=lambda o: (o.utilisation, o.time_s))
    if best is None:
        text = (f"no choice keeps {svc.name} under utilisation {TARGET_UTIL:g} while a batch "
                f"is out (the least is {_util_text(least.utilisation)}, with batch "
                f"{least.batch} of {least.replicas}): add a larger replicas choice"
                + (" or a scale step" if model.scale_step_for(svc.name) is None else "")
                + f" for {svc.name} before {step}")
        return _Plan(current, None, least, text, step)
    parts = []
    scale = model.scale_step_for(svc.name)
    if best.replicas != replicas and scale is not None:
        parts.append(f"scale {svc.name} to {best.replicas} ({scale.name}) before {step}")
    how = [f"batch {best.batch}"]
    if best.surge != surge or best.surge > 0:
        how.append(f"surge {best.surge}")
    if best.drain != drain or best.drain >= svc.inflight_time - EPS:
        note = (f" (>= inflight_time {_dur(svc.inflight_time)})"
                if best.drain >= svc.inflight_time - EPS else "")
        how.append(f"drain {_dur(best.drain)}{note}")
    parts.append(f"run {step} with {' and '.join(how)}")
    text = (" and ".join(parts) + f" so each batch keeps {svc.name} under utilisation "
            f"{TARGET_UTIL:g} (~{best.utilisation:.2f} at {load:.0f} rps); about "
            f"{_dur(best.time_s)} instead of {_dur(current.time_s)}")
    return _Plan(current, best, least, text, step,
                 scale.name if scale is not None and best.replicas != replicas else None)


def _load_of(model: _Model, step: str, ev: dict[str, Any]) -> float:
    s = model.steps.get(step)
    return model.service_load(s.target if s and s.target else "",
                              float(ev.get("max_edge_rps") or 0.0)) * LOAD_MARGIN


def _util_text(u: float) -> str:
    return "an outage" if math.isinf(u) or u > 1e6 else f"{u:.2f}"


def _suggest_capacity(model: _Model, step: str | None, ev: dict[str, Any],
                      obs: list[dict[str, Any]], runs: int, proposal: Proposal) -> str:
    assert step is not None
    util = ev.get("mean_est_utilisation_during_batch")
    batch = _setting(ev, "batch")
    head = (f"batch {batch} of {step} takes "
            + ("every replica out at once (an outage per batch)" if ev.get("outage_during_batch")
               is True else f"enough replicas out to push {ev.get('target')} to utilisation "
               f"~{util:.2f}" if isinstance(util, float) else "too many replicas out"))
    plan = _rollout_plan(model, step, ev)
    if plan is None:
        return f"{head}: use a smaller batch."
    plan.propose(proposal, model)
    return f"{head}: {plan.text}."


def _setting(ev: dict[str, Any], key: str) -> Any:
    settings = ev.get("settings")
    if isinstance(settings, dict):
        return settings.get(key)
    if isinstance(settings, list):  # different in different runs: each, as a user writes it
        values = sorted({setting_value_text(s.get(key)) for s in settings
                         if isinstance(s, dict)})
        return "/".join(values)
    return None


def _ran_with(ev: dict[str, Any], key: str, value: Any) -> bool:
    """Did some affected run use ``key: value``?"""
    settings = ev.get("settings")
    runs = settings if isinstance(settings, list) else [settings]
    return any(isinstance(s, dict) and s.get(key) == value for s in runs)


def _suggest_slow(model: _Model, step: str | None, ev: dict[str, Any],
                  obs: list[dict[str, Any]], runs: int, proposal: Proposal) -> str:
    assert step is not None
    s = model.steps.get(step)
    dur = float(ev.get("mean_step_duration_s") or 0.0)
    share = float(ev.get("mean_share_of_rollback_time") or 0.0)
    head = (f"{step} takes ~{_dur(dur)} ({share:.0%} of rollback time) while the SLO is "
            f"violated")
    advice: list[str] = []
    if s is not None and s.action in ("rollback_version", "revert_config"):
        plan = _rollout_plan(model, step, ev)
        if plan is not None and (plan.best is None or (
                plan.better and plan.best.time_s < plan.current.time_s - 1.0)):
            advice.append(plan.text)
            plan.propose(proposal, model)
    elif s is not None and s.action == "migrate_down":
        if _ran_with(ev, "online", True) and False in model.choices(step, "online"):
            ds = model.datastores.get(s.target or "")
            factor = ds.migration.online_factor if ds and ds.migration else 1.0
            advice.append(f"use online: false (~{_dur(dur / factor)} instead of ~{_dur(dur)}, "
                          f"but writes lock meanwhile)")
            proposal.set(step, {"online": False})
    elif s is not None and s.action == "wait":
        shorter = [c for c in model.choices(step, "duration") if float(c) < dur - EPS]
        if s.optional:
            advice.append(f"skip {step}")
            proposal.skip.append(step)
        elif shorter:
            advice.append(f"use duration {_dur(min(float(c) for c in shorter))}")
            proposal.set(step, {"duration": min(float(c) for c in shorter)})
    elif s is not None and s.optional:
        advice.append(f"skip {step} (optional)")
        proposal.skip.append(step)
    later = [o for o in obs if o.get("fixed_later")]
    if later:
        fixer = Counter(str(o.get("incident_fixed_by")) for o in later).most_common(1)[0][0]
        if model.can_precede(fixer, step):
            advice.append(f"in {len(later)} of {len(obs)} affected runs the incident's cause "
                          f"was only removed later by {fixer}: running {fixer} before {step} "
                          f"ends those incidents sooner")
            proposal.before.append((fixer, step))
    if not advice:
        return head + "; no faster setting among its choices."
    return head + ": " + "; ".join(advice) + "."


def _suggest_compat(model: _Model, step: str | None, ev: dict[str, Any],
                    obs: list[dict[str, Any]], runs: int, proposal: Proposal) -> str:
    rb, mig = ev.get("rollback_step"), ev.get("migrate_step")
    if not isinstance(rb, str) or not isinstance(mig, str):
        return (f"app/schema version mismatch errors around {step}: keep the version rollback "
                f"and the migrate_down that matches it adjacent.")
    if ev.get("migrate_ran") is False:
        return (f"{rb} left the previous version running on the live schema and {mig} never "
                f"ran: run {mig} right after {rb}.")
    if ev.get("order") == "migrate_first" or (isinstance(ev.get("order"), list)):
        proposal.before.append((rb, mig))
        return (f"{mig} ran before {rb} in some runs: the live version cannot use the previous "
                f"schema, so run {mig} right after {rb}, not before it.")
    window = float(ev.get("mean_window_s") or 0.0)
    gap = float(ev.get("mean_gap_s") or 0.0)
    if ev.get("migrate_status") == "failed":
        return (f"the previous version of {model.steps[rb].target} fails on the live schema "
                f"from {rb} on, and {mig} failed, so the window never closed: see the "
                f"failed_step finding for {mig}.")
    head = (f"the previous version of {model.steps[rb].target} fails on the live schema for "
            f"~{_dur(window)} between {rb} and the end of {mig}")
    between = ev.get("steps_between") or []
    if between and isinstance(between, list) and isinstance(between[0], list):
        between = sorted({s for group in between for s in group})
    reorder = _compat_reorder(model, ev, rb, mig, gap, between, proposal)
    advice = [reorder] if reorder else []
    online = ev.get("online")
    rb_dur = float(ev.get("mean_rollback_duration_s") or 0.0)
    rb_settings = ev.get("rollback_settings")
    plan = _rollout_plan(model, rb, ev, rb_settings if isinstance(rb_settings, dict) else None)
    if plan is not None and plan.better and plan.best is not None and (
            plan.best.time_s < plan.current.time_s - 1.0):
        advice.append(f"shorten the mixed-version rollout: {plan.text}")
        plan.propose(proposal, model)
    if advice:
        return head + ": " + "; ".join(advice) + "."
    svc = model.steps[rb].target
    how = " offline" if online is False else ""
    note = ""
    if plan is not None and plan.best is None:
        bigger = [o for o in _rollouts(model, rb, model.services[svc or ""],
                                       _load_of(model, rb, ev),
                                       (plan.current.replicas, plan.current.batch,
                                        plan.current.drain, plan.current.surge))
                  if o.batch > plan.current.batch and o.replicas == plan.current.replicas]
        if bigger:
            b = min(bigger, key=lambda o: o.batch)
            note = (f" (batch {b.batch} would take every {svc} replica out at once)"
                    if _util_text(b.utilisation) == "an outage" else
                    f" (batch {b.batch} would push {svc} to utilisation "
                    f"{_util_text(b.utilisation)})")
    where = (f"{mig} already runs right after {rb}{how}" if gap <= 1.0 or not between else
             f"{', '.join(map(str, between))} must run between {rb} and {mig} (after: "
             f"constraints)")
    return (head + f": {where}, so the window is the "
            f"rollout of {svc} (~{_dur(rb_dur)}) plus the migration, and no faster rollout "
            f"of {svc} is safe with the procedure's choices{note}. Give {svc} headroom (a "
            f"scale step or more replicas) for a larger batch, or make the migration backward "
            f"compatible (expand/contract).")


def _compat_reorder(model: _Model, ev: dict[str, Any], rb: str, mig: str, gap: float,
                    between: list[Any], proposal: Proposal) -> str:
    """Advice to run ``mig`` sooner after ``rb``: move or skip the steps between them, and
    migrate offline when it is faster ("" when neither applies)."""
    moves = []
    if gap > 1.0:
        for name in between:
            s = model.steps.get(name)
            if s is not None and name not in model.deps.get(mig, set()):
                moves.append(f"skip {name}" if s.optional else f"move {name} after {mig}")
                if s.optional:
                    proposal.skip.append(name)
                else:
                    proposal.before.append((mig, name))
    offline = ""
    if ev.get("online") is True and False in model.choices(mig, "online"):
        proposal.set(mig, {"online": False})
        ds = model.datastores.get(model.steps[mig].target or "")
        factor = ds.migration.online_factor if ds and ds.migration else 1.0
        dur = float(ev.get("mean_migrate_duration_s") or 0.0)
        offline = (f" with online: false (~{_dur(dur / factor)} instead of ~{_dur(dur)}; "
                   f"writes lock meanwhile)")
    if moves:
        return (f"run {mig} right after {rb} ({', '.join(moves)}: ~{_dur(gap)} of errors "
                f"between them){offline}")
    return f"run {mig}{offline}" if offline else ""


def _suggest_cold(model: _Model, step: str | None, ev: dict[str, Any],
                  obs: list[dict[str, Any]], runs: int, proposal: Proposal) -> str:
    assert step is not None
    s = model.steps.get(step)
    cache = s.target if s is not None and s.target else str(ev.get("cache"))
    rps = float(ev.get("max_edge_rps") or model.sc.deployment.traffic.rps)
    parts = []
    for d in model.fronted(cache):
        cap = model.datastores[d].capacity_qps
        cold = model.datastore_load(d, rps, {cache: 0.0})
        warm = model.datastore_load(d, rps, {cache: 1.0})
        slope = cold - warm
        need = min(1.0, max(0.0, (cold - TARGET_UTIL * cap) / slope)) if slope > 0 else 0.0
        warmup = model.caches[cache].warmup
        parts.append((d, cold, cap, need, need * warmup, warming_s(need, warmup, model.params)))
    if not parts:
        return f"the cache behind {step} refills slowly; warm it before sending traffic."
    d, cold, cap, need, natural, warmed = max(parts, key=lambda p: p[1] / p[2])
    head = (f"after {step} the cold cache sends up to ~{cold:.0f} qps to {d} (capacity "
            f"{cap:.0f}), which stays above utilisation {TARGET_UTIL:g} until the cache is "
            f"{need:.0%} warm")
    warm_step = next((x for x in model.proc.steps if x.action == "warm_cache"
                      and x.target == cache), None)
    warmed_by = ev.get("warmed_by")
    if s is not None and s.optional:
        proposal.skip.append(step)
        return head + f": skip {step} (optional) or run it only when the cached data is invalid."
    if warm_step is None:
        return (head + f": add a warm_cache step for {cache} right after {step} (~{_dur(warmed)} "
                f"of overload instead of ~{_dur(natural)}), or warm the cache before sending "
                f"traffic.")
    if warmed_by != warm_step.name:
        return (head + f": run {warm_step.name} right after {step} (~{_dur(warmed)} of overload "
                f"instead of ~{_dur(natural)} of natural warm-up)"
                + (" instead of skipping it" if warm_step.optional else "") + ".")
    return (head + f": {warm_step.name} already follows {step} and still leaves ~{_dur(warmed)} "
            f"of overload; {step} is required, so pre-load hot keys before flushing, run the "
            f"flush at low load, or add {d} capacity.")


def _suggest_write_lock(model: _Model, step: str | None, ev: dict[str, Any],
                        obs: list[dict[str, Any]], runs: int, proposal: Proposal) -> str:
    if step is None or step not in model.steps:
        return "writes failed while a migration locked tables: migrate online."
    s = model.steps[step]
    ds = model.datastores.get(s.target or "")
    factor = ds.migration.online_factor if ds and ds.migration else 4.0
    dur = float(ev.get("mean_step_duration_s") or 0.0)
    lock = float(ev.get("mean_write_lock_failed_requests") or 0.0)
    head = f"{step} locks writes for ~{_dur(dur)} (~{lock:.0f} failed writes per run)"
    if True not in model.choices(step, "online"):
        return (head + f": online is not among its choices; add online: true (~{_dur(dur * factor)}"
                f" without locks) or run it when write traffic is lowest.")
    compat_rate = float(ev.get("mean_compatibility_failed_per_s") or 0.0)
    extra = compat_rate * (factor - 1.0) * dur
    if extra > lock:
        return (head + f": online: true would take ~{_dur(dur * factor)} and add ~{extra:.0f} "
                f"compatibility failures (the app already runs the previous version) against the "
                f"~{lock:.0f} write failures it saves, so keep online: false and shorten the "
                f"compatibility window instead.")
    util = None
    if ds is not None:
        rps = float(ev.get("max_edge_rps") or model.sc.deployment.traffic.rps)
        util = model.datastore_load(ds.name, rps) / online_capacity(ds.capacity_qps, True,
                                                                   model.params)
    if util is not None and util > 1.0:
        return (head + f": online: true would overload {ds.name if ds else 'the datastore'} "
                f"(utilisation ~{util:.2f} with the copy's extra load); run it offline at low "
                f"write traffic or add capacity.")
    load_note = f", {ds.name if ds else 'datastore'} at ~{util:.2f}" if util is not None else ""
    proposal.set(step, {"online": True})
    return (head + f": run {step} with online: true (no write lock; ~{_dur(dur * factor)} instead "
            f"of ~{_dur(dur)}, with {model.params.online_migration_load:.0%} extra load"
            f"{load_note}).")


def _suggest_dropped(model: _Model, step: str | None, ev: dict[str, Any],
                     obs: list[dict[str, Any]], runs: int, proposal: Proposal) -> str:
    target = ev.get("target")
    svc = model.services.get(target) if isinstance(target, str) else None
    if step is None or svc is None:
        return "in-flight requests were dropped: drain replicas for at least their inflight_time."
    need = svc.inflight_time
    drain = ev.get("drain_s")
    drains = drain if isinstance(drain, list) else [drain]
    drain_text = "/".join(_dur(float(d)) if isinstance(d, (int, float)) else str(d)
                          for d in drains)
    head = (f"{step} stops {svc.name} replicas after a {drain_text} drain, shorter than its "
            f"inflight_time {_dur(need)}")
    choices = sorted(float(c) for c in model.choices(step, "drain"))
    enough = [c for c in choices if c >= need - EPS]
    if enough:
        proposal.set(step, {"drain": enough[0]})
        return head + (f": use drain {_dur(enough[0])} (>= inflight_time {_dur(need)}) so "
                       f"in-flight requests finish before each replica stops.")
    longest = f"; the longest choice, {_dur(choices[-1])}, still drops some" if choices else ""
    return head + (f": add a drain of at least {_dur(need)} to {step}'s choices{longest}.")


def _suggest_overload(model: _Model, step: str | None, ev: dict[str, Any],
                      obs: list[dict[str, Any]], runs: int, proposal: Proposal) -> str:
    where = f"during {step}" if step else "after the last step"
    comp = ev.get("busiest_component")
    util = ev.get("mean_est_utilisation")
    if ev.get("online_migration") is True and step is not None:
        return (f"the online migration's extra load overloads the datastore {where}: run {step} "
                f"with online: false if a write lock is acceptable, or add capacity.")
    if not isinstance(comp, str):
        return f"requests were shed {where}: add capacity."
    level = _util_text(float(util or 0))
    head = (f"requests were shed {where}: {comp} has no ready replica" if level == "an outage"
            else f"requests were shed {where}: {comp} runs at ~{level}")
    svc = model.services.get(comp)
    scale = model.scale_step_for(comp) if svc is not None else None
    if svc is not None and scale is not None:
        load = model.service_load(comp, float(ev.get("max_edge_rps") or 0.0))
        for r in sorted(int(c) for c in scale.tunables()["replicas"].choices):
            if load / (r * svc.capacity_rps) <= TARGET_UTIL + EPS:
                before = f" before {step}" if step and model.can_precede(scale.name, step) else ""
                proposal.set(scale.name, {"replicas": r})
                if before and step:
                    proposal.before.append((scale.name, step))
                return head + f": scale {comp} to {r} ({scale.name}){before}."
        return head + f": no {scale.name} choice is enough; add a larger replicas choice."
    return head + f": the load exceeds {comp}'s capacity; add capacity or a scale step."


def _suggest_failed(model: _Model, step: str | None, ev: dict[str, Any],
                    obs: list[dict[str, Any]], runs: int, proposal: Proposal) -> str:
    s = model.steps.get(step or "")
    if s is not None and s.action == "migrate_down":
        ds = model.datastores.get(s.target or "")
        if ds is not None and ds.migration is not None and not ds.migration.reversible:
            return (f"{step} cannot succeed: the migration on {ds.name} is irreversible "
                    f"(reversible: false), so the procedure stops there and the SLO stays "
                    f"violated. Keep the live schema and make the previous app version "
                    f"compatible with it (then drop {step}), or plan a forward fix.")
    msg = ev.get("message")
    return (f"{step} failed ({msg}); the procedure stops there: fix the step before relying "
            f"on this procedure.")


def _suggest_ineffective(model: _Model, step: str | None, ev: dict[str, Any],
                         obs: list[dict[str, Any]], runs: int, proposal: Proposal) -> str:
    kinds = ev.get("cause_kind")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    incidents = ev.get("incident")
    incidents = incidents if isinstance(incidents, list) else [incidents]
    head = (f"the SLO was not restored in {len(obs)} of {runs} runs "
            f"({', '.join(map(str, incidents))})")
    if "external" in kinds:
        return (head + ": the cause is external, so no rollback step removes it; page the "
                "owning team or add a failover step (a command), and treat these runs as "
                "outside what rollback can fix.")
    want = {"version": "rollback_version", "config": "revert_config",
            "schema": "migrate_down", "flag": "disable_flag"}
    targets = ev.get("cause_target")
    targets = targets if isinstance(targets, list) else [targets]
    for kind, target in zip(kinds, targets):
        action = want.get(str(kind))
        if action and not any(s.action == action and s.target == target
                              for s in model.proc.steps):
            return head + f": no step reverts the cause; add a {action} step for {target}."
    return head + ": the steps ran but errors remained; see the other findings."


# --------------------------------------------------------------------------- analyze


def analyze(scenario: Scenario, rehearsals: Sequence[Rehearsal], *,
            procedure: Procedure | None = None,
            params: SimParams | None = None) -> BottleneckReport:
    """Where the downtime of ``rehearsals`` (runs of ``procedure``, default the scenario's)
    goes, why, and what to change; ``params`` are the simulator's (default: the scenario's)."""
    proc = procedure or scenario.procedure
    params = params if params is not None else params_of(scenario)
    scenario = params.apply(scenario)
    model = _Model(scenario, proc, params)
    n = len(rehearsals)
    steps = _step_shares(proc, rehearsals)
    threshold = _error_threshold(scenario)
    down_share: dict[Key, float] = {}
    failed_share: dict[Key, float] = {}
    affected: dict[Key, list[dict[str, Any]]] = {}
    unattributed_down = unattributed_failed = 0.0
    for r in rehearsals:
        run = _Run(model, r)
        ledger = _classify_run(run, threshold)
        for key in set(ledger.down) | ledger.seen:
            if r.downtime_s > 0:
                down_share[key] = down_share.get(key, 0.0) + ledger.down.get(key, 0.0) / (
                    r.downtime_s * n)
            if r.failed_requests > 0:
                failed_share[key] = failed_share.get(key, 0.0) + ledger.failed.get(
                    key, 0.0) / (r.failed_requests * n)
            if key in ledger.seen:
                affected.setdefault(key, []).append(_observe(run, key, ledger))
        if r.downtime_s > 0:
            unattributed_down += max(0.0, 1.0 - sum(ledger.down.values()) / r.downtime_s) / n
        if r.failed_requests > 0:
            unattributed_failed += max(0.0, 1.0 - sum(ledger.failed.values())
                                       / r.failed_requests) / n
    findings = []
    for key, obs in affected.items():
        kind, step = key
        d, f = down_share.get(key, 0.0), failed_share.get(key, 0.0)
        if (max(d, f) < MIN_FINDING_SHARE and kind not in ("failed_step", "ineffective")):
            continue
        ev = _aggregate(obs)
        text, proposal = _suggest(model, kind, step, ev, obs, n)
        findings.append(Bottleneck(kind, step, d, f, len(obs), n, _round(ev), text, proposal))
    findings.sort(key=lambda b: (-round(b.share_of_downtime, 6),
                                 -round(b.share_of_failed_requests, 6), KINDS.index(b.kind)))
    return BottleneckReport(
        scenario.name, proc.name, n,
        sum(r.downtime_s for r in rehearsals) / n if n else 0.0,
        sum(r.failed_requests for r in rehearsals) / n if n else 0.0,
        steps, findings, unattributed_down, unattributed_failed)


def _step_shares(proc: Procedure, rehearsals: Sequence[Rehearsal]) -> list[StepShare]:
    names = [s.name for s in ordered_steps(proc)]
    actions = {s.name: s.action for s in proc.steps}
    acc: dict[str, dict[str, Any]] = {}
    for r in rehearsals:
        rows = attribution(r)
        for s in r.steps:
            if s.name not in names:
                names.append(s.name)
                actions[s.name] = s.action
        for row in rows:
            a = acc.setdefault(row["step"], {"runs": 0, "dur": 0.0, "down_s": 0.0, "down": 0.0,
                                             "failed": 0.0, "rollback": 0.0})
            a["runs"] += 1
            a["dur"] += row["duration_s"]
            a["down_s"] += row["downtime_s"]
            a["down"] += row["downtime_share"]
            a["failed"] += row["failed_share"]
            if row["step"] != "verify" and r.rollback_s > 0:
                a["rollback"] += row["duration_s"] / r.rollback_s
    n = max(len(rehearsals), 1)
    out = []
    for name in [*names, "verify"]:
        a = acc.get(name)
        if a is None:
            if rehearsals:
                out.append(StepShare(name, actions.get(name, "verify"), 0, 0.0, 0.0, 0.0, 0.0,
                                     0.0))
            continue
        out.append(StepShare(name, actions.get(name, "verify"), a["runs"],
                             a["dur"] / a["runs"], a["down_s"] / n, a["down"] / n,
                             a["failed"] / n, a["rollback"] / n))
    return out


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)

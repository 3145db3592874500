"""The simulated shadow: seeded, deterministic, event-driven physics of a deployment.

Time is integrated segment by segment: between two events (a batch leaving service, a replica
becoming ready, a migration ending, a load block changing, a ramp quantum) every input is
constant, so downtime, failed and bad requests are exact sums over segments, with no
per-second loop. When a profile is requested, segments are cut at every second and each second
is recorded: the same physics, sampled. Ramps, warm-up and load are quantised in time, their
steps indexed with a tolerance (``topology.step_index``) and cache warmth a closed form of the
time since its warming last changed, so the rates are a function of time and state alone and
every way of cutting time gives the same physics.

Physics (docs/scenario-format.md, ``deployment``): load flows down the call tree; capacity is
ready replicas times ``capacity_rps``; latency is M/M/c queueing with ready replicas x
``concurrency`` servers (``topology.sojourn``), capped by a queue timeout; shedding above
utilisation 1; errors come from the incident (on the share of traffic still served by the
faulty version, config, schema or flag), from version/schema mismatches, write locks, dropped
in-flight requests and overload. The edge error is ``1 - prod(1 - e_i)`` over the tree, each
``e_i`` weighted by the share of edge traffic that reaches component ``i``; bad requests add
the served edge requests slower than the SLO's latency threshold (``topology.slow_share``).
Rollbacks replace replicas in rounds, Kubernetes style (``batch`` = maxUnavailable, ``surge``
= maxSurge).
"""

from __future__ import annotations

import heapq
import itertools
import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from shadowrl.core.errors import BackendUnavailable, StepTimeout
from shadowrl.core.injection import ActiveEffect, Injection
from shadowrl.core.results import (
    FULL_OUTAGE_ERROR,
    ComponentMetrics,
    Metrics,
    Span,
    StepResult,
    StepStatus,
)
from shadowrl.core.slo import Clock, Observer
from shadowrl.core.spec import DAY, Scenario, SpecError, Step, scenario_problem
from shadowrl.shadow.base import (
    PROFILE_COLUMNS,
    CancelToken,
    CostCapReached,
    CostWeights,
    Phase,
)
from shadowrl.shadow.sim.floor import cost_floor
from shadowrl.shadow.sim.params import SimParams, params_of
from shadowrl.shadow.sim.topology import (
    EPS,
    LN2,
    LN100,
    cache_miss,
    compile_topology,
    diurnal_factor,
    edge_factors,
    latency_curves,
    load_flow,
    online_capacity,
    poisson_cdf,
    queue_latency_ms,
    rollout_width,
    slow_share,
    step_end,
    step_index,
    usage,
    warming_s,
    warmth_at,
)

# bucket index = version (0 live, 1 previous) * 2 + config (0 live, 1 previous)
LL, LP, PL, PP = 0, 1, 2, 3

# The simulator's limits, so that no valid scenario runs for long (docs/scenario-format.md,
# Bounds). The horizon: no trajectory simulates more shadow time than this. The format's
# bounds keep a rehearsal's breach search (onset <= 6h, + 30 min) and verification
# (verify.timeout <= 1d after the breach) well inside it; only steps that run on far past
# their verification deadline reach it, and they are stopped there like a step past its
# timeout. The work budget: integration segments, each weighted by the size of the
# deployment (what computing its rates costs), plus recorded profile rows; it bounds what the
# horizon does not, e.g. thousands of one-replica rollout rounds or long warm-ups in a large
# deployment. Both are counted per trajectory (a restored snapshot restores them), so search
# branches are limited one by one.
MAX_SHADOW_S = 2 * DAY
MAX_WORK = 1_000_000
STEPS_WORK = 800_000  # what steps may spend: the rest is kept for the verification
SEGMENT_OVERHEAD = 10  # work of one segment beyond its components and rules
PROFILE_ROW_WORK = 3  # work of one recorded profile row (memory, mostly)


class SimulationLimitExceeded(SpecError):
    """Time asked to pass beyond the horizon, or the work budget spent, outside a step (a step
    is stopped at the limit instead, ``timed_out``): the scenario asks for more than the
    simulator does, which is bad input like any other."""


# State versions key the rates cache. They come from one counter and are never reused, so a
# restored snapshot can never match rates cached for the branch it replaced.
_VERSIONS = itertools.count(1)


_JITTER_MEMO: dict[tuple[int, str, int, float], float] = {}  # (seed, key, k, sigma) -> jitter


def _stable_seed(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode())


@dataclass
class _State:
    """Everything that changes; copied whole by :meth:`SimShadow.snapshot`."""

    t: float = 0.0
    buckets: list[list[float]] = field(default_factory=list)  # per component, ready replicas
    template: list[list[int]] = field(default_factory=list)  # per service [version, config]
    flags_off: set[tuple[str, str]] = field(default_factory=set)
    schema_prev: list[bool] = field(default_factory=list)
    locked: list[bool] = field(default_factory=list)
    online: list[bool] = field(default_factory=list)
    # per cache: the warmth the rates use, a step function of time (see _sync_warmth)
    warmth: list[float] = field(default_factory=list)
    warm_rate: list[float] = field(default_factory=list)
    impulse: dict[int, float] = field(default_factory=dict)  # service -> extra error share
    command_effects: tuple[ActiveEffect, ...] = ()
    cause_fixed: bool = False
    step: str | None = None
    phase: str = "normal"
    version: int = 0  # bumped on every state change, keys the rates cache
    # per cache: warmth at warm_since, when its warming (at warm_rate) last changed
    warm_base: list[float] = field(default_factory=list)
    warm_since: list[float] = field(default_factory=list)
    # per service: replicas running but not ready (starting, draining, stopping)
    pending: list[float] = field(default_factory=list)
    work: float = 0.0  # integration work spent since launch (see MAX_WORK)


@dataclass
class _Rates:
    """Everything derived from the state at one instant."""

    edge_rps: float
    edge_error: float
    by_source: dict[str, float]
    violated: tuple[bool, ...]
    comps: list[tuple[float, float, float, float, float, float]]  # rps err p50 p99 cpu mem
    edge_p50: float
    edge_p99: float
    edge_bad: float  # share of edge requests that fail or are slower than the threshold
    replicas: list[float]  # per component: running replicas (services), 1 (the others)
    seen: float  # how likely a sample shows a violated rule (1 or 0 unless observed_share)


def _copy_state(st: _State) -> _State:
    """An independent copy of a state (what ``copy.deepcopy`` gave, without its overhead)."""
    return _State(st.t, [b[:] for b in st.buckets], [x[:] for x in st.template],
                  set(st.flags_off), st.schema_prev[:], st.locked[:], st.online[:],
                  st.warmth[:], st.warm_rate[:], dict(st.impulse), st.command_effects,
                  st.cause_fixed, st.step, st.phase, st.version, st.warm_base[:],
                  st.warm_since[:], st.pending[:], st.work)


# _State fields that do not shape the future: the time, the cache key, the labels; and the
# absolute time a cache's warming last changed (state_key keys the time since instead)
_TRANSIENT = {"t", "version", "step", "phase", "warm_since", "work"}


_KEYED = tuple(f.name for f in fields(_State) if f.name not in _TRANSIENT)


def _freeze(value: Any) -> Any:
    """A hashable, order-independent copy of a state field, floats rounded."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, (list, tuple)):
        # the oracle keys every state it reaches: flat lists of floats go the short way
        return tuple([round(v, 4) if isinstance(v, float) else _freeze(v) for v in value])
    if isinstance(value, (set, frozenset)):
        return tuple(sorted(map(repr, value)))
    if isinstance(value, dict):
        return tuple(sorted((repr(k), _freeze(v)) for k, v in value.items()))
    return value


@dataclass
class _Cap:
    """A :meth:`SimShadow.cost_cap` block: its weights and limit, and what the integrations
    since it began counted (bad and failed requests summed apart: the cost counts the larger
    of the two sums, as :attr:`Span.bad` does)."""

    weights: CostWeights
    limit: float
    downtime_s: float = 0.0
    failed: float = 0.0
    bad: float = 0.0
    outage_s: float = 0.0

    def spent(self, downtime_s: float, failed: float, bad: float, outage_s: float) -> float:
        """The block's cost if the running integration has counted these so far."""
        w = self.weights
        f, b = self.failed + failed, self.bad + bad
        return (w.downtime_s * (self.downtime_s + downtime_s) + w.failed_requests * f
                + w.bad_requests * (b if b > f else f) + w.outage_s * (self.outage_s + outage_s))


class _Cancelled(Exception):
    """Unwinds a cancelled step out of its sub-actions; ``span`` is what it cost so far."""

    def __init__(self, span: Span) -> None:
        super().__init__("cancelled")
        self.span = span


class SimShadow:
    """Simulated shadow backend. See the module docstring for the physics.

    Performance: :meth:`rates` is evaluated once per integration segment, so it is layered.
    What depends only on the discrete state (capacities, cache misses, fault share,
    compatibility and lock errors) is derived once per state change; the load flow once per
    state and load block; the incident's effects once per distinct set of effect strengths.
    Each layer calls the formulas of :mod:`shadowrl.shadow.sim.topology` (the ones the
    bottleneck analysis uses) with ``params``, so the numbers are exactly those of a direct
    evaluation.
    """

    name = "sim"
    clock: Clock = "simulated"
    # Capabilities: Snapshotting, CostCapping, CostFloor, FastForward, ErrorAttribution (these
    # sources), ProfileRecording.
    error_sources = ("incident", "compatibility", "dropped", "overload", "write_lock")

    def __init__(self, scenario: Scenario, *, params: SimParams | None = None,
                 record_profile: bool = False,
                 pattern: Callable[[float], float] | None = None) -> None:
        # the scenario's ``simulator.params`` (or ``--params``) unless given: a calibrated
        # simulator runs the scenario with its measured per-component values in place
        self.params = params if params is not None else params_of(scenario)
        scenario = self.params.apply(scenario)
        self.scenario = scenario
        self.topo = compile_topology(scenario)
        self.record_profile = record_profile
        self.rules = scenario.slo.rules
        self._rule_scope = [self.topo.index.get(r.scope, -1) for r in self.rules]
        self._pattern = pattern or self._builtin_pattern(scenario, self.params)
        self.state = _State()
        self.injection: Injection | None = None
        self.seed = 0
        self._noise = np.ones(1)
        self._rates: _Rates | None = None
        self._rates_key: tuple[Any, ...] | None = None
        self._jitter_cache: dict[tuple[str, int], float] = {}
        self.profile: dict[str, list[Any]] = {}
        self._effect_end = 0.0
        self._deadline: float | None = None  # the running step's, in shadow time
        self._cancel: CancelToken | None = None  # the running step's
        self._cap: _Cap | None = None  # the open cost_cap block's
        self._live = self._closed = False
        self._prepare()

    def _prepare(self) -> None:
        """Flatten everything static about the topology, the parameters and the rules for
        the hot loop."""
        topo, dep, p = self.topo, self.scenario.deployment, self.params
        n = len(topo.names)
        n_svc = len(dep.services)
        self._n = n
        self._wf = topo.write_fraction
        self._block_s, self._quantum_s = p.block_s, p.quantum_s
        self._jitter_sigma = p.jitter_sigma
        self._stop_s, self._drop_impulse_s = p.stop_s, p.drop_impulse_s
        self._action_s, self._flag_toggle_s = p.action_s, p.flag_toggle_s
        self._failed_migration_s, self._warm_speedup = p.failed_migration_s, p.warm_speedup
        self._zeros = [0.0] * n
        self._hit = topo.hit_ratio
        self._warmup = [max(self._cache_warmup(i), EPS) for i in range(n)]
        # callers before callees: (component, capacity per replica)
        self._flow = [(i, topo.capacity[i]) for i, _calls in topo.flow]
        self._lat_edges = [(i, j, topo.fronted_by.get((i, j), -1))
                           for i in reversed(topo.order) for j in topo.calls[i]]
        self._stores = [(i, topo.capacity[i]) for i in topo.stores]
        # queueing: servers per ready replica (services) or in all (datastores); caches 0
        self._conc = topo.concurrency
        self._timeout_ms = p.queue_timeout_s * 1000.0
        self._slow_ms = self.scenario.slo.latency_threshold_ms()
        self._caches = [i for i, kind in enumerate(topo.kinds) if kind == "cache"]
        compat: list[tuple[int, bool, tuple[int, ...]]] = []
        for d, callers in topo.db_callers.items():
            mig = dep.datastores[d - n_svc].migration
            if mig is None:
                continue
            compat.append((d, mig.backward_compatible, tuple(
                c for c in callers
                if topo.kinds[c] == "service" and dep.services[c].version is not None)))
        self._compat = compat
        reachable = set(topo.reachable)
        self._reach_list = sorted(reachable)
        self._lat_caches = [(k, c) for k, (_i, _j, c) in enumerate(self._lat_edges) if c >= 0]
        self._lat_plain = [(i, j, 1.0) for i, j, _c in self._lat_edges]
        metric_index = {"rps": 0, "error_rate": 1, "latency_p50_ms": 2, "latency_p99_ms": 3,
                        "cpu": 4, "memory": 5}
        # (component or -1 for the edge, metric index, above, below)
        self._rule_eval = [(scope, metric_index[r.metric], r.above, r.below)
                           for r, scope in zip(self.rules, self._rule_scope)]
        self._noise_cache: dict[int, list[float]] = {}
        self._segment_work = SEGMENT_OVERHEAD + n + len(self.rules)
        self._row_work = PROFILE_ROW_WORK * (n + 1)
        self._limit_hit: str | None = None  # why the running step was stopped, if a limit
        self._reset_caches()

    def _reset_caches(self) -> None:
        # Inner caches are keyed by these counters, which (unlike ``state.version``, which
        # restore() rewinds) are never reused: _epoch for any change, _w_epoch for warmth-only
        # and _i_epoch for impulse-only changes.
        self._epoch = getattr(self, "_epoch", 0) + 1
        self._w_epoch = self._i_epoch = 0
        self._v_key = -1
        self._w_key: tuple[int, int] | None = None
        self._i_key: tuple[int, int] | None = None
        self._l_key: tuple[Any, ...] | None = None
        self._e_slow: list[float] | None = None
        self._e_key: tuple[Any, ...] | None = None
        self._load_cache: dict[int, float] = {}
        self._effect_list: list[tuple[int, ActiveEffect]] = []
        self._saturated = False

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _builtin_pattern(sc: Scenario, params: SimParams) -> Callable[[float], float]:
        if sc.deployment.traffic.replay is not None:  # recorded traffic (docs/replay.md)
            from shadowrl.traffic.recording import scenario_pattern

            replayed = scenario_pattern(sc, window_s=params.block_s)
            assert replayed is not None
            return replayed
        pattern = sc.deployment.traffic.pattern
        if pattern == "diurnal":
            return lambda t: diurnal_factor(t, params)
        if pattern == "constant":
            return lambda t: 1.0
        # csv pattern, lazily
        from shadowrl.traffic.history import HistoryError, load_pattern, load_series

        source = getattr(sc, "_source", None)
        base = source.parent if source is not None else None
        path = pattern.csv if base is None else str(base / pattern.csv)
        try:
            return load_pattern(load_series(path, "csv", column=pattern.column))
        except HistoryError as exc:  # a bad file is bad input: file:line, not a traceback
            raise scenario_problem(sc, ("deployment", "traffic", "pattern", "csv"),
                                   str(exc)) from None

    def launch(self, seed: int) -> None:
        if self._closed:
            raise BackendUnavailable("this sim shadow is closed: make a new one")
        topo = self.topo
        services = self.scenario.deployment.services
        self.seed = seed
        noise = self._noise_cache.get(seed)
        if noise is None:
            # relaunching with the same seed (redraws of a deviation) reuses the draw
            rng = np.random.default_rng(_stable_seed("noise", seed))
            sigma, blocks = self.params.noise_sigma, self.params.noise_blocks
            noise = np.exp(rng.normal(0.0, sigma, blocks) - sigma**2 / 2).tolist()
            if len(self._noise_cache) >= 4:
                self._noise_cache.clear()
            self._noise_cache[seed] = noise
        self._noise = noise
        self._jitter_cache = {}
        n = self._n
        st = _State()
        st.buckets = [[float(services[i].replicas), 0.0, 0.0, 0.0] if kind == "service"
                      else [1.0, 0.0, 0.0, 0.0] for i, kind in enumerate(topo.kinds)]
        st.template = [[0, 0] for _ in range(n)]
        st.schema_prev = [False] * n
        st.locked = [False] * n
        st.online = [False] * n
        st.warmth = [1.0] * n
        st.warm_rate = [1.0] * n
        st.warm_base = [1.0] * n
        st.warm_since = [0.0] * n
        st.pending = [0.0] * n
        self.state = st
        self.injection = None
        self._effect_end = 0.0
        self._rates = None
        self._rates_key = None
        self._reset_caches()
        self.profile = {k: [] for k in PROFILE_COLUMNS}
        self._live = True

    def inject(self, injection: Injection) -> None:
        self._check()
        self.injection = injection
        self.state.phase = "incident"  # profile rows before its onset still say "normal"
        by_target: dict[int, list[ActiveEffect]] = {}
        end = injection.onset_s
        for eff in injection.effects:
            by_target.setdefault(self.topo.index[eff.target], []).append(eff)
            span = max(eff.ramp_s, len(eff.shape) * eff.shape_step_s if eff.shape else 0.0)
            end = max(end, injection.onset_s + span)
        self._effect_end = end
        self._reset_caches()
        self._effect_list = [(i, eff) for i, effs in by_target.items() for eff in effs]
        self._saturated = all(self._constant_after_end(eff) for _, eff in self._effect_list)
        self._touch()

    def _constant_after_end(self, eff: ActiveEffect) -> bool:
        """Whether ``_progress(eff, t)`` is the same for every ``t >= _effect_end`` (it is
        non-decreasing in the quantum, so checking from the first one is enough)."""
        end = self._effect_end
        if not eff.shape:
            return self._progress(eff, end) == 1.0
        onset = self.injection.onset_s if self.injection else math.inf
        if end < onset:
            return False
        quantum = self._quantum_s
        q = step_index(end, onset, quantum) + 1
        idx = int((q - 1) * quantum // eff.shape_step_s)
        return all(v == eff.shape[-1] for v in eff.shape[idx:])

    @property
    def load_pattern(self) -> Callable[[float], float]:
        """The load multiplier (mean 1) at a time of the pattern (what training may show a
        critic: :mod:`shadowrl.rl.asymmetric`)."""
        return self._pattern

    def now(self) -> float:
        self._check()
        return self.state.t

    def sample(self) -> Metrics:
        self._check()
        r = self.rates()
        comps = {name: ComponentMetrics(*c) for name, c in zip(self.topo.names, r.comps)}
        e = r.comps[self.topo.edge]
        edge = ComponentMetrics(r.edge_rps, r.edge_error, r.edge_p50, r.edge_p99, e[4], e[5])
        failing = tuple(rule.name for rule, v in zip(self.rules, r.violated) if v)
        return Metrics(self.state.t, edge, comps, failing)

    def mark_phase(self, phase: Phase) -> None:
        self.state.phase = phase

    def close(self) -> None:
        """Drop the state and caches for good (a profile already handed out stays valid)."""
        self._live, self._closed = False, True
        self.state = _State()
        self.profile = {}
        self._rates = self._rates_key = None
        self._noise_cache.clear()

    def __enter__(self) -> SimShadow:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check(self) -> None:
        if not self._live:
            raise BackendUnavailable("this sim shadow is closed: make a new one" if self._closed
                                     else "launch() the sim shadow first")

    def snapshot(self) -> Any:
        self._check()
        return _copy_state(self.state)

    def restore(self, snapshot: Any) -> None:
        self._check()
        self.state = _copy_state(snapshot)
        self._touch()

    @contextmanager
    def cost_cap(self, weights: CostWeights, limit: float) -> Iterator[None]:
        """See :class:`~shadowrl.shadow.base.CostCapping`: checked after every integration
        segment, so the cost when it stops is past ``limit`` by at most one segment's."""
        if self._cap is not None:
            raise RuntimeError("cost_cap blocks do not nest")
        self._cap = _Cap(weights, limit)
        try:
            yield
        finally:
            self._cap = None

    def cost_floor(self, weights: CostWeights, steps: Sequence[Step],
                   end_s: float) -> Callable[[float], float]:
        """See :class:`~shadowrl.shadow.base.CostFloor`: what an incident no step can fix
        is sure to cost until ``end_s`` (:mod:`shadowrl.shadow.sim.floor`)."""
        self._check()
        return cost_floor(self, weights, steps, end_s)

    def state_key(self) -> tuple[Any, ...]:
        """Every state field except the transient ones, frozen and floats rounded; a warming
        cache's warm_since as the time since."""
        st = self.state
        since = tuple(round(st.t - x, 4) if w < 1.0 else 0.0
                      for x, w in zip(st.warm_since, st.warm_base))
        return (*[_freeze(getattr(st, name)) for name in _KEYED], since)

    def _touch(self) -> None:
        self.state.version = next(_VERSIONS)
        self._epoch += 1

    def _touch_warmth(self) -> None:
        """Like :meth:`_touch` after a change of cache warmth only."""
        self.state.version = next(_VERSIONS)
        self._w_epoch += 1

    def _touch_impulse(self) -> None:
        """Like :meth:`_touch` after a change of ``impulse`` only."""
        self.state.version = next(_VERSIONS)
        self._i_epoch += 1

    def jitter(self, key: str, k: int = 0) -> float:
        """Seeded log-normal duration multiplier, independent of step order (common numbers)."""
        cache_key = (key, k)
        value = self._jitter_cache.get(cache_key)
        if value is None:
            # a pure function of (seed, key, k, sigma): kept across launches of the same seed
            sigma = self._jitter_sigma
            memo_key = (self.seed, key, k, sigma)
            value = _JITTER_MEMO.get(memo_key)
            if value is None:
                rng = np.random.default_rng(_stable_seed("jitter", self.seed, key, k))
                value = float(math.exp(rng.normal(0.0, sigma) - sigma**2 / 2))
                if len(_JITTER_MEMO) >= 65536:
                    _JITTER_MEMO.clear()
                _JITTER_MEMO[memo_key] = value
            self._jitter_cache[cache_key] = value
        return value

    # ------------------------------------------------------------------ physics

    def _load(self, t: float) -> float:
        inj = self.injection
        mult = inj.load_multiplier if inj else 1.0
        offset = inj.start_offset_s if inj else 0.0
        size = self._block_s
        block = step_index(t, 0.0, size)
        noise = self._noise[block % len(self._noise)]
        return (self.scenario.deployment.traffic.rps * mult * noise
                * self._pattern(offset + block * size + size / 2))

    def _progress(self, eff: ActiveEffect, t: float) -> float:
        """How far an effect has developed at ``t`` (0..1 or a replayed shape value)."""
        if self.injection is None:
            return 0.0
        quantum = self._quantum_s
        q = step_index(t, self.injection.onset_s, quantum) + 1
        if q <= 0:
            return 0.0
        if eff.shape:
            idx = int((q - 1) * quantum // eff.shape_step_s)
            return eff.shape[idx] if idx < len(eff.shape) else eff.shape[-1]
        if eff.ramp_s <= 0:
            return 1.0
        return min(1.0, q * quantum / eff.ramp_s)

    def _fault_share(self) -> float:
        inj, st = self.injection, self.state
        if inj is None or st.cause_fixed:
            return 0.0
        kind = inj.cause_kind
        if kind == "external":
            return 1.0
        i = self.topo.index[inj.cause_target] if inj.cause_target else -1
        if kind == "schema":
            return 0.0 if st.schema_prev[i] else 1.0
        if kind == "flag":
            return 0.0 if (inj.cause_target, inj.cause_flag) in st.flags_off else 1.0
        b = st.buckets[i]
        total = b[0] + b[1] + b[2] + b[3]
        if total <= EPS:
            return 0.0
        return (b[LL] + b[LP]) / total if kind == "version" else (b[LL] + b[PL]) / total

    def _quantum(self, t: float) -> int:
        """The effect quantum holding ``t``, counted from the onset; -1 before it, -2 from
        the effects' end on (fully developed: constant from there)."""
        inj = self.injection
        if inj is None:
            return -1
        q = step_index(t, inj.onset_s, self._quantum_s)
        if q < 0:
            return -1
        return -2 if t >= self._effect_end else q

    def _key(self, t: float) -> tuple[Any, ...]:
        return (self.state.version, step_index(t, 0.0, self._block_s), self._quantum(t))

    def rates(self, t: float | None = None) -> _Rates:
        t = self.state.t if t is None else t
        key = self._key(t)
        if key != self._rates_key or self._rates is None:
            self._rates = self._compute(t)
            self._rates_key = key
        return self._rates

    # The layers of _compute. Each applies the shared formulas (topology.py) or repeats the
    # plain arithmetic in the same order; where a term is left out it is an exact no-op (a
    # product with 1.0, a sum with 0.0).

    def _struct_layer(self) -> None:
        """Derived from the discrete state except warmth and impulses: once per change."""
        st, n, wf = self.state, self._n, self._wf
        buckets = st.buckets
        caps = []
        conc = self._conc
        servers = conc[:]  # datastores: their own; caches: 0 (no queue)
        replicas = [1.0] * n
        pending = st.pending
        for i, capacity in self._flow:
            b = buckets[i]
            ready = b[0] + b[1] + b[2] + b[3]
            caps.append(ready * capacity)
            servers[i] = round(ready * conc[i])
            replicas[i] = ready + pending[i]
        self._v_caps = caps
        self._v_servers = servers
        self._v_replicas = replicas
        online, p = st.online, self.params
        self._v_stores = [(i, online_capacity(cap, online[i], p)) for i, cap in self._stores]
        compat = [0.0] * n
        lock = [0.0] * n
        schema_prev, locked = st.schema_prev, st.locked
        for d, backward_compatible, callers in self._compat:
            for c in callers:
                b = buckets[c]
                total = b[0] + b[1] + b[2] + b[3]
                if total <= EPS:
                    continue
                live = (b[LL] + b[LP]) / total
                if schema_prev[d]:
                    mismatch = live  # the live app cannot run on the previous schema
                elif not backward_compatible:
                    mismatch = 1.0 - live
                else:
                    mismatch = 0.0
                mismatch *= p.incompatible_share
                compat[c] = 1.0 - (1.0 - compat[c]) * (1.0 - mismatch)
                if locked[d]:
                    lock[c] = 1.0 - (1.0 - lock[c]) * (1.0 - wf)
        self._v_m2 = [e if e < 1.0 else 1.0 for e in compat]  # min(1.0, e)
        self._v_m5 = [e if e < 1.0 else 1.0 for e in lock]
        self._v_share = self._fault_share()
        self._v_key = self._epoch

    def _warmth_layer(self) -> None:
        """Cache misses: the share of a caller's traffic passed on, and latency weights."""
        warmth, hit = self.state.warmth, self._hit
        self._v_factor = edge_factors(self.topo, warmth)
        lat = self._lat_plain[:]  # weight 1.0 (exact) where no cache is in between
        for k, c in self._lat_caches:
            i, j, _ = lat[k]
            lat[k] = (i, j, cache_miss(hit[c], warmth[c]))
        self._v_lat = lat
        self._w_key = (self._epoch, self._w_epoch)

    def _impulse_layer(self) -> None:
        impulse = self.state.impulse
        self._v_m3 = ([e if e < 1.0 else 1.0 for e in (impulse.get(i, 0.0)
                                                      for i in range(self._n))]
                      if impulse else [0.0] * self._n)
        self._v_m3_any = any(self._v_m3)
        self._i_key = (self._epoch, self._i_epoch)

    def _load_layer(self, key: tuple[Any, ...], load: float) -> None:
        """Load flow, utilisation, shedding and the queueing latency multipliers: once per
        state and load block. (A cache never queues: its multipliers are the idle ones.)"""
        p = self.params
        caps, stores = self._v_caps, self._v_stores
        slow = self._e_slow
        if slow is not None:  # slowed components serve fewer requests/s
            caps = [c / slow[i] for (i, _), c in zip(self._flow, caps)]
            stores = [(i, c / slow[i]) for i, c in stores]
        rps, rho, shed = load_flow(self.topo, load, self._v_factor, caps, stores)
        # the error without incident or dropped-request errors (m1 = m3 = 0); the overload
        # error m4 is the shed share (at most 1, so min(1, shed) is itself)
        self._l_err = [1.0 - (1.0 - m2) * (1.0 - e) * (1.0 - m5)
                       for m2, e, m5 in zip(self._v_m2, shed, self._v_m5)]
        self._l_cpu, self._l_mem = usage(rho, self._zeros, self._zeros, p)  # without effects
        self._l_rps, self._l_m4, self._l_rho = rps, shed, rho
        self._l_m50, self._l_m99 = latency_curves(rho, self._v_servers)
        self._l_key = key

    def _effect_layer(self, t: float, share: float) -> None:
        """The incident's and commands' effects: once per distinct set of strengths."""
        # _progress depends on this only: -1 nothing has developed yet, -2 fully developed
        quantum = self._quantum(t)
        if quantum == -2 and not self._saturated:
            quantum = step_index(t, self.injection.onset_s, self._quantum_s)  # type: ignore
        cmd = self.state.command_effects
        key = (quantum, share, cmd)
        if key == self._e_key:
            return
        n = self._n
        err_add = [0.0] * n
        lat_factor = [1.0] * n
        lat_add = [0.0] * n
        cpu_add = [0.0] * n
        mem_add = [0.0] * n
        for i, eff in self._effect_list:
            p = self._progress(eff, t) * share
            if p <= 0:
                continue
            self._apply_effect(eff, p, i, err_add, lat_factor, lat_add, cpu_add, mem_add)
        index = self.topo.index
        for eff in cmd:
            self._apply_effect(eff, 1.0, index[eff.target], err_add, lat_factor, lat_add,
                               cpu_add, mem_add)
        base = self.topo.base_latency_ms
        self._e_lat = [base[i] * lat_factor[i] + lat_add[i] for i in range(n)]
        # how many times slower each component serves (service_time_share of the added
        # latency keeps its workers busy); None when nothing is slowed or the share is 0
        share_busy = self.params.service_time_share
        slow = [1.0 + share_busy * (lat / b - 1.0) if b > 0 and lat > b else 1.0
                for lat, b in zip(self._e_lat, base)] if share_busy > 0 else None
        self._e_slow = slow if slow is not None and any(x > 1.0 for x in slow) else None
        self._e_m1 = m1 = [e if e < 1.0 else 1.0 for e in err_add]
        self._e_m1_any = any(m1)
        # per component, or None when no effect changes cpu or memory
        self._e_usage = (cpu_add, mem_add) if any(cpu_add) or any(mem_add) else None
        self._e_key = key

    def _compute(self, t: float) -> _Rates:
        epoch = self._epoch
        if self._v_key != epoch:
            self._struct_layer()
        if self._w_key != (epoch, self._w_epoch):
            self._warmth_layer()
        if self._i_key != (epoch, self._i_epoch):
            self._impulse_layer()
        block = step_index(t, 0.0, self._block_s)
        load = self._load_cache.get(block)
        if load is None:
            load = self._load_cache[block] = self._load(t)
        self._effect_layer(t, self._v_share)  # before the load: a slowdown costs capacity
        slow = self._e_slow
        lkey = (epoch, self._w_epoch, block, None if slow is None else tuple(slow))
        if self._l_key != lkey:
            self._load_layer(lkey, load)
        return self._assemble(load)

    def _assemble(self, load: float) -> _Rates:
        """Latency totals, errors and rules from the layers."""
        rps = self._l_rps
        # latency, bottom-up over the tree: each component's own (M/M/c), plus its callees'
        own, timeout = self._e_lat, self._timeout_ms
        p50 = queue_latency_ms(own, self._l_m50, LN2, timeout)
        p99 = queue_latency_ms(own, self._l_m99, LN100, timeout)
        for i, j, w in self._v_lat:
            p50[i] += w * p50[j]
            p99[i] += w * p99[j]

        # error sources per component, as shares of that component's requests:
        # incident (m1), compatibility (m2), dropped (m3), overload (m4), write lock (m5).
        # err = 1 - prod(1 - m) in that order; without m1 and m3 (factors of exactly 1.0)
        # it is the load layer's.
        m1s, m2s, m3s, m4s, m5s = self._e_m1, self._v_m2, self._v_m3, self._l_m4, self._v_m5
        errs = self._l_err
        if self._e_m1_any or self._v_m3_any:
            errs = [1.0 - ((1.0 - m1) * (1.0 - m2) * (1.0 - m3) * (1.0 - m4) * (1.0 - m5))
                    if m1 or m3 else e
                    for e, m1, m2, m3, m4, m5 in zip(errs, m1s, m2s, m3s, m4s, m5s)]
        s_inc = s_compat = s_drop = s_over = s_lock = 0.0
        survive = 1.0
        if load > 0:
            for i in self._reach_list:
                err = errs[i]
                if err > 0:
                    x = rps[i] / load
                    reach = x if x < 1.0 else 1.0
                    survive *= 1.0 - err * reach
                    s_inc += m1s[i] * reach
                    s_compat += m2s[i] * reach
                    s_drop += m3s[i] * reach
                    s_over += m4s[i] * reach
                    s_lock += m5s[i] * reach
        extra = self._e_usage
        cpus, mems = (self._l_cpu, self._l_mem) if extra is None else usage(
            self._l_rho, extra[0], extra[1], self.params)
        comps = list(zip(rps, errs, p50, p99, cpus, mems))
        edge_err = 1.0 - survive
        total_src = s_inc + s_compat + s_drop + s_over + s_lock
        if total_src > 0:
            by_source = {"incident": edge_err * s_inc / total_src,
                         "compatibility": edge_err * s_compat / total_src,
                         "dropped": edge_err * s_drop / total_src,
                         "overload": edge_err * s_over / total_src,
                         "write_lock": edge_err * s_lock / total_src}
        else:
            by_source = {"incident": s_inc, "compatibility": s_compat, "dropped": s_drop,
                         "overload": s_over, "write_lock": s_lock}
        edge = self.topo.edge
        ec = comps[edge]
        violated = []
        for scope, m, above, below in self._rule_eval:
            if scope < 0:
                value = edge_err if m == 1 else load if m == 0 else ec[m]
            else:
                value = comps[scope][m]
            violated.append(value > above if above is not None else value < below)
        slow = slow_share(p50[edge], p99[edge], self._slow_ms)
        bad = edge_err + (1.0 - edge_err) * slow if slow > 0.0 else edge_err
        seen = 1.0 if True in violated else 0.0
        share = self.params.observed_share
        if share > 0 and seen:
            seen = self._seen(load, edge_err, comps, violated, share)
        return _Rates(load, edge_err, by_source, tuple(violated), comps, p50[edge], p99[edge],
                      bad, self._v_replicas, seen)

    def _seen(self, load: float, edge_err: float, comps: list[tuple[float, ...]],
              violated: list[bool], share: float) -> float:
        """How likely a sample of ``share`` x rps requests shows some violated rule: an
        error-rate rule needs more failures than its threshold allows in the sample (Poisson
        counts); any other violated rule always shows."""
        unseen = 1.0
        for (scope, m, above, _below), v in zip(self._rule_eval, violated):
            if not v:
                continue
            if m != 1 or above is None:
                return 1.0
            rps, err = (load, edge_err) if scope < 0 else (comps[scope][0], comps[scope][1])
            n = rps * share
            unseen *= poisson_cdf(math.floor(n * above + EPS), n * err)
        return 1.0 - unseen

    @staticmethod
    def _apply_effect(eff: ActiveEffect, p: float, i: int, err_add: list[float],
                      lat_factor: list[float], lat_add: list[float], cpu_add: list[float],
                      mem_add: list[float]) -> None:
        if eff.metric == "error_rate":
            err_add[i] = min(1.0, err_add[i] + eff.add * p)
        elif eff.metric == "latency":
            lat_factor[i] *= 1.0 + (eff.factor - 1.0) * p
            lat_add[i] += eff.add * p
        elif eff.metric == "cpu":
            cpu_add[i] += eff.add * p
        elif eff.metric == "memory":
            mem_add[i] += eff.add * p

    # ------------------------------------------------------------------ time

    def _cache_warmup(self, i: int) -> float:
        sc = self.scenario.deployment
        if self.topo.kinds[i] != "cache":
            return EPS
        return sc.caches[i - len(sc.services) - len(sc.datastores)].warmup

    def _sync_warmth(self) -> None:
        """Set each warming cache's warmth to its closed form at the current time: linear
        from ``warm_base`` at ``warm_since`` at ``warm_rate``, evaluated at the start of the
        current quantum since then, so it depends on time alone, not on how time was cut
        into segments."""
        st = self.state
        t, quantum = st.t, self._quantum_s
        changed = False
        for i in self._caches:
            base = st.warm_base[i]
            if base >= 1.0:
                continue
            since = st.warm_since[i]
            k = step_index(t, since, quantum)
            w = warmth_at(base, st.warm_rate[i], k * quantum, self._warmup[i])
            if w >= 1.0:
                st.warm_base[i], st.warm_since[i] = 1.0, t
            if w != st.warmth[i]:
                st.warmth[i] = w
                changed = True
        if changed:
            self._touch_warmth()

    def _set_warming(self, i: int, base: float, rate: float) -> None:
        """From now on cache ``i`` warms from ``base`` at ``rate``."""
        st = self.state
        st.warm_base[i], st.warm_since[i], st.warm_rate[i] = base, st.t, rate
        st.warmth[i] = base
        self._touch_warmth()

    def _warmth_now(self, i: int) -> float:
        """Cache ``i``'s exact warmth now (not quantised): where a change of rate starts."""
        st = self.state
        return warmth_at(st.warm_base[i], st.warm_rate[i], st.t - st.warm_since[i],
                         self._warmup[i])

    def advance(self, seconds: float) -> Span:
        self._check()
        return self._integrate(seconds, None)

    def advance_until(self, seconds: float, observe: Observer) -> Span:
        self._check()
        return self._integrate(seconds, observe)

    def _integrate(self, seconds: float,  # noqa: C901 - the hot loop, inlined
                   stop: Observer | None) -> Span:
        """Integrate ``seconds`` of shadow time; ``stop`` may end it early at a returned time.

        Segments end at load blocks, effect and warm-up quanta, and the caller's target, the
        same with and without a profile; a profile samples each whole second of a segment.
        Inside a step, its deadline ends the integration there and raises
        :class:`StepTimeout`, and its cancel token, checked before each segment, raises
        :class:`_Cancelled`; both carry the span so far, for :meth:`run_step` to catch."""
        st = self.state
        t_end = st.t + seconds
        if t_end > MAX_SHADOW_S + EPS and st.step is None:
            raise self._limit_error(f"it asks for shadow time up to {t_end:.0f}s, past the "
                                    f"simulator's horizon of {MAX_SHADOW_S / 3600:g}h")
        deadline, timed_out = self._deadline, False
        if deadline is not None and t_end > deadline + EPS:
            t_end, timed_out = deadline, True
        cancel, cancelled = self._cancel, False
        span = Span(st.t, st.t)
        inj = self.injection
        onset = inj.onset_s if inj is not None else math.inf
        effect_end = self._effect_end
        record = self.record_profile
        warm_base, warm_since, caches = st.warm_base, st.warm_since, self._caches
        block_s, quantum = self._block_s, self._quantum_s
        t_stop = t_end - EPS
        downtime = failed = requests = bad = 0.0
        outage = peak = 0.0  # full-outage seconds, highest edge error rate
        violated_until = None  # end of the last violated segment
        by_src = span.errors_by_source
        cut = None
        work, segment_work, row_work = st.work, self._segment_work, self._row_work
        budget = MAX_WORK if st.step is None else STEPS_WORK
        exhausted = False
        cap, over = self._cap, False
        while st.t < t_stop:
            if cancel is not None and cancel.cancelled:
                cancelled = True
                break
            work += segment_work
            if work > budget:
                exhausted = True
                break
            t0 = st.t
            # next boundary: load block, effect quantum, warm-up quantum (from when each
            # cache's warming last changed), the caller's target; indices as step_index
            # counts them, so a segment starting at a boundary is in the step it starts
            block = step_index(t0, 0.0, block_s)
            nxt = step_end(block, 0.0, block_s)
            if t_end <= nxt:
                nxt = t_end
            q = -1
            if inj is not None:
                q = step_index(t0, onset, quantum)
                if q < 0:
                    q = -1
                    if onset < nxt:
                        nxt = onset
                elif t0 < effect_end:
                    x = step_end(q, onset, quantum)
                    if x < nxt:
                        nxt = x
                else:
                    q = -2
            warming = False
            for i in caches:
                if warm_base[i] < 1.0:
                    warming = True
                    x = step_end(step_index(t0, warm_since[i], quantum), warm_since[i], quantum)
                    if x < nxt:
                        nxt = x
            if nxt > t0 + EPS:
                t1 = nxt
            else:
                t1 = t0 + quantum
                if t_end <= t1:
                    t1 = t_end
            # rates, through the one-entry cache keyed like _key()
            key = (st.version, block, q)
            r = self._rates
            if key != self._rates_key or r is None:
                r = self._rates = self._compute(t0)
                self._rates_key = key
            if stop is not None:
                cut = stop(t0, t1, r.violated)
                if cut is not None:
                    t1 = max(t0, min(t1, cut))
            dt = t1 - t0
            if dt > 0:
                if True in r.violated:
                    downtime += dt * r.seen
                    violated_until = t1
                edge_rps = r.edge_rps
                requests += edge_rps * dt
                if r.edge_bad > 0:
                    bad += edge_rps * r.edge_bad * dt
                if r.edge_error > 0:
                    failed += edge_rps * r.edge_error * dt
                    if r.edge_error > peak:
                        peak = r.edge_error
                    if r.edge_error >= FULL_OUTAGE_ERROR:
                        outage += dt
                    for k, v in r.by_source.items():
                        if v > 0:
                            by_src[k] = by_src.get(k, 0.0) + edge_rps * v * dt
                if record:
                    second = math.ceil(t0 - EPS)
                    while second < t1 - EPS:
                        self._record(float(second), r)
                        second += 1
                        work += row_work
            st.t = t1
            if warming:
                self._sync_warmth()
            if cap is not None and cap.spent(downtime, failed, bad, outage) > cap.limit:
                over = True
                break
            if stop is not None and t1 < t_stop and cut is not None and t1 >= cut - EPS:
                break
        span.downtime_s = downtime
        span.failed_requests = failed
        span.requests = requests
        span.bad_requests = bad
        span.outage_s = outage
        span.peak_error = peak
        span.violated_until_s = violated_until
        span.end_s = st.t
        st.work = work
        if cap is not None:
            if over:
                raise CostCapReached(cap.spent(downtime, failed, bad, outage), cap.limit)
            cap.downtime_s += downtime
            cap.failed += failed
            cap.bad += bad
            cap.outage_s += outage
        if exhausted:
            if st.step is None:
                raise self._limit_error(f"it needs more than the simulator's work "
                                        f"budget ({MAX_WORK} units, reached at "
                                        f"{st.t:.0f}s of shadow time)")
            self._limit_hit = "work"
            raise StepTimeout("the simulator's work budget ran out inside the step", span)
        if cancelled:
            raise _Cancelled(span)
        if timed_out and st.t >= t_stop:
            raise StepTimeout(f"the step's deadline at {t_end:.3f}s fell inside it", span)
        return span

    def _limit_error(self, why: str) -> SimulationLimitExceeded:
        """The error for a breach search or verification beyond the simulator's limits."""
        problem = scenario_problem(self.scenario, (), f"too much to simulate: {why}; "
                                   f"shorten the scenario's durations or shrink the "
                                   f"deployment").problems
        return SimulationLimitExceeded(problem)

    def _record(self, t: float, r: _Rates) -> None:
        p = self.profile
        phase = self.state.phase
        if phase == "incident" and (self.injection is None or t < self.injection.onset_s):
            phase = "normal"  # the run-up to the breach, before the incident starts
        edge = self.topo.edge
        rows = [("edge", (r.edge_rps, r.edge_error, r.edge_p50, r.edge_p99,
                          *r.comps[edge][4:]), r.replicas[edge])]
        rows += list(zip(self.topo.names, r.comps, r.replicas))
        for name, c, replicas in rows:
            p["t"].append(t)
            p["component"].append(name)
            p["rps"].append(c[0])
            p["error_rate"].append(c[1])
            p["latency_p50_ms"].append(c[2])
            p["latency_p99_ms"].append(c[3])
            p["cpu"].append(c[4])
            p["memory"].append(c[5])
            p["replicas"].append(replicas)
            p["step"].append(self.state.step)
            p["phase"].append(phase)

    # ------------------------------------------------------------------ steps

    def run_step(self, step: Step, settings: dict[str, Any], *, timeout_s: float | None = None,
                 cancel: CancelToken | None = None) -> StepResult:
        """Run ``step``; a timeout or a cancellation stops it part-way (see :meth:`_stopped`).

        ``timeout_s`` is in shadow seconds from the step's start; ``cancel`` is checked
        before the step and between its integration segments."""
        self._check()
        st = self.state
        start = st.t
        span = Span(start, start)
        if cancel is not None and cancel.cancelled:
            return StepResult(step.name, step.action, "cancelled", dict(settings), span,
                              "cancelled before it started")
        st.phase, st.step = "rollback", step.name
        status: StepStatus
        # the step's own timeout, or the simulator's horizon if that comes first
        own = math.inf if timeout_s is None else start + timeout_s
        self._deadline = min(own, max(start, MAX_SHADOW_S))
        self._cancel = cancel
        self._limit_hit = None
        try:
            status, message = self._act(step, settings, span)
        except StepTimeout as stop:
            span.add(stop.span)
            status = "timed_out"
            if self._limit_hit == "work":
                message = (f"stopped part-way: the simulator's work budget for steps "
                           f"({STEPS_WORK} units per rehearsal) ran out")
            elif own <= MAX_SHADOW_S:
                message = f"stopped part-way at its {timeout_s:g}s timeout"
            else:
                message = (f"stopped part-way at the simulator's horizon "
                           f"({MAX_SHADOW_S / 3600:g}h of shadow time since launch)")
            self._stopped()
        except _Cancelled as stop:
            span.add(stop.span)
            status, message = "cancelled", "stopped part-way on request"
            self._stopped()
        finally:
            self._deadline = None
            self._cancel = None
        st.step = None
        span.start_s, span.end_s = start, st.t
        return StepResult(step.name, step.action, status, dict(settings), span, message)

    def _stopped(self) -> None:
        """A step stopped part-way leaves what it changed (replicas it took out of service
        stay out, versions and schema stay where they got), but what lives only while its
        process runs ends with it: table locks, an online migration's load, a command's
        effects, dropped-request errors, a cache warmer, replicas that were starting."""
        st, n = self.state, self._n
        st.locked = [False] * n
        st.online = [False] * n
        st.command_effects = ()
        st.impulse = {}
        st.pending = [0.0] * n
        for i in self._caches:
            if st.warm_rate[i] != 1.0:
                self._set_warming(i, self._warmth_now(i), 1.0)
        self._touch()

    def _act(self, step: Step, settings: dict[str, Any], span: Span) -> tuple[StepStatus, str]:
        """The step's action, its costs added to ``span``: ``(status, message)``."""
        st = self.state
        status: StepStatus = "ok"
        message = ""
        target = self.topo.index.get(step.target or "", -1)
        action = step.action
        if action == "scale":
            self._scale(step, target, int(settings["replicas"]), span)
        elif action in ("rollback_version", "revert_config"):
            dim = 0 if action == "rollback_version" else 1
            self._replace(step, target, dim, int(settings.get("batch", 1)),
                          float(settings.get("drain", 30.0)), int(settings.get("surge", 0)),
                          span)
        elif action == "migrate_down":
            status, message = self._migrate_down(step, target, bool(settings.get("online")),
                                                 span)
        elif action == "disable_flag":
            span.add(self.advance(self._flag_toggle_s * self.jitter(step.name)))
            st.flags_off.add((step.target or "", str(settings["flag"])))
            self._touch()
        elif action == "flush_cache":
            span.add(self.advance(self._action_s))
            self._set_warming(target, 0.0, 1.0)
        elif action == "warm_cache":
            warmth = self._warmth_now(target)
            self._set_warming(target, warmth, self._warm_speedup)
            remaining = warming_s(1.0 - warmth, self._cache_warmup(target), self.params)
            quantum = self._quantum_s
            quanta = math.ceil(remaining / quantum - 1e-9)
            span.add(self.advance(max(self._action_s, quanta * quantum)))
            self._set_warming(target, 1.0, 1.0)
        elif action == "wait":
            span.add(self.advance(float(settings["duration"])))
        elif action == "command":
            self._command(step, span)
        return status, message

    def _scale(self, step: Step, i: int, replicas: int, span: Span) -> None:
        st = self.state
        b = st.buckets[i]
        current = round(sum(b))
        if replicas > current:
            svc = self.scenario.deployment.services[i]
            st.pending[i] += replicas - current  # starting: running, not ready yet
            self._touch()
            span.add(self.advance(svc.startup * self.jitter(step.name)))
            ver, cfg = st.template[i]
            b[ver * 2 + cfg] += replicas - current
            st.pending[i] -= replicas - current
        elif replicas < current:
            span.add(self.advance(self._action_s))
            self._take(b, current - replicas, dim=None)
        else:
            span.add(self.advance(self._action_s))
        self._touch()

    @staticmethod
    def _take(b: list[float], count: float, dim: int | None) -> None:
        """Remove ``count`` ready replicas, from the live side of ``dim`` when given."""
        pools = [LL, LP, PL, PP] if dim is None else ([LL, LP] if dim == 0 else [LL, PL])
        if dim is None:
            pools.sort(key=lambda k: -b[k])
        for k in pools:
            took = min(b[k], count)
            b[k] -= took
            count -= took
            if count <= EPS:
                return

    def _replace(self, step: Step, i: int, dim: int, batch: int, drain: float, surge: int,
                 span: Span) -> None:
        """Rolling replacement in rounds, as Kubernetes rolls with maxSurge ``surge`` and
        maxUnavailable ``max(0, batch - surge)``: a round replaces ``max(batch, surge)``
        replicas. Up to ``surge`` replacements start beside the old replicas and, once ready
        (``startup``), as many old ones leave service, drain and stop; the rest (``batch -
        surge``, when more) leave service at once, drain, stop and are replaced by replicas
        ready ``startup`` later. Either way a round lasts startup + drain + stop, and with
        ``surge >= batch`` no ready capacity is lost. One startup jitter per round (key
        ``k``), as per batch without surge."""
        st = self.state
        svc = self.scenario.deployment.services[i]
        st.template[i][dim] = 1
        b = st.buckets[i]
        live_pools = (LL, LP) if dim == 0 else (LL, PL)
        remaining = b[live_pools[0]] + b[live_pools[1]]
        width = rollout_width(batch, surge)
        # in-flight requests still running when a replica stops are dropped
        tau = svc.inflight_time
        unfinished = max(0.0, 1.0 - drain / tau) ** 2 if tau > 0 else 0.0
        pending = st.pending
        # a round's events: (time, order, kind, group); group 0: old replicas out at once
        # (replaced after they stop), group 1: the surge
        events: list[tuple[float, int, str, int]] = []
        order = itertools.count()

        def at(t: float, kind: str, group: int) -> None:
            heapq.heappush(events, (t, next(order), kind, group))

        k = 0
        while remaining > EPS:
            n = min(float(width), remaining)
            covered = min(float(surge), n)  # replaced by surge replicas first
            startup = svc.startup * self.jitter(step.name, k)
            size = (n - covered, covered)
            per_replica = [0.0, 0.0]
            taken: list[list[float]] = [[], []]
            impulses: dict[int, float] = {}
            if size[0] > EPS:
                at(st.t, "leave", 0)
            if size[1] > EPS:
                pending[i] += size[1]  # starting beside the old replicas
                self._touch()
                at(st.t + startup, "surge_ready", 1)
            while events:
                t_ev, _, kind, g = heapq.heappop(events)
                if t_ev > st.t:
                    span.add(self.advance(t_ev - st.t))
                if kind == "surge_ready":
                    # the surge takes over from as many old replicas, which start draining
                    # (pending: ready surge out, draining old in)
                    per_replica[1] = self.rates().comps[i][0] / max(sum(b), EPS)
                    self._add_replaced(b, self._take_from(b, size[1], dim), dim)
                    self._touch()
                    at(st.t + drain, "stop", 1)
                elif kind == "leave":
                    per_replica[0] = self.rates().comps[i][0] / max(sum(b), EPS)
                    taken[0] = self._take_from(b, size[0], dim)
                    pending[i] += size[0]
                    self._touch()
                    at(st.t + drain, "stop", 0)
                elif kind == "stop":
                    dropped = size[g] * per_replica[g] * tau * 0.5 * unfinished
                    if dropped > 0:
                        load_i = max(self.rates().comps[i][0], EPS)
                        impulses[g] = min(1.0, dropped / load_i)
                        self._set_impulse(i, impulses)
                        at(st.t + self._drop_impulse_s, "impulse_end", g)
                        at(st.t + self._stop_s, "stopped", g)
                    else:
                        at(st.t + self._stop_s, "stopped", g)
                elif kind == "impulse_end":
                    impulses.pop(g, None)
                    self._set_impulse(i, impulses)
                elif kind == "stopped":
                    if g == 0:
                        at(st.t + startup, "ready", 0)  # its replacement starts
                    else:
                        pending[i] -= size[1]
                        self._touch()
                elif kind == "ready":
                    pending[i] -= size[0]
                    self._add_replaced(b, taken[0], dim)
                    self._touch()
            remaining -= n
            k += 1

    def _set_impulse(self, i: int, impulses: dict[int, float]) -> None:
        """Service ``i``'s dropped-request error share: the sum of its stopping groups'."""
        st = self.state
        if impulses:
            total = sum(impulses.values())
            st.impulse[i] = total if total < 1.0 else 1.0
        else:
            st.impulse.pop(i, None)
        self._touch_impulse()

    def _take_from(self, b: list[float], count: float, dim: int) -> list[float]:
        """Take ``count`` ready replicas from the live side of ``dim``; what each pool lost."""
        before = b[:]
        self._take(b, count, dim)
        return [x - y for x, y in zip(before, b)]

    @staticmethod
    def _add_replaced(b: list[float], taken: list[float], dim: int) -> None:
        """Ready replacements for ``taken``: the same pools with ``dim`` moved to previous."""
        for pool, count in enumerate(taken):
            if count > 0:
                ver, cfg = divmod(pool, 2)
                if dim == 0:
                    ver = 1
                else:
                    cfg = 1
                b[ver * 2 + cfg] += count

    def _migrate_down(self, step: Step, i: int, online: bool, span: Span) -> tuple[str, str]:
        st = self.state
        ds = self.scenario.deployment.datastores[i - len(self.scenario.deployment.services)]
        mig = ds.migration
        assert mig is not None  # checked by the scenario loader
        if not mig.reversible:
            span.add(self.advance(self._failed_migration_s))
            return "failed", f"migration on '{ds.name}' is irreversible: migrate_down failed"
        if st.schema_prev[i]:
            span.add(self.advance(self._action_s))
            return "ok", "schema already at the previous version"
        duration = mig.duration * self.jitter(step.name)
        if online:
            st.online[i] = True
            self._touch()
            span.add(self.advance(duration * mig.online_factor))
            st.online[i] = False
        else:
            st.locked[i] = True
            self._touch()
            span.add(self.advance(duration))
            st.locked[i] = False
        st.schema_prev[i] = True
        self._touch()
        return "ok", ""

    def _command(self, step: Step, span: Span) -> None:
        st = self.state
        sim = step.sim
        if sim is None:
            span.add(self.advance(self._action_s))
            return
        st.command_effects = tuple(ActiveEffect(e.metric, e.target, e.add or 0.0,
                                                e.factor or 1.0) for e in sim.effects)
        self._touch()
        span.add(self.advance(sim.duration * self.jitter(step.name)))
        st.command_effects = ()
        if self.injection is not None and self.injection.incident in sim.fixes:
            st.cause_fixed = True
        self._touch()

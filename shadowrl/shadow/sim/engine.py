"""The simulated shadow: seeded, deterministic, event-driven physics of a deployment.

Time is integrated segment by segment: between two events (a batch leaving service, a replica
becoming ready, a migration ending, a load block changing, a ramp quantum) every input is
constant, so downtime and failed requests are exact sums over segments, with no per-second
loop. When a profile is requested, segments are cut at every second and each second is
recorded: the same physics, sampled. Ramps, warm-up and load are quantised in time so both
paths give identical totals.

Physics (DESIGN.md section 3): load flows down the call tree; capacity is ready replicas times
``capacity_rps``; latency rises steeply as utilisation nears 1; shedding above 1; errors come
from the incident (on the share of traffic still served by the faulty version, config, schema
or flag), from version/schema mismatches, write locks, dropped in-flight requests and
overload. The edge error is ``1 - prod(1 - e_i)`` over the tree, each ``e_i`` weighted by the
share of edge traffic that reaches component ``i``.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shadowrl.core.injection import ActiveEffect, Injection
from shadowrl.core.results import Breach, ComponentMetrics, Metrics, Span, StepResult, VerifyResult
from shadowrl.core.spec import Cache, Datastore, Scenario, Service, Step

BLOCK_S = 60.0  # load (pattern x noise) is constant over one block
QUANTUM_S = 5.0  # ramps, replayed shapes and cache warm-up move in steps of this size
NOISE_SIGMA = 0.03  # per-block multiplicative traffic noise
JITTER_SIGMA = 0.12  # log-normal jitter of startup and migration durations
ONLINE_MIGRATION_LOAD = 0.35  # share of datastore capacity an online migration consumes
STOP_S = 2.0  # time to stop a replica after its drain
EPS = 1e-9

# bucket index = version (0 live, 1 previous) * 2 + config (0 live, 1 previous)
LL, LP, PL, PP = 0, 1, 2, 3


# State versions key the rates cache. They come from one counter and are never reused, so a
# restored snapshot can never match rates cached for the branch it replaced.
_VERSIONS = itertools.count(1)


def queue_factor(rho: float) -> float:
    """Latency multiplier from utilisation: ~1 at low load, steep as rho -> 1, capped."""
    r = min(rho, 0.97)
    return 1.0 + r**4 / (1.0 - r)


def p99_multiple(rho: float) -> float:
    """p99/p50: heavier tails under load."""
    return 2.0 + 3.0 * min(rho, 1.5)


_JITTER_MEMO: dict[tuple[int, str, int], float] = {}  # (seed, key, k) -> jitter


def _stable_seed(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode())


@dataclass
class _Topology:
    """The deployment compiled to flat lists, so the hot loop touches no pydantic objects."""

    names: list[str]
    kinds: list[str]  # service | datastore | cache
    index: dict[str, int]
    order: list[int]  # services, callers before callees
    calls: list[list[int]]
    fronted_by: dict[tuple[int, int], int]  # (caller, datastore) -> cache index
    edge: int
    reachable: list[int]
    db_callers: dict[int, list[int]]  # datastore -> services calling it directly
    capacity: list[float]
    base_latency_ms: list[float]


def _compile(sc: Scenario) -> _Topology:
    comps: list[Service | Datastore | Cache] = [
        *sc.deployment.services, *sc.deployment.datastores, *sc.deployment.caches]
    names = [c.name for c in comps]
    index = {n: i for i, n in enumerate(names)}
    kinds = (["service"] * len(sc.deployment.services) + ["datastore"] * len(
        sc.deployment.datastores) + ["cache"] * len(sc.deployment.caches))
    calls = [[index[c] for c in comp.calls] if isinstance(comp, Service) else [] for comp in comps]
    edge = index[sc.edge.name]
    order: list[int] = []
    seen: set[int] = set()

    def visit(i: int) -> None:
        if i in seen:
            return
        seen.add(i)
        for j in calls[i]:
            visit(j)
        order.append(i)

    for i, kind in enumerate(kinds):
        if kind == "service":
            visit(i)
    order = [i for i in reversed(order) if kinds[i] == "service"]
    fronted_by: dict[tuple[int, int], int] = {}
    for comp in sc.deployment.caches:
        ci = index[comp.name]
        for caller, callees in enumerate(calls):
            if ci not in callees:
                continue
            targets = comp.fronts if comp.fronts is not None else [
                names[j] for j in callees if kinds[j] == "datastore"]
            for target in targets:
                if index[target] in callees:
                    fronted_by[(caller, index[target])] = ci
    reachable: list[int] = []
    stack = [edge]
    while stack:
        i = stack.pop()
        if i not in reachable:
            reachable.append(i)
            stack.extend(calls[i])
    db_callers: dict[int, list[int]] = {}
    for caller, callees in enumerate(calls):
        for j in callees:
            if kinds[j] == "datastore":
                db_callers.setdefault(j, []).append(caller)
    capacity = [c.capacity_rps if isinstance(c, Service) else c.capacity_qps
                if isinstance(c, Datastore) else math.inf for c in comps]
    latency = [c.latency * 1000.0 for c in comps]
    return _Topology(names, kinds, index, order, calls, fronted_by, edge, reachable, db_callers,
                     capacity, latency)


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
    warmth: list[float] = field(default_factory=list)
    warm_rate: list[float] = field(default_factory=list)
    impulse: dict[int, float] = field(default_factory=dict)  # service -> extra error share
    command_effects: tuple[ActiveEffect, ...] = ()
    cause_fixed: bool = False
    step: str | None = None
    phase: str = "normal"
    version: int = 0  # bumped on every state change, keys the rates cache


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


def _copy_state(st: _State) -> _State:
    """An independent copy of a state (what ``copy.deepcopy`` gave, without its overhead)."""
    return _State(st.t, [b[:] for b in st.buckets], [x[:] for x in st.template],
                  set(st.flags_off), st.schema_prev[:], st.locked[:], st.online[:],
                  st.warmth[:], st.warm_rate[:], dict(st.impulse), st.command_effects,
                  st.cause_fixed, st.step, st.phase, st.version)


class SimShadow:
    """Simulated shadow backend. See the module docstring for the physics.

    Performance: :meth:`rates` is evaluated once per integration segment, so it is layered.
    What depends only on the discrete state (capacities, cache misses, fault share,
    compatibility and lock errors) is derived once per state change; the load flow once per
    state and load block; the incident's effects once per distinct set of effect strengths.
    Each layer repeats the arithmetic of the plain formulas in the same order, so the numbers
    are exactly those of a direct evaluation.
    """

    name = "sim"
    supports_snapshot = True

    def __init__(self, scenario: Scenario, *, record_profile: bool = False,
                 pattern: Callable[[float], float] | None = None) -> None:
        self.scenario = scenario
        self.topo = _compile(scenario)
        self.record_profile = record_profile
        self.rules = scenario.slo.rules
        self._rule_scope = [self.topo.index.get(r.scope, -1) for r in self.rules]
        self._pattern = pattern or self._builtin_pattern(scenario)
        self.state = _State()
        self.injection: Injection | None = None
        self.seed = 0
        self._noise = np.ones(1)
        self._rates: _Rates | None = None
        self._rates_key: tuple[Any, ...] | None = None
        self._jitter_cache: dict[tuple[str, int], float] = {}
        self.profile: dict[str, list[Any]] = {}
        self._effects_by_target: dict[int, list[ActiveEffect]] = {}
        self._effect_end = 0.0
        self._prepare()

    def _prepare(self) -> None:
        """Flatten everything static about the topology and the rules for the hot loop."""
        topo, dep = self.topo, self.scenario.deployment
        n = len(topo.names)
        n_svc, n_ds = len(dep.services), len(dep.datastores)
        self._n = n
        self._wf = dep.traffic.write_fraction
        self._is_cache = [k == "cache" for k in topo.kinds]
        self._hit = [dep.caches[i - n_svc - n_ds].hit_ratio if k == "cache" else 0.0
                     for i, k in enumerate(topo.kinds)]
        self._warmup = [max(self._cache_warmup(i), EPS) for i in range(n)]
        # callers before callees: (component, capacity per replica, ((callee, cache), ...))
        self._flow = [(i, topo.capacity[i],
                       tuple((j, topo.fronted_by.get((i, j), -1)) for j in topo.calls[i]))
                      for i in topo.order]
        self._lat_edges = [(i, j, topo.fronted_by.get((i, j), -1))
                           for i in reversed(topo.order) for j in topo.calls[i]]
        self._stores = [(i, topo.capacity[i]) for i, k in enumerate(topo.kinds)
                        if k == "datastore"]
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
        self._reach = [i in reachable for i in range(n)]
        self._reach_list = sorted(reachable)
        # flow edges numbered in loop order; the ones through a cache get a warmth factor
        edges, flow_static = 0, []
        for i, _cap, calls in self._flow:
            flow_static.append((i, tuple((j, edges + k) for k, (j, _c) in enumerate(calls))))
            edges += len(calls)
        self._flow_static = flow_static
        self._flow_caches = [(e, c) for e, c in enumerate(
            c for _i, _cap, calls in self._flow for _j, c in calls) if c >= 0]
        self._n_edges = edges
        self._lat_caches = [(k, c) for k, (_i, _j, c) in enumerate(self._lat_edges) if c >= 0]
        self._lat_plain = [(i, j, 1.0) for i, j, _c in self._lat_edges]
        metric_index = {"rps": 0, "error_rate": 1, "latency_p50_ms": 2, "latency_p99_ms": 3,
                        "cpu": 4, "memory": 5}
        # (component or -1 for the edge, metric index, above, below)
        self._rule_eval = [(scope, metric_index[r.metric], r.above, r.below)
                           for r, scope in zip(self.rules, self._rule_scope)]
        self._noise_cache: dict[int, list[float]] = {}
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
        self._l_key: tuple[int, int, int] | None = None
        self._e_key: tuple[Any, ...] | None = None
        self._load_cache: dict[int, float] = {}
        self._effect_list: list[tuple[int, ActiveEffect]] = []
        self._saturated = False

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _builtin_pattern(sc: Scenario) -> Callable[[float], float]:
        pattern = sc.deployment.traffic.pattern
        if pattern == "diurnal":
            # Peak at 20:00, trough at 08:00 of the shadow's local day: +-35 %.
            return lambda t: 1.0 + 0.35 * math.cos(2 * math.pi * (t - 72000.0) / 86400.0)
        if pattern == "constant":
            return lambda t: 1.0
        from shadowrl.traffic.history import load_pattern, load_series  # csv pattern, lazily

        source = getattr(sc, "_source", None)
        base = source.parent if source is not None else None
        path = pattern.csv if base is None else str(base / pattern.csv)
        return load_pattern(load_series(path, "csv", column=pattern.column))

    def launch(self, seed: int) -> None:
        topo = self.topo
        services = self.scenario.deployment.services
        self.seed = seed
        noise = self._noise_cache.get(seed)
        if noise is None:
            # relaunching with the same seed (redraws of a deviation) reuses the draw
            rng = np.random.default_rng(_stable_seed("noise", seed))
            noise = np.exp(rng.normal(0.0, NOISE_SIGMA, 720) - NOISE_SIGMA**2 / 2).tolist()
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
        self.state = st
        self.injection = None
        self._effects_by_target = {}
        self._effect_end = 0.0
        self._rates = None
        self._rates_key = None
        self._reset_caches()
        self.profile = {k: [] for k in ("t", "component", "rps", "error_rate", "latency_p50_ms",
                                        "latency_p99_ms", "cpu", "memory", "step", "phase")}

    def inject(self, injection: Injection) -> None:
        self.injection = injection
        by_target: dict[int, list[ActiveEffect]] = {}
        end = injection.onset_s
        for eff in injection.effects:
            by_target.setdefault(self.topo.index[eff.target], []).append(eff)
            span = max(eff.ramp_s, len(eff.shape) * eff.shape_step_s if eff.shape else 0.0)
            end = max(end, injection.onset_s + span)
        self._effects_by_target = by_target
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
        q = math.floor((end - onset) / QUANTUM_S) + 1
        idx = int((q - 1) * QUANTUM_S // eff.shape_step_s)
        return all(v == eff.shape[-1] for v in eff.shape[idx:])

    def now(self) -> float:
        return self.state.t

    def snapshot(self) -> Any:
        return _copy_state(self.state)

    def restore(self, snapshot: Any) -> None:
        self.state = _copy_state(snapshot)
        self._touch()

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
            # a pure function of (seed, key, k): kept across launches of the same seed
            memo_key = (self.seed, key, k)
            value = _JITTER_MEMO.get(memo_key)
            if value is None:
                rng = np.random.default_rng(_stable_seed("jitter", self.seed, key, k))
                value = float(math.exp(rng.normal(0.0, JITTER_SIGMA) - JITTER_SIGMA**2 / 2))
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
        block = int(t // BLOCK_S)
        noise = self._noise[block % len(self._noise)]
        return (self.scenario.deployment.traffic.rps * mult * noise
                * self._pattern(offset + block * BLOCK_S + BLOCK_S / 2))

    def _progress(self, eff: ActiveEffect, t: float) -> float:
        """How far an effect has developed at ``t`` (0..1 or a replayed shape value)."""
        onset = self.injection.onset_s if self.injection else math.inf
        if t < onset:
            return 0.0
        q = math.floor((t - onset) / QUANTUM_S) + 1
        if eff.shape:
            idx = int((q - 1) * QUANTUM_S // eff.shape_step_s)
            return eff.shape[idx] if idx < len(eff.shape) else eff.shape[-1]
        if eff.ramp_s <= 0:
            return 1.0
        return min(1.0, q * QUANTUM_S / eff.ramp_s)

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

    def _key(self, t: float) -> tuple[Any, ...]:
        inj = self.injection
        onset = inj.onset_s if inj else math.inf
        if t < onset:
            q = -1
        elif t >= self._effect_end:
            q = -2  # fully developed: constant from here on
        else:
            q = math.floor((t - onset) / QUANTUM_S)
        return (self.state.version, int(t // BLOCK_S), q)

    def rates(self, t: float | None = None) -> _Rates:
        t = self.state.t if t is None else t
        key = self._key(t)
        if key != self._rates_key or self._rates is None:
            self._rates = self._compute(t)
            self._rates_key = key
        return self._rates

    # The layers of _compute. Each repeats the plain formulas' arithmetic in the same order;
    # where a term is left out it is an exact no-op (a product with 1.0).

    def _struct_layer(self) -> None:
        """Derived from the discrete state except warmth and impulses: once per change."""
        st, n, wf = self.state, self._n, self._wf
        buckets = st.buckets
        caps = []
        for i, capacity, _calls in self._flow:
            b = buckets[i]
            ready = b[0] + b[1] + b[2] + b[3]
            caps.append(ready * capacity)
        self._v_caps = caps
        online = st.online
        self._v_stores = [(i, cap * (1.0 - ONLINE_MIGRATION_LOAD if online[i] else 1.0))
                          for i, cap in self._stores]
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
                compat[c] = 1.0 - (1.0 - compat[c]) * (1.0 - mismatch)
                if locked[d]:
                    lock[c] = 1.0 - (1.0 - lock[c]) * (1.0 - wf)
        self._v_m2 = [e if e < 1.0 else 1.0 for e in compat]  # min(1.0, e)
        self._v_m5 = [e if e < 1.0 else 1.0 for e in lock]
        self._v_share = self._fault_share()
        self._v_key = self._epoch

    def _warmth_layer(self) -> None:
        """Cache misses: the share of a caller's traffic passed on, and latency weights."""
        warmth, hit, wf = self.state.warmth, self._hit, self._wf
        factor = [1.0] * self._n_edges  # 1.0 (exact) where no cache is in between
        for e, c in self._flow_caches:
            factor[e] = wf + (1.0 - wf) * (1.0 - hit[c] * warmth[c])
        self._v_factor = factor
        lat = self._lat_plain[:]  # weight 1.0 (exact) where no cache is in between
        for k, c in self._lat_caches:
            i, j, _ = lat[k]
            lat[k] = (i, j, 1.0 - hit[c] * warmth[c])
        self._v_lat = lat
        self._w_key = (self._epoch, self._w_epoch)

    def _impulse_layer(self) -> None:
        impulse = self.state.impulse
        self._v_m3 = ([e if e < 1.0 else 1.0 for e in (impulse.get(i, 0.0)
                                                      for i in range(self._n))]
                      if impulse else [0.0] * self._n)
        self._v_m3_any = any(self._v_m3)
        self._i_key = (self._epoch, self._i_epoch)

    def _load_layer(self, key: tuple[int, int, int], load: float) -> None:
        """Load flow, utilisation and shedding: once per state and load block."""
        n = self._n
        rps = [0.0] * n
        rps[self.topo.edge] = load
        rho = [0.0] * n
        shed = [0.0] * n
        factor = self._v_factor
        for (i, calls), cap in zip(self._flow_static, self._v_caps):
            r = rps[i]
            x = r / cap if cap > EPS else (math.inf if r > 0 else 0.0)
            rho[i] = x
            s = 1.0 - 1.0 / x if x > 1.0 else 0.0
            shed[i] = s
            served = r * (1.0 - s)
            for j, e in calls:
                rps[j] += served * factor[e]
        for i, cap in self._v_stores:
            x = rps[i] / cap
            rho[i] = x
            shed[i] = 1.0 - 1.0 / x if x > 1.0 else 0.0
        qf = [1.0] * n
        pm = [2.0] * n  # p99_multiple(0.0) for caches
        rr = [0.0] * n
        m4 = [0.0] * n
        err = [0.0] * n
        cpu = [0.0] * n
        mem = [0.0] * n
        is_cache, m2, m5 = self._is_cache, self._v_m2, self._v_m5
        for i in range(n):
            x = rho[i]
            r = 1.0 if x > 1.0 else x  # min(rho, 1.0)
            rr[i] = r
            if not is_cache[i]:
                q = 0.97 if x > 0.97 else x  # queue_factor
                qf[i] = 1.0 + q**4 / (1.0 - q)
                pm[i] = 2.0 + 3.0 * (1.5 if x > 1.5 else x)  # p99_multiple
            e = shed[i]
            e = m4[i] = e if e < 1.0 else 1.0
            # the error without incident or dropped-request errors (m1 = m3 = 0)
            err[i] = 1.0 - (1.0 - m2[i]) * (1.0 - e) * (1.0 - m5[i])
            # cpu and memory without effects (x + 0.0 == x here: x >= 0)
            c = r + 0.0
            cpu[i] = c if c < 1.0 else 1.0
            c = 0.35 + 0.3 * r + 0.0
            mem[i] = c if c < 1.0 else 1.0
        self._l_err, self._l_cpu, self._l_mem = err, cpu, mem
        self._l_rps, self._l_m4 = rps, m4
        self._l_qf, self._l_pm, self._l_rr = qf, pm, rr
        self._l_key = key

    def _effect_layer(self, t: float, share: float) -> None:
        """The incident's and commands' effects: once per distinct set of strengths."""
        inj = self.injection
        onset = inj.onset_s if inj else math.inf
        if t < onset:
            quantum = -1  # nothing has developed yet
        elif self._saturated and t >= self._effect_end:
            quantum = -2  # fully developed, the same from here on
        else:
            quantum = math.floor((t - onset) / QUANTUM_S)  # _progress depends on this only
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
        self._e_m1 = m1 = [e if e < 1.0 else 1.0 for e in err_add]
        self._e_m1_any = any(m1)
        self._e_cpu = [(i, x) for i, x in enumerate(cpu_add) if x != 0.0]
        self._e_mem = [(i, x) for i, x in enumerate(mem_add) if x != 0.0]
        self._e_key = key

    def _compute(self, t: float) -> _Rates:
        epoch = self._epoch
        if self._v_key != epoch:
            self._struct_layer()
        if self._w_key != (epoch, self._w_epoch):
            self._warmth_layer()
        if self._i_key != (epoch, self._i_epoch):
            self._impulse_layer()
        block = int(t // BLOCK_S)
        load = self._load_cache.get(block)
        if load is None:
            load = self._load_cache[block] = self._load(t)
        lkey = (epoch, self._w_epoch, block)
        if self._l_key != lkey:
            self._load_layer(lkey, load)
        self._effect_layer(t, self._v_share)
        return self._assemble(load)

    def _assemble(self, load: float) -> _Rates:
        """Latency totals, errors and rules from the layers."""
        rps, rr = self._l_rps, self._l_rr
        # latency, bottom-up over the tree
        p50 = [a * b for a, b in zip(self._e_lat, self._l_qf)]
        p99 = [a * b for a, b in zip(p50, self._l_pm)]
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
        cpus, mems = self._l_cpu, self._l_mem
        if self._e_cpu:
            cpus = cpus[:]
            for i, a in self._e_cpu:
                x = rr[i] + a
                cpus[i] = x if x < 1.0 else 1.0
        if self._e_mem:
            mems = mems[:]
            for i, a in self._e_mem:
                x = 0.35 + 0.3 * rr[i] + a
                mems[i] = x if x < 1.0 else 1.0
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
        return _Rates(load, edge_err, by_source, tuple(violated), comps, p50[edge], p99[edge])

    def _hit_ratio(self, cache_index: int) -> float:
        return self._hit[cache_index]

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

    def advance(self, seconds: float,  # noqa: C901 - the hot loop, inlined
                stop: Callable[[float, float, _Rates], float | None] | None = None) -> Span:
        """Integrate ``seconds`` of shadow time; ``stop`` may end it early at a returned time.

        Segments end at load blocks, effect and warm-up quanta, and the caller's target, the
        same with and without a profile; a profile samples each whole second of a segment."""
        st = self.state
        t_end = st.t + seconds
        span = Span(st.t, st.t)
        inj = self.injection
        onset = inj.onset_s if inj is not None else math.inf
        effect_end = self._effect_end
        record = self.record_profile
        warmth, warm_rate, warmup = st.warmth, st.warm_rate, self._warmup
        floor = math.floor
        t_stop = t_end - EPS
        downtime = failed = requests = 0.0
        by_src = span.errors_by_source
        cut = None
        while st.t < t_stop:
            t0 = st.t
            # next boundary: load block, effect quantum, warm-up quantum, profile second
            nxt = (floor(t0 / BLOCK_S) + 1) * BLOCK_S
            if t_end <= nxt:
                nxt = t_end
            if inj is not None:
                if onset > t0:
                    if onset < nxt:
                        nxt = onset
                elif t0 < effect_end:
                    x = onset + (floor((t0 - onset) / QUANTUM_S) + 1) * QUANTUM_S
                    if x < nxt:
                        nxt = x
            warming = False
            for w in warmth:
                if w < 1.0:
                    warming = True
                    break
            if warming:
                x = (floor(t0 / QUANTUM_S) + 1) * QUANTUM_S
                if x < nxt:
                    nxt = x
            if nxt > t0 + EPS:
                t1 = nxt
            else:
                t1 = t0 + QUANTUM_S
                if t_end <= t1:
                    t1 = t_end
            # rates, through the one-entry cache keyed like _key()
            if t0 < onset:
                q = -1
            elif t0 >= effect_end:
                q = -2
            else:
                q = floor((t0 - onset) / QUANTUM_S)
            key = (st.version, int(t0 // BLOCK_S), q)
            r = self._rates
            if key != self._rates_key or r is None:
                r = self._rates = self._compute(t0)
                self._rates_key = key
            if stop is not None:
                cut = stop(t0, t1, r)
                if cut is not None:
                    t1 = max(t0, min(t1, cut))
            dt = t1 - t0
            if dt > 0:
                if True in r.violated:
                    downtime += dt
                edge_rps = r.edge_rps
                requests += edge_rps * dt
                if r.edge_error > 0:
                    failed += edge_rps * r.edge_error * dt
                    for k, v in r.by_source.items():
                        if v > 0:
                            by_src[k] = by_src.get(k, 0.0) + edge_rps * v * dt
                if record:
                    second = math.ceil(t0 - EPS)
                    while second < t1 - EPS:
                        self._record(float(second), r)
                        second += 1
            st.t = t1
            if dt > 0 and warming:
                for i, w in enumerate(warmth):
                    if w < 1.0:
                        x = w + dt * warm_rate[i] / warmup[i]
                        warmth[i] = x if x < 1.0 else 1.0
                self._touch_warmth()
            if stop is not None and t1 < t_stop and cut is not None and t1 >= cut - EPS:
                break
        span.downtime_s = downtime
        span.failed_requests = failed
        span.requests = requests
        span.end_s = st.t
        return span

    def _record(self, t: float, r: _Rates) -> None:
        p = self.profile
        phase = self.state.phase
        if phase == "incident" and (self.injection is None or t < self.injection.onset_s):
            phase = "normal"  # the run-up to the breach, before the incident starts
        rows = [("edge", (r.edge_rps, r.edge_error, r.edge_p50, r.edge_p99,
                          *r.comps[self.topo.edge][4:]))]
        rows += list(zip(self.topo.names, r.comps))
        for name, c in rows:
            p["t"].append(t)
            p["component"].append(name)
            p["rps"].append(c[0])
            p["error_rate"].append(c[1])
            p["latency_p50_ms"].append(c[2])
            p["latency_p99_ms"].append(c[3])
            p["cpu"].append(c[4])
            p["memory"].append(c[5])
            p["step"].append(self.state.step)
            p["phase"].append(phase)

    # ------------------------------------------------------------------ SLO

    def run_until_breach(self, max_s: float) -> Breach | None:
        """Prometheus semantics: a rule fires at an evaluation tick once its condition has
        been true at every tick for ``for``; ticks fall every ``slo.interval``."""
        interval = self.scenario.slo.interval
        active: list[float | None] = [None] * len(self.rules)
        fired: list[tuple[float, tuple[str, ...]]] = []

        def stop(t0: float, t1: float, r: _Rates) -> float | None:
            first_tick = math.ceil((t0 - EPS) / interval) * interval
            if first_tick >= t1 - EPS:
                return None
            best: float | None = None
            names: list[str] = []
            for k, rule in enumerate(self.rules):
                if not r.violated[k]:
                    active[k] = None
                    continue
                if active[k] is None:
                    active[k] = first_tick
                due = max(first_tick, math.ceil((active[k] + rule.for_ - EPS) / interval)
                          * interval)
                if due < t1 - EPS:
                    if best is None or due < best - EPS:
                        best, names = due, [rule.name]
                    elif abs(due - best) <= EPS:
                        names.append(rule.name)
            if best is not None:
                fired.append((best, tuple(names)))
                return best
            return None

        self.state.phase = "incident" if self.injection else "normal"
        span = self.advance(max(0.0, max_s - self.state.t), stop)
        if fired:
            return Breach(fired[0][0], fired[0][1], span)
        return None

    def verify(self, hold_s: float, deadline_s: float) -> VerifyResult:
        """Healthy once no rule condition is violated for ``hold_s`` in a row."""
        st = self.state
        st.phase, st.step = "verify", None
        clean_since: list[float | None] = [None]
        done: list[bool] = [False]

        def stop(t0: float, t1: float, r: _Rates) -> float | None:
            if any(r.violated):
                clean_since[0] = None
                return None
            if clean_since[0] is None:
                clean_since[0] = t0
            due = clean_since[0] + hold_s
            if due <= t1 + EPS:
                done[0] = True
                return due
            return None

        if st.t >= deadline_s:
            # steps overran the deadline: judge the instant they ended
            return VerifyResult(not any(self.rates().violated) and hold_s <= 0, st.t,
                                Span(st.t, st.t))
        span = self.advance(deadline_s - st.t, stop)
        return VerifyResult(done[0], st.t, span)

    def metrics(self) -> Metrics:
        r = self.rates()
        comps = {name: ComponentMetrics(*c) for name, c in zip(self.topo.names, r.comps)}
        e = r.comps[self.topo.edge]
        edge = ComponentMetrics(r.edge_rps, r.edge_error, r.edge_p50, r.edge_p99, e[4], e[5])
        failing = tuple(rule.name for rule, v in zip(self.rules, r.violated) if v)
        return Metrics(self.state.t, edge, comps, failing)

    # ------------------------------------------------------------------ steps

    def run_step(self, step: Step, settings: dict[str, Any]) -> StepResult:
        st = self.state
        st.phase, st.step = "rollback", step.name
        start = st.t
        span = Span(start, start)
        status, message = "ok", ""
        target = self.topo.index.get(step.target or "", -1)
        action = step.action
        if action == "scale":
            self._scale(step, target, int(settings["replicas"]), span)
        elif action in ("rollback_version", "revert_config"):
            dim = 0 if action == "rollback_version" else 1
            self._replace(step, target, dim, int(settings.get("batch", 1)),
                          float(settings.get("drain", 30.0)), span)
        elif action == "migrate_down":
            status, message = self._migrate_down(step, target, bool(settings.get("online")),
                                                 span)
        elif action == "disable_flag":
            span.add(self.advance(5.0 * self.jitter(step.name)))
            st.flags_off.add((step.target or "", str(settings["flag"])))
            self._touch()
        elif action == "flush_cache":
            span.add(self.advance(1.0))
            st.warmth[target] = 0.0
            self._touch_warmth()
        elif action == "warm_cache":
            st.warm_rate[target] = 4.0
            remaining = (1.0 - st.warmth[target]) * self._cache_warmup(target) / 4.0
            span.add(self.advance(max(1.0, math.ceil(remaining / QUANTUM_S) * QUANTUM_S)))
            st.warmth[target] = 1.0
            st.warm_rate[target] = 1.0
            self._touch_warmth()
        elif action == "wait":
            span.add(self.advance(float(settings["duration"])))
        elif action == "command":
            self._command(step, span)
        st.step = None
        span.start_s, span.end_s = start, st.t
        return StepResult(step.name, action, status, dict(settings), span, message)

    def _scale(self, step: Step, i: int, replicas: int, span: Span) -> None:
        st = self.state
        b = st.buckets[i]
        current = round(sum(b))
        if replicas > current:
            svc = self.scenario.deployment.services[i]
            span.add(self.advance(svc.startup * self.jitter(step.name)))
            ver, cfg = st.template[i]
            b[ver * 2 + cfg] += replicas - current
        elif replicas < current:
            span.add(self.advance(1.0))
            self._take(b, current - replicas, dim=None)
        else:
            span.add(self.advance(1.0))
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

    def _replace(self, step: Step, i: int, dim: int, batch: int, drain: float,
                 span: Span) -> None:
        """Rolling replacement in batches: out of service, drain, stop, start, ready."""
        st = self.state
        svc = self.scenario.deployment.services[i]
        st.template[i][dim] = 1
        b = st.buckets[i]
        live_pools = (LL, LP) if dim == 0 else (LL, PL)
        remaining = b[live_pools[0]] + b[live_pools[1]]
        k = 0
        while remaining > EPS:
            n = min(float(batch), remaining)
            before = [b[LL], b[LP], b[PL], b[PP]]
            per_replica_rps = self.rates().comps[i][0] / max(sum(b), EPS)
            self._take(b, n, dim)
            taken = [x - y for x, y in zip(before, b)]
            self._touch()
            if drain > 0:
                span.add(self.advance(drain))
            # in-flight requests still running when the replica stops are dropped
            tau = svc.inflight_time
            unfinished = max(0.0, 1.0 - drain / tau) ** 2 if tau > 0 else 0.0
            dropped = n * per_replica_rps * tau * 0.5 * unfinished
            load_i = max(self.rates().comps[i][0], EPS)
            if dropped > 0:
                st.impulse[i] = min(1.0, dropped / load_i)
                self._touch_impulse()
                span.add(self.advance(1.0))
                st.impulse.pop(i, None)
                self._touch_impulse()
                span.add(self.advance(STOP_S - 1.0))
            else:
                span.add(self.advance(STOP_S))
            span.add(self.advance(svc.startup * self.jitter(step.name, k)))
            for pool, count in enumerate(taken):
                if count > 0:
                    ver, cfg = divmod(pool, 2)
                    if dim == 0:
                        ver = 1
                    else:
                        cfg = 1
                    b[ver * 2 + cfg] += count
            self._touch()
            remaining -= n
            k += 1

    def _migrate_down(self, step: Step, i: int, online: bool, span: Span) -> tuple[str, str]:
        st = self.state
        ds = self.scenario.deployment.datastores[i - len(self.scenario.deployment.services)]
        mig = ds.migration
        assert mig is not None  # checked by the scenario loader
        if not mig.reversible:
            span.add(self.advance(5.0))
            return "failed", f"migration on '{ds.name}' is irreversible: migrate_down failed"
        if st.schema_prev[i]:
            span.add(self.advance(1.0))
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
            span.add(self.advance(1.0))
            return
        st.command_effects = tuple(ActiveEffect(e.metric, e.target, e.add or 0.0,
                                                e.factor or 1.0) for e in sim.effects)
        self._touch()
        span.add(self.advance(sim.duration * self.jitter(step.name)))
        st.command_effects = ()
        if self.injection is not None and self.injection.incident in sim.fixes:
            st.cause_fixed = True
        self._touch()

"""The deployment as the simulator sees it, and the physics shared with the analysis.

:func:`compile_topology` flattens a scenario's deployment into index lists, so the hot loop
touches no pydantic objects. The functions below are the simulator's formulas, each written
once and parametrised by :class:`~shadowrl.shadow.sim.params.SimParams`: the simulator calls
them from its cached layers and :mod:`shadowrl.analysis.bottlenecks` calls them for its
estimates, so a calibrated simulator and its advice cannot drift apart. Their floating-point
operation order is part of the contract: the simulator's outputs depend on it bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from shadowrl.core.spec import Cache, Datastore, Scenario, Service
from shadowrl.shadow.sim.params import SimParams

EPS = 1e-9

# (caller, ((callee, flow edge), ...)) for each service, callers before callees
Flow = list[tuple[int, tuple[tuple[int, int], ...]]]


@dataclass
class Topology:
    """A deployment compiled to flat lists indexed by component (services, datastores, caches
    in declaration order)."""

    names: list[str]
    kinds: list[str]  # service | datastore | cache
    index: dict[str, int]
    order: list[int]  # services, callers before callees
    calls: list[list[int]]
    fronted_by: dict[tuple[int, int], int]  # (caller, datastore) -> cache index
    edge: int
    reachable: list[int]  # components the edge's traffic can reach, depth first
    db_callers: dict[int, list[int]]  # datastore -> services calling it directly
    capacity: list[float]  # per replica (services), per datastore, inf for caches
    base_latency_ms: list[float]
    write_fraction: float
    hit_ratio: list[float]  # caches' hit ratios, 0.0 for other components
    flow: Flow  # the call edges in load-flow order, numbered
    flow_caches: list[tuple[int, int]]  # (flow edge, cache) for the edges behind a cache
    n_edges: int
    stores: list[int]  # datastores

    def fronted(self, cache: int) -> list[int]:
        """Datastores ``cache`` sits in front of for at least one caller."""
        return [d for d, callers in self.db_callers.items()
                if any(self.fronted_by.get((c, d)) == cache for c in callers)]


def compile_topology(sc: Scenario) -> Topology:
    """Flatten ``sc``'s deployment; components are indexed services, datastores, caches."""
    dep = sc.deployment
    comps: list[Service | Datastore | Cache] = [*dep.services, *dep.datastores, *dep.caches]
    names = [c.name for c in comps]
    index = {n: i for i, n in enumerate(names)}
    kinds = (["service"] * len(dep.services) + ["datastore"] * len(dep.datastores)
             + ["cache"] * len(dep.caches))
    calls = [[index[c] for c in comp.calls] if isinstance(comp, Service) else [] for comp in comps]
    edge = index[sc.edge.name]
    order = _call_order(calls, kinds)
    fronted_by = _fronted_by(dep.caches, calls, kinds, names, index)
    capacity = [c.capacity_rps if isinstance(c, Service) else c.capacity_qps
                if isinstance(c, Datastore) else math.inf for c in comps]
    hit = [c.hit_ratio if isinstance(c, Cache) else 0.0 for c in comps]
    flow, flow_caches = _number_edges(order, calls, fronted_by)
    return Topology(names, kinds, index, order, calls, fronted_by, edge,
                    _reachable(calls, edge), _db_callers(calls, kinds), capacity,
                    [c.latency * 1000.0 for c in comps], dep.traffic.write_fraction, hit,
                    flow, flow_caches, sum(len(c) for _i, c in flow),
                    [i for i, k in enumerate(kinds) if k == "datastore"])


def _call_order(calls: list[list[int]], kinds: list[str]) -> list[int]:
    """Services in a topological order of the call graph, callers before callees."""
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
    return [i for i in reversed(order) if kinds[i] == "service"]


def _fronted_by(caches: list[Cache], calls: list[list[int]], kinds: list[str],
                names: list[str], index: dict[str, int]) -> dict[tuple[int, int], int]:
    """(caller, datastore) -> the cache in between: a cache fronts the datastores its caller
    also calls (all of them, or its ``fronts``); a later cache wins a tie."""
    fronted_by: dict[tuple[int, int], int] = {}
    for comp in caches:
        ci = index[comp.name]
        for caller, callees in enumerate(calls):
            if ci not in callees:
                continue
            targets = comp.fronts if comp.fronts is not None else [
                names[j] for j in callees if kinds[j] == "datastore"]
            for target in targets:
                if index[target] in callees:
                    fronted_by[(caller, index[target])] = ci
    return fronted_by


def _reachable(calls: list[list[int]], edge: int) -> list[int]:
    reachable: list[int] = []
    stack = [edge]
    while stack:
        i = stack.pop()
        if i not in reachable:
            reachable.append(i)
            stack.extend(calls[i])
    return reachable


def _db_callers(calls: list[list[int]], kinds: list[str]) -> dict[int, list[int]]:
    db_callers: dict[int, list[int]] = {}
    for caller, callees in enumerate(calls):
        for j in callees:
            if kinds[j] == "datastore":
                db_callers.setdefault(j, []).append(caller)
    return db_callers


def _number_edges(order: list[int], calls: list[list[int]],
                  fronted_by: dict[tuple[int, int], int]) -> tuple[Flow, list[tuple[int, int]]]:
    """Number the call edges in load-flow order; list those that pass through a cache."""
    flow: Flow = []
    flow_caches: list[tuple[int, int]] = []
    e = 0
    for i in order:
        numbered = []
        for j in calls[i]:
            numbered.append((j, e))
            cache = fronted_by.get((i, j), -1)
            if cache >= 0:
                flow_caches.append((e, cache))
            e += 1
        flow.append((i, tuple(numbered)))
    return flow, flow_caches


# --------------------------------------------------------------------------- load curves


def latency_curves(rho: Sequence[float], p: SimParams) -> tuple[list[float], list[float]]:
    """Per component, from its utilisation: the queueing latency multiplier (1 when idle,
    steep as rho -> 1, capped at ``queue_cap``) and p99/p50 (heavier tails under load)."""
    cap, k = p.queue_cap, p.queue_power
    base, slope, tail_cap = p.p99_base, p.p99_slope, p.p99_rho_cap
    queue: list[float] = []
    tail: list[float] = []
    for x in rho:
        q = cap if x > cap else x
        queue.append(1.0 + q**k / (1.0 - q))
        tail.append(base + slope * (tail_cap if x > tail_cap else x))
    return queue, tail


def usage(rho: Sequence[float], cpu_extra: Sequence[float], memory_extra: Sequence[float],
          p: SimParams) -> tuple[list[float], list[float]]:
    """Per component, CPU and memory shares from its utilisation (capped at 1) plus an
    incident's extras, each at most 1: CPU is the utilisation, memory a base plus a part
    growing with it."""
    base, slope = p.memory_base, p.memory_slope
    cpu: list[float] = []
    memory: list[float] = []
    for x, a, b in zip(rho, cpu_extra, memory_extra):
        u = 1.0 if x > 1.0 else x
        c = u + a
        cpu.append(c if c < 1.0 else 1.0)
        c = base + slope * u + b
        memory.append(c if c < 1.0 else 1.0)
    return cpu, memory


def shed_share(rho: float) -> float:
    """Share of requests shed above capacity: what exceeds it."""
    return 1.0 - 1.0 / rho if rho > 1.0 else 0.0


def online_capacity(capacity: float, online: bool, p: SimParams) -> float:
    """A datastore's capacity left to traffic while an online migration copies (or not)."""
    return capacity * (1.0 - p.online_migration_load if online else 1.0)


# --------------------------------------------------------------------------- load flow


def cache_miss(hit_ratio: float, warmth: float) -> float:
    """Share of a cache's reads that miss: all when cold, ``1 - hit_ratio`` when warm."""
    return 1.0 - hit_ratio * warmth


def miss_share(write_fraction: float, hit_ratio: float, warmth: float) -> float:
    """Share of a caller's traffic passed to a datastore behind a cache: every write and
    the reads that miss."""
    return write_fraction + (1.0 - write_fraction) * cache_miss(hit_ratio, warmth)


def edge_factors(topo: Topology, warmth: Sequence[float]) -> list[float]:
    """Per flow edge, the share of the caller's served traffic the callee receives
    (exactly 1.0 where no cache is in between); ``warmth`` per component, 0..1."""
    factor = [1.0] * topo.n_edges
    wf, hit = topo.write_fraction, topo.hit_ratio
    for e, c in topo.flow_caches:
        factor[e] = miss_share(wf, hit[c], warmth[c])
    return factor


def load_flow(topo: Topology, load: float, factor: Sequence[float],
              caps: Sequence[float] | None = None,
              store_caps: Sequence[tuple[int, float]] = ()
              ) -> tuple[list[float], list[float], list[float]]:
    """Requests/s, utilisation and shed share per component for ``load`` at the edge.

    Load flows down the call tree (callers first); a service passes on what it serves, times
    each edge's ``factor``. ``caps`` are the services' capacities in ``topo.flow`` order
    (None: unbounded, nothing is shed); ``store_caps`` the datastores' as (index, capacity).
    """
    n = len(topo.names)
    rps = [0.0] * n
    rps[topo.edge] = load
    rho = [0.0] * n
    shed = [0.0] * n
    for (i, calls), cap in zip(topo.flow, caps if caps is not None else
                               [math.inf] * len(topo.flow)):
        r = rps[i]
        x = r / cap if cap > EPS else (math.inf if r > 0 else 0.0)
        rho[i] = x
        s = shed[i] = shed_share(x)
        served = r * (1.0 - s)
        for j, e in calls:
            rps[j] += served * factor[e]
    for i, cap in store_caps:
        x = rho[i] = rps[i] / cap
        shed[i] = shed_share(x)
    return rps, rho, shed


# --------------------------------------------------------------------------- durations


def batch_s(drain: float, startup: float, p: SimParams) -> float:
    """One batch of a rolling replacement: drain, stop, start a replacement (no jitter)."""
    return drain + p.stop_s + startup


def rollout_s(replicas: int, batch: int, drain: float, startup: float, p: SimParams) -> float:
    """A rolling replacement of ``replicas`` in batches of ``batch`` (no jitter)."""
    return math.ceil(replicas / batch) * batch_s(drain, startup, p)


def warming_s(cold_share: float, warmup: float, p: SimParams) -> float:
    """Seconds warm_cache needs to refill ``cold_share`` of a cache whose natural refill
    takes ``warmup``."""
    return cold_share * warmup / p.warm_speedup


def diurnal_factor(t: float, p: SimParams) -> float:
    """The diurnal pattern's load multiplier at ``t`` seconds of shadow time (mean 1)."""
    return 1.0 + p.diurnal_amplitude * math.cos(
        2 * math.pi * (t - p.diurnal_peak_s) / p.diurnal_period_s)

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

import numpy as np

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
    # requests served at once: per replica (services), per datastore, 0 for caches (no queue)
    concurrency: list[int]
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
    concurrency = [0 if isinstance(c, Cache) else c.concurrency if c.concurrency is not None
                   else default_concurrency(cap, c.latency) for c, cap in zip(comps, capacity)]
    flow, flow_caches = _number_edges(order, calls, fronted_by)
    return Topology(names, kinds, index, order, calls, fronted_by, edge,
                    _reachable(calls, edge), _db_callers(calls, kinds), capacity, concurrency,
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


# --------------------------------------------------------------------------- queueing

LN2 = math.log(2.0)
LN100 = math.log(100.0)
LN50 = math.log(50.0)  # ln(P(T > p50) / P(T > p99))
# mean, median and p99 of an exponential service time with no waiting, in its mean: what an
# idle component (and a cache, which never queues) shows
IDLE_SOJOURN = (1.0, LN2, LN100)
_SOJOURN: dict[tuple[int, float], tuple[float, float, float]] = {}
_SOJOURN_MAX = 1 << 16
_CHUNK = 128  # tail terms of Erlang B computed at once


def default_concurrency(capacity: float, latency_s: float) -> int:
    """Requests a replica (or a datastore) serves at once when the scenario does not say:
    what its capacity needs at its latency (Little's law), ``ceil(capacity x latency)``,
    at least 1."""
    return max(1, math.ceil(round(capacity * latency_s, 9)))


def erlang_c(c: int, a: float) -> float:
    """Erlang C: the probability that a request waits in an M/M/c queue with ``c`` servers
    and offered load ``a = lambda / mu`` (utilisation ``a / c``); 1 when ``a >= c``.

    Through Erlang B = Poisson(a) probability of ``c`` / CDF at ``c``, then
    ``C = B / (1 - rho (1 - B))``. For a few servers, B comes from its stable recurrence
    ``1/B(k) = 1 + (k / a) / B(k-1)``. For many, the Poisson probability of ``c`` comes from
    ``lgamma`` and the CDF as 1 minus the tail above ``c``, a series of positive terms each
    ``a / (c + j)`` times the last (a stable recurrence that stops when the terms no longer
    count: about ``sqrt(c)`` of them even near saturation); the CDF at ``c >= a`` is at least
    about 1/2, so nothing cancels. Where that probability is below e^-40, B is the
    probability itself (within a factor 2 of a negligible value)."""
    if a <= 0.0:
        return 0.0
    if a >= c:
        return 1.0
    if c <= 32:
        inv = 1.0  # 1 / B(0)
        for k in range(1, c + 1):
            inv = 1.0 + inv * k / a
        b = 1.0 / inv
    else:
        log_pmf = c * math.log(a) - a - math.lgamma(c + 1.0)
        if log_pmf < -40.0:
            b = math.exp(log_pmf)
        else:
            pmf = math.exp(log_pmf)
            tail = term = 1.0  # the tail above c, in units of pmf(c)
            j = c
            while term > 1e-17 * tail:  # in chunks of terms, each a cumulative product
                terms = term * np.cumprod(a / np.arange(j + 1.0, j + 1.0 + _CHUNK))
                tail += float(terms.sum())
                term = float(terms[-1])
                j += _CHUNK
            b = pmf / (1.0 - pmf * (tail - 1.0))
    return b / (1.0 - a / c * (1.0 - b))


def sojourn_tail(t: float, wait: float, theta: float) -> tuple[float, float]:
    """``P(T > t)`` and the density of ``T = W + S`` at ``t`` (in mean service times), where
    ``S ~ Exp(1)``, ``P(W > 0) = wait`` and a waiting request waits ``Exp(theta)``:

    ``P(T > t) = e^-t (1 + wait t phi((theta - 1) t))``, ``f(t) = e^-t (1 - wait + wait theta
    t phi((theta - 1) t))`` with ``phi(x) = (1 - e^-x) / x`` (``phi(0) = 1``): the M/M/c
    sojourn time's hypo-exponential mixture, written to stay exact as ``theta -> 1``."""
    e = math.exp(-t)
    x = (theta - 1.0) * t
    if x < -700.0:  # e^-x would overflow: the equivalent two-exponential form
        d = (math.exp(-theta * t) - e) / (1.0 - theta)
        return e + wait * d, (1.0 - wait) * e + wait * theta * d
    tphi = t * (-math.expm1(-x) / x) if x != 0.0 else t
    return e * (1.0 + wait * tphi), e * (1.0 - wait + wait * theta * tphi)


def _sojourn_quantile(q: float, wait: float, theta: float) -> float:
    """The ``t`` with ``P(T > t) = q``: safeguarded Newton steps on ``ln P(T > t)`` inside a
    bracket from ``T >= S``, ``T >= W`` and ``P(W + S > a + b) <= P(W > a) + P(S > b)``."""
    lo = -math.log(q)
    if wait > q:
        lo = max(lo, math.log(wait / q) / theta)
    hi = math.log(2.0 / q) + (math.log(2.0 * wait / q) / theta if 2.0 * wait > q else 0.0)
    target = math.log(q)
    t = lo
    for _ in range(200):
        tail, density = sojourn_tail(t, wait, theta)
        g = math.log(tail if tail > 1e-300 else 1e-300) - target
        if g == 0.0:
            return t
        if g > 0.0:
            lo = t
        else:
            hi = t
        nxt = t + g * tail / density if density > 0.0 else math.inf
        if not lo <= nxt <= hi:
            nxt = 0.5 * (lo + hi)
        if abs(nxt - t) <= 1e-12 * nxt:
            return nxt
        t = nxt
    return t


def sojourn(c: int, rho: float) -> tuple[float, float, float]:
    """Mean, median and p99 of the time a request spends in an M/M/c queue (waiting plus
    service, first come first served), in units of the mean service time, for ``c >= 1``
    servers at utilisation ``rho = lambda / (c mu)``; ``inf`` for each when ``rho >= 1``
    (the queue grows without bound).

    With ``C`` the Erlang C waiting probability and ``theta = c (1 - rho)``: ``E[T] = 1 +
    C / theta``; the quantiles solve ``P(T > t) = q`` (:func:`sojourn_tail`). Cached by
    ``(c, rho)``."""
    if rho >= 1.0 or c < 1:
        return math.inf, math.inf, math.inf
    if rho <= 0.0:
        return IDLE_SOJOURN
    key = (c, rho)
    got = _SOJOURN.get(key)
    if got is not None:
        return got
    wait = erlang_c(c, c * rho)
    theta = c * (1.0 - rho)
    if wait < 1e-15:
        got = IDLE_SOJOURN
    else:
        got = (1.0 + wait / theta, _sojourn_quantile(0.5, wait, theta),
               _sojourn_quantile(0.01, wait, theta))
    if len(_SOJOURN) >= _SOJOURN_MAX:
        _SOJOURN.clear()
    _SOJOURN[key] = got
    return got


def latency_curves(rho: Sequence[float], servers: Sequence[int]
                   ) -> tuple[list[float], list[float]]:
    """Per component, its median and p99 latency multipliers (own latency = mean service
    time) from its utilisation and its servers (ready replicas x concurrency; 0: a component
    that never queues, a cache): the M/M/c sojourn quantiles of :func:`sojourn`, ``inf`` when
    overloaded (``rho >= 1``; see :func:`queue_latency_ms`)."""
    p50: list[float] = []
    p99: list[float] = []
    for x, c in zip(rho, servers):
        if x >= 1.0:
            p50.append(math.inf)
            p99.append(math.inf)
        elif c <= 0 or x <= 0.0:
            p50.append(LN2)
            p99.append(LN100)
        else:
            _mean, m50, m99 = sojourn(c, x)
            p50.append(m50)
            p99.append(m99)
    return p50, p99


def queue_latency_ms(base_ms: Sequence[float], mult: Sequence[float], idle: float,
                     timeout_ms: float) -> list[float]:
    """Per component, a latency quantile in ms: its own latency times the queueing multiplier
    (from :func:`latency_curves`), the waiting part at most the queue timeout: at most
    ``base x idle + timeout_ms``, where ``idle`` is the quantile's multiplier without
    waiting (``LN2`` for the median, ``LN100`` for the p99). An overloaded component
    (multiplier ``inf``) serves what it serves after a full timeout: exactly that bound."""
    out: list[float] = []
    for a, m in zip(base_ms, mult):
        cap = a * idle + timeout_ms
        x = a * m if m != math.inf else cap
        out.append(x if x < cap else cap)
    return out


def poisson_cdf(k: int, mean: float) -> float:
    """``P(X <= k)`` for a Poisson count of ``mean``: how likely a sample of requests holds
    at most ``k`` failures (the sparse counts a sampled real shadow judges rules by)."""
    if k < 0:
        return 0.0
    term = total = math.exp(-mean)
    for j in range(1, k + 1):
        term *= mean / j
        total += term
    return min(1.0, total)


def slow_share(p50: float, p99: float, threshold_ms: float | None) -> float:
    """Share of requests slower than ``threshold_ms`` given the latency's median and p99:
    a shifted exponential tail through both quantiles,
    ``P(T > t) = min(1, 0.5 exp(-ln(50) (t - p50) / (p99 - p50)))``, exact for an M/M/1
    (exponential) sojourn time and, like every M/M/c sojourn time, exponential in its tail;
    ``p99 <= p50`` (everything waits a full queue timeout) is a step at ``p50``. None: no
    threshold, nothing is slow."""
    if threshold_ms is None:
        return 0.0
    spread = p99 - p50
    if spread <= 0.0:
        return 1.0 if p50 > threshold_ms else 0.0
    z = LN50 * (threshold_ms - p50) / spread
    return 1.0 if z <= -LN2 else 0.5 * math.exp(-z)


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


def warmth_at(base: float, rate: float, elapsed: float, warmup: float) -> float:
    """A cache's warmth ``elapsed`` seconds after it was ``base`` and began refilling at
    ``rate`` (1: by its own traffic, over ``warmup``; ``warm_speedup``: under warm_cache):
    linear, at most 1. The simulator evaluates it at whole effect quanta after the change
    (:func:`step_index`), so the warmth it uses is a function of time alone."""
    x = base + rate * elapsed / warmup
    return x if x < 1.0 else 1.0


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
    """One round of a rolling replacement (no jitter): without surge, drain, stop and start
    a replacement; with surge, start the replacements, then drain and stop the old ones."""
    return drain + p.stop_s + startup


def rollout_width(batch: int, surge: int) -> int:
    """Replicas one round replaces: Kubernetes' maxSurge + maxUnavailable, i.e. ``surge``
    new replicas started beside the old ones plus ``max(0, batch - surge)`` old ones taken
    out at once."""
    return max(batch, surge)


def unavailable(batch: int, surge: int) -> int:
    """Replicas a round leaves without a ready replacement: those not covered by surge."""
    return max(0, batch - surge)


def rollout_s(replicas: int, batch: int, drain: float, startup: float, p: SimParams,
              surge: int = 0) -> float:
    """A rolling replacement of ``replicas`` in rounds of ``max(batch, surge)`` (no
    jitter)."""
    return math.ceil(replicas / rollout_width(batch, surge)) * batch_s(drain, startup, p)


def step_index(t: float, origin: float, size: float) -> int:
    """The ``k`` of the step ``[origin + k size, origin + (k + 1) size)`` holding ``t``, a
    boundary within ``EPS`` counting as reached: a segment that starts at a boundary computed
    in floating point (``origin + (k + 1) * size``, as :func:`step_end` computes it) is in the
    step it starts, whatever the rounding."""
    k = math.floor((t - origin) / size)
    while origin + (k + 1) * size <= t + EPS:
        k += 1
    while origin + k * size > t + EPS:
        k -= 1
    return k


def step_end(k: int, origin: float, size: float) -> float:
    """Where step ``k`` ends (the next segment boundary)."""
    return origin + (k + 1) * size


def warming_s(cold_share: float, warmup: float, p: SimParams) -> float:
    """Seconds warm_cache needs to refill ``cold_share`` of a cache whose natural refill
    takes ``warmup``."""
    return cold_share * warmup / p.warm_speedup


def diurnal_factor(t: float, p: SimParams) -> float:
    """The diurnal pattern's load multiplier at ``t`` seconds of shadow time (mean 1)."""
    return 1.0 + p.diurnal_amplitude * math.cos(
        2 * math.pi * (t - p.diurnal_peak_s) / p.diurnal_period_s)

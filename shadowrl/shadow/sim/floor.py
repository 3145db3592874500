"""The simulator's cost floor: what an incident no step can fix is sure to cost.

An ``external`` incident (an upstream provider down) is fixed by no rollback, only by a
command step whose ``sim.fixes`` names it. Without such a step its error effects stay until
the episode ends; when they alone keep an error-rate rule violated, verification never sees
the SLO hold, so the episode lasts until the verification deadline whatever runs, and every
second until then fails at least a known share of the edge's requests. That is the floor
:meth:`SimShadow.cost_floor <shadowrl.shadow.sim.engine.SimShadow.cost_floor>` hands a search.

Why it is a lower bound, from the error composition of ``SimShadow._assemble``: the edge's
error is ``1 - prod_i (1 - err_i x reach_i)`` over the components its traffic reaches, every
factor at most 1, and a component's error ``err_k`` is at least its incident share ``u_k``
(errors compose as ``1 - prod (1 - m)``; error effects only add). For ``k`` the edge its
reach is 1, so the edge fails at least ``u``. For ``k`` at the end of a chain of single
callers with no cache on the way, except perhaps in front of ``k`` itself, the callers' shed
shares ``s_j`` cut its reach to ``X c`` (``X = prod (1 - s_j)``, ``c`` at least a warm
cache's miss share ``c_min``), and each caller's own factor is at most ``1 - s_j X_j``
(``X_j``: its own reach). Their product ``P`` is ``X`` when the edge is the only caller, and
by induction over the chain at most ``e^(X - 1)`` (``P_1 = X_1 <= e^(X_1 - 1)``, and
``e^(Y - 1) (1 - s Y) <= e^(Y (1 - s) - 1)`` since ``1 - z <= e^-z``), so the edge
survives at most ``P (1 - v X)`` with ``v = u c_min``; its maximum over ``X`` in [0, 1] is
:func:`edge_error_floor`.
A rule on ``k`` itself sees ``err_k >= u_k`` directly.

Bad requests (failed or slow) are at least the failed ones, so a bad-request weight applies
to the floor too; downtime counts only where every sample shows a violated rule
(``observed_share`` 0). Outage seconds are left out (nothing makes them certain).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from shadowrl.core.spec import Step
from shadowrl.shadow.base import CostWeights
from shadowrl.shadow.sim.topology import edge_factors, step_end, step_index

if TYPE_CHECKING:
    from shadowrl.shadow.sim.engine import SimShadow

Floor = Callable[[float], float]

# the floor is scaled by this much less than 1, so that float sums never make it exceed a
# cost the simulator adds up in another order
SAFETY = 1.0 - 1e-9


def no_floor(t: float) -> float:
    return 0.0


def edge_error_floor(v: float, callers: int) -> float:
    """The least edge error rate when a component behind ``callers`` single callers that
    may shed, reaching at least ``c_min`` of the edge's traffic, fails ``u`` of its requests,
    with ``v = u c_min`` (module docstring): the edge survives at most ``P (1 - v X)``, whose
    maximum over ``X`` in [0, 1] is ``1 - v`` up to ``v = 1/2``; above, ``1 / (4 v)`` behind
    the edge alone (``P = X``) and ``v e^((1 - 2 v) / v)`` behind more (``P <= e^(X - 1)``)."""
    if v <= 0.0:
        return 0.0
    v = min(v, 1.0)
    if callers == 0 or v <= 0.5:
        return v
    if callers == 1:
        return 1.0 - 1.0 / (4.0 * v)
    return 1.0 - v * math.exp((1.0 - 2.0 * v) / v)


def chain_reach(sim: SimShadow) -> dict[int, tuple[float, int]]:
    """Per component the floor of its reach ``c_min`` (module docstring) and the number of
    callers above it, for the edge and the components at the end of a chain of single
    callers with no cache on the way but perhaps the last edge; the others are left out (no
    floor is proven for them)."""
    topo = sim.topo
    callers: dict[int, list[tuple[int, int]]] = {}
    for i, calls in topo.flow:
        for j, e in calls:
            callers.setdefault(j, []).append((i, e))
    cached = {e for e, _c in topo.flow_caches}
    warm = edge_factors(topo, [1.0] * len(topo.names))  # a warm cache passes on the least
    reach = {topo.edge: (1.0, 0)}
    for k in range(len(topo.names)):
        if k == topo.edge or len(callers.get(k, ())) != 1:
            continue
        i, e = callers[k][0]
        last, ok, depth = warm[e], True, 1
        while i != topo.edge:
            depth += 1
            up = callers.get(i, [])
            if len(up) != 1 or up[0][1] in cached:
                ok = False
                break
            i = up[0][0]
        if ok and last > 0.0:
            reach[k] = (last, depth)
    return reach


def cost_floor(sim: SimShadow, weights: CostWeights, steps: Sequence[Step],
               end_s: float) -> Floor:
    """See :class:`~shadowrl.shadow.base.CostFloor`; built from the shadow's time on."""
    inj = sim.injection
    if inj is None or inj.cause_kind != "external" or sim.state.cause_fixed:
        return no_floor
    if any(s.sim is not None and inj.incident in s.sim.fixes for s in steps):
        return no_floor  # a command step may fix it
    effects = [(k, eff) for k, eff in sim._effect_list if eff.metric == "error_rate"]
    if any(eff.shape and min(eff.shape) < 0 for _k, eff in effects):
        return no_floor
    reach = chain_reach(sim)
    rules = [(scope, above) for scope, metric, above, _below in sim._rule_eval
             if metric == 1 and above is not None]
    per_request = weights.failed_requests + weights.bad_requests
    per_second = weights.downtime_s if sim.params.observed_share == 0 else 0.0
    # piecewise constant between load blocks and effect quanta: (start, cost/s, violated)
    starts: list[float] = []
    rates: list[float] = []
    violated: list[bool] = []
    t, onset = sim.state.t, inj.onset_s
    block_s, quantum = sim._block_s, sim._quantum_s
    while t < end_s - 1e-9:
        nxt = min(end_s, step_end(step_index(t, 0.0, block_s), 0.0, block_s))
        if t < onset:
            nxt = min(nxt, onset)
        elif t < sim._effect_end:
            nxt = min(nxt, step_end(step_index(t, onset, quantum), onset, quantum))
        if nxt <= t:  # a boundary at t itself (float): move on by the smallest step
            nxt = min(end_s, t + min(block_s, quantum))
        share: dict[int, float] = {}
        for k, eff in effects:
            share[k] = min(1.0, share.get(k, 0.0) + eff.add * sim._progress(eff, t))
        edge_err = max((edge_error_floor(u * reach[k][0], reach[k][1])
                        for k, u in share.items() if k in reach), default=0.0)
        bad = any(edge_err > above if scope < 0 else share.get(scope, 0.0) > above
                  for scope, above in rules)
        starts.append(t)
        rates.append(per_request * sim._load(t) * edge_err + (per_second if bad else 0.0))
        violated.append(bad)
        t = nxt
    if not starts:
        return no_floor
    ends = [*starts[1:], end_s]
    # suffix sums over the segments from which a rule stays violated to the deadline
    n = len(starts)
    tail = [0.0] * (n + 1)
    held = [False] * (n + 1)  # whether the SLO could hold somewhere from segment i on
    for i in range(n - 1, -1, -1):
        held[i] = held[i + 1] or not violated[i]
        tail[i] = rates[i] * (ends[i] - starts[i]) + tail[i + 1]
    if all(held[:n]):
        return no_floor

    def floor(at: float) -> float:
        if at >= end_s:
            return 0.0
        i = max(0, bisect.bisect_right(starts, at) - 1)
        if held[i]:
            return 0.0
        rest = rates[i] * max(0.0, ends[i] - max(at, starts[i])) + tail[i + 1]
        return SAFETY * rest if math.isfinite(rest) else 0.0

    return floor

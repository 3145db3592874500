"""The compiled topology and the physics shared by the simulator and the bottleneck analysis:
the formulas must describe what the simulator actually does."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from shadowrl.core.spec import Scenario, load_scenario
from shadowrl.shadow.sim.engine import SimShadow
from shadowrl.shadow.sim.params import SimParams
from shadowrl.shadow.sim.topology import (
    LN2,
    LN100,
    cache_miss,
    compile_topology,
    default_concurrency,
    diurnal_factor,
    edge_factors,
    latency_curves,
    load_flow,
    miss_share,
    online_capacity,
    queue_latency_ms,
    rollout_s,
    rollout_width,
    shed_share,
    slow_share,
    sojourn,
    step_end,
    step_index,
    unavailable,
    usage,
    warming_s,
    warmth_at,
)

ROOT = Path(__file__).resolve().parents[2]
ENVS = ["checkout", "payments", "search"]

# The callee is declared before its caller, a cache fronts (by default) every datastore its
# caller calls, and one service is not reachable from the edge.
TANGLED_YAML = """\
apiVersion: shadowrl/v1
kind: Scenario
metadata: {name: tangled, description: "declaration order is not call order"}
deployment:
  traffic: {rps: 100, write_fraction: 0.5}
  services:
    - {name: leaf, replicas: 2, capacity_rps: 100, calls: [main-db, side-db, hot]}
    - {name: front, edge: true, replicas: 2, capacity_rps: 100, calls: [mid]}
    - {name: mid, replicas: 2, capacity_rps: 100, calls: [leaf],
       version: {live: v2, previous: v1}}
    - {name: batch-job, replicas: 1, capacity_rps: 10, calls: [side-db]}
  datastores:
    - {name: main-db, capacity_qps: 500}
    - {name: side-db, capacity_qps: 500}
  caches:
    - {name: hot, hit_ratio: 0.8}
slo:
  rules:
    - {name: errors, metric: error_rate, above: 0.01, for: 30s}
incidents:
  - name: bad-release
    cause: {kind: version, target: mid}
    effects: [{metric: error_rate, target: mid, add: 0.1}]
procedure:
  name: revert
  steps:
    - {name: revert-mid, action: rollback_version, target: mid}
"""


def env(name: str) -> Scenario:
    return load_scenario(ROOT / "envs" / f"{name}.yaml")


@pytest.fixture(scope="module")
def checkout() -> Scenario:
    return env("checkout")


# --------------------------------------------------------------------------- compilation


def test_checkout_topology(checkout: Scenario) -> None:
    topo = compile_topology(checkout)
    assert topo.names == ["web", "orders", "db", "cache"]
    assert topo.kinds == ["service", "service", "datastore", "cache"]
    assert topo.edge == 0 and topo.order == [0, 1]
    assert topo.calls == [[1], [2, 3], [], []]
    assert topo.fronted_by == {(1, 2): 3}  # orders -> db passes through the cache
    assert topo.fronted(3) == [2] and topo.fronted(2) == []
    assert topo.db_callers == {2: [1]}
    assert sorted(topo.reachable) == [0, 1, 2, 3]
    assert topo.flow == [(0, ((1, 0),)), (1, ((2, 1), (3, 2)))]
    assert topo.flow_caches == [(1, 3)] and topo.n_edges == 3
    assert topo.stores == [2]
    assert topo.capacity == [100.0, 160.0, 260.0, math.inf]
    # ceil(capacity x latency) per replica, db's own setting, none for the cache
    assert topo.concurrency == [4, 5, 8, 0]
    assert topo.base_latency_ms == pytest.approx([40.0, 30.0, 5.0, 1.0])
    assert topo.hit_ratio == [0.0, 0.0, 0.0, 0.85] and topo.write_fraction == 0.2


def test_payments_and_search_topologies() -> None:
    pay = compile_topology(env("payments"))
    assert [pay.names[i] for i in pay.order] == ["api", "fraud-check", "ledger"]
    assert pay.names[pay.edge] == "api"
    assert {pay.names[d]: [pay.names[c] for c in cs] for d, cs in pay.db_callers.items()} == {
        "postgres": ["ledger"]}
    assert pay.fronted_by == {} and pay.flow_caches == []
    search = compile_topology(env("search"))
    assert [search.names[i] for i in search.order] == ["search-frontend", "search-backend"]
    i = search.index
    assert search.fronted_by == {(i["search-backend"], i["doc-store"]): i["index-cache"]}
    assert [search.names[d] for d in search.fronted(i["index-cache"])] == ["doc-store"]


def test_call_order_reachability_and_default_fronts(tmp_path: Path) -> None:
    path = tmp_path / "tangled.yaml"
    path.write_text(TANGLED_YAML)
    topo = compile_topology(load_scenario(path))
    i = topo.index
    order = [topo.names[k] for k in topo.order]
    assert order.index("front") < order.index("mid") < order.index("leaf")
    assert set(order) == {"front", "mid", "leaf", "batch-job"}
    assert topo.edge == i["front"]
    assert i["batch-job"] not in topo.reachable
    # no ``fronts``: the cache fronts every datastore its caller calls, for that caller only
    assert topo.fronted_by == {(i["leaf"], i["main-db"]): i["hot"],
                               (i["leaf"], i["side-db"]): i["hot"]}
    assert topo.db_callers[i["side-db"]] == [i["leaf"], i["batch-job"]]
    # the unreachable caller sends nothing; the reachable one sends its cache misses
    rps = load_flow(topo, 100.0, edge_factors(topo, [1.0] * len(topo.names)))[0]
    assert rps[i["batch-job"]] == 0.0 and rps[i["leaf"]] == 100.0
    assert rps[i["side-db"]] == pytest.approx(100.0 * (0.5 + 0.5 * 0.2))


# --------------------------------------------------------------------------- load flow


@pytest.mark.parametrize("name", ENVS)
def test_load_flow_is_the_simulators_on_a_healthy_launch(name: str) -> None:
    sc = env(name)
    sim = SimShadow(sc)
    sim.launch(4)
    m = sim.sample()
    topo = compile_topology(sc)
    rps, rho, shed = load_flow(topo, m.edge.rps, edge_factors(topo, [1.0] * len(topo.names)))
    assert rps == [m.components[n].rps for n in topo.names]  # bit for bit
    assert rps[topo.edge] == m.edge.rps > 0
    assert rho == [0.0] * len(rho) and shed == [0.0] * len(shed)  # unbounded: nothing shed


def test_cold_cache_flow_is_the_simulators_after_a_flush(checkout: Scenario) -> None:
    sim = SimShadow(checkout)
    sim.launch(2)
    sim.run_step(checkout.procedure.step("flush-cache"), {})
    m = sim.sample()
    topo = compile_topology(checkout)
    warmth = [1.0] * len(topo.names)
    warmth[topo.index["cache"]] = 0.0
    rps = load_flow(topo, m.edge.rps, edge_factors(topo, warmth))[0]
    assert rps == [m.components[n].rps for n in topo.names]
    # a cold cache passes every request to the db
    assert rps[topo.index["db"]] == rps[topo.index["orders"]]


def test_miss_share_and_edge_factors(checkout: Scenario) -> None:
    topo = compile_topology(checkout)
    assert cache_miss(0.85, 1.0) == pytest.approx(0.15) and cache_miss(0.85, 0.0) == 1.0
    assert miss_share(0.2, 0.85, 1.0) == pytest.approx(0.2 + 0.8 * 0.15)
    assert miss_share(0.2, 0.85, 0.0) == 1.0
    factors = edge_factors(topo, [1.0, 1.0, 1.0, 0.5])
    assert factors[0] == factors[2] == 1.0  # web -> orders, orders -> cache
    assert factors[1] == pytest.approx(0.2 + 0.8 * (1 - 0.85 * 0.5))


def test_load_flow_sheds_above_capacity(checkout: Scenario) -> None:
    topo = compile_topology(checkout)
    factors = edge_factors(topo, [1.0] * 4)
    # web can serve 200 of 400: half is shed, orders gets the other half
    rps, rho, shed = load_flow(topo, 400.0, factors, [200.0, 640.0], [(2, 100.0)])
    assert rho[0] == 2.0 and shed[0] == 0.5 and rps[1] == 200.0
    assert rho[1] == pytest.approx(200.0 / 640.0) and shed[1] == 0.0
    assert rps[2] == pytest.approx(200.0 * (0.2 + 0.8 * 0.15))
    assert rho[2] == pytest.approx(rps[2] / 100.0)
    # no ready replica: everything is shed, nothing flows on
    rps, rho, shed = load_flow(topo, 400.0, factors, [0.0, 640.0])
    assert rho[0] == math.inf and shed[0] == 1.0 and rps[1] == 0.0


# --------------------------------------------------------------------------- curves


def test_load_curves() -> None:
    p = SimParams()
    # idle, a cache (no servers), busy on few servers, busy on many, overloaded
    p50, p99 = latency_curves([0.0, 0.5, 0.9, 0.9, 1.0, 2.0], [4, 0, 2, 200, 4, 4])
    assert (p50[0], p99[0]) == (p50[1], p99[1]) == (LN2, LN100)  # exponential service
    assert p99[2] > 3 * LN100 and p99[3] < 1.01 * LN100  # 2 servers queue, 200 hardly
    assert (p50[2], p99[2]) == sojourn(2, 0.9)[1:]
    assert p50[4] == p99[4] == p50[5] == math.inf  # overloaded: a full queue timeout
    timeout = p.queue_timeout_s * 1000.0
    ms = queue_latency_ms([10.0, 10.0, 10.0, 10.0], [LN100, 50.0, 1e6, math.inf], LN100,
                          timeout)
    assert ms[0] == pytest.approx(10.0 * LN100) and ms[1] == 500.0
    # the wait is capped at the timeout; an overloaded component serves after a full one
    assert ms[2] == ms[3] == pytest.approx(10.0 * LN100 + timeout)
    cpu, memory = usage([0.0, 0.5, 1.0, 3.0], [0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.5, 0.0], p)
    assert cpu == [0.0, 0.7, 1.0, 1.0]  # utilisation above 1 counts as 1
    assert memory == [p.memory_base, pytest.approx(p.memory_base + 0.5 * p.memory_slope), 1.0,
                      pytest.approx(p.memory_base + p.memory_slope)]
    assert shed_share(0.5) == 0.0 and shed_share(4.0) == 0.75
    assert online_capacity(260.0, False, p) == 260.0
    assert online_capacity(260.0, True, p) == pytest.approx(260.0 * 0.65)
    assert diurnal_factor(p.diurnal_peak_s, p) == pytest.approx(1 + p.diurnal_amplitude)


def test_default_concurrency_is_littles_law() -> None:
    assert default_concurrency(100.0, 0.04) == 4  # exactly 4, not 4.000000001 -> 5
    assert default_concurrency(160.0, 0.03) == 5
    assert default_concurrency(50.0, 0.001) == 1  # at least one
    assert default_concurrency(300.0, 0.08) == 24


def test_slow_share_is_a_shifted_exponential_tail_through_p50_and_p99() -> None:
    assert slow_share(50.0, 300.0, None) == 0.0  # no threshold: nothing is slow
    assert slow_share(50.0, 300.0, 50.0) == pytest.approx(0.5)
    assert slow_share(50.0, 300.0, 300.0) == pytest.approx(0.01)
    assert slow_share(50.0, 300.0, 550.0) == pytest.approx(0.01 / 50)
    assert slow_share(50.0, 300.0, 1.0) == 1.0 and slow_share(50.0, 300.0, 0.0) == 1.0
    shares = [slow_share(50.0, 300.0, t) for t in (10, 100, 200, 400, 800, 1600)]
    assert shares == sorted(shares, reverse=True)
    # exact for an M/M/1 sojourn time, exponential with rate mu - lambda
    mean = 1 / (10.0 - 8.0)
    p50, p99 = LN2 * mean, LN100 * mean
    for t in (0.2, 1.0, 3.0):
        assert slow_share(p50, p99, t) == pytest.approx(math.exp(-t / mean))
    # everything waits a full queue timeout: a step at p50
    assert slow_share(2000.0, 2000.0, 800.0) == 1.0 and slow_share(2000.0, 2000.0, 3e3) == 0.0


def test_latency_threshold_is_the_tightest_edge_p99_rule(checkout: Scenario) -> None:
    assert checkout.slo.latency_threshold_ms() == 800.0  # not db-latency's 200: a db rule
    payments = env("payments")
    assert payments.slo.latency_threshold_ms() == 1500.0
    minimal = load_scenario(ROOT / "tests" / "scenarios" / "minimal.yaml")
    assert all(r.metric != "latency_p99_ms" for r in minimal.slo.rules)
    assert minimal.slo.latency_threshold_ms() is None


def test_step_index_counts_a_rounded_boundary_as_reached() -> None:
    onset, q = 123.456, 5.0
    for k in range(200):
        start = step_end(k - 1, onset, q)  # as the simulator computes a segment start
        assert step_index(start, onset, q) == k
        assert step_index(start - 1e-6, onset, q) == k - 1
        assert step_end(step_index(start, onset, q), onset, q) > start
    assert step_index(0.1 + 0.2, 0.0, 0.1) == 3  # 0.30000000000000004 / 0.1 -> 3, not 2
    assert step_index(0.3 - 1e-12, 0.0, 0.1) == 3  # within EPS of the boundary
    assert step_index(59.99, 0.0, 60.0) == 0 and step_index(-1.0, 0.0, 60.0) == -1


def test_warmth_is_linear_in_the_time_since_its_last_change() -> None:
    assert warmth_at(0.0, 1.0, 60.0, 120.0) == 0.5
    assert warmth_at(0.2, 4.0, 10.0, 120.0) == pytest.approx(0.2 + 40.0 / 120.0)
    assert warmth_at(0.5, 1.0, 1e6, 120.0) == 1.0


def test_calibrated_curves_reach_the_simulator(checkout: Scenario) -> None:
    def edge(params: SimParams, replicas: int = 6) -> tuple[float, float]:
        sc = checkout.model_copy(deep=True)
        sc.deployment.services[0].replicas = replicas
        sim = SimShadow(sc, params=params)
        sim.launch(1)
        m = sim.sample()
        return m.edge.latency_p99_ms, m.components["web"].memory

    p99, memory = edge(SimParams())
    longer = SimParams(queue_timeout_s=5.0, memory_base=0.5)
    p99_2, memory_2 = edge(longer)
    assert p99_2 == p99 and memory_2 > memory  # no queue reaches its timeout
    # 3 web replicas for ~400 rps: overloaded, so web's latency is its queue timeout
    over, over_longer = edge(SimParams(), 3)[0], edge(longer, 3)[0]
    assert over_longer - over == pytest.approx(3000.0, rel=1e-9)


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(("batch", "drain", "surge"), [
    (2, 10.0, 0), (4, 0.0, 0), (6, 30.0, 0), (1, 30.0, 1), (1, 10.0, 3), (3, 0.0, 1),
    (6, 10.0, 3)])
def test_rollout_duration_is_the_simulators_without_jitter(checkout: Scenario, batch: int,
                                                           drain: float, surge: int) -> None:
    p = SimParams(jitter_sigma=0.0)
    sim = SimShadow(checkout, params=p)
    sim.launch(1)
    result = sim.run_step(checkout.procedure.step("revert-web"), {
        "batch": batch, "drain": drain, "surge": surge})
    web = checkout.deployment.services[0]
    assert result.status == "ok"
    assert result.end_s - result.start_s == pytest.approx(
        rollout_s(web.replicas, batch, drain, web.startup, p, surge))


def test_rollout_rounds_are_maxsurge_plus_maxunavailable() -> None:
    assert [rollout_width(b, s) for b, s in [(1, 0), (3, 0), (1, 3), (3, 1), (2, 2)]] == [
        1, 3, 3, 3, 2]
    assert [unavailable(b, s) for b, s in [(1, 0), (3, 0), (1, 3), (3, 1), (2, 2)]] == [
        1, 3, 0, 2, 0]
    p = SimParams()
    assert rollout_s(6, 1, 10.0, 20.0, p, surge=3) == 2 * (10.0 + p.stop_s + 20.0)


def test_warm_cache_duration_is_warming_s(checkout: Scenario) -> None:
    for p in (SimParams(), SimParams(warm_speedup=2.0)):
        sim = SimShadow(checkout, params=p)
        sim.launch(1)
        sim.run_step(checkout.procedure.step("flush-cache"), {})
        result = sim.run_step(checkout.procedure.step("warm-cache"), {})
        warmup = checkout.deployment.caches[0].warmup
        assert result.end_s - result.start_s == warming_s(1.0, warmup, p) == (
            warmup / p.warm_speedup)

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
    cache_miss,
    compile_topology,
    diurnal_factor,
    edge_factors,
    latency_curves,
    load_flow,
    miss_share,
    online_capacity,
    rollout_s,
    shed_share,
    usage,
    warming_s,
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
    queue, tail = latency_curves([0.0, 0.5, 0.9, 0.97, 2.0], p)
    assert queue[0] == 1.0 and tail[0] == p.p99_base
    assert queue == sorted(queue) and queue[1] == pytest.approx(1 + 0.5**4 / 0.5)
    assert queue[3] == queue[4]  # capped at queue_cap
    assert tail[4] == p.p99_base + p.p99_slope * p.p99_rho_cap
    cpu, memory = usage([0.0, 0.5, 1.0, 3.0], [0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.5, 0.0], p)
    assert cpu == [0.0, 0.7, 1.0, 1.0]  # utilisation above 1 counts as 1
    assert memory == [p.memory_base, pytest.approx(p.memory_base + 0.5 * p.memory_slope), 1.0,
                      pytest.approx(p.memory_base + p.memory_slope)]
    assert shed_share(0.5) == 0.0 and shed_share(4.0) == 0.75
    assert online_capacity(260.0, False, p) == 260.0
    assert online_capacity(260.0, True, p) == pytest.approx(260.0 * 0.65)
    assert diurnal_factor(p.diurnal_peak_s, p) == pytest.approx(1 + p.diurnal_amplitude)


def test_calibrated_curves_reach_the_simulator(checkout: Scenario) -> None:
    def edge(params: SimParams) -> tuple[float, float]:
        sim = SimShadow(checkout, params=params)
        sim.launch(1)
        m = sim.sample()
        return m.edge.latency_p99_ms, m.components["web"].memory

    p99, memory = edge(SimParams())
    steeper = SimParams(queue_power=2.0, p99_slope=6.0, memory_base=0.5)
    p99_2, memory_2 = edge(steeper)
    assert p99_2 > p99 and memory_2 > memory


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(("batch", "drain"), [(2, 10.0), (4, 0.0), (6, 30.0)])
def test_rollout_duration_is_the_simulators_without_jitter(checkout: Scenario, batch: int,
                                                           drain: float) -> None:
    p = SimParams(jitter_sigma=0.0)
    sim = SimShadow(checkout, params=p)
    sim.launch(1)
    result = sim.run_step(checkout.procedure.step("revert-web"), {"batch": batch,
                                                                  "drain": drain})
    web = checkout.deployment.services[0]
    assert result.status == "ok"
    assert result.end_s - result.start_s == pytest.approx(
        rollout_s(web.replicas, batch, drain, web.startup, p))


def test_warm_cache_duration_is_warming_s(checkout: Scenario) -> None:
    for p in (SimParams(), SimParams(warm_speedup=2.0)):
        sim = SimShadow(checkout, params=p)
        sim.launch(1)
        sim.run_step(checkout.procedure.step("flush-cache"), {})
        result = sim.run_step(checkout.procedure.step("warm-cache"), {})
        warmup = checkout.deployment.caches[0].warmup
        assert result.end_s - result.start_s == warming_s(1.0, warmup, p) == (
            warmup / p.warm_speedup)

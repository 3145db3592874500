"""shadowrl.rl.search: plan spaces, the best static procedure, greedy and the oracle.

The oracle is checked against brute force (every action sequence replayed from ``reset``) on
a procedure small enough to enumerate, and against every other method on checkout incidents.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from shadowrl.core.plan import configured_plan, validate_plan
from shadowrl.core.spec import load_procedure, load_scenario, procedure_to_data
from shadowrl.rehearsal.runner import rehearse
from shadowrl.rl import search
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.evaluate import evaluate
from shadowrl.rl.policy import (
    RandomPolicy,
    StaticPolicy,
    actions_to_plan,
    configured_policy,
    plan_actions,
)
from shadowrl.rl.search import (
    GreedyPolicy,
    OraclePolicy,
    StaticSearchResult,
    all_plans,
    best_static,
    branch_and_bound,
    greedy_rollout,
    linear_extensions,
    local_search,
    plan_cost,
    plan_space_size,
    plan_to_procedure,
    rollout,
)
from tests.agents import TINY_AGENT

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
SCENARIOS = ROOT / "tests" / "scenarios"
PHYS_COMPAT = SCENARIOS / "phys_compat.yaml"  # optional `pause` with tunable settings
PHYS_CACHE = SCENARIOS / "phys_cache.yaml"  # optional `warm-cache` without settings
FLOOR_CHAIN = SCENARIOS / "floor_chain.yaml"  # unfixable outages deep in a call chain
TRAIN_SEEDS = [1_000_000 + k for k in range(8)]
ORACLE_SEEDS = 10_000  # episodes 10000..10005 of the oracle comparison
ORACLE_EPISODES = 6

# checkout's deployment with a 3-step procedure: 2 x 6 settings plus an optional flag step
# (run or skipped) in any order gives 144 action sequences, few enough for brute force.
TINY_STEPS = [
    {"name": "scale-web", "action": "scale", "target": "web",
     "settings": {"replicas": {"choices": [6, 12], "default": 6}}},
    {"name": "revert-web", "action": "rollback_version", "target": "web",
     "settings": {"batch": {"choices": [1, 3, 6], "default": 1},
                  "drain": {"choices": ["0s", "30s"], "default": "30s"}}},
    {"name": "disable-new-checkout", "action": "disable_flag", "target": "web",
     "settings": {"flag": "new-checkout"}, "optional": True},
]


@pytest.fixture(scope="module")
def checkout():
    return load_scenario(CHECKOUT)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = yaml.safe_load(CHECKOUT.read_text())
    data["metadata"]["name"] = "tiny"
    data["procedure"]["steps"] = TINY_STEPS
    path = tmp_path_factory.mktemp("tiny") / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _respects_after(steps: list[Any], order: list[str]) -> bool:
    pos = {n: i for i, n in enumerate(order)}
    return all(pos[d] < pos[s.name] for s in steps for d in s.after if d in pos)


# --------------------------------------------------------------------------- plan spaces


def test_linear_extensions_of_a_small_procedure() -> None:
    steps = load_scenario(PHYS_COMPAT).procedure.steps  # pause and migrate both after revert
    orders = list(linear_extensions(steps))
    assert sorted(orders) == sorted([["revert-app", "pause", "migrate-db-down"],
                                     ["revert-app", "migrate-db-down", "pause"]])


def test_linear_extensions_equal_the_filtered_permutations(checkout) -> None:
    steps = checkout.procedure.steps
    orders = [tuple(o) for o in linear_extensions(steps)]
    expected = {p for p in itertools.permutations(s.name for s in steps)
                if _respects_after(steps, list(p))}
    assert len(orders) == len(set(orders))  # no order twice
    assert set(orders) == expected
    assert len(orders) == 210  # 7!/4!: revert-orders -> migrate -> flush -> warm is a chain
    # a subset: `after` naming a step outside it is ignored
    subset = [checkout.procedure.step(n) for n in ("flush-cache", "warm-cache", "scale-web")]
    sub_orders = list(linear_extensions(subset))
    assert len(sub_orders) == 3
    assert all(o.index("flush-cache") < o.index("warm-cache") for o in sub_orders)


def _check_plans(procedure: Any) -> list[Any]:
    plans = list(all_plans(procedure))
    keys = [repr(p) for p in plans]
    assert len(keys) == len(set(keys))
    for plan in plans:
        validate_plan(procedure, plan)  # every step once, `after` respected, required kept
    return plans


def test_plan_space_size_counts_all_plans(tiny_path: Path) -> None:
    for path in (tiny_path, PHYS_CACHE):
        proc = load_scenario(path).procedure
        plans = _check_plans(proc)
        assert plan_space_size(proc) == len(plans)
    proc = load_scenario(tiny_path).procedure
    assert len(list(all_plans(proc))) == 96  # (3! + 2!) orders x 12 settings
    assert plan_space_size(proc, limit=50) == 50


def test_plan_space_size_with_a_skippable_tunable_step() -> None:
    proc = load_scenario(PHYS_COMPAT).procedure
    plans = _check_plans(proc)
    assert len(plans) == 2 * 12 + 1 * 4  # with pause: 2 orders x 12; without: 1 x 4
    assert plan_space_size(proc) == len(plans)


# --------------------------------------------------------------------------- best static


def _env_cost(env: RollbackEnv, plan: Any, seeds: list[int]) -> float:
    """Mean cost of a plan played through the env (not through rehearse/plan_cost)."""
    costs = []
    for s in seeds:
        env.reset(seed=s)
        costs.append(rollout(env, plan_actions(env, plan)))
    return float(np.mean(costs))


@pytest.mark.parametrize("path", [PHYS_COMPAT, "tiny"])
def test_best_static_is_exhaustive_on_a_small_procedure(path: Any, tiny_path: Path) -> None:
    env = RollbackEnv(tiny_path if path == "tiny" else path)
    seeds = [0, 1, 2]
    calls: list[tuple[int, int]] = []
    found = best_static(env, seeds, on_trial=lambda i, n: calls.append((i, n)))
    plans = list(all_plans(env.procedure))
    assert found.method == "exhaustive"
    assert found.evaluated == len(plans)
    assert [i for i, _ in calls] == list(range(1, len(plans) + 1))
    brute = [_env_cost(env, plan, seeds) for plan in plans]
    assert found.train_cost == pytest.approx(min(brute), rel=1e-9, abs=1e-12)
    assert _env_cost(env, found.plan, seeds) == pytest.approx(found.train_cost, rel=1e-9)
    validate_plan(env.procedure, found.plan)
    # local search from the exhaustive optimum cannot improve it
    again = local_search(env, seeds, found)
    assert again.train_cost == pytest.approx(found.train_cost, rel=1e-12)


@pytest.fixture(scope="module")
def checkout_static(checkout) -> tuple[StaticSearchResult, list[Any]]:
    """best_static on checkout (Optuna + local search), recording every plan it evaluated."""
    env = RollbackEnv(checkout)
    seen: list[Any] = []
    real = search.plan_cost

    def recording(env_: RollbackEnv, plan: Any, seeds: Any, deviation: Any) -> float:
        cost = real(env_, plan, seeds, deviation)
        seen.append((list(plan), cost))
        return cost

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search, "plan_cost", recording)
        found = best_static(env, TRAIN_SEEDS, trials=30, seed=0)
    return found, seen


def test_best_static_on_checkout_never_worse_than_configured(checkout, checkout_static) -> None:
    found, seen = checkout_static
    env = RollbackEnv(checkout)
    assert plan_space_size(checkout.procedure, limit=401) > 400  # so not exhaustive
    assert found.method == "optuna+local"
    configured = plan_cost(env, configured_plan(checkout.procedure), TRAIN_SEEDS, env.deviation)
    assert found.train_cost <= configured + 1e-9
    assert found.train_cost < configured  # the runbook is far from the best plan
    assert plan_cost(env, found.plan, TRAIN_SEEDS, env.deviation) == pytest.approx(
        found.train_cost, rel=1e-12)
    assert found.train_cost == pytest.approx(min(c for _, c in seen), rel=1e-12)
    assert len(seen) >= 30


def test_best_static_plans_are_valid(checkout, checkout_static) -> None:
    found, seen = checkout_static
    validate_plan(checkout.procedure, found.plan)
    assert sorted(n for n, _ in found.plan) == sorted(s.name for s in checkout.procedure.steps)
    for plan, _ in seen:  # every plan Optuna decoded or local search proposed
        validate_plan(checkout.procedure, plan)


def test_local_search_improves_the_configured_plan(checkout) -> None:
    env = RollbackEnv(checkout)
    seeds = TRAIN_SEEDS[:3]
    conf = configured_plan(checkout.procedure)
    start = StaticSearchResult(conf, plan_cost(env, conf, seeds, env.deviation), 1, "start")
    out = local_search(env, seeds, start, max_moves=3)
    assert out.method == "start+local"
    assert out.evaluated > start.evaluated
    assert out.train_cost < start.train_cost
    validate_plan(checkout.procedure, out.plan)
    assert plan_cost(env, out.plan, seeds, env.deviation) == pytest.approx(out.train_cost)


# --------------------------------------------------------------------------- plan_to_procedure


def _round_trip(scenario: Any, plan: Any, folder: Path) -> Any:
    proc = plan_to_procedure(scenario.procedure, plan)
    path = folder / "proc.yaml"
    path.write_text(yaml.safe_dump({"procedure": procedure_to_data(proc)}, sort_keys=False))
    return load_procedure(path, scenario)


def test_plan_to_procedure_round_trips(checkout, checkout_static, tmp_path: Path) -> None:
    found, _ = checkout_static
    skipping = [("revert-web", {"batch": 3, "drain": 10.0, "surge": 3}),
                ("revert-orders", {"batch": 2, "drain": 0.0, "surge": 0}),
                ("scale-web", {"replicas": 12}),
                ("migrate-db-down", {"online": True}),
                ("disable-new-checkout", {"flag": "new-checkout"}),
                ("flush-cache", {}), ("warm-cache", None)]
    for plan in (found.plan, skipping, configured_plan(checkout.procedure)):
        validate_plan(checkout.procedure, plan)
        loaded = _round_trip(checkout, plan, tmp_path)
        kept = [(n, s) for n, s in plan if s is not None]
        assert [s.name for s in loaded.steps] == [n for n, _ in kept]
        # the plan's settings became the defaults: the configured plan of the loaded
        # procedure is the plan without its skipped steps
        assert configured_plan(loaded) == kept
        for step in loaded.steps:
            original = checkout.procedure.step(step.name)
            assert set(step.after) <= set(original.after)
            assert set(original.after) - set(step.after) <= {n for n, s in plan if s is None}
            # tunable choices are kept, so the result can be optimised again
            assert {k: t.choices for k, t in step.tunables().items()} == {
                k: t.choices for k, t in original.tunables().items()}
        assert loaded.verify == checkout.procedure.verify
        # rehearsing the loaded procedure is rehearsing the plan
        for seed in (0, 1):
            a = rehearse(checkout, seed, plan=plan)
            b = rehearse(checkout, seed, procedure=loaded)
            assert b.downtime_s == pytest.approx(a.downtime_s)
            assert b.outcome == a.outcome
    skipped = plan_to_procedure(checkout.procedure, skipping)
    assert "warm-cache" not in [s.name for s in skipped.steps]


# --------------------------------------------------------------------------- greedy


class _MaskChecked:
    """Wraps a policy: asserts each action is allowed and that ``act`` leaves the env as it
    found it (greedy looks ahead with snapshot/restore)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.name = policy.name
        self.checked = 0

    def reset(self, env: RollbackEnv) -> None:
        self.policy.reset(env)

    def act(self, env: RollbackEnv, obs: np.ndarray) -> int:
        mask = env.action_masks()
        before = (env.shadow.now(), env.status.copy(), len(env.results), env._observe())
        a = self.policy.act(env, obs)
        assert mask[a], f"{self.name} picked masked action {a} ({env.describe(a)})"
        assert env.shadow.now() == before[0]
        assert np.array_equal(env.status, before[1])
        assert len(env.results) == before[2]
        assert np.array_equal(env._observe(), before[3])
        self.checked += 1
        return a


@pytest.mark.parametrize("path", [CHECKOUT, "tiny"])
def test_greedy_never_picks_a_masked_action(path: Any, tiny_path: Path) -> None:
    env = RollbackEnv(tiny_path if path == "tiny" else path)
    wrapped = _MaskChecked(GreedyPolicy())
    episodes = evaluate(env, wrapped, 10, 500)
    assert wrapped.checked == sum(len(e.actions) for e in episodes)
    for e in episodes:
        assert len(e.actions) == len(env.steps)  # one action per step, none rejected
    # the lookahead's restore is exact: greedy acting replays to the same cost
    env.reset(seed=500)
    actions = greedy_rollout(env)[0]
    assert actions == episodes[0].actions
    env.reset(seed=500)
    assert rollout(env, actions) == pytest.approx(episodes[0].cost, rel=1e-12)


# --------------------------------------------------------------------------- the oracle


def _brute_force(env: RollbackEnv, seed: int) -> tuple[float, list[int], int]:
    """The best complete action sequence, every sequence replayed from ``reset``."""
    best: tuple[float, list[int]] = (math.inf, [])
    count = 0

    def rec(prefix: list[int]) -> None:
        nonlocal best, count
        env.reset(seed=seed)
        cost = 0.0
        for a in prefix:
            cost -= env.step(a)[1]
        if env.rehearsal is not None:
            count += 1
            if cost < best[0]:
                best = (cost, prefix)
            return
        for a in np.flatnonzero(env.action_masks()):
            rec([*prefix, int(a)])

    rec([])
    return best[0], best[1], count


@pytest.fixture(scope="module")
def tiny_brute(tiny_path: Path) -> dict[int, tuple[float, list[int], int]]:
    env = RollbackEnv(tiny_path)
    return {seed: _brute_force(env, seed) for seed in range(6)}


def test_branch_and_bound_is_exact_on_a_tiny_procedure(tiny_path: Path, tiny_brute) -> None:
    env = RollbackEnv(tiny_path)
    beats_greedy = 0
    for seed, (optimum, _, count) in tiny_brute.items():
        assert count == 144
        obs, _ = env.reset(seed=seed)
        result = branch_and_bound(env, max_nodes=100_000)
        assert result.exact and result.bound == result.cost
        assert 0 < result.nodes <= 100_000
        assert result.cost == pytest.approx(optimum, rel=1e-9, abs=1e-12)
        # the env is back at the root, and the actions replay to the reported cost
        assert np.array_equal(env._observe(), obs)
        assert rollout(env, result.actions) == pytest.approx(result.cost, rel=1e-9)
        env.reset(seed=seed)
        greedy = greedy_rollout(env)[1]
        assert result.cost <= greedy + 1e-9
        beats_greedy += result.cost < greedy - 1e-6
    assert beats_greedy >= 1  # the tiny procedure has incidents where greedy is myopic


def test_cost_caps_prune_the_same_branches_sooner(tiny_path: Path, monkeypatch) -> None:
    """Stopping a branch once it costs more than the best complete sequence (the
    simulator's cost caps) finds what simulating every branch whole finds, node for node."""
    env = RollbackEnv(tiny_path)
    conf = plan_actions(env, configured_plan(env.procedure))
    stops = []
    real_caps = search.cost_caps

    def counting(env: RollbackEnv) -> search.CostCaps:
        caps = real_caps(env)

        @contextlib.contextmanager
        def block(bound: float) -> Any:
            try:
                with caps(bound):
                    yield
            except search.CostCapReached:
                stops.append(bound)
                raise
        return block

    def searched() -> list[Any]:
        out = []
        for seed in range(4):
            env.reset(seed=seed)
            r = branch_and_bound(env, max_nodes=100_000, incumbents=[conf])
            env.reset(seed=seed)
            out.append((r.cost, r.actions, r.nodes, r.exact, r.bound,
                        greedy_rollout(env)))
        return out

    monkeypatch.setattr(search, "cost_caps", counting)
    with_caps = searched()
    assert stops  # the caps did stop branches
    monkeypatch.setattr(search, "cost_caps", lambda env: lambda bound: contextlib.nullcontext())
    assert searched() == with_caps


def test_the_cost_floor_proves_the_same_optimum_in_fewer_nodes(monkeypatch) -> None:
    """An unfixable outage: the A* floor (what it must still cost until the deadline) keeps
    the brute-force optimum and prunes part of the tree plain cost-so-far keeps (on
    checkout's provider outages, most of it: docs/optimizer.md)."""
    env = RollbackEnv(FLOOR_CHAIN)
    seeds = [s for s in range(40) if env.reset(seed=s)[1]["incident"].endswith("outage")][:2]
    plain = search.cost_floor

    def searched() -> list[Any]:
        out = []
        for seed in seeds:
            env.reset(seed=seed)
            out.append(branch_and_bound(env, max_nodes=100_000))
        return out

    with_floor = searched()
    monkeypatch.setattr(search, "cost_floor", lambda env: lambda t: 0.0)
    without = searched()
    monkeypatch.setattr(search, "cost_floor", plain)
    for seed, a, b in zip(seeds, with_floor, without):
        optimum, _, count = _brute_force(env, seed)
        assert count > 300
        assert a.exact and b.exact
        assert a.cost == pytest.approx(optimum, rel=1e-9) == b.cost
        assert a.nodes < b.nodes, (seed, a.nodes, b.nodes)
    assert sum(a.nodes for a in with_floor) < 0.85 * sum(b.nodes for b in without)


def test_branch_and_bound_on_phys_compat_matches_brute_force() -> None:
    env = RollbackEnv(PHYS_COMPAT)
    for seed in (0, 1):
        optimum, _, count = _brute_force(env, seed)
        assert count == 32
        env.reset(seed=seed)
        result = branch_and_bound(env, max_nodes=100_000)
        assert result.exact
        assert result.cost == pytest.approx(optimum, rel=1e-9, abs=1e-12)


def test_branch_and_bound_with_a_tiny_budget(tiny_path: Path, tiny_brute) -> None:
    env = RollbackEnv(tiny_path)
    conf = configured_plan(env.procedure)
    for seed, (optimum, best_actions, _) in tiny_brute.items():
        env.reset(seed=seed)
        incumbents = [plan_actions(env, conf)]
        costs = []
        for actions in [greedy_rollout(env)[0], *incumbents]:
            env.reset(seed=seed)
            costs.append(rollout(env, actions))
        env.reset(seed=seed)
        result = branch_and_bound(env, max_nodes=3, incumbents=incumbents)
        assert not result.exact
        assert result.nodes <= 3
        assert result.cost <= min(costs) + 1e-9
        assert result.cost >= optimum - 1e-9  # a real sequence, not a bound
        assert 0 <= result.bound <= optimum + 1e-9  # a proven lower bound: never above it
        assert rollout(env, result.actions) == pytest.approx(result.cost, rel=1e-9)
        # the optimum as an incumbent is kept even when the search stops at once
        env.reset(seed=seed)
        seeded = branch_and_bound(env, max_nodes=1, incumbents=[best_actions])
        assert not seeded.exact
        assert seeded.cost == pytest.approx(optimum, rel=1e-9, abs=1e-12)


@pytest.fixture(scope="module")
def rl_policy(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from shadowrl.rl.agents import load_policy, train

    folder = tmp_path_factory.mktemp("rl")
    (folder / "agent.yaml").write_text(TINY_AGENT)
    result = train(CHECKOUT, folder / "agent.yaml", folder / "run", seed=0, progress=False)
    assert result.timesteps >= 1024
    return load_policy(result.model_path, name="rl")


def test_oracle_is_never_worse_than_any_method(checkout, checkout_static, rl_policy) -> None:
    env = RollbackEnv(checkout)
    found, _ = checkout_static
    methods = {
        "configured": configured_policy(env),
        "random": RandomPolicy(0),
        "greedy": GreedyPolicy(),
        "best_static": StaticPolicy(found.plan, name="best_static"),
        "rl": rl_policy,
    }
    costs = {name: [e.cost for e in evaluate(env, p, ORACLE_EPISODES, ORACLE_SEEDS)]
             for name, p in methods.items()}
    oracle = OraclePolicy()  # no incumbents: it must find these plans itself, in its budget
    episodes = evaluate(env, oracle, ORACLE_EPISODES, ORACLE_SEEDS)
    assert [r.exact for r in oracle.results] == [True] * ORACLE_EPISODES
    assert [e.extra["exact"] for e in episodes] == [True] * ORACLE_EPISODES
    for i, e in enumerate(episodes):
        assert e.rehearsal.seed == ORACLE_SEEDS + i
        # replaying the searched sequence from reset costs what the search computed
        assert e.cost == pytest.approx(oracle.results[i].cost, rel=1e-9)
        for name, c in costs.items():
            assert e.cost <= c[i] + 1e-9, (name, ORACLE_SEEDS + i, e.cost, c[i])
    # and it is strictly better than the runbook on these incidents
    assert np.mean([e.cost for e in episodes]) < np.mean(costs["configured"])


def test_oracle_policy_replays_and_keeps_incumbents(checkout, checkout_static) -> None:
    env = RollbackEnv(checkout)
    found, _ = checkout_static
    oracle = OraclePolicy(max_nodes=20, incumbent_plans=[found.plan])
    static = evaluate(env, StaticPolicy(found.plan), 3, ORACLE_SEEDS)
    episodes = evaluate(env, oracle, 3, ORACLE_SEEDS)
    for e, s, r in zip(episodes, static, oracle.results):
        assert not r.exact and e.extra == {"exact": False, "nodes": r.nodes,
                                           "bound": r.bound, "cost": r.cost}
        assert 0 <= r.bound <= r.cost
        assert e.cost <= s.cost + 1e-9
        assert actions_to_plan(env, e.actions) == actions_to_plan(env, r.actions)


def test_an_oracle_that_does_not_remember_searches_each_incident_as_if_alone(
        checkout) -> None:
    # a budget-capped search's plan depends on its incumbents: without the earlier
    # incidents' optima a run over several incidents finds what each finds alone
    env = RollbackEnv(checkout)
    seeds = [ORACLE_SEEDS + i for i in range(3)]
    together = evaluate(env, OraclePolicy(max_nodes=20, remember=False), 3, ORACLE_SEEDS)
    alone = [evaluate(env, OraclePolicy(max_nodes=20), 1, s)[0] for s in seeds]
    assert [e.actions for e in together] == [e.actions for e in alone]
    assert [e.extra for e in together] == [e.extra for e in alone]
    remembering = OraclePolicy(max_nodes=20)
    evaluate(env, remembering, 3, ORACLE_SEEDS)
    assert remembering._recent  # the default does carry optima forward


def test_an_unfinished_search_proves_a_lower_bound_of_the_optimum(
        tiny_path: Path, tiny_brute) -> None:
    env = RollbackEnv(tiny_path)
    for seed, (optimum, _, _) in tiny_brute.items():
        bounds = []
        for budget in (5, 20, 60, 100_000):
            env.reset(seed=seed)
            result = branch_and_bound(env, max_nodes=budget)
            assert result.bound <= optimum + 1e-9 <= result.cost + 2e-9
            bounds.append(result.bound)
        assert bounds[-1] == pytest.approx(optimum, rel=1e-9, abs=1e-12)
        assert max(bounds[:-1]) <= optimum + 1e-9


def _benchmark(name: str = "optimizer_scaling") -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_oracle_proves_optima_of_generated_procedures(tmp_path: Path) -> None:
    """The scaling benchmark's procedures: 4 and 8 steps (2 and 4 services) are searched to a
    proven optimum within the default budget, and a search cut short proves a bound below
    that optimum."""
    bench = _benchmark()
    with pytest.raises(ValueError, match="even number"):
        bench.scaling_scenario(5, tmp_path)
    small, large = bench.scaling_scenario(4, tmp_path), bench.scaling_scenario(8, tmp_path)
    assert [len(sc.procedure.steps) for sc in (small, large)] == [4, 8]
    assert len(large.incidents) == 4 and len(large.deployment.services) == 4
    env = RollbackEnv(small)
    for seed in range(3):
        env.reset(seed=seed)
        assert branch_and_bound(env).exact
    env = RollbackEnv(large)
    env.reset(seed=10_000)
    exact = branch_and_bound(env)
    assert exact.exact and exact.nodes > 1000
    env.reset(seed=10_000)
    cut = branch_and_bound(env, max_nodes=exact.nodes // 4)
    assert not cut.exact and cut.bound <= exact.cost + 1e-9 <= cut.cost + 2e-9


def test_siblings_share_the_incident_and_differ_in_the_noise_only() -> None:
    """The information benchmark: siblings of a held-out incident face the same drawn
    incident (cause, magnitude, load, time of day) on different noise; the mean of their
    optima is never above the best single plan for all of them (each optimum is the least
    cost on its own sibling)."""
    bench = _benchmark("oracle_information")
    env = RollbackEnv(ROOT / "envs" / "search.yaml")
    fixed = bench._FixedDraw(env)
    row = bench.sibling_gap(env, 10_010, 2, fixed)
    assert row is not None and row["siblings"] == 2 and row["exact"] == 2
    assert row["oracle"] <= row["best_open_loop"] + 1e-12
    assert fixed.injection is None  # the draw is the scenario's again
    own, _ = env.reset(seed=10_010)
    fixed.injection = env.injection
    other, _ = env.reset(seed=bench.SIBLING_SEED + 1)
    assert env.injection is fixed.injection  # the same drawn incident...
    assert not np.array_equal(own, other)  # ...on other load noise: another breach
    fixed.injection = None
    assert bench.sibling_gap(env, 10_010, 2, fixed, incident="no-such-incident") is None


def test_the_plan_library_costs_every_plan_from_the_same_breach() -> None:
    """The plan-library benchmark: each cell of its cost matrix is what that plan costs when
    played from a fresh reset on that incident (the snapshot restores the breach exactly),
    and a 1-nearest-neighbour chooser asked about its own training breaches picks each
    row's cheapest plan."""
    bench = _benchmark("plan_library")
    env = RollbackEnv(ROOT / "envs" / "search.yaml")
    plans = []
    for policy in (GreedyPolicy(), configured_policy(env)):
        obs, _ = env.reset(seed=10_020)
        policy.reset(env)
        actions: list[int] = []
        while True:
            action = policy.act(env, obs)
            actions.append(action)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
        plans.append(tuple(actions))
    assert plans[0] != plans[1]
    observations, costs = bench.cost_matrix(env, plans, range(10_020, 10_024))
    assert costs.shape == (4, 2) and observations.shape[0] == 4
    for i, seed in enumerate(range(10_020, 10_024)):
        for j, plan in enumerate(plans):
            env.reset(seed=seed)
            assert rollout(env, plan) == pytest.approx(costs[i, j], abs=1e-9)
    assert costs[:, 0].min() != costs[:, 1].min()  # the two plans differ in cost
    picked = bench.knn_choice(observations, costs, observations, 1)
    assert list(picked) == list(costs.argmin(1))


def test_the_quality_benchmark_judges_on_every_incident_it_played() -> None:
    """With further held-out incidents, RL/oracle and the oracle's exact share are judged on
    the run's incidents and the further ones together; the run's own readings stay beside
    them as ``*_run``."""
    bench = _benchmark("optimizer_quality")
    entry = {"episodes": 2, "oracle": {"exact": 2},
             "targets": {"rl_over_oracle": {"value": 1.0, "met": True},
                         **bench.run_targets({"exact": 2}, 2, 100.0)}}
    more = {"rl": [3.0, 1.0], "oracle": [1.0, 1.0], "oracle_exact": 1}
    bench.judge_with_more(entry, {"rl": [1.0, 1.0], "oracle": [1.0, 1.0]}, more)
    found = entry["targets"]
    assert found["oracle_exact_share_run"]["value"] == 1.0
    assert found["oracle_exact_share"] == {"value": 0.75, "target": ">= 0.95", "met": False,
                                           "incidents": 4}
    assert found["rl_over_oracle_run"]["value"] == 1.0
    assert found["rl_over_oracle"]["value"] == 1.5 and not found["rl_over_oracle"]["met"]
    assert found["rl_over_oracle"]["incidents"] == 4 and entry["more_incidents"] is more


def test_the_quality_benchmark_times_the_machine_it_ran_on() -> None:
    """The machine reference is a duration that grows with the work: ten times the loop
    takes longer (by far more than timer noise), so it can tell a slow day from a fast one."""
    bench = _benchmark("optimizer_quality")
    short = bench.machine_reference_s(iterations=100_000, repeat=2)
    long = bench.machine_reference_s(iterations=1_000_000, repeat=2)
    assert 0 < short < long

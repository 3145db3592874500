"""Distillation: a cost-sensitive tree over breach observables, written as a runbook that
plays the same plans the tree chooses, and that keeps an adaptive teacher's advantage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shadowrl.core.plan import configured_plan
from shadowrl.core.runbook import load_runbook, runbook_from_data, runbook_to_data
from shadowrl.core.spec import load_scenario
from shadowrl.rl.distill import (
    Node,
    Teachers,
    distill,
    feature_row,
    features_of,
    grow,
    heldout,
    rl_beats_static,
    to_runbook,
)
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.evaluate import evaluate
from shadowrl.rl.policy import StaticPolicy, actions_to_plan, plan_actions
from shadowrl.rl.runbook_policy import RunbookPolicy, procedure_plan
from shadowrl.rl.search import OraclePolicy, best_static

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
ADAPTIVE = ROOT / "tests" / "scenarios" / "adaptive.yaml"


def test_grow_finds_the_threshold_that_separates_the_cheap_plans() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.uniform(0, 1, 200), rng.uniform(0, 1, 200)])  # 2nd: noise
    costs = np.where(x[:, [0]] <= 0.3, [[1.0, 5.0]], [[5.0, 1.0]])
    tree = grow(x, costs, max_depth=3)
    assert (tree.feature, tree.depth(), tree.leaves()) == (0, 1, 2)
    assert 0.25 <= tree.threshold <= 0.35
    assert [tree.choose(row) for row in ([0.1, 0.9], [0.8, 0.1])] == [0, 1]
    assert grow(x, costs, max_depth=0).leaves() == 1  # depth 0: the single best plan


def test_grow_keeps_leaves_big_enough_and_prunes_same_plan_splits() -> None:
    x = np.arange(40, dtype=float).reshape(-1, 1)
    costs = np.column_stack([np.where(x[:, 0] < 2, 0.0, 1.0), np.full(40, 0.5)])
    assert grow(x, costs, max_depth=2, min_leaf=4).left is None or all(
        n >= 4 for n in _leaf_sizes(grow(x, costs, max_depth=2, min_leaf=4), x))
    same = np.column_stack([np.full(40, 1.0), np.full(40, 2.0)])
    assert grow(x, same, max_depth=3).leaves() == 1  # no split lowers the cost


def _leaf_sizes(tree: Node, x: np.ndarray) -> list[int]:
    leaves: dict[int, int] = {}
    for row in x:
        node = tree
        while node.left is not None and node.right is not None and node.feature is not None:
            node = node.left if row[node.feature] <= node.threshold else node.right
        leaves[id(node)] = leaves.get(id(node), 0) + 1
    return list(leaves.values())


def test_a_tree_as_a_runbook_chooses_what_the_tree_chooses() -> None:
    sc = load_scenario(CHECKOUT)
    env = RollbackEnv(sc)
    features = features_of(sc)
    web_errors = next(i for i, f in enumerate(features)
                      if (f.kind, f.name) == ("error_rate", "web"))
    edge_slow = next(i for i, f in enumerate(features)
                     if (f.kind, f.name) == ("latency_ratio", "edge"))
    plans = [configured_plan(sc.procedure), best_static(env, range(20), trials=5, seed=0).plan]
    tree = Node(0, 0.0, web_errors, 0.05, Node(1, 0.0, edge_slow, 1.2, Node(0, 0.0),
                                                 Node(1, 0.0)), Node(0, 0.0))
    book = to_runbook(sc, sc.procedure, tree, features, plans)
    assert [len(b.when) for b in book.branches] == [2, 2]  # two paths + the default
    book = runbook_from_data(runbook_to_data(book), "distilled", scenario=sc)  # it validates
    policy = RunbookPolicy(book)
    chosen = set()
    for seed in range(10000, 10030):
        env.reset(seed=seed)
        want = plans[tree.choose(feature_row(env, features))]
        policy.reset(env)
        got = procedure_plan(env.procedure, book.procedures()[policy.branch])
        assert plan_actions(env, got) == plan_actions(env, want), seed
        chosen.add(policy.branch)
    assert len(chosen) >= 2


@pytest.fixture(scope="module")
def adaptive() -> dict[str, object]:
    """A runbook distilled from an adaptive teacher (the per-incident oracle), measured on
    held-out incidents beside the teacher and the best static plan."""
    sc = load_scenario(ADAPTIVE)
    env = RollbackEnv(sc)
    best = best_static(env, range(20), trials=20, seed=0).plan
    result = distill(env, Teachers(OraclePolicy(150, [best]), best, oracle_nodes=0),
                     eval_seed=10000, train=60, validation=30)
    n = 30
    teacher = evaluate(env, OraclePolicy(150, [best]), n, 10000)
    static = evaluate(env, StaticPolicy(best), n, 10000)
    costs = {"rl": [e.cost for e in teacher], "best_static": [e.cost for e in static]}
    report = heldout(env, result.runbook, list(range(10000, 10000 + n)),
                     [actions_to_plan(env, e.actions) for e in teacher], costs)
    return {"result": result, "report": report, "costs": costs}


def test_a_runbook_from_an_adaptive_teacher_branches_and_keeps_its_advantage(
        adaptive: dict[str, object]) -> None:
    result, report = adaptive["result"], adaptive["report"]
    assert result.fallback is None and result.runbook.branches  # type: ignore[attr-defined]
    assert result.depth <= 3  # type: ignore[attr-defined]
    cost = report["cost"]  # type: ignore[index]
    assert cost["rl"] < cost["best_static"]  # the teacher adapts, and it pays
    assert cost["runbook"] < cost["best_static"]
    assert report["kept_share"] > 0.5  # type: ignore[index]
    assert 0.5 < report["fidelity"] <= 1.0  # type: ignore[index]
    assert len(report["branches"]) >= 2  # type: ignore[index]


def test_distilling_over_ray_replicas_gives_the_serial_runbook(ray_local: Any) -> None:
    # the oracle's searches and the cost matrix as Ray tasks: the same candidates, the same
    # costs, so the same tree and runbook as the serial distillation
    sc = load_scenario(ADAPTIVE)
    env = RollbackEnv(sc)
    best = configured_plan(sc.procedure)
    runs = [distill(env, Teachers(StaticPolicy(best), best, oracle_nodes=60,
                                  oracle_incidents=6, replicas=replicas),
                    eval_seed=10000, train=24, validation=8) for replicas in (1, 2)]
    serial, parallel = runs
    assert serial.candidates > 1  # the oracle's plans were found and are candidates
    assert parallel.candidates == serial.candidates
    assert parallel.validation_cost == serial.validation_cost
    assert runbook_to_data(parallel.runbook) == runbook_to_data(serial.runbook)


def test_no_significant_advantage_falls_back_to_the_best_static_procedure() -> None:
    beats, sentence = rl_beats_static([1.0, 2.0, 3.0, 1.5], [1.1, 1.9, 3.1, 1.5])
    assert not beats and "does not beat the best static procedure" in sentence
    beats, _ = rl_beats_static([1.0] * 30, [1.5 + 0.01 * i for i in range(30)])
    assert beats
    sc = load_scenario(CHECKOUT)
    env = RollbackEnv(sc)
    plan = configured_plan(sc.procedure)
    result = distill(env, Teachers(None, plan), eval_seed=10000, fallback=sentence)
    assert result.runbook.branches == [] and result.fallback == sentence
    assert sentence in (result.runbook.metadata.description or "")


def test_optimize_writes_a_runbook_that_evaluates_as_it_reports(tmp_path: Path) -> None:
    out = tmp_path / "opt"
    done = subprocess.run([sys.executable, "-m", "shadowrl", "optimize", str(CHECKOUT),
                           "--method", "search", "--episodes", "6", "--trials", "5",
                           "--oracle-nodes", "50", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["runbook"] == str(out / "runbook.yaml")
    book = load_runbook(out / "runbook.yaml", load_scenario(CHECKOUT))
    summary = json.loads((out / "runbook.json").read_text())
    assert summary["fallback"].startswith("no RL policy in this run")
    assert not book.branches
    # the recorded held-out cost is what `evaluate --policy runbook.yaml` measures
    done = subprocess.run([sys.executable, "-m", "shadowrl", "evaluate", str(CHECKOUT),
                           "--policy", str(out / "runbook.yaml"), "--episodes", "6",
                           "--seed", "10000", "--json"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["cost"]["mean"] == pytest.approx(
        summary["heldout"]["cost"]["runbook"], abs=1e-4)
    assert summary["heldout"]["cost"]["runbook"] == pytest.approx(
        summary["heldout"]["cost"]["best_static"], abs=1e-4)

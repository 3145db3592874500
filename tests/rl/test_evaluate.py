"""shadowrl.rl.evaluate: episode i uses seed ``seed + i`` for every policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shadowrl.core.plan import configured_plan
from shadowrl.rehearsal.runner import rehearse
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.evaluate import Episode, evaluate, run_episode
from shadowrl.rl.policy import RandomPolicy, StaticPolicy, configured_policy
from shadowrl.rl.search import GreedyPolicy, OraclePolicy, episode_cost

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"




def test_episode_i_uses_seed_plus_i(checkout, env: RollbackEnv) -> None:
    ticks: list[int] = []
    episodes = evaluate(env, configured_policy(env), 5, 300, on_episode=ticks.append)
    assert ticks == [0, 1, 2, 3, 4]
    assert all(isinstance(e, Episode) for e in episodes)
    for i, e in enumerate(episodes):
        assert e.rehearsal.seed == 300 + i
        # the i-th episode is the i-th rehearsal: same incident, timings and outcome
        assert e.rehearsal.to_json() == rehearse(checkout, 300 + i).to_json()
    assert len({e.rehearsal.breach.at_s for e in episodes}) > 1  # seeds do differ


@pytest.mark.parametrize("make", [lambda env: configured_policy(env),
                                  lambda env: RandomPolicy(5), lambda env: GreedyPolicy()],
                         ids=["configured", "random", "greedy"])
def test_every_policy_faces_the_same_incidents(make: Any, env: RollbackEnv) -> None:
    policy = make(env)
    reference = evaluate(env, configured_policy(env), 4, 700)
    episodes = evaluate(env, policy, 4, 700)
    for e, r in zip(episodes, reference):
        assert e.rehearsal.incident == r.rehearsal.incident
        assert e.rehearsal.breach.at_s == r.rehearsal.breach.at_s
        assert e.rehearsal.injection == r.rehearsal.injection
    # an episode does not depend on which episodes ran before it
    shifted = evaluate(env, make(env), 3, 701)
    assert [e.rehearsal.to_json() for e in shifted] == [
        e.rehearsal.to_json() for e in episodes[1:]]
    assert [e.actions for e in shifted] == [e.actions for e in episodes[1:]]


@pytest.mark.parametrize("make", [lambda env: configured_policy(env),
                                  lambda env: RandomPolicy(2), lambda env: GreedyPolicy()],
                         ids=["configured", "random", "greedy"])
def test_episode_cost_is_minus_the_return(make: Any, env: RollbackEnv) -> None:
    for e in evaluate(env, make(env), 4, 900):
        # minus the summed rewards equals the objective of the finished rehearsal
        assert e.cost == pytest.approx(episode_cost(e.rehearsal, env), rel=1e-9, abs=1e-9)
        assert e.cost > 0
        assert len(e.actions) == len(env.steps)
        statuses = [s.status for s in e.rehearsal.steps]
        assert sorted(s.name for s in e.rehearsal.steps) == sorted(s.name for s in env.steps)
        assert set(statuses) <= {"ok", "failed", "skipped"}


def test_evaluate_is_reproducible_across_envs(checkout) -> None:
    a = evaluate(RollbackEnv(checkout), RandomPolicy(1), 3, 50)
    b = evaluate(RollbackEnv(checkout), RandomPolicy(1), 3, 50)
    assert [(e.cost, e.actions, e.rehearsal.to_json()) for e in a] == [
        (e.cost, e.actions, e.rehearsal.to_json()) for e in b]


def test_episode_extra_carries_the_policys_info(env: RollbackEnv) -> None:
    oracle = OraclePolicy(max_nodes=30, incumbent_plans=[configured_plan(env.procedure)])
    episodes = evaluate(env, oracle, 2, 10_000)
    assert [e.extra for e in episodes] == [{"exact": r.exact, "nodes": r.nodes,
                                            "bound": r.bound, "cost": r.cost}
                                           for r in oracle.results]
    assert evaluate(env, configured_policy(env), 1, 10_000)[0].extra == {}


class _Stuck:
    """Always asks for the same step: after it ran, the env rejects it (masked)."""

    name = "stuck"

    def reset(self, env: RollbackEnv) -> None:
        pass

    def act(self, env: RollbackEnv, obs: np.ndarray) -> int:
        return 0


def test_a_policy_that_never_finishes_is_an_error(env: RollbackEnv) -> None:
    with pytest.raises(RuntimeError, match="stuck.*without finishing"):
        run_episode(env, _Stuck(), 0)


def test_static_policy_of_a_skipping_plan(checkout, env: RollbackEnv) -> None:
    plan = [(n, None if n == "warm-cache" else s) for n, s in configured_plan(checkout.procedure)]
    episodes = evaluate(env, StaticPolicy(plan), 2, 10_000)
    for i, e in enumerate(episodes):
        assert e.rehearsal.to_json() == rehearse(checkout, 10_000 + i, plan=plan).to_json()
        assert e.rehearsal.steps[-1].status == "skipped"

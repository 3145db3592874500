"""shadowrl.rl.policy: actions <-> plans, static plans as policies, the random baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shadowrl.core.plan import configured_plan
from shadowrl.rehearsal.runner import rehearse
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.evaluate import evaluate, run_episode
from shadowrl.rl.policy import (
    Policy,
    RandomPolicy,
    StaticPolicy,
    action_for,
    actions_to_plan,
    configured_policy,
    plan_actions,
)
from shadowrl.rl.search import GreedyPolicy, OraclePolicy, all_plans, episode_cost

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
PHYS_COMPAT = ROOT / "tests" / "scenarios" / "phys_compat.yaml"

# a valid checkout plan far from the runbook: reordered, non-default settings, a skip
REORDERED = [("revert-orders", {"batch": 2, "drain": 10.0, "surge": 0}),
             ("revert-web", {"batch": 3, "drain": 0.0, "surge": 3}),
             ("migrate-db-down", {"online": True}),
             ("scale-web", {"replicas": 12}),
             ("disable-new-checkout", {"flag": "new-checkout"}),
             ("flush-cache", {}),
             ("warm-cache", None)]




def test_policies_satisfy_the_protocol(env: RollbackEnv) -> None:
    for p in (configured_policy(env), RandomPolicy(1), GreedyPolicy(), OraclePolicy(10)):
        assert isinstance(p, Policy)


def test_action_for_and_actions_to_plan_round_trip(env: RollbackEnv) -> None:
    for a in range(len(env.actions)):
        [(name, settings)] = actions_to_plan(env, [a])
        assert action_for(env, name, settings) == a
        assert env.steps[env.actions[a][0]].name == name
    skip = action_for(env, "warm-cache", None)
    assert env.actions[skip] == (env.step_index["warm-cache"], None)
    # settings compare by value: 10 and 10.0 s of drain are the same choice; a setting left
    # out takes the step's default (surge 0)
    a = action_for(env, "revert-web", {"batch": 2, "drain": 10})
    assert actions_to_plan(env, [a]) == [("revert-web", {"batch": 2, "drain": 10.0,
                                                         "surge": 0})]


def test_plans_round_trip_through_actions(checkout) -> None:
    env = RollbackEnv(PHYS_COMPAT)
    for plan in all_plans(env.procedure):
        actions = plan_actions(env, plan)
        assert len(actions) == len(plan)
        assert actions_to_plan(env, actions) == [(n, s) for n, s in plan]
    env = RollbackEnv(checkout)
    for plan in (REORDERED, configured_plan(checkout.procedure)):
        assert actions_to_plan(env, plan_actions(env, plan)) == list(plan)


def test_action_for_rejects_what_no_action_runs(env: RollbackEnv) -> None:
    with pytest.raises(KeyError):
        action_for(env, "revert-web", {"batch": 5, "drain": 0.0})  # 5 is not a choice
    with pytest.raises(KeyError):
        action_for(env, "revert-web", None)  # a required step has no skip action
    with pytest.raises(KeyError):
        action_for(env, "no-such-step", {})
    with pytest.raises(ValueError, match="after"):
        plan_actions(env, [("migrate-db-down", {"online": False}), *REORDERED[:1]])
    with pytest.raises(ValueError, match="skips required"):
        plan_actions(env, [("revert-web", None)])


@pytest.mark.parametrize("which", ["configured", "reordered"])
def test_static_policy_replays_the_plan(which: str, checkout, env: RollbackEnv) -> None:
    plan = configured_plan(checkout.procedure) if which == "configured" else REORDERED
    policy = StaticPolicy(plan, name=which)
    for seed in (3, 4, 5):
        episode = run_episode(env, policy, seed)
        expected = rehearse(checkout, seed, plan=plan)
        assert episode.rehearsal.to_json() == expected.to_json()
        assert episode.actions == plan_actions(env, plan)
        assert episode.cost == pytest.approx(episode_cost(expected, env), rel=1e-9)
    steps = [(s.name, s.status) for s in episode.rehearsal.steps]
    assert [n for n, _ in steps] == [n for n, _ in plan]
    for (_, status), (_, settings) in zip(steps, plan):
        assert (status == "skipped") == (settings is None)


def test_static_policy_follows_the_env_it_is_used_with(checkout) -> None:
    """Action indices depend on the env's procedure: a policy used with a second env
    (another procedure, so other indices) maps its plan again."""
    plan = [("revert-app", {"batch": 1, "drain": 1.0}), ("migrate-db-down", {"online": False}),
            ("pause", None)]
    compat = RollbackEnv(PHYS_COMPAT)
    policy = StaticPolicy(plan)
    first = run_episode(compat, policy, 0)
    assert actions_to_plan(compat, first.actions) == plan
    # the same step names in another procedure (other action indices)
    reordered = compat.procedure.model_copy(
        update={"steps": list(reversed(compat.procedure.steps))})
    other = RollbackEnv(PHYS_COMPAT, procedure=reordered)
    assert other.actions != compat.actions
    second = run_episode(other, policy, 1)
    assert actions_to_plan(other, second.actions) == plan
    again = run_episode(compat, policy, 1)
    assert actions_to_plan(compat, again.actions) == plan


def test_configured_policy_is_the_runbook(checkout, env: RollbackEnv) -> None:
    policy = configured_policy(env)
    assert policy.name == "configured"
    assert policy.plan == configured_plan(checkout.procedure)
    for seed in (0, 1):
        assert run_episode(env, policy, seed).rehearsal.to_json() == rehearse(
            checkout, seed).to_json()


def _actions(env: RollbackEnv, policy: Any, seeds: list[int]) -> list[list[int]]:
    return [run_episode(env, policy, s).actions for s in seeds]


def test_random_policy_is_deterministic_per_seed_and_episode(checkout) -> None:
    env = RollbackEnv(checkout)
    seeds = list(range(40, 52))
    a = _actions(env, RandomPolicy(7), seeds)
    # a fresh policy, another env object, the episodes in another order: same choices
    b = _actions(RollbackEnv(checkout), RandomPolicy(7), seeds[::-1])[::-1]
    assert a == b
    # the same policy object reused: each episode re-seeds from (seed, episode seed)
    reused = RandomPolicy(7)
    _actions(env, reused, [999])
    assert _actions(env, reused, seeds) == a
    # another policy seed makes other choices; other episodes too
    assert _actions(env, RandomPolicy(8), seeds) != a
    assert len({tuple(x) for x in a}) > 1
    for acts in a:  # a complete, valid order: every step once
        plan = actions_to_plan(env, acts)
        assert sorted(n for n, _ in plan) == sorted(s.name for s in env.steps)


def test_random_policy_only_takes_valid_actions(env: RollbackEnv) -> None:
    policy = RandomPolicy(3)
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        policy.reset(env)
        done = False
        while not done:
            mask = env.action_masks()
            a = policy.act(env, obs)
            assert mask[a]
            obs, _, done, truncated, info = env.step(a)
            assert not info.get("invalid_action") and not truncated
    # the skip of an optional step is among its choices: over many episodes both happen
    skipped = [any(s is None for _, s in actions_to_plan(env, acts))
               for acts in _actions(env, RandomPolicy(0), list(range(30)))]
    assert any(skipped) and not all(skipped)


def test_random_faces_the_same_incidents_as_configured(checkout, env: RollbackEnv) -> None:
    rnd = evaluate(env, RandomPolicy(0), 4, 10_000)
    conf = evaluate(env, configured_policy(env), 4, 10_000)
    assert [e.rehearsal.incident for e in rnd] == [e.rehearsal.incident for e in conf]
    assert [e.actions for e in rnd] != [e.actions for e in conf]

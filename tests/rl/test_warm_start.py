"""The warm start: the oracle's plan library, labels the breach supports, demonstrations
that replay what a policy sees, imitation that a policy then follows, and a training run
that starts from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import DummyVecEnv

from shadowrl.core.spec import SpecError
from shadowrl.rl.agents import agent_config_from_data, load_agent_config, train
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.search import env_restore, env_snapshot, rollout
from shadowrl.rl.warm_start import (
    LIBRARY_SEED,
    cost_matrix,
    demonstrations,
    imitate,
    knn_choice,
    oracle_library,
)
from tests.agents import TINY_AGENT

ROOT = Path(__file__).resolve().parents[2]
PAYMENTS = ROOT / "envs" / "payments.yaml"


def test_knn_labels_follow_the_neighbours_not_the_row_itself() -> None:
    """Two clusters of breaches: plan 0 is cheaper around the origin, plan 1 around (5, 5).
    A row whose own costs say the opposite still gets its cluster's plan when it is left
    out of its own (3) neighbours, and its own plan when it is its only neighbour."""
    rng = np.random.default_rng(0)
    near, far = rng.normal(0, 0.1, (10, 2)), rng.normal(5, 0.1, (10, 2))
    x = np.vstack([near, far])
    costs = np.vstack([np.tile([1.0, 2.0], (10, 1)), np.tile([2.0, 1.0], (10, 1))])
    costs[3] = [1.5, 1.4]  # an outlier: its own best is plan 1
    left_out = knn_choice(x, costs, x, 3, leave_out_self=True)
    assert list(left_out) == [0] * 10 + [1] * 10
    with_self = knn_choice(x, costs, x, 1)
    assert with_self[3] == 1 and list(np.delete(with_self, 3)) == [0] * 9 + [1] * 10
    # chunks of any size give the same answer
    assert list(knn_choice(x, costs, x, 3, leave_out_self=True, chunk=7)) == list(
        knn_choice(x, costs, x, 3, leave_out_self=True))


@pytest.fixture(scope="module")
def library() -> tuple[RollbackEnv, list[tuple[int, ...]]]:
    env = RollbackEnv(PAYMENTS)
    plans = oracle_library(env, 3)
    return env, plans


def test_the_library_holds_the_oracles_distinct_plans(library) -> None:  # type: ignore[no-untyped-def]
    env, plans = library
    assert 1 <= len(plans) <= 3 and len(set(plans)) == len(plans)
    for plan in plans:  # each is a whole, valid procedure
        env.reset(seed=12_345)
        assert np.isfinite(rollout(env, plan))


def test_a_node_budget_offers_plans_no_better_than_the_optimum(library) -> None:  # type: ignore[no-untyped-def]
    """A library searched within a few nodes still holds whole plans, each costing at least
    what the exact oracle's plan on the same incident costs."""
    env, exact = library
    capped = oracle_library(env, 1, max_nodes=30)
    assert len(capped) == 1
    env.reset(seed=LIBRARY_SEED)
    snap = env_snapshot(env)
    best = rollout(env, exact[0])
    env_restore(env, snap)
    assert rollout(env, capped[0]) >= best - 1e-9


def test_demonstrations_replay_the_labelled_plans(library) -> None:  # type: ignore[no-untyped-def]
    """What a demonstration records is what the policy would see: the breach, then each
    observation after the plan's steps, with masks that allow the plan's next step, and
    costs-to-go whose first value is the plan's cost in the cost matrix."""
    env, plans = library
    seeds = [300, 301, 302]
    observations, costs = cost_matrix(env, plans, seeds)
    labels = [i % len(plans) for i in range(len(seeds))]
    demos = demonstrations(env, plans, seeds, labels)
    assert len(demos.actions) == sum(len(plans[k]) for k in labels)
    start = 0
    for row, label in enumerate(labels):
        n = len(plans[label])
        np.testing.assert_allclose(demos.observations[start], observations[row], rtol=1e-6)
        assert list(demos.actions[start:start + n]) == list(plans[label])
        assert all(demos.masks[start + i][a] for i, a in enumerate(plans[label]))
        assert demos.costs_to_go[start] == pytest.approx(costs[row, label], rel=1e-5)
        assert np.all(np.diff(demos.costs_to_go[start:start + n]) <= 1e-6)  # costs accrue
        start += n


def test_imitation_makes_the_policy_follow_the_demonstrations(library) -> None:  # type: ignore[no-untyped-def]
    env, plans = library
    seeds = list(range(400, 420))
    demos = demonstrations(env, plans, seeds, [0] * len(seeds))
    model = MaskablePPO("MlpPolicy", DummyVecEnv([lambda: RollbackEnv(PAYMENTS)]), seed=0,
                        device="cpu", policy_kwargs={"net_arch": [64, 64]})

    def agreement() -> float:
        with torch.no_grad():
            dist = model.policy.get_distribution(torch.as_tensor(demos.observations),
                                                 action_masks=demos.masks)
            greedy = dist.distribution.probs.argmax(1).numpy()
        return float((greedy == demos.actions).mean())

    before = agreement()
    loss = imitate(model.policy, demos, epochs=40, batch_size=32, learning_rate=3e-3)
    assert np.isfinite(loss)
    assert agreement() == 1.0 > before


def test_a_warm_started_run_records_what_it_imitated(tmp_path: Path) -> None:
    data = yaml.safe_load(TINY_AGENT)
    data["warm_start"] = {"library_incidents": 2, "incidents": 12, "neighbours": 3,
                          "epochs": 3, "oracle_nodes": 500}
    config = agent_config_from_data(data)
    result = train(PAYMENTS, config, tmp_path / "run", seed=0, progress=False)
    state = json.loads((tmp_path / "run" / "train_state.json").read_text())
    warm = state["warm_start"]
    assert warm["library_incidents"] == 2 and warm["incidents"] == 12
    assert state["config"]["warm_start"]["oracle_nodes"] == 500
    assert 1 <= warm["library_plans"] <= 2 and warm["demonstrations"] >= 12
    # the labels can be no cheaper than each incident's cheapest library plan
    assert warm["label_cost"] >= warm["hindsight_cost"] - 1e-9
    assert Path(result.model_path).is_file()


def test_a_warm_start_needs_maskable_ppo_with_an_observed_critic(tmp_path: Path) -> None:
    agent = tmp_path / "agent.yaml"
    agent.write_text(TINY_AGENT.replace("maskable_ppo", "ppo")
                     + "warm_start: {incidents: 100}\n")
    with pytest.raises(SpecError) as err:
        load_agent_config(agent)
    assert "agent.yaml" in str(err.value) and "warm_start" in str(err.value)
    agent.write_text(TINY_AGENT + "warm_start: {incidents: 1}\n")
    with pytest.raises(SpecError) as err:
        load_agent_config(agent)
    assert "warm_start.incidents" in str(err.value) or "incidents" in str(err.value)

"""Imitation of the oracle's plans as a warm start for PPO.

PPO from scratch settles on cautious plans where the best one is a coordinated pair of
steps: on search a slow-ranker release is fixed fastest by scaling the backend first and
then reverting it 16 replicas at a time, but scaling alone only costs, and 16 at a time
without the headroom is a capacity cliff, so PPO keeps reverting 4 or 8 at a time (RL/oracle
1.18 on 1,000 test incidents, ``benchmarks/plan_library.py``). The warm start hands the
policy those plans before PPO starts:

1. **library**: the oracle's optimal action sequences on ``library_incidents`` incidents,
   each distinct sequence once;
2. **costs**: every library plan played from the breach of ``incidents`` training incidents
   (the env snapshotted at the breach and restored per plan);
3. **labels**: for each training incident, the plan of least mean cost over its
   ``neighbours`` nearest breaches (standardised observations, itself left out). That is
   the choice the breach supports: the incident's own best plan would need its hidden
   cause, and imitating it teaches a policy to guess;
4. **imitation**: the policy's action head is trained (masked cross-entropy) on the
   observations along each incident's labelled plan, its value head on the plan's
   cost-to-go there, so PPO's first advantages are not a random critic's.

The seeds of the library and training incidents (``LIBRARY_SEED``, ``INCIDENT_SEED``) are
apart from the held-out ones (10,000 up) and the evaluation callback's (100,000 up).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.results import ORACLE_NODES
from shadowrl.rl.search import OraclePolicy, env_restore, env_snapshot, rollout, searching

LIBRARY_SEED = 200_000
INCIDENT_SEED = 300_000
UNFINISHED_COST = 50.0  # a plan that cannot finish from a breach: never the cheapest


Plan = tuple[int, ...]


@dataclass
class Demonstrations:
    """Observations along the labelled plans, their masks, actions and costs-to-go."""

    observations: np.ndarray
    masks: np.ndarray
    actions: np.ndarray
    costs_to_go: np.ndarray


@dataclass
class WarmStartInfo:
    """What the warm start did, for ``train_state.json``."""

    library_plans: int
    library_incidents: int
    incidents: int
    demonstrations: int
    label_cost: float  # mean cost of the labelled plans on the training incidents
    hindsight_cost: float  # mean cost of each training incident's cheapest library plan
    imitation_loss: float
    library_s: float
    costs_s: float
    imitation_s: float

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def oracle_library(env: RollbackEnv, incidents: int, seed: int = LIBRARY_SEED,
                   max_nodes: int = ORACLE_NODES) -> list[Plan]:
    """The distinct best action sequences the oracle finds on ``incidents`` incidents within
    ``max_nodes`` nodes each (a plan it did not prove optimal is still a good one to offer)."""
    oracle = OraclePolicy(max_nodes)
    plans: list[Plan] = []
    for i in range(incidents):
        env.reset(seed=seed + i)
        oracle.reset(env)
        plan = tuple(oracle.results[-1].actions)
        if plan not in plans:
            plans.append(plan)
    return plans


def cost_matrix(env: RollbackEnv, plans: Sequence[Plan], seeds: Sequence[int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Breach observations (rows) and each plan's cost from that breach (columns)."""
    observations, costs = [], []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        observations.append(obs.copy())
        row = []
        with searching(env):
            snap = env_snapshot(env)
            for plan in plans:
                env_restore(env, snap)
                row.append(rollout(env, plan))
        costs.append(row)
    matrix = np.array(costs, dtype=float)
    return np.array(observations), np.where(np.isfinite(matrix), matrix, UNFINISHED_COST)


def standardised(train: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays scaled by the training rows' mean and spread (features on one scale)."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    return (train - mean) / std, (other - mean) / std


def knn_choice(x_train: np.ndarray, c_train: np.ndarray, x_query: np.ndarray, k: int,
               leave_out_self: bool = False, chunk: int = 500) -> np.ndarray:
    """The plan of least mean cost over the ``k`` nearest training breaches of each query
    (``leave_out_self``: the queries are the training rows, each not its own neighbour)."""
    a, b = standardised(x_train, x_query)
    picks = []
    for start in range(0, len(b), chunk):
        dist = ((b[start:start + chunk, None, :] - a[None, :, :]) ** 2).sum(-1)
        if leave_out_self:
            rows = np.arange(dist.shape[0])
            dist[rows, start + rows] = np.inf
        nearest = np.argsort(dist, axis=1)[:, :k]
        picks.append(c_train[nearest].mean(1).argmin(1))
    return np.concatenate(picks) if picks else np.zeros(0, dtype=int)


def demonstrations(env: RollbackEnv, plans: Sequence[Plan], seeds: Sequence[int],
                   labels: Sequence[int]) -> Demonstrations:
    """Play each incident's labelled plan, recording what the policy would see and do."""
    obs_rows, masks, actions, to_go = [], [], [], []
    for seed, label in zip(seeds, labels):
        obs, _ = env.reset(seed=seed)
        costs = []
        for action in plans[int(label)]:
            obs_rows.append(obs.copy())
            masks.append(env.action_masks().copy())
            actions.append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            costs.append(-float(reward))
            if terminated or truncated:
                break
        to_go += list(np.cumsum(costs[::-1])[::-1])
    return Demonstrations(np.array(obs_rows, dtype=np.float32), np.array(masks, dtype=bool),
                          np.array(actions, dtype=np.int64), np.array(to_go, dtype=np.float32))


def imitate(policy: Any, demos: Demonstrations, epochs: int, batch_size: int,
            learning_rate: float, seed: int = 0) -> float:
    """Train a maskable actor-critic on ``demos``: masked cross-entropy on the actions plus
    the squared error of the value head against minus the cost-to-go. Returns the last
    epoch's mean loss."""
    import torch

    obs = torch.as_tensor(demos.observations)
    masks = torch.as_tensor(demos.masks)
    actions = torch.as_tensor(demos.actions)
    returns = -torch.as_tensor(demos.costs_to_go)
    optimiser = torch.optim.Adam(policy.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    policy.set_training_mode(True)
    last = float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(obs), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(obs), batch_size):
            idx = order[start:start + batch_size]
            values, log_prob, _ = policy.evaluate_actions(obs[idx], actions[idx],
                                                          action_masks=masks[idx])
            loss = -log_prob.mean() + 0.5 * ((values.flatten() - returns[idx]) ** 2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, batches = total + float(loss.detach()), batches + 1
        last = total / max(batches, 1)
    policy.set_training_mode(False)
    return last


def warm_start(policy: Any, env: RollbackEnv, *, library_incidents: int, incidents: int,
               neighbours: int, epochs: int, batch_size: int, learning_rate: float,
               oracle_nodes: int = ORACLE_NODES, seed: int = 0,
               log: Callable[[str], None] | None = None) -> WarmStartInfo:
    """The four stages above on ``env`` (the training env's scenario and objective)."""
    say = log or (lambda message: None)
    t0 = time.perf_counter()
    say(f"warm start: the oracle's plans on {library_incidents} incidents")
    plans = oracle_library(env, library_incidents, max_nodes=oracle_nodes)
    t1 = time.perf_counter()
    say(f"warm start: {len(plans)} distinct plans, each played on {incidents} incidents")
    seeds = range(INCIDENT_SEED, INCIDENT_SEED + incidents)
    observations, costs = cost_matrix(env, plans, seeds)
    labels = knn_choice(observations, costs, observations, min(neighbours, incidents - 1),
                        leave_out_self=True)
    t2 = time.perf_counter()
    demos = demonstrations(env, plans, seeds, labels)
    loss = imitate(policy, demos, epochs, batch_size, learning_rate, seed)
    t3 = time.perf_counter()
    info = WarmStartInfo(
        library_plans=len(plans), library_incidents=library_incidents, incidents=incidents,
        demonstrations=len(demos.actions),
        label_cost=float(costs[np.arange(len(costs)), labels].mean()),
        hindsight_cost=float(costs.min(1).mean()), imitation_loss=loss,
        library_s=t1 - t0, costs_s=t2 - t1, imitation_s=t3 - t2)
    say(f"warm start: labelled plans cost {info.label_cost:.4f} (each incident's cheapest "
        f"{info.hindsight_cost:.4f}); imitation loss {loss:.4f} in {t3 - t0:.0f} s")
    return info

"""Run policies through RollbackEnv on fixed seeds and collect their rehearsals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shadowrl.core.spec import Scenario
from shadowrl.rehearsal.runner import Rehearsal
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.policy import Policy


@dataclass
class Episode:
    rehearsal: Rehearsal
    cost: float  # minus the episode return: the env's objective (budget % or minutes)
    actions: list[int]
    extra: dict[str, Any] = field(default_factory=dict)  # a policy's ``last_info``


def run_episode(env: RollbackEnv, policy: Policy, seed: int) -> Episode:
    obs, _ = env.reset(seed=seed)
    policy.reset(env)
    total = 0.0
    actions: list[int] = []
    while True:
        action = policy.act(env, obs)
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        if terminated or truncated:
            break
    if env.rehearsal is None:
        raise RuntimeError(f"policy '{policy.name}' ended an episode without finishing the "
                           f"procedure (truncated after {len(actions)} actions)")
    return Episode(env.rehearsal, -total, actions, dict(getattr(policy, "last_info", {}) or {}))


def policy_runner(scenario: Scenario, policy: Policy,
                  **env_kwargs: Any) -> Callable[[int, str], Rehearsal]:
    """``run(seed, backend)``: one episode of ``policy`` on a fresh :class:`RollbackEnv` of
    that backend, its rehearsal (what ``rehearsal.verification`` pairs with the configured
    procedure: the plan the policy chooses on each incident, not one fixed plan)."""
    def run(seed: int, backend: str) -> Rehearsal:
        env = RollbackEnv(scenario, backend=backend, **env_kwargs)
        try:
            return run_episode(env, policy, seed).rehearsal
        finally:
            env.close()

    return run


def evaluate(env: RollbackEnv, policy: Policy, episodes: int, seed: int,
             on_episode: Callable[[int], None] | None = None) -> list[Episode]:
    """Episode ``i`` uses seed ``seed + i``: every policy faces the same incidents."""
    out = []
    for i in range(episodes):
        out.append(run_episode(env, policy, seed + i))
        if on_episode is not None:
            on_episode(i)
    return out

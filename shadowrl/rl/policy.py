"""Policies choose the next rollback step (and its settings) in a :class:`RollbackEnv`.

Every method the optimizer compares, from the configured runbook to the RL agent, is a
policy evaluated through the same environment on the same seeds, so the comparison is fair:
episode ``i`` of an evaluation uses seed ``seed + i`` for every policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from shadowrl.core.plan import Plan, configured_plan, validate_plan
from shadowrl.core.spec import shown
from shadowrl.rl.env import RollbackEnv


@runtime_checkable
class Policy(Protocol):
    name: str

    def reset(self, env: RollbackEnv) -> None:
        """Called after ``env.reset``: the incident is injected and has breached."""

    def act(self, env: RollbackEnv, obs: np.ndarray) -> int:
        """The next action (an index into ``env.actions``); must be valid under the mask."""


def action_for(env: RollbackEnv, step: str, settings: dict[str, Any] | None) -> int:
    """The action index running ``step`` with ``settings`` (None: skip the optional step).
    A setting the plan leaves out takes the step's default, as in the procedure file."""
    i = env.step_index[step]
    wanted = None if settings is None else {**env.steps[i].default_settings(), **settings}
    for a, (j, s) in enumerate(env.actions):
        if j != i:
            continue
        if wanted is None and s is None:
            return a
        if wanted is not None and s is not None and all(
                _same(s[k], wanted.get(k)) for k in s):
            return a
    raise KeyError(f"no action runs step '{step}' with settings {shown(settings, 200)}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) < 1e-9
    return bool(a == b)


def plan_actions(env: RollbackEnv, plan: Plan) -> list[int]:
    validate_plan(env.procedure, plan)
    return [action_for(env, name, settings) for name, settings in plan]


def actions_to_plan(env: RollbackEnv, actions: Sequence[int]) -> list[tuple[str, dict | None]]:
    plan: list[tuple[str, dict | None]] = []
    for a in actions:
        i, settings = env.actions[a]
        plan.append((env.steps[i].name, dict(settings) if settings is not None else None))
    return plan


class StaticPolicy:
    """A fixed order with fixed settings, whatever the incident (a runbook)."""

    def __init__(self, plan: Plan, name: str = "static") -> None:
        self.plan = list(plan)
        self.name = name
        self._queue: list[int] = []
        self._env_id: int | None = None
        self._actions: list[int] = []

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the per-env action cache: an env's id means nothing in another
        process (Ray ships policies to workers)."""
        return {**self.__dict__, "_env_id": None, "_actions": []}

    def reset(self, env: RollbackEnv) -> None:
        if self._env_id != id(env):
            self._actions = plan_actions(env, self.plan)
            self._env_id = id(env)
        self._queue = list(self._actions)

    def act(self, env: RollbackEnv, obs: np.ndarray) -> int:
        return self._queue.pop(0)


def configured_policy(env: RollbackEnv) -> StaticPolicy:
    return StaticPolicy(configured_plan(env.procedure), name="configured")


class RandomPolicy:
    """A uniformly random valid action at each step: a random valid order and settings."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self, env: RollbackEnv) -> None:
        # re-seeded per episode from the episode seed: the same episode gets the same choices
        self.rng = np.random.default_rng([self.seed, env.episode_seed])

    def act(self, env: RollbackEnv, obs: np.ndarray) -> int:
        return int(self.rng.choice(np.flatnonzero(env.action_masks())))

"""A runbook as a policy: decide the branch from what is seen at the breach, then run its
procedure step by step (through the same environment as every other method)."""

from __future__ import annotations

from typing import Any

import numpy as np

from shadowrl.core.plan import Plan
from shadowrl.core.runbook import EDGE, Observation, Runbook
from shadowrl.core.spec import Procedure
from shadowrl.rl.env import RollbackEnv, healthy_ratio
from shadowrl.rl.policy import plan_actions


def observe(env: RollbackEnv) -> Observation:
    """What a runbook can see now: rules firing, each component's and the edge's error rate,
    p99 latency over healthy, CPU and request rate over healthy, and the steps that ran (the
    RL policy sees the same, and the incident's hidden cause is never seen)."""
    healthy = env.healthy_metrics()
    m = env.shadow.sample()
    errors = {name: float(c.error_rate) for name, c in m.components.items()}
    ratios = {name: healthy_ratio(c.latency_p99_ms, healthy.components[name].latency_p99_ms)
              for name, c in m.components.items()}
    errors[EDGE] = float(m.edge.error_rate)
    ratios[EDGE] = healthy_ratio(m.edge.latency_p99_ms, healthy.edge.latency_p99_ms)
    cpu = {name: float(c.cpu) for name, c in m.components.items()}
    cpu[EDGE] = float(m.edge.cpu)
    load = {name: healthy_ratio(c.rps, healthy.components[name].rps)
            for name, c in m.components.items()}
    load[EDGE] = healthy_ratio(m.edge.rps, healthy.edge.rps)
    ran = frozenset(env.steps[i].name for i, s in enumerate(env.status.tolist()) if s == 1)
    return Observation(firing=frozenset(m.failing_rules), error_rate=errors,
                       latency_ratio=ratios, ran=ran, cpu=cpu, load_ratio=load)


def procedure_plan(env_procedure: Procedure, branch: Procedure) -> Plan:
    """A branch's procedure as a plan over the environment's procedure: its steps in its
    order with its defaults, then the optional steps it leaves out, skipped."""
    listed = {s.name for s in branch.steps}
    plan: list[tuple[str, dict[str, Any] | None]] = [(s.name, s.default_settings())
                                                     for s in branch.steps]
    plan += [(s.name, None) for s in env_procedure.steps if s.name not in listed]
    return plan


class RunbookPolicy:
    """Chooses a branch once, at the breach (``reset``), and follows its procedure."""

    def __init__(self, book: Runbook, name: str | None = None) -> None:
        self.book = book
        self.name = name or f"runbook:{book.name}"
        self.branch = "default"
        self._queue: list[int] = []
        self._cache: dict[tuple[int, str], list[int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": {}}

    def reset(self, env: RollbackEnv) -> None:
        self.branch, proc = self.book.choose(observe(env))
        key = (id(env), self.branch)
        if key not in self._cache:
            self._cache[key] = plan_actions(env, procedure_plan(env.procedure, proc))
        self._queue = list(self._cache[key])

    def act(self, env: RollbackEnv, obs: np.ndarray) -> int:
        return self._queue.pop(0)

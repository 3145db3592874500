"""Plans: an order of a procedure's steps with settings, and the rules every plan obeys.

A plan is a sequence of ``(step name, settings)``; ``settings`` is ``None`` for an optional
step the plan skips. Every part of shadowrl that orders steps (the tester, the optimizers,
the exporters) asks this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shadowrl.core.spec import Procedure, Step

Plan = Sequence[tuple[str, dict[str, Any] | None]]  # (step, settings) or (step, None) = skip


def configured_plan(procedure: Procedure) -> list[tuple[str, dict[str, Any] | None]]:
    """The runbook as written: listed order (deferring a step until its ``after`` are done),
    default settings, optional steps included."""
    return [(s.name, s.default_settings()) for s in ordered_steps(procedure)]


def ordered_steps(procedure: Procedure) -> list[Step]:
    """Listed order, stably adjusted so every step comes after its ``after`` steps."""
    done: set[str] = set()
    pending = list(procedure.steps)
    out: list[Step] = []
    while pending:
        for k, step in enumerate(pending):
            if all(d in done for d in step.after):
                out.append(step)
                done.add(step.name)
                pending.pop(k)
                break
        else:  # a cycle: the loader rejects these, so this is a programming error
            raise ValueError("procedure has an 'after' cycle")
    return out


def validate_plan(procedure: Procedure, plan: Plan) -> None:
    """A plan names every step once, respects ``after``, and skips only optional steps."""
    seen: set[str] = set()
    names = {s.name for s in procedure.steps}
    for name, settings in plan:
        if name not in names:
            raise ValueError(f"plan names unknown step '{name}'")
        if name in seen:
            raise ValueError(f"plan names step '{name}' twice")
        step = procedure.step(name)
        if settings is None and not step.optional:
            raise ValueError(f"plan skips required step '{name}'")
        missing = [d for d in step.after if d not in seen]
        if missing:
            raise ValueError(f"step '{name}' runs before {missing} (its 'after')")
        seen.add(name)
    left = [s.name for s in procedure.steps if s.name not in seen and not s.optional]
    if left:
        raise ValueError(f"plan leaves out required steps {left}")

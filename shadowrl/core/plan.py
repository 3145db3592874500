"""Plans: an order of a procedure's steps with settings, and the rules every plan obeys.

A plan is a sequence of ``(step name, settings)``; ``settings`` is ``None`` for an optional
step the plan skips. Every part of shadowrl that orders steps (the tester, the optimizers,
the exporters, the bottleneck analysis), lists a step's possible settings (the RL actions,
the static search) or shows settings as text asks this module.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from shadowrl.core.spec import Procedure, Step, format_duration, setting_kind

Plan = Sequence[tuple[str, dict[str, Any] | None]]  # (step, settings) or (step, None) = skip


def configured_plan(procedure: Procedure) -> list[tuple[str, dict[str, Any] | None]]:
    """The runbook as written: listed order (deferring a step until its ``after`` are done),
    default settings, optional steps included."""
    return [(s.name, s.default_settings()) for s in ordered_steps(procedure)]


def ordered_steps(procedure: Procedure) -> list[Step]:
    """Listed order, stably adjusted so every step comes after its ``after`` steps."""
    return order_steps(procedure.steps)


def order_steps(steps: Sequence[Step]) -> list[Step]:
    """``steps`` in the given order, stably adjusted so each comes after its ``after`` steps
    among ``steps``: repeatedly the first step whose ``after`` are placed. An ``after`` naming
    a step outside ``steps`` (e.g. a skipped optional step) is ignored.

    Raises :class:`ValueError` on an ``after`` cycle (the loader rejects these).
    """
    after = _after_within(steps)
    done: set[str] = set()
    pending = list(steps)
    out: list[Step] = []
    while pending:
        for k, step in enumerate(pending):
            if all(d in done for d in after[step.name]):
                out.append(step)
                done.add(step.name)
                pending.pop(k)
                break
        else:  # a cycle: the loader rejects these, so this is a programming error
            raise ValueError("procedure has an 'after' cycle")
    return out


def linear_extensions(steps: Sequence[Step]) -> Iterator[list[str]]:
    """Every order of ``steps`` (by name) that respects their ``after`` constraints, each
    once; an ``after`` naming a step outside ``steps`` is ignored. The first order is
    :func:`order_steps`'s."""
    names = [s.name for s in steps]
    after = _after_within(steps)

    def rec(done: list[str], left: list[str]) -> Iterator[list[str]]:
        if not left:
            yield list(done)
            return
        for k, name in enumerate(left):
            if all(d in done for d in after[name]):
                yield from rec([*done, name], left[:k] + left[k + 1:])

    yield from rec([], names)


def _after_within(steps: Sequence[Step]) -> dict[str, list[str]]:
    """Each step's ``after``, restricted to the steps in ``steps``."""
    names = {s.name for s in steps}
    return {s.name: [d for d in s.after if d in names] for s in steps}


def after_closure(procedure: Procedure, name: str) -> set[str]:
    """Every step that must run before step ``name``: its ``after`` steps, theirs, and so on
    (empty for a name the procedure does not have). ``first`` may run before ``second``
    exactly when ``second not in after_closure(procedure, first)``."""
    out: set[str] = set()
    stack = [name]
    while stack:
        try:
            step = procedure.step(stack.pop())
        except KeyError:
            continue
        for d in step.after:
            if d not in out:
                out.add(d)
                stack.append(d)
    return out


def setting_combinations(step: Step) -> list[dict[str, Any]]:
    """Every settings a step can run with: one dict per combination of its tunable choices
    (:func:`itertools.product` over the settings in their declared order, so the first
    setting varies slowest). A step without settings has one, empty. The order is part of
    the contract: RollbackEnv's action indices follow it."""
    tunables = step.tunables()
    keys = list(tunables)
    return [dict(zip(keys, combo))
            for combo in itertools.product(*(tunables[k].choices for k in keys))]


def describe_settings(settings: Mapping[str, Any], action: str | None = None) -> str:
    """Settings as text, ``k=v`` joined by ``", "`` in their order (``""`` for none), each
    value spelled as the scenario format writes it (:func:`setting_value_text`), so what a
    user reads can be pasted back into a procedure."""
    return ", ".join(f"{k}={setting_value_text(v, setting_kind(action, k) if action else None)}"
                     for k, v in settings.items())


def setting_value_text(value: Any, kind: str | None = None) -> str:
    """One setting value in the scenario format's spelling: ``true``/``false``, durations
    as ``30s``/``2m``/``1500ms`` (:func:`~shadowrl.core.spec.format_duration`), whole numbers
    without ``.0``. Without ``kind`` a float is taken for a duration: loaded settings hold
    durations as floats and every other number as an int."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and (kind == "duration" or (
            kind is None and isinstance(value, float))):
        return format_duration(float(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


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

"""Identification experiments: what the calibration measures on a shadow.

Three kinds, each a function returning plain JSON-ready records, so a calibration can save
every finished experiment and resume after a crash:

- :func:`load_sweep`: the healthy deployment at several load levels; per component the
  request rate, error rate, p50 and p99 it serves (the data of the M/M/c fit);
- :func:`random_plan`: a random order and random settings of a procedure, so rehearsals
  used for fitting do not favour the configured runbook;
- :func:`rehearsal_record`: one rehearsal (of any plan) with what its steps took and, on a
  real shadow, every replica startup, stop and migration it timed.

The same functions run on the simulator, which is how the fit compares the two.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shadowrl.core.injection import Injection
from shadowrl.core.plan import Plan, order_steps, setting_combinations, validate_plan
from shadowrl.core.spec import Procedure, Scenario
from shadowrl.rehearsal.deviation import DeviationSimulator
from shadowrl.shadow.base import ShadowBackend

FAR_FUTURE_S = 1e9  # a load-only injection: its incident never starts


def load_only(scenario: Scenario, load: float) -> Injection:
    """An injection that changes the load and nothing else (its incident never starts)."""
    first = scenario.incidents[0]
    return Injection(first.name, first.cause.kind, first.cause.target, first.cause.flag, (),
                     FAR_FUTURE_S, 0.0, load)


def load_sweep(shadow: ShadowBackend, scenario: Scenario, levels: Sequence[float], *,
               settle_s: float, windows: int, on_level: Callable[[int], None] | None = None
               ) -> list[dict[str, Any]]:
    """The launched ``shadow`` held at each load level (a multiple of the scenario's
    traffic): ``settle_s`` scenario seconds to settle, then ``windows`` samples one sample
    window apart, averaged. One record per (level, component)."""
    wall = shadow.clock == "wall"
    window = float(getattr(shadow, "sample_window_s", 10.0))
    k = float(getattr(shadow, "time_compression", 1.0))
    rows: list[dict[str, Any]] = []
    for i, level in enumerate(levels):
        shadow.inject(load_only(scenario, level))
        _pass(shadow, settle_s, wall, k)
        samples = []
        for _ in range(windows):
            _pass(shadow, window, wall, k)
            samples.append(shadow.sample())
        for name in scenario.components():
            got = [s.components[name] for s in samples]
            rows.append({
                "load": round(level, 4), "component": name,
                "rps": _mean(m.rps for m in got),
                "error_rate": _mean(m.error_rate for m in got),
                "p50_ms": _mean(m.latency_p50_ms for m in got),
                "p99_ms": _mean(m.latency_p99_ms for m in got),
                "cpu": _mean(m.cpu for m in got)})
        if on_level is not None:
            on_level(i + 1)
    return rows


def _pass(shadow: ShadowBackend, seconds: float, wall: bool, k: float) -> None:
    """Let ``seconds`` of shadow time pass: sleep on a wall clock, advance a simulated one."""
    if wall:
        time.sleep(seconds / k)
    else:
        shadow.advance(seconds)  # type: ignore[attr-defined]


def _mean(values: Any) -> float:
    vals = [float(v) for v in values]
    return round(float(np.mean(vals)), 4) if vals else 0.0


def random_plan(procedure: Procedure, rng: np.random.Generator, *,
                skip_optional: float = 0.25) -> list[tuple[str, dict[str, Any] | None]]:
    """A random valid plan: steps shuffled then ordered to respect ``after``, each with
    settings drawn from its choices; an optional step is skipped with ``skip_optional``."""
    steps = list(procedure.steps)
    order = order_steps([steps[i] for i in rng.permutation(len(steps))])
    plan: list[tuple[str, dict[str, Any] | None]] = []
    for step in order:
        if step.optional and rng.random() < skip_optional:
            plan.append((step.name, None))
            continue
        combos = setting_combinations(step)
        plan.append((step.name, dict(combos[int(rng.integers(len(combos)))])))
    validate_plan(procedure, plan)
    return plan


def plan_to_json(plan: Plan) -> list[list[Any]]:
    return [[name, settings] for name, settings in plan]


def plan_from_json(data: Sequence[Sequence[Any]]) -> list[tuple[str, dict[str, Any] | None]]:
    return [(str(name), dict(settings) if settings is not None else None)
            for name, settings in data]


class ReplayedDraws(DeviationSimulator):
    """Draws from attempt ``first`` on, remembering the last attempt drawn.

    A shadow redraws a deviation that breaches before its onset or not at all; a real
    shadow's noise can make it redraw where the simulator would not. Replaying the attempt
    the real shadow breached on compares the two on the same incident, magnitude and onset.
    """

    def __init__(self, scenario: Scenario, first: int = 0) -> None:
        super().__init__(scenario)
        self.first = first
        self.last = first

    def draw(self, seed: int, incident: str | None = None, attempt: int = 0) -> Injection:
        self.last = self.first + attempt
        return super().draw(seed, incident, self.last)


def attempt_of(scenario: Scenario, record: dict[str, Any]) -> int:
    """The draw a record's rehearsal breached on: recorded, or (records written before it
    was) the first draw of the record's seed with its incident and magnitude."""
    if "attempt" in record:
        return int(record["attempt"])
    from shadowrl.rehearsal.runner import MAX_DRAWS

    facts = record["facts"]
    deviation = DeviationSimulator(scenario)
    for attempt in range(MAX_DRAWS):
        drawn = deviation.draw(int(record["seed"]), None, attempt)
        if (drawn.incident == facts["incident"]
                and round(drawn.magnitude, 4) == facts["magnitude"]):
            return attempt
    return 0


def rehearsal_record(scenario: Scenario, seed: int, plan: Plan, backend: str, *,
                     make_shadow: Callable[[Scenario], ShadowBackend] | None = None,
                     first_attempt: int = 0) -> dict[str, Any]:
    """One rehearsal of ``plan`` on ``backend`` as a record: the compared facts
    (:func:`shadowrl.calibration.compare.run_facts`), the plan, the draw it breached on
    (``attempt``; ``first_attempt`` replays another record's), and the shadow's timings (a
    real shadow's replica startups, stops and migrations; none on the simulator)."""
    from shadowrl.calibration.compare import run_facts
    from shadowrl.rehearsal.runner import rehearse
    from shadowrl.shadow import make_backend

    deviation = ReplayedDraws(scenario, first_attempt)
    made: list[ShadowBackend] = []

    def factory(sc: Scenario) -> ShadowBackend:
        shadow = (make_shadow(sc) if make_shadow is not None
                  else make_backend(backend, sc, pattern=deviation.load_pattern()))
        made.append(shadow)
        return shadow

    r = rehearse(scenario, seed, plan=plan, deviation=deviation, backend_factory=factory)
    timings = [list(t) for t in getattr(made[0], "timings", [])] if made else []
    return {"seed": seed, "backend": backend, "plan": plan_to_json(plan),
            "attempt": deviation.last, "facts": run_facts(r), "timings": timings,
            "steps": [{"name": s.name, "action": s.action, "status": s.status,
                       "settings": s.settings, "seconds": round(s.end_s - s.start_s, 2)}
                      for s in r.steps if s.status != "skipped"]}

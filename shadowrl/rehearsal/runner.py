"""Rollback Procedure Tester: breach -> procedure -> verification -> outcome and alerts.

One rehearsal injects one incident into a fresh shadow, waits for the SLO rules to breach,
runs the procedure step by step inside the shadow, verifies recovery (``verify.hold`` within
``verify.timeout``), and judges the result:

- ``recovered``: every step succeeded and the SLO held for ``hold`` before the timeout;
- ``rollback_failed``: a step failed, ran past its ``timeout`` or was cancelled (the
  procedure stops there);
- ``rollback_ineffective``: the steps ran but the SLO was not restored by the timeout.

Alerts add ``too_slow`` (downtime over ``budget.downtime``) and ``new_errors`` (error sources
the rollback itself created, absent before the incident), each naming the step to blame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shadowrl.core.errors import NoBreachError
from shadowrl.core.injection import Injection
from shadowrl.core.plan import Plan, configured_plan, validate_plan
from shadowrl.core.results import NEW_ERROR_SOURCES, Breach, Span, StepResult
from shadowrl.core.slo import run_until_breach, verify
from shadowrl.core.spec import Procedure, Scenario
from shadowrl.rehearsal.alerts import Alert
from shadowrl.rehearsal.deviation import DeviationSimulator
from shadowrl.shadow.base import ErrorAttribution, ProfileRecording, ShadowBackend
from shadowrl.shadow.sim.engine import SimShadow

BREACH_SEARCH_S = 1800.0  # how long after onset an incident may take to breach
MAX_DRAWS = 25  # redraws (same seed, next attempt) for deviations too weak to breach
NEW_ERROR_MIN_SHARE = 1e-4  # failed share of a span's requests that counts as an error source



@dataclass
class Rehearsal:
    """Everything one rehearsal produced; :meth:`to_json` is the ``simulate --json`` contract."""

    scenario: str
    backend: str
    seed: int
    injection: Injection
    breach: Breach
    outcome: str
    steps: list[StepResult]
    verify_end_s: float
    downtime_s: float
    failed_requests: float
    errors_by_source: dict[str, float]
    alerts: list[Alert] = field(default_factory=list)
    profile: dict[str, list[Any]] | None = None

    @property
    def incident(self) -> str:
        return self.injection.incident

    @property
    def rollback_s(self) -> float:
        done = [s.end_s for s in self.steps if s.status != "skipped"]
        return (max(done) if done else self.breach.at_s) - self.breach.at_s

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "backend": self.backend,
            "incident": self.incident,
            "seed": self.seed,
            "outcome": self.outcome,
            "breach_at_s": round(self.breach.at_s, 3),
            "rollback_s": round(self.rollback_s, 3),
            "downtime_s": round(self.downtime_s, 3),
            "failed_requests": round(self.failed_requests, 3),
            "steps": [
                {"name": s.name, "status": s.status, "settings": _json_settings(s.settings),
                 "start_s": round(s.start_s, 3), "end_s": round(s.end_s, 3),
                 "downtime_s": round(s.span.downtime_s, 3),
                 "failed_requests": round(s.span.failed_requests, 3)}
                for s in self.steps
            ],
            "alerts": [a.to_json() for a in self.alerts],
        }


def _json_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                and k in ("drain", "duration") else v) for k, v in settings.items()}


def start_incident(shadow: ShadowBackend, deviation: DeviationSimulator, seed: int,
                   incident: str | None = None) -> tuple[Injection, Breach]:
    """Launch, inject and run to the breach.

    Draws too weak to breach are redrawn, and so are draws whose SLO breaches before the
    incident starts: those would rehearse the load, not the rollback.
    """
    baseline = 0
    for attempt in range(MAX_DRAWS):
        injection = deviation.draw(seed, incident, attempt)
        shadow.launch(seed)
        shadow.inject(injection)
        breach = run_until_breach(shadow, injection.onset_s + BREACH_SEARCH_S)
        if breach is None:
            continue
        if breach.at_s < injection.onset_s:
            baseline += 1
            continue
        return injection, breach
    if baseline == MAX_DRAWS:
        raise NoBreachError(
            f"the SLO breaches before any incident starts in all {MAX_DRAWS} draws (seed "
            f"{seed}): the deployment cannot hold its SLO at the drawn load; lower the load "
            f"range or the history's scale, or add capacity")
    name = f"incident '{incident}'" if incident else "the scenario's incidents"
    also = (f"; in {baseline} of them the SLO breached before the incident started (the load "
            f"alone violates it)" if baseline else "")
    raise NoBreachError(f"{name} did not breach any SLO rule after the incident started in "
                        f"{MAX_DRAWS} draws (seed {seed}){also}; raise the effects or lower "
                        f"the rule thresholds")


def finish(scenario: Scenario, procedure: Procedure, shadow: ShadowBackend, seed: int,
           injection: Injection, breach: Breach, results: list[StepResult]) -> Rehearsal:
    """Verify after the last step, then judge outcome and alerts."""
    failed = next((r for r in results if r.stopped), None)
    deadline = breach.at_s + procedure.verify.timeout
    if isinstance(shadow, ProfileRecording):
        shadow.mark_phase("verify")
    verified = verify(shadow, procedure.verify.hold, deadline)
    total = Span(breach.at_s, verified.end_s)
    for r in results:
        total.add(r.span)
    total.add(verified.span)
    if failed is not None:
        outcome = "rollback_failed"
    elif verified.healthy:
        outcome = "recovered"
    else:
        outcome = "rollback_ineffective"
    rehearsal = Rehearsal(scenario.name, shadow.name, seed, injection, breach, outcome, results,
                          verified.end_s, total.downtime_s, total.failed_requests,
                          dict(total.errors_by_source))
    # new_errors can only name sources the backend tells apart
    sources = ([s for s in NEW_ERROR_SOURCES if s in shadow.error_sources]
               if isinstance(shadow, ErrorAttribution) else [])
    rehearsal.alerts = judge(scenario, procedure, rehearsal, verified.span, sources)
    return rehearsal


def judge(scenario: Scenario, procedure: Procedure, r: Rehearsal, verify_span: Span,
          sources: Sequence[str]) -> list[Alert]:
    """The alert rules: failed (or timed out, or cancelled), ineffective, too slow, new errors
    (from ``sources``)."""
    base = {"scenario": scenario.name, "incident": r.incident, "seed": r.seed}
    alerts: list[Alert] = []
    done = [s for s in r.steps if s.status != "skipped"]
    for s in r.steps:
        if s.stopped:
            alerts.append(Alert("rollback_failed", "critical", s.name,
                                f"step '{s.name}' {_STOPPED_TEXT[s.status]}: "
                                f"{s.message or 'no reason given'}", at_s=s.end_s, **base))
    if r.outcome == "rollback_ineffective":
        last = done[-1].name if done else None
        alerts.append(Alert("rollback_ineffective", "critical", last,
                            f"all steps ran but the SLO was not restored within "
                            f"{procedure.verify.timeout:.0f}s of the breach (hold "
                            f"{procedure.verify.hold:.0f}s); the incident's cause may be "
                            f"outside what the procedure reverts", value=r.downtime_s,
                            at_s=r.verify_end_s, **base))
    budget = procedure.budget.downtime
    if budget is not None and r.downtime_s > budget:
        worst = max(done, key=lambda s: s.span.downtime_s, default=None)
        alerts.append(Alert("too_slow", "warning", worst.name if worst else None,
                            f"downtime {r.downtime_s:.0f}s exceeds the budget {budget:.0f}s"
                            + (f"; '{worst.name}' caused {worst.span.downtime_s:.0f}s"
                               if worst else ""), value=r.downtime_s, **base))
    before = r.breach.before
    pre_requests = before.requests if before else 0.0
    for source in sources:
        if before and pre_requests > 0 and (before.errors_by_source.get(source, 0.0)
                                             / pre_requests) > NEW_ERROR_MIN_SHARE:
            continue  # present before the rollback started: not new
        spans = [(s.name, s.span) for s in done]
        if done:
            spans.append((done[-1].name, verify_span))
        blame: dict[str, float] = {}
        for name, span in spans:
            if span.requests <= 0:
                continue
            value = span.errors_by_source.get(source, 0.0)
            if value / span.requests > NEW_ERROR_MIN_SHARE and value >= 1.0:
                blame[name] = blame.get(name, 0.0) + value
        if blame:
            step = max(blame, key=lambda k: blame[k])
            alerts.append(Alert("new_errors", "warning", step,
                                f"{_SOURCE_TEXT[source]} during '{step}': "
                                f"{blame[step]:.0f} failed requests",
                                value=blame[step], **base))
    return alerts


_STOPPED_TEXT = {"failed": "failed", "timed_out": "timed out", "cancelled": "was cancelled"}

_SOURCE_TEXT = {
    "compatibility": "app/schema version mismatch errors",
    "dropped": "in-flight requests dropped by a short drain",
    "overload": "overload shedding from lost capacity",
    "write_lock": "writes failed while a migration locked tables",
}


def rehearse(scenario: Scenario, seed: int, *, incident: str | None = None,
             procedure: Procedure | None = None, plan: Plan | None = None,
             deviation: DeviationSimulator | None = None,
             backend_factory: Callable[[Scenario], ShadowBackend] | None = None,
             record_profile: bool = False) -> Rehearsal:
    """Run one rehearsal of ``procedure`` (default: the scenario's) following ``plan``
    (default: the configured order and settings)."""
    procedure = procedure or scenario.procedure
    plan = list(plan) if plan is not None else configured_plan(procedure)
    validate_plan(procedure, plan)
    deviation = deviation or DeviationSimulator(scenario)
    shadow = (backend_factory(scenario) if backend_factory
              else SimShadow(scenario, record_profile=record_profile,
                             pattern=deviation.load_pattern()))
    with shadow:
        injection, breach = start_incident(shadow, deviation, seed, incident)
        results = run_plan(shadow, procedure, plan)
        rehearsal = finish(scenario, procedure, shadow, seed, injection, breach, results)
        if record_profile and isinstance(shadow, ProfileRecording):
            rehearsal.profile = shadow.profile
    return rehearsal


def run_plan(shadow: ShadowBackend, procedure: Procedure, plan: Plan) -> list[StepResult]:
    """Run the plan's steps, each within its ``timeout``; after a step that did not complete
    the rest are skipped."""
    results: list[StepResult] = []
    failed = False
    for name, settings in plan:
        step = procedure.step(name)
        if settings is None or failed:
            t = shadow.now()
            results.append(StepResult(name, step.action, "skipped", dict(settings or {}),
                                      Span(t, t), "skipped after a failed step" if failed
                                      else "optional step skipped"))
            continue
        result = shadow.run_step(step, settings, timeout_s=step.timeout)
        results.append(result)
        failed = result.stopped
    return results

"""Rollback Procedure Tester: breach -> procedure -> verification -> outcome and alerts.

One rehearsal injects one incident into a fresh shadow, waits for the SLO rules to breach,
runs the procedure step by step inside the shadow, verifies recovery (``verify.hold`` within
``verify.timeout``), and judges the result:

- ``recovered``: every step succeeded and the SLO held for ``hold`` before the timeout;
- ``rollback_failed``: a step failed, ran past its ``timeout`` or was cancelled (the
  procedure stops there);
- ``rollback_ineffective``: the steps ran but the SLO was not restored by the timeout.

A run whose SLO held for ``hold`` before the timeout, but whose steps went on past it (so the
verification after the last step could not finish), is ``recovered``: when the SLO first held
is tracked from the step spans (:class:`~shadowrl.core.slo.HoldWatcher` over them).

Alerts add ``too_slow`` (downtime over ``budget.downtime``, or steps still running after the
SLO was restored when they made the run overrun its verification timeout) and ``new_errors``
(error sources the rollback itself created, absent before the incident), each naming the step
to blame (errors after the last step are the verification's, not that step's).

Every rehearsal also reports its error-budget cost: ``bad_requests`` (failed or slower than
the objective's latency threshold) and ``budget_burn``, the share of the window's error
budget (:func:`error_budget`) they used, from the breach to the end of verification.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shadowrl.core.errors import NoBreachError
from shadowrl.core.injection import Injection
from shadowrl.core.plan import Plan, configured_plan, validate_plan
from shadowrl.core.results import NEW_ERROR_SOURCES, Breach, Span, StepResult, VerifyResult
from shadowrl.core.slo import EPS, HoldWatcher, run_until_breach, verify
from shadowrl.core.spec import Procedure, Scenario
from shadowrl.rehearsal.alerts import Alert
from shadowrl.rehearsal.deviation import DeviationSimulator
from shadowrl.shadow import make_backend
from shadowrl.shadow.base import ErrorAttribution, ProfileRecording, ShadowBackend
from shadowrl.shadow.sim.engine import SimShadow

BREACH_SEARCH_S = 1800.0  # how long after onset an incident may take to breach
MAX_DRAWS = 25  # redraws (same seed, next attempt) for deviations too weak to breach
NEW_ERROR_MIN_SHARE = 1e-4  # failed share of a span's requests that counts as an error source


def error_budget(scenario: Scenario) -> float:
    """The bad requests the scenario's objective allows in its window: ``(1 - target) x
    window x traffic.rps``. ``rps`` is the mean rate: the diurnal and CSV patterns have mean
    multiplier 1 (with a deviation history, ``rps`` is its busy level)."""
    objective = scenario.slo.objective
    return (1.0 - objective.target) * objective.window * scenario.deployment.traffic.rps


def budget_burn(scenario: Scenario, bad_requests: float) -> float:
    """The share of the window's error budget that ``bad_requests`` use (1.0: all of it)."""
    budget = error_budget(scenario)
    return bad_requests / budget if budget > 0 else 0.0


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
    bad_requests: float = 0.0  # failed or too slow, breach to end of verification
    budget_burn: float = 0.0  # bad_requests / error_budget(scenario)
    outage_s: float = 0.0  # seconds with the edge error rate at a full outage's level
    peak_error_rate: float = 0.0  # the highest edge error rate, breach to end of verification
    restored_s: float | None = None  # seconds after the breach the SLO was restored for good
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
            "bad_requests": round(self.bad_requests, 3),
            "budget_burn": round(self.budget_burn, 8),
            "outage_s": round(self.outage_s, 3),
            "peak_error_rate": round(self.peak_error_rate, 6),
            "restored_s": None if self.restored_s is None else round(self.restored_s, 3),
            "steps": [
                {"name": s.name, "status": s.status, "settings": _json_settings(s.settings),
                 "start_s": round(s.start_s, 3), "end_s": round(s.end_s, 3),
                 "downtime_s": round(s.span.downtime_s, 3),
                 "failed_requests": round(s.span.failed_requests, 3),
                 "bad_requests": round(s.span.bad, 3)}
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
    bad = 0.0
    for r in results:
        total.add(r.span)
        bad += r.span.bad
    total.add(verified.span)
    bad += verified.span.bad
    held = slo_held(results, verified, procedure.verify.hold, deadline)
    if failed is not None:
        outcome = "rollback_failed"
    elif verified.healthy or held.restored_at is not None:
        outcome = "recovered"
    else:
        outcome = "rollback_ineffective"
    rehearsal = Rehearsal(scenario.name, shadow.name, seed, injection, breach, outcome, results,
                          verified.end_s, total.downtime_s, total.failed_requests,
                          dict(total.errors_by_source), bad_requests=bad,
                          budget_burn=budget_burn(scenario, bad), outage_s=total.outage_s,
                          peak_error_rate=total.peak_error,
                          restored_s=(held.restored_at - breach.at_s
                                      if outcome == "recovered" and held.restored_at is not None
                                      else None))
    # new_errors can only name sources the backend tells apart
    sources = ([s for s in NEW_ERROR_SOURCES if s in shadow.error_sources]
               if isinstance(shadow, ErrorAttribution) else [])
    rehearsal.alerts = judge(scenario, procedure, rehearsal, verified.span, sources,
                             held=held, overran=outcome == "recovered" and not verified.healthy)
    return rehearsal


@dataclass
class SloHeld:
    """When the SLO held over the steps and the verification (see :func:`slo_held`)."""

    first_held_at: float | None  # when the SLO first held for ``hold`` (the hold's end)
    first_clean_at: float | None  # when no rule condition was violated for the first time
    restored_at: float | None  # when the final clean stretch began, if it held by the deadline
    broken_by: str | None  # the first span ("verify" after the steps) violating it again


def _observations(results: Sequence[StepResult],
                  verified: VerifyResult) -> list[tuple[str, float, float, bool]]:
    """The step spans, then the verification span, as ``(name, t0, t1, violated)``: each
    span violated until its :meth:`~shadowrl.core.results.Span.violation_end`, clean after.
    Clean stretches inside a span, before a later violation, are not seen: conservative."""
    spans = [(s.name, s.span) for s in results if s.status != "skipped"]
    spans.append(("verify", verified.span))
    out = []
    for name, span in spans:
        end = max(span.end_s, span.start_s)
        until = min(max(span.violation_end(), span.start_s), end)
        if until > span.start_s + EPS:
            out.append((name, span.start_s, until, True))
        if end > until + EPS:
            out.append((name, until, end, False))
    return out


def slo_held(results: Sequence[StepResult], verified: VerifyResult, hold_s: float,
             deadline_s: float) -> SloHeld:
    """Whether and when the SLO held for ``hold_s``, from the step spans and verification.

    A :class:`~shadowrl.core.slo.HoldWatcher` is fed each span as violated up to its last
    violation and clean after it (a backend that does not report the last violation is
    judged per span: violated throughout if it had downtime). ``restored_at`` is the start of
    the clean stretch that lasts to the end of verification, when it held for ``hold_s`` by
    ``deadline_s``: the SLO was restored in time even if the steps kept running after it.
    """
    watcher = HoldWatcher(hold_s)
    first_held = first_clean = None
    broken_by = None
    for name, t0, t1, bad in _observations(results, verified):
        if bad and first_clean is not None and broken_by is None:
            broken_by = name
        if not bad and first_clean is None:
            first_clean = t0
        due = watcher.observe(t0, t1, (bad,))
        if due is not None and first_held is None:
            first_held = due
    restored = watcher.clean_since
    if verified.healthy:  # verification saw the last `hold_s` clean, whatever the spans say
        held_from = verified.end_s - hold_s
        restored = held_from if restored is None else min(restored, held_from)
    elif restored is not None and restored + hold_s > min(deadline_s, verified.end_s) + EPS:
        restored = None
    return SloHeld(first_held, first_clean, restored, broken_by)


def judge(scenario: Scenario, procedure: Procedure, r: Rehearsal, verify_span: Span,
          sources: Sequence[str], *, held: SloHeld | None = None,
          overran: bool = False) -> list[Alert]:
    """The alert rules: failed (or timed out, or cancelled), ineffective, too slow (over the
    downtime budget, or ``overran``: recovered but the steps ran on past the verification
    timeout), new errors (from ``sources``; errors after the last step are blamed on the
    verification, not on that step)."""
    base = {"scenario": scenario.name, "incident": r.incident, "seed": r.seed}
    alerts: list[Alert] = []
    done = [s for s in r.steps if s.status != "skipped"]
    for s in r.steps:
        if s.stopped:
            alerts.append(Alert("rollback_failed", "critical", s.name,
                                f"step '{s.name}' {_STOPPED_TEXT[s.status]}: "
                                f"{s.message or 'no reason given'}", at_s=s.end_s, **base))
    if r.outcome == "rollback_ineffective":
        alerts.append(_ineffective(procedure, r, done, held, base))
    if overran and held is not None and held.restored_at is not None:
        alerts.extend(_overran(scenario, procedure, r, done, held.restored_at, base))
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
        spans: list[tuple[str | None, Span]] = [(s.name, s.span) for s in done]
        if done:
            spans.append((None, verify_span))  # after the last step: no step's doing alone
        blame: dict[str | None, float] = {}
        for name, span in spans:
            if span.requests <= 0:
                continue
            value = span.errors_by_source.get(source, 0.0)
            if value / span.requests > NEW_ERROR_MIN_SHARE and value >= 1.0:
                blame[name] = blame.get(name, 0.0) + value
        if blame:
            step = max(blame, key=lambda k: blame[k])
            where = (f"during '{step}'" if step is not None
                     else "after the last step, during verification")
            alerts.append(Alert("new_errors", "warning", step,
                                f"{_SOURCE_TEXT[source]} {where}: "
                                f"{blame[step]:.0f} failed requests",
                                value=blame[step], **base))
    return alerts


def _ineffective(procedure: Procedure, r: Rehearsal, done: Sequence[StepResult],
                 held: SloHeld | None, base: dict[str, Any]) -> Alert:
    last = done[-1].name if done else None
    timeout, hold = procedure.verify.timeout, procedure.verify.hold
    if held is not None and held.first_clean_at is not None and held.broken_by is not None:
        # the rollback cleared the SLO's conditions, then something violated them again
        again = (f"'{held.broken_by}' violated it again" if held.broken_by != "verify"
                 else "it was violated again after the last step")
        what = "held" if held.first_held_at is not None else "was clear"
        message = (f"the SLO {what} {held.first_clean_at - r.breach.at_s:.0f}s after the "
                   f"breach, but {again} and it was not restored within {timeout:.0f}s of "
                   f"the breach (hold {hold:.0f}s)")
        step = held.broken_by if held.broken_by != "verify" else last
    else:
        message = (f"all steps ran but the SLO was not restored within {timeout:.0f}s of the "
                   f"breach (hold {hold:.0f}s); the incident's cause may be outside what the "
                   f"procedure reverts")
        step = last
    return Alert("rollback_ineffective", "critical", step, message, value=r.downtime_s,
                 at_s=r.verify_end_s, **base)


def _overran(scenario: Scenario, procedure: Procedure, r: Rehearsal,
             done: Sequence[StepResult], restored_at: float,
             base: dict[str, Any]) -> list[Alert]:
    """``too_slow``: the SLO was restored, but steps kept running until past the timeout;
    names the steps that ran after the restoration, with the time and budget they cost."""
    late = [(s, s.end_s - max(s.start_s, restored_at)) for s in done
            if s.end_s > restored_at + EPS]
    late = [(s, t) for s, t in late if t > EPS]
    if not late:
        return []
    worst = max(late, key=lambda st: st[1])[0]
    parts = ", ".join(f"'{s.name}' {t:.0f}s" for s, t in late)
    seconds = sum(t for _, t in late)
    burn = budget_burn(scenario, sum(s.span.bad for s, _ in late))
    restored = restored_at - r.breach.at_s
    message = (f"the SLO was restored {restored:.0f}s after the breach, but steps ran on "
               f"for {seconds:.0f}s after it ({parts}) and left verification no time to "
               f"finish within the {procedure.verify.timeout:.0f}s timeout; those steps used "
               f"{burn:.2%} of the error budget")
    return [Alert("too_slow", "warning", worst.name, message, value=seconds,
                  at_s=max(s.end_s for s, _ in late), **base)]


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
             record_profile: bool = False, backend: str = "sim") -> Rehearsal:
    """Run one rehearsal of ``procedure`` (default: the scenario's) following ``plan``
    (default: the configured order and settings) on a new shadow: ``backend_factory``'s,
    else the ``backend`` named (``sim`` or ``docker``)."""
    procedure = procedure or scenario.procedure
    plan = list(plan) if plan is not None else configured_plan(procedure)
    validate_plan(procedure, plan)
    deviation = deviation or DeviationSimulator(scenario)
    shadow = (backend_factory(scenario) if backend_factory
              else SimShadow(scenario, record_profile=record_profile,
                             pattern=deviation.load_pattern()) if backend == "sim"
              else make_backend(backend, scenario, record_profile=record_profile,
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

"""The error-budget objective and honest outcomes: budget math, ``slo.objective``, outcomes
when the SLO is restored while steps still run, and blame for errors after the last step."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from shadowrl.core.results import FULL_OUTAGE_ERROR, Span, StepResult, VerifyResult
from shadowrl.core.spec import Scenario, SpecError, load_scenario
from shadowrl.rehearsal.runner import budget_burn, error_budget, rehearse, slo_held

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"

# one service; a bad release that verification after a short rollback sees fixed
SCENARIO = """\
apiVersion: shadowrl/v1
kind: Scenario
metadata: {{name: objective}}
deployment:
  traffic: {{rps: 250{pattern}}}
  services:
    - {{name: app, replicas: 4, capacity_rps: 100, latency: 20ms, startup: 20s,
       inflight_time: 10s, version: {{live: v2, previous: v1}}}}
slo:
  interval: 10s
  rules:
    - {{name: errors, metric: error_rate, above: 0.01, for: 30s}}
    - {{name: latency, metric: latency_p99_ms, above: 300, for: 30s}}
{objective}incidents:
  - name: bad-release
    cause: {{kind: version, target: app}}
    effects: [{{metric: error_rate, target: app, add: 0.1}}]
procedure:
  name: objective-rollback
  steps:
    - name: revert-app
      action: rollback_version
      target: app
      settings: {{batch: 4, drain: 10s}}
{extra}  verify: {{hold: 1m, timeout: {timeout}}}
"""


def scenario(tmp_path: Path, *, objective: str = "", extra: str = "", timeout: str = "30m",
             pattern: str = "") -> Scenario:
    path = tmp_path / "scenario.yaml"
    path.write_text(SCENARIO.format(objective=objective, extra=extra, timeout=timeout,
                                    pattern=pattern))
    return load_scenario(path)


def alerts_of(r: Any, kind: str) -> list[Any]:
    return [a for a in r.alerts if a.kind == kind]


# --------------------------------------------------------------------------- budget math


def test_a_35s_full_outage_burns_1_35_percent_of_a_month_at_99_9() -> None:
    sc = load_scenario(CHECKOUT)  # no objective written: 99.9 % over 30 days
    assert sc.slo.objective.target == 0.999 and sc.slo.objective.window == 30 * 86400
    rps = sc.deployment.traffic.rps
    assert error_budget(sc) == pytest.approx(0.001 * 30 * 86400 * rps)
    span = Span(0.0, 35.0, downtime_s=35.0, failed_requests=35.0 * rps,
                requests=35.0 * rps, outage_s=35.0, peak_error=1.0)
    assert span.bad == 35.0 * rps  # a backend that counts no slow requests: the failed ones
    burn = budget_burn(sc, span.bad)
    assert burn == pytest.approx(35 / 2592)
    assert round(100 * burn, 2) == 1.35
    # a 5 % degradation for as long costs a twentieth of it
    assert budget_burn(sc, 0.05 * 35.0 * rps) == pytest.approx(burn / 20)


def test_objective_fields_and_defaults(tmp_path: Path) -> None:
    sc = scenario(tmp_path)
    assert sc.slo.latency_threshold_ms() == 300.0  # the edge p99 rule's bound
    assert error_budget(sc) == pytest.approx(0.001 * 2_592_000 * 250)
    custom = scenario(tmp_path, objective="  objective: {target: 0.99, window: 7d, "
                                          "latency_threshold: 500ms}\n")
    assert custom.slo.objective.target == 0.99
    assert custom.slo.latency_threshold_ms() == pytest.approx(500.0)
    assert error_budget(custom) == pytest.approx(0.01 * 7 * 86400 * 250)
    external = load_scenario(ROOT / "tests" / "scenarios" / "external.yaml")
    assert external.slo.latency_threshold_ms() is None  # no latency rule: failures only
    with pytest.raises(SpecError) as info:
        scenario(tmp_path, objective="  objective: {target: 1.0}\n")
    assert info.value.problems[0].path == "slo.objective.target"
    with pytest.raises(SpecError) as info:
        scenario(tmp_path, objective="  objective: {window: 30d, budget: 3}\n")
    assert "unknown" in info.value.problems[0].message or "extra" in str(info.value)


def test_diurnal_load_has_mean_multiplier_one() -> None:
    """The budget is taken at ``traffic.rps``: right because the pattern averages 1."""
    from shadowrl.shadow.sim.params import SimParams
    from shadowrl.shadow.sim.topology import diurnal_factor

    p = SimParams()
    n = 24 * 60
    mean = sum(diurnal_factor(k * p.diurnal_period_s / n, p) for k in range(n)) / n
    assert mean == pytest.approx(1.0, abs=1e-9)


def test_span_add_combines_the_new_fields() -> None:
    a = Span(0.0, 10.0, downtime_s=4.0, failed_requests=10.0, bad_requests=12.0,
             outage_s=2.0, peak_error=0.4, violated_until_s=6.0)
    b = Span(10.0, 20.0, downtime_s=0.0, failed_requests=1.0, bad_requests=0.0,
             outage_s=0.0, peak_error=0.9)
    total = Span(0.0, 0.0)
    total.add(a)
    total.add(b)
    assert (total.bad_requests, total.outage_s, total.peak_error) == (12.0, 2.0, 0.9)
    assert total.violation_end() == 6.0  # b had no downtime: clean throughout
    assert b.violation_end() == 10.0  # its start
    unknown = Span(20.0, 30.0, downtime_s=3.0)  # downtime, no detail: violated to its end
    assert unknown.violation_end() == 30.0
    total.add(unknown)
    assert total.violation_end() == 30.0
    assert FULL_OUTAGE_ERROR == 0.99


def test_every_rehearsal_reports_its_budget_burn(tmp_path: Path) -> None:
    sc = scenario(tmp_path)
    r = rehearse(sc, 0)
    spans = [s.span for s in r.steps]
    assert r.bad_requests >= r.failed_requests > 0
    assert r.bad_requests >= sum(s.bad for s in spans)
    assert r.budget_burn == pytest.approx(r.bad_requests / error_budget(sc))
    # batch 4: every replica out of service at once, a full outage until they are back
    assert r.outage_s > 15.0 and r.peak_error_rate >= FULL_OUTAGE_ERROR
    data = r.to_json()
    assert data["budget_burn"] == round(r.budget_burn, 8)
    assert data["steps"][0]["bad_requests"] == round(spans[0].bad, 3)
    gentle = rehearse(scenario(tmp_path, extra=""), 0, plan=[("revert-app", {"batch": 4,
                                                                           "drain": 10.0})])
    assert gentle.to_json() == data  # the plan is the configured one


# --------------------------------------------------------------------------- outcomes


def test_recovered_then_a_long_wait_past_the_deadline_is_recovered_and_too_slow(
        tmp_path: Path) -> None:
    wait = "    - {name: settle, action: wait, settings: {duration: 40m}}\n"
    sc = scenario(tmp_path, extra=wait)
    r = rehearse(sc, 0)
    revert, settle = r.steps
    assert settle.end_s > r.breach.at_s + sc.procedure.verify.timeout  # ran past the deadline
    assert r.outcome == "recovered"  # the SLO held long before: not "ineffective"
    assert alerts_of(r, "rollback_ineffective") == []
    assert r.restored_s is not None and r.restored_s < 120.0
    (slow,) = alerts_of(r, "too_slow")
    assert slow.step == "settle" and slow.severity == "warning"
    assert "'settle'" in slow.message and "within the 1800s timeout" in slow.message
    assert slow.value == pytest.approx(settle.end_s - max(settle.start_s,
                                                           r.breach.at_s + r.restored_s))
    assert "'revert-app'" not in slow.message  # it ended before the SLO was restored
    # the same run without the wait: recovered by verification, no such alert
    quick = rehearse(scenario(tmp_path), 0)
    assert quick.outcome == "recovered" and alerts_of(quick, "too_slow") == []
    assert quick.restored_s == pytest.approx(r.restored_s)


def test_steps_ending_just_before_the_deadline_still_count_as_recovered(tmp_path: Path) -> None:
    """Verification after the last step cannot finish its hold before the deadline, but the
    SLO had been holding during the wait."""
    base = rehearse(scenario(tmp_path), 0)
    revert_s = base.steps[0].end_s - base.breach.at_s
    wait_s = 1800.0 - revert_s - 30.0  # ends 30 s before the deadline; hold is 60 s
    extra = f"    - {{name: settle, action: wait, settings: {{duration: {wait_s:.3f}}}}}\n"
    r = rehearse(scenario(tmp_path, extra=extra), 0)
    assert r.verify_end_s == pytest.approx(r.breach.at_s + 1800.0)
    assert r.outcome == "recovered"
    assert [a.step for a in alerts_of(r, "too_slow")] == ["settle"]


def test_an_unrestored_slo_is_still_ineffective() -> None:
    r = rehearse(load_scenario(ROOT / "tests" / "scenarios" / "external.yaml"), 0)
    assert r.outcome == "rollback_ineffective" and r.restored_s is None
    (alert,) = alerts_of(r, "rollback_ineffective")
    assert "outside what the procedure reverts" in alert.message


def _step(name: str, t0: float, t1: float, downtime: float,
          until: float | None = None) -> StepResult:
    return StepResult(name, "wait", "ok", {}, Span(t0, t1, downtime_s=downtime,
                                                    violated_until_s=until))


def test_slo_held_from_step_spans() -> None:
    """A HoldWatcher over the steps: violated until each span's last violation."""
    steps = [_step("a", 0, 100, 40, until=40), _step("b", 100, 400, 0)]
    late = VerifyResult(False, 400.0, Span(400.0, 400.0))
    held = slo_held(steps, late, 60.0, deadline_s=300.0)
    assert held.first_clean_at == 40.0 and held.first_held_at == 100.0
    assert held.restored_at == 40.0 and held.broken_by is None
    # without the backend's detail a span with downtime counts as violated throughout
    coarse = [_step("a", 0, 100, 40), _step("b", 100, 400, 0)]
    assert slo_held(coarse, late, 60.0, 300.0).restored_at == 100.0
    # held, then broken again by a later step and never restored by the deadline
    broken = [_step("a", 0, 100, 40, until=40), _step("b", 100, 400, 250, until=400)]
    held = slo_held(broken, late, 60.0, 300.0)
    assert held.first_clean_at == 40.0 and held.broken_by == "b" and held.restored_at is None
    # a clean stretch that only reaches the hold after the deadline is too late
    assert slo_held([_step("a", 0, 400, 270, until=270)], late, 60.0, 300.0).restored_at \
        is None
    assert math.isclose(slo_held([_step("a", 0, 400, 230, until=230)], late, 60.0,
                                 300.0).restored_at, 230.0)


def test_ineffective_after_the_slo_cleared_says_so(tmp_path: Path) -> None:
    shrink = ("    - {name: shrink, action: scale, target: app, settings: {replicas: 2},"
              " after: [revert-app]}\n")
    r = rehearse(scenario(tmp_path, extra=shrink, timeout="10m"), 0)
    assert r.outcome == "rollback_ineffective"  # 2 replicas cannot carry 250 rps
    (alert,) = alerts_of(r, "rollback_ineffective")
    assert alert.step == "shrink"
    # the scale-down is instant; the overload it leaves starts after it
    assert "was clear" in alert.message and "violated again after the last step" in alert.message
    assert "outside what the procedure reverts" not in alert.message


# --------------------------------------------------------------------------- blame


def test_errors_after_the_last_step_are_the_verifications(tmp_path: Path) -> None:
    """Overload shedding after a scale-down that is the last step: nearly all of it happens
    during verification, so the alert names no step (it used to name the last one)."""
    shrink = ("    - {name: shrink, action: scale, target: app, settings: {replicas: 2},"
              " after: [revert-app]}\n")
    r = rehearse(scenario(tmp_path, extra=shrink, timeout="10m"), 0)
    shrink_step = r.steps[-1]
    assert shrink_step.span.errors_by_source.get("overload", 0.0) < 1000.0
    (overload,) = [a for a in alerts_of(r, "new_errors") if "overload" in a.message]
    assert overload.step is None
    assert "after the last step, during verification" in overload.message
    assert overload.value > 10 * shrink_step.span.errors_by_source.get("overload", 0.0)

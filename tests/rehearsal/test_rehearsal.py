"""Rollback Procedure Tester: plans, outcomes, alerts and the ``simulate --json`` contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shadowrl.core.plan import configured_plan, validate_plan
from shadowrl.core.spec import Budget, Procedure, Scenario, load_scenario
from shadowrl.rehearsal.runner import Rehearsal, rehearse

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "tests" / "scenarios"
ENVS = ["checkout", "payments", "search"]

OUTCOMES = {"recovered", "rollback_failed", "rollback_ineffective"}
TOP_KEYS = {"scenario", "backend", "incident", "seed", "outcome", "breach_at_s", "rollback_s",
            "downtime_s", "failed_requests", "bad_requests", "budget_burn", "outage_s",
            "peak_error_rate", "restored_s", "steps", "alerts"}
STEP_KEYS = {"name", "status", "settings", "start_s", "end_s", "downtime_s", "failed_requests",
             "bad_requests"}
ALERT_KEYS = {"kind", "severity", "step", "message"}


def scenario(name: str) -> Scenario:
    return load_scenario(SCENARIOS / f"{name}.yaml")


def from_text(tmp_path: Path, text: str) -> Scenario:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return load_scenario(path)


def with_budget(proc: Procedure, seconds: float | None) -> Procedure:
    return proc.model_copy(update={"budget": Budget(downtime=seconds)})


def alerts_of(r: Rehearsal, kind: str) -> list[Any]:
    return [a for a in r.alerts if a.kind == kind]


def new_errors(r: Rehearsal, words: str) -> list[Any]:
    return [a for a in alerts_of(r, "new_errors") if words in a.message]


# --------------------------------------------------------------------------- too_slow

def test_too_slow_when_downtime_exceeds_the_budget() -> None:
    sc = scenario("phys_rollout")
    base = rehearse(sc, 0)
    assert base.downtime_s > 60.0
    assert alerts_of(base, "too_slow") == []  # no budget: no alert
    tight = rehearse(sc, 0, procedure=with_budget(sc.procedure, 60.0))
    assert tight.downtime_s == base.downtime_s
    slow = alerts_of(tight, "too_slow")
    assert len(slow) == 1
    assert slow[0].severity == "warning"
    worst = max(tight.steps, key=lambda s: s.span.downtime_s)
    assert slow[0].step == worst.name
    assert "budget" in slow[0].message and "60" in slow[0].message
    assert tight.outcome == "recovered"  # too slow is an alert, not an outcome


@pytest.mark.parametrize("slack", [0.0, 1.0, 3600.0])
def test_not_too_slow_within_the_budget(slack: float) -> None:
    sc = scenario("phys_rollout")
    downtime = rehearse(sc, 0).downtime_s
    r = rehearse(sc, 0, procedure=with_budget(sc.procedure, downtime + slack))
    assert alerts_of(r, "too_slow") == []


def test_checkout_runbook_is_too_slow_for_its_budget() -> None:
    sc = load_scenario(ROOT / "envs" / "checkout.yaml")
    r = rehearse(sc, 1)
    assert r.downtime_s > sc.procedure.budget.downtime  # type: ignore[operator]
    assert len(alerts_of(r, "too_slow")) == 1


# --------------------------------------------------------------------------- new_errors

def compat_plan(pause: float | None, online: bool) -> list[tuple[str, dict[str, Any] | None]]:
    return [("revert-app", {"batch": 2, "drain": 1.0}),
            ("pause", None if pause is None else {"duration": pause}),
            ("migrate-db-down", {"online": online})]


def test_new_errors_names_the_locking_migration() -> None:
    sc = scenario("phys_compat")
    offline = rehearse(sc, 0, plan=compat_plan(None, online=False))
    lock = new_errors(offline, "locked")
    assert [a.step for a in lock] == ["migrate-db-down"]
    assert lock[0].severity == "warning"
    online = rehearse(sc, 0, plan=compat_plan(None, online=True))
    assert new_errors(online, "locked") == []


def test_new_errors_names_the_step_with_the_compatibility_window() -> None:
    sc = scenario("phys_compat")
    quick = rehearse(sc, 0, plan=compat_plan(None, online=True))
    assert [a.step for a in new_errors(quick, "mismatch")] == ["migrate-db-down"]
    slow = rehearse(sc, 0, plan=compat_plan(300.0, online=True))
    mismatch = new_errors(slow, "mismatch")
    assert [a.step for a in mismatch] == ["pause"]  # the long gap made most of them
    assert "'pause'" in mismatch[0].message


def test_no_compatibility_alert_for_a_backward_compatible_migration(tmp_path: Path) -> None:
    text = (SCENARIOS / "phys_compat.yaml").read_text()
    sc = from_text(tmp_path, text.replace("backward_compatible: false",
                                          "backward_compatible: true"))
    r = rehearse(sc, 0, plan=compat_plan(300.0, online=True))
    assert new_errors(r, "mismatch") == []


@pytest.mark.parametrize("drain,expected", [(0.0, ["revert-app"]), (30.0, [])])
def test_new_errors_for_dropped_requests(drain: float, expected: list[str]) -> None:
    sc = scenario("phys_rollout")
    r = rehearse(sc, 0, plan=[("scale-app", None), ("revert-app", {"batch": 1, "drain": drain})])
    assert [a.step for a in new_errors(r, "dropped")] == expected


@pytest.mark.parametrize("batch,expected", [(1, []), (2, ["revert-app"])])
def test_new_errors_for_overload(batch: int, expected: list[str]) -> None:
    sc = scenario("phys_rollout")
    r = rehearse(sc, 0, plan=[("scale-app", None), ("revert-app", {"batch": batch,
                                                                   "drain": 10.0})])
    assert [a.step for a in new_errors(r, "overload")] == expected


def test_a_clean_rollback_makes_no_new_errors() -> None:
    sc = scenario("phys_rollout")
    r = rehearse(sc, 0, plan=[("scale-app", {"replicas": 8}),
                              ("revert-app", {"batch": 2, "drain": 10.0})])
    assert r.outcome == "recovered"
    assert alerts_of(r, "new_errors") == []


# --------------------------------------------------------------------------- outcomes

def test_recovered_has_no_critical_alert() -> None:
    r = rehearse(scenario("phys_rollout"), 0)
    assert r.outcome == "recovered"
    assert all(a.severity != "critical" for a in r.alerts)
    assert r.verify_end_s - r.steps[-1].end_s >= 60.0  # verify.hold


def test_rollback_failed_skips_the_remaining_steps(tmp_path: Path) -> None:
    text = (SCENARIOS / "irreversible.yaml").read_text()
    text += ("    - {name: pause, action: wait, settings: {duration: 30s},"
             " after: [migrate-db-down]}\n")
    sc = from_text(tmp_path, text)
    r = rehearse(sc, 0)
    assert [(s.name, s.status) for s in r.steps] == [
        ("revert-app", "ok"), ("migrate-db-down", "failed"), ("pause", "skipped")]
    assert r.steps[-1].start_s == r.steps[-1].end_s == r.steps[1].end_s
    assert r.outcome == "rollback_failed"
    assert [a.step for a in alerts_of(r, "rollback_failed")] == ["migrate-db-down"]
    assert r.rollback_s == pytest.approx(r.steps[1].end_s - r.breach.at_s)


def test_rollback_ineffective_names_the_last_step() -> None:
    sc = scenario("external")
    r = rehearse(sc, 0)
    assert r.outcome == "rollback_ineffective"
    (alert,) = alerts_of(r, "rollback_ineffective")
    assert alert.step == "revert-app"
    assert alert.severity == "critical"
    assert alerts_of(r, "rollback_failed") == []


# --------------------------------------------------------------------------- plans

PLAN_YAML = """\
apiVersion: shadowrl/v1
kind: Scenario
metadata: {name: plans}
deployment:
  traffic: {rps: 100}
  services:
    - {name: app, replicas: 2, capacity_rps: 100, calls: [db, cache],
       version: {live: v2, previous: v1}}
  datastores:
    - {name: db, capacity_qps: 1000, schema: {live: 2, previous: 1},
       migration: {duration: 10s}}
  caches:
    - {name: cache, hit_ratio: 0.5}
slo:
  rules:
    - {name: errors, metric: error_rate, above: 0.01, for: 30s}
incidents:
  - name: bad-release
    cause: {kind: version, target: app}
    effects: [{metric: error_rate, target: app, add: 0.1}]
procedure:
  name: plans
  steps:
    - {name: flush, action: flush_cache, target: cache, after: [migrate]}
    - {name: migrate, action: migrate_down, target: db, after: [revert],
       settings: {online: {choices: [false, true], default: true}}}
    - {name: warm, action: warm_cache, target: cache, optional: true}
    - name: revert
      action: rollback_version
      target: app
      settings: {batch: {choices: [1, 2], default: 2}}
    - {name: pause, action: wait, settings: {duration: 5s}}
"""


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return from_text(tmp_path_factory.mktemp("plans"), PLAN_YAML)


def test_configured_plan_respects_after_listed_out_of_order(plans: Scenario) -> None:
    plan = configured_plan(plans.procedure)
    names = [n for n, _ in plan]
    # listed order, each step deferred until its `after` steps are done
    assert names == ["warm", "revert", "migrate", "flush", "pause"]
    settings = dict(plan)
    assert settings["revert"] == {"batch": 2, "drain": 30.0}  # default + omitted default
    assert settings["migrate"] == {"online": True}
    assert settings["warm"] == {}  # optional steps are run by the configured plan
    assert settings["pause"] == {"duration": 5.0}
    validate_plan(plans.procedure, plan)
    r = rehearse(plans, 0)
    assert [s.name for s in r.steps] == names
    assert all(s.status == "ok" for s in r.steps)


def test_configured_plan_keeps_listed_order_without_constraints() -> None:
    sc = load_scenario(ROOT / "envs" / "checkout.yaml")
    assert [n for n, _ in configured_plan(sc.procedure)] == [
        s.name for s in sc.procedure.steps]


GOOD = [("revert", {"batch": 1}), ("migrate", {"online": False}), ("warm", None),
        ("flush", {}), ("pause", {"duration": 5.0})]


@pytest.mark.parametrize("plan,message", [
    ([("revert", {}), ("migrate", None), ("flush", {}), ("pause", {"duration": 5.0})],
     "skips required step 'migrate'"),
    ([("migrate", {}), ("revert", {}), ("flush", {}), ("pause", {"duration": 5.0})],
     "'migrate' runs before ['revert']"),
    ([("revert", {}), ("flush", {}), ("migrate", {}), ("pause", {"duration": 5.0})],
     "'flush' runs before ['migrate']"),
    ([*GOOD, ("rollback-everything", {})], "unknown step 'rollback-everything'"),
    ([*GOOD, ("pause", {"duration": 5.0})], "step 'pause' twice"),
    (GOOD[:-1], "leaves out required steps ['pause']"),
])
def test_validate_plan_rejects(plans: Scenario, plan: list[Any], message: str) -> None:
    with pytest.raises(ValueError) as exc:
        validate_plan(plans.procedure, plan)
    assert message in str(exc.value)
    with pytest.raises(ValueError):
        rehearse(plans, 0, plan=plan)


@pytest.mark.parametrize("plan", [
    GOOD,
    [g for g in GOOD if g[0] != "warm"],  # an optional step may be left out
    [("pause", {"duration": 5.0}), ("revert", {}), ("migrate", {}), ("flush", {}),
     ("warm", {})],
])
def test_validate_plan_accepts(plans: Scenario, plan: list[Any]) -> None:
    validate_plan(plans.procedure, plan)
    r = rehearse(plans, 0, plan=plan)
    assert [s.name for s in r.steps] == [n for n, _ in plan]
    skipped = {s.name for s in r.steps if s.status == "skipped"}
    assert skipped == {n for n, s in plan if s is None}


# --------------------------------------------------------------------------- JSON contract

def check_contract(data: dict[str, Any]) -> None:
    assert set(data) == TOP_KEYS
    assert isinstance(data["scenario"], str) and isinstance(data["incident"], str)
    assert data["backend"] == "sim"
    assert isinstance(data["seed"], int)
    assert data["outcome"] in OUTCOMES
    for key in ("breach_at_s", "rollback_s", "downtime_s", "failed_requests", "bad_requests",
                "budget_burn", "outage_s", "peak_error_rate"):
        assert isinstance(data[key], float) and data[key] >= 0.0, key
    assert data["bad_requests"] >= data["failed_requests"]  # failed ones are bad
    assert data["peak_error_rate"] <= 1.0
    assert data["restored_s"] is None or (data["outcome"] == "recovered"
                                          and isinstance(data["restored_s"], float))
    for step in data["steps"]:
        assert set(step) == STEP_KEYS
        assert step["status"] in {"ok", "failed", "skipped"}
        assert isinstance(step["settings"], dict)
        for key in ("start_s", "end_s", "downtime_s", "failed_requests", "bad_requests"):
            assert isinstance(step[key], float), key
        assert step["start_s"] <= step["end_s"]
        for key in ("drain", "duration"):
            if key in step["settings"]:
                assert isinstance(step["settings"][key], float)
    for alert in data["alerts"]:
        assert set(alert) == ALERT_KEYS
        assert alert["kind"] in {"rollback_failed", "rollback_ineffective", "too_slow",
                                 "new_errors"}
        assert alert["severity"] in {"critical", "warning"}
        assert alert["step"] is None or alert["step"] in {s["name"] for s in data["steps"]}
        assert isinstance(alert["message"], str) and alert["message"]
    json.dumps(data, allow_nan=False)


@pytest.mark.parametrize("path", [
    *(ROOT / "envs" / f"{e}.yaml" for e in ENVS),
    *(SCENARIOS / f"{n}.yaml" for n in ("minimal", "irreversible", "external", "phys_compat")),
], ids=lambda p: p.stem)
def test_to_json_contract(path: Path) -> None:
    sc = load_scenario(path)
    r = rehearse(sc, 0)
    data = r.to_json()
    check_contract(data)
    assert data["scenario"] == sc.name and data["seed"] == 0
    assert data["incident"] in {i.name for i in sc.incidents}
    assert [s["name"] for s in data["steps"]] == [n for n, _ in configured_plan(sc.procedure)]
    # downtime counts violated seconds from the breach to the end of verification
    assert data["downtime_s"] <= r.verify_end_s - r.breach.at_s + 1e-3
    assert sum(s["downtime_s"] for s in data["steps"]) <= data["downtime_s"] + 1e-2
    assert sum(s["failed_requests"] for s in data["steps"]) <= data["failed_requests"] + 1e-2
    done = [s for s in data["steps"] if s["status"] != "skipped"]
    assert data["rollback_s"] == pytest.approx(
        max(s["end_s"] for s in done) - data["breach_at_s"], abs=2e-3)


def test_to_json_settings_are_plain_json() -> None:
    sc = scenario("phys_compat")
    data = rehearse(sc, 0, plan=compat_plan(120.0, online=False)).to_json()
    steps = {s["name"]: s for s in data["steps"]}
    assert steps["revert-app"]["settings"] == {"batch": 2, "drain": 1.0}
    assert steps["pause"]["settings"] == {"duration": 120.0}
    assert steps["migrate-db-down"]["settings"] == {"online": False}
    assert json.loads(json.dumps(data)) == data

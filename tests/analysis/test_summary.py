"""Summaries of many rehearsals: the ``rehearse --json`` / ``evaluate --json`` contract."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shadowrl.analysis.summary import OUTCOMES, Stats, stats, summarize
from shadowrl.cli.main import app
from shadowrl.core.plan import configured_plan
from shadowrl.core.spec import load_scenario
from shadowrl.rehearsal.alerts import Alert
from shadowrl.rehearsal.runner import Rehearsal, rehearse

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"

# the public `rehearse --json` contract (docs/architecture.md, The layers)
TOP_KEYS = {"scenario", "policy", "backend", "runs", "outcomes", "downtime_s", "failed_requests",
            "bad_requests", "budget_burn", "outage_s", "peak_error_rate", "alerts", "steps"}
STATS_KEYS = {"mean", "p50", "p95", "max"}
ALERT_KEYS = {"kind", "count", "message"}
STEP_KEYS = {"name", "mean_s", "p95_s", "downtime_share"}
# what the implementation adds to the documented entries
ALERT_EXTRA = {"step"}
STEP_EXTRA = {"runs"}


@pytest.fixture(scope="module")
def mixed() -> list[Rehearsal]:
    """Runs with every outcome: checkout (recovered, sometimes ineffective), irreversible
    (rollback_failed, with skipped steps) and external (rollback_ineffective)."""
    runs = [rehearse(load_scenario(CHECKOUT), seed) for seed in range(6)]
    runs += [rehearse(load_scenario(ROOT / "tests" / "scenarios" / "irreversible.yaml"), s)
             for s in range(2)]
    runs += [rehearse(load_scenario(ROOT / "tests" / "scenarios" / "external.yaml"), s)
             for s in range(2)]
    return runs


# --------------------------------------------------------------------------- stats


def test_stats_values() -> None:
    assert stats([1.0, 2.0, 3.0, 4.0]) == Stats(mean=2.5, p50=2.5, p95=3.85, max=4.0)
    assert stats([5.0]).model_dump() == {"mean": 5.0, "p50": 5.0, "p95": 5.0, "max": 5.0}
    values = [0.1234567, 10.0, 20.0]
    s = stats(values)
    assert s.mean == round(float(np.mean(values)), 3)
    assert s.p95 == round(float(np.percentile(values, 95)), 3)
    assert s.max == 20.0 and s.p50 == 10.0


def test_stats_of_nothing_is_zeros() -> None:
    s = stats([]).model_dump(mode="json")
    assert s == {"mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    assert all(type(v) is float for v in s.values())


def test_stats_order_does_not_matter_and_types_are_json_floats() -> None:
    values = [9.0, 1.0, 5.0, 3.0, 7.0]
    assert stats(values) == stats(sorted(values))
    s = stats(np.array(values, dtype=np.float32).tolist()).model_dump(mode="json")
    assert all(type(v) is float for v in s.values())
    json.dumps(s)


# --------------------------------------------------------------------------- summarize


def test_summarize_counts_outcomes(mixed: list[Rehearsal]) -> None:
    s = summarize("mixed", "configured", mixed)
    counts = Counter(r.outcome for r in mixed)
    outcomes = s.outcomes.model_dump()
    assert list(outcomes) == list(OUTCOMES)  # every outcome, in a fixed order
    assert outcomes == {k: counts.get(k, 0) for k in OUTCOMES}
    assert s.outcomes.rollback_failed >= 2 and s.outcomes.rollback_ineffective >= 2
    assert s.runs == len(mixed) == sum(outcomes.values())
    assert s.downtime_s == stats([r.downtime_s for r in mixed])
    assert s.failed_requests == stats([r.failed_requests for r in mixed])
    empty = summarize("x", "configured", [])
    assert empty.runs == 0 and empty.outcomes.model_dump() == dict.fromkeys(OUTCOMES, 0)
    assert empty.alerts == [] and empty.steps == []


def test_alert_groups_count_alerts_and_name_distinct_runs() -> None:
    sc = load_scenario(CHECKOUT)
    base = [rehearse(sc, seed) for seed in range(4)]

    def alert(kind: str, step: str | None, message: str) -> Alert:
        sev = "critical" if kind.startswith("rollback") else "warning"
        return Alert(kind, sev, step, message, "checkout")

    runs = [
        dataclasses.replace(base[0], alerts=[
            alert("new_errors", "revert-web", "dropped during 'revert-web': 10 failed"),
            alert("new_errors", "revert-web", "overload during 'revert-web': 5 failed")]),
        dataclasses.replace(base[1], alerts=[
            alert("new_errors", "revert-web", "dropped during 'revert-web': 12 failed"),
            alert("too_slow", None, "downtime 400s exceeds the budget 300s")]),
        dataclasses.replace(base[2], alerts=[]),
        dataclasses.replace(base[3], alerts=[
            alert("new_errors", "revert-orders", "dropped during 'revert-orders': 3 failed")]),
    ]
    summary = summarize("checkout", "configured", runs)
    groups = summary.alerts
    assert [(g.kind, g.step, g.count) for g in groups][0] == (
        "new_errors", "revert-web", 3)  # the biggest group first
    by_key = {(g.kind, g.step): g for g in groups}
    assert set(by_key) == {("new_errors", "revert-web"), ("too_slow", None),
                           ("new_errors", "revert-orders")}
    web = by_key[("new_errors", "revert-web")]
    assert web.count == 3 and web.runs == 2  # 3 alerts, raised by 2 runs
    assert "at step 'revert-web' in 2 of 4 runs" in web.message
    assert web.message.endswith("e.g. dropped during 'revert-web': 10 failed")
    assert web.example == "dropped during 'revert-web': 10 failed"
    slow = by_key[("too_slow", None)]
    assert slow.count == 1 and slow.runs == 1 and "in 1 of 4 runs" in slow.message
    assert "at step" not in slow.message
    assert by_key[("new_errors", "revert-orders")].runs == 1
    # runs and example are for renderers: the JSON contract keeps its four keys
    dumped = summary.model_dump(mode="json")["alerts"]
    assert {"kind": "too_slow", "step": None, "count": 1, "message": slow.message} in dumped
    assert all(set(a) == {"kind", "step", "count", "message"} for a in dumped)
    alerts_json = summary.model_dump_json().split('"alerts":')[1].split('"steps":')[0]
    assert '"runs"' not in alerts_json and '"example"' not in alerts_json
    counts = [g.count for g in groups]
    assert counts == sorted(counts, reverse=True)


def test_alert_groups_of_real_runs(mixed: list[Rehearsal]) -> None:
    groups = summarize("mixed", "configured", mixed).alerts
    assert groups
    assert sum(g.count for g in groups) == sum(len(r.alerts) for r in mixed)
    for g in groups:
        members = [k for k, r in enumerate(mixed) for a in r.alerts
                   if (a.kind, a.step) == (g.kind, g.step)]
        m = re.search(r" in (\d+) of (\d+) runs", g.message)
        assert m, g.message
        assert int(m.group(1)) == len(set(members)) and int(m.group(2)) == len(mixed)
        assert g.count == len(members)
        assert g.runs == len(set(members)) <= g.count
        assert g.message.endswith(f"; e.g. {g.example}")


def test_step_statistics(mixed: list[Rehearsal]) -> None:
    s = summarize("mixed", "configured", mixed)
    total_down = sum(r.downtime_s for r in mixed)
    by_name = {st.name: st for st in s.steps}
    assert len(by_name) == len(s.steps)
    executed: dict[str, list] = {}
    for r in mixed:
        for step in r.steps:
            if step.status != "skipped":
                executed.setdefault(step.name, []).append(step)
    assert set(by_name) == set(executed)  # steps never executed are not listed
    for name, steps in executed.items():
        durations = [x.end_s - x.start_s for x in steps]
        entry = by_name[name]
        assert entry.mean_s == pytest.approx(np.mean(durations), abs=1e-3)
        assert entry.p95_s == pytest.approx(np.percentile(durations, 95), abs=1e-3)
        assert entry.runs == len(steps)
        assert entry.downtime_share == pytest.approx(
            sum(x.span.downtime_s for x in steps) / total_down, abs=1e-4)
        assert 0.0 <= entry.downtime_share <= 1.0
    shares = sum(st.downtime_share for st in s.steps)
    assert shares <= 1.0 + 1e-3  # the rest is verification
    assert shares > 0.3


def test_skipped_steps_are_not_counted(tmp_path: Path) -> None:
    # a failed step makes the rest skipped: add a step after the irreversible migration
    text = (ROOT / "tests" / "scenarios" / "irreversible.yaml").read_text()
    text += ("    - {name: scale-app, action: scale, target: app, after: [migrate-db-down],\n"
             "       settings: {replicas: 3}}\n")
    (tmp_path / "s.yaml").write_text(text)
    sc = load_scenario(tmp_path / "s.yaml")
    runs = [rehearse(sc, s) for s in range(3)]
    assert all(r.outcome == "rollback_failed" for r in runs)
    assert all(r.steps[-1].name == "scale-app" and r.steps[-1].status == "skipped"
               for r in runs)
    listed = {st.name for st in summarize(sc.name, "configured", runs).steps}
    assert listed == {"revert-app", "migrate-db-down"}
    # an optional step the plan skips is not listed either
    checkout = load_scenario(CHECKOUT)
    plan = [(name, None if name == "warm-cache" else settings)
            for name, settings in configured_plan(checkout.procedure)]
    runs = [rehearse(checkout, s, plan=plan) for s in range(2)]
    listed = {st.name for st in summarize("checkout", "configured", runs).steps}
    assert "warm-cache" not in listed and "flush-cache" in listed


# --------------------------------------------------------------------------- contract


def check_contract(s: dict) -> None:
    assert set(s) == TOP_KEYS
    assert isinstance(s["scenario"], str) and isinstance(s["policy"], str)
    assert s["backend"] in ("sim", "docker")
    assert type(s["runs"]) is int
    assert set(s["outcomes"]) == set(OUTCOMES)
    assert all(type(v) is int for v in s["outcomes"].values())
    for key in ("downtime_s", "failed_requests", "bad_requests", "budget_burn", "outage_s",
                "peak_error_rate"):
        assert set(s[key]) == STATS_KEYS
        assert all(isinstance(v, (int, float)) for v in s[key].values())
    for a in s["alerts"]:
        assert set(a) == ALERT_KEYS | ALERT_EXTRA
        assert type(a["count"]) is int and isinstance(a["message"], str)
    for st in s["steps"]:
        assert set(st) == STEP_KEYS | STEP_EXTRA
        assert all(isinstance(st[k], (int, float)) for k in ("mean_s", "p95_s",
                                                              "downtime_share"))


def test_summary_has_exactly_the_documented_keys(mixed: list[Rehearsal]) -> None:
    s = summarize("mixed", "configured", mixed).model_dump(mode="json")
    check_contract(s)
    assert s["alerts"] and s["steps"]
    assert json.loads(json.dumps(s)) == s
    assert list(s) == ["scenario", "policy", "backend", "runs", "outcomes", "downtime_s",
                       "failed_requests", "bad_requests", "budget_burn", "outage_s",
                       "peak_error_rate", "alerts", "steps"]  # the documented order


def test_cli_rehearse_json_has_exactly_the_documented_keys() -> None:
    result = CliRunner().invoke(app, ["rehearse", str(CHECKOUT), "--runs", "4", "--json"])
    assert result.exit_code == 0, (result.stderr[-2000:], repr(result.exception))
    s = json.loads(result.stdout)  # exactly one JSON object on stdout
    check_contract(s)
    assert s["scenario"] == "checkout" and s["policy"] == "configured" and s["runs"] == 4
    expected = summarize("checkout", "configured",
                         [rehearse(load_scenario(CHECKOUT), seed) for seed in range(4)])
    assert s == expected.model_dump(mode="json")

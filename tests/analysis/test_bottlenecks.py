"""Bottleneck analysis: each cause is provoked on purpose and must be found at the right step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shadowrl.analysis.bottlenecks import KINDS, Bottleneck, BottleneckReport, analyze
from shadowrl.core.plan import configured_plan
from shadowrl.core.spec import Scenario, load_scenario
from shadowrl.rehearsal.runner import Rehearsal, rehearse
from shadowrl.shadow.sim.params import SimParams

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
SEEDS = range(3)
EPS = 1e-6

# app -> db; the schema change is backward compatible, so only the write lock hurts.
LOCK_YAML = """\
apiVersion: shadowrl/v1
kind: Scenario
metadata: {name: lock, description: "app -> db; an offline migrate_down locks writes"}
deployment:
  traffic: {rps: 100, write_fraction: 0.3}
  services:
    - name: app
      replicas: 4
      capacity_rps: 100
      startup: 10s
      inflight_time: 1s
      calls: [db]
      version: {live: v2, previous: v1}
  datastores:
    - name: db
      capacity_qps: 1000
      schema: {live: 8, previous: 7}
      migration: {duration: 60s, online_factor: 3, reversible: true, backward_compatible: true}
slo:
  rules:
    - {name: errors, metric: error_rate, above: 0.01, for: 30s}
incidents:
  - name: bad-schema
    cause: {kind: schema, target: db}
    effects: [{metric: error_rate, target: app, add: 0.1}]
procedure:
  name: lock-rollback
  steps:
    - name: revert-app
      action: rollback_version
      target: app
      settings: {batch: 1, drain: 1s}
    - name: migrate-db-down
      action: migrate_down
      target: db
      after: [revert-app]
      settings: {online: {choices: [false, true], default: false}}
  verify: {hold: 1m, timeout: 30m}
"""

# app -> db behind a cache; the flush is optional and nothing warms the cache.
FLUSH_YAML = """\
apiVersion: shadowrl/v1
kind: Scenario
metadata: {name: flush, description: "app -> db behind a cache; an optional flush"}
deployment:
  traffic: {rps: 200, write_fraction: 0.2}
  services:
    - name: app
      replicas: 4
      capacity_rps: 100
      startup: 10s
      inflight_time: 1s
      calls: [db, cache]
      version: {live: v2, previous: v1}
  datastores:
    - {name: db, capacity_qps: 150, latency: 20ms}
  caches:
    - {name: cache, hit_ratio: 0.9, warmup: 2m, fronts: [db]}
slo:
  rules:
    - {name: errors, metric: error_rate, above: 0.01, for: 30s}
    - {name: db-latency, metric: latency_p99_ms, scope: db, above: 150, for: 20s}
incidents:
  - name: bad-release
    cause: {kind: version, target: app}
    effects: [{metric: error_rate, target: app, add: 0.1}]
procedure:
  name: flush-rollback
  steps:
    - name: revert-app
      action: rollback_version
      target: app
      settings: {batch: 1, drain: 1s}
    - {name: flush-cache, action: flush_cache, target: cache, after: [revert-app], optional: true}
  verify: {hold: 1m, timeout: 30m}
"""

# 250 rps on 4 x 100: scaling down to 2 first overloads the service for good.
SCALE_DOWN_YAML = """\
apiVersion: shadowrl/v1
kind: Scenario
metadata: {name: scale-down, description: "a scale step that removes needed capacity"}
deployment:
  traffic: {rps: 250}
  services:
    - name: app
      replicas: 4
      capacity_rps: 100
      startup: 10s
      inflight_time: 1s
      version: {live: v2, previous: v1}
slo:
  rules:
    - {name: errors, metric: error_rate, above: 0.01, for: 30s}
incidents:
  - name: bad-release
    cause: {kind: version, target: app}
    effects: [{metric: error_rate, target: app, add: 0.1}]
procedure:
  name: scale-down-rollback
  steps:
    - name: scale-app
      action: scale
      target: app
      settings: {replicas: {choices: [2, 4, 8], default: 2}}
    - name: revert-app
      action: rollback_version
      target: app
      after: [scale-app]
      settings: {batch: {choices: [1, 2], default: 1}, drain: 1s}
  verify: {hold: 1m, timeout: 10m}
"""


def scenario_file(tmp_path: Path, text: str, name: str) -> Scenario:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return load_scenario(path)



def checkout_plan(sc: Scenario, **overrides: dict[str, Any]) -> list[tuple[str, Any]]:
    """The configured plan with some steps' settings replaced (keys: step names, _ for -)."""
    plan = []
    for name, settings in configured_plan(sc.procedure):
        plan.append((name, {**(settings or {}), **overrides.get(name.replace("-", "_"), {})}))
    return plan


def runs(sc: Scenario, plan: Any = None, seeds: range = SEEDS, profile: bool = False,
         incident: str | None = None) -> list[Rehearsal]:
    return [rehearse(sc, s, plan=plan, incident=incident, record_profile=profile)
            for s in seeds]


def finding(report: BottleneckReport, kind: str, step: str | None) -> Bottleneck:
    found = [f for f in report.findings if f.kind == kind and f.step == step]
    assert found, (f"no {kind} finding at {step}; got "
                   f"{[(f.kind, f.step, round(f.share_of_downtime, 3)) for f in report.findings]}")
    return found[0]


def check_shares(report: BottleneckReport) -> None:
    assert sum(s.downtime_share for s in report.steps) <= 1 + EPS
    assert sum(s.failed_share for s in report.steps) <= 1 + EPS
    assert sum(s.rollback_share for s in report.steps) <= 1 + EPS
    down = sum(f.share_of_downtime for f in report.findings)
    failed = sum(f.share_of_failed_requests for f in report.findings)
    assert down + report.unattributed_downtime_share <= 1 + EPS
    assert failed + report.unattributed_failed_share <= 1 + EPS
    for f in report.findings:
        assert f.kind in KINDS
        assert 0 <= f.share_of_downtime <= 1 + EPS
        assert 0 <= f.share_of_failed_requests <= 1 + EPS
        assert 0 < f.runs_affected <= f.runs_total == report.runs
        assert f.suggestion
    keys = [(-round(f.share_of_downtime, 6), -round(f.share_of_failed_requests, 6))
            for f in report.findings]
    assert keys == sorted(keys)


# --------------------------------------------------------------------------- causes


def test_batch_of_every_replica_is_capacity_loss(checkout: Scenario) -> None:
    plan = checkout_plan(checkout, scale_web={"replicas": 6}, revert_web={"batch": 6})
    report = analyze(checkout, runs(checkout, plan, profile=True))
    check_shares(report)
    f = finding(report, "capacity_loss", "revert-web")
    assert f.runs_affected == len(SEEDS) and f.runs_fraction == 1.0
    assert f.share_of_downtime > 0.05 and f.share_of_failed_requests > 0.1
    assert f.evidence["outage_during_batch"] is True
    assert f.evidence["ready_replicas_during_batch"] == 0
    assert f.evidence["settings"] == {"batch": 6, "drain": 30.0, "surge": 0}
    assert f.evidence["mean_overload_failed_requests"] > 1000
    assert f.evidence["max_target_cpu"] == pytest.approx(1.0)  # from the per-second profile
    assert "max_edge_p99_ms" in f.evidence
    # a remedy within the choices: surge 3 replaces 3 at a time without losing capacity
    # (two rounds, faster than scaling to 12 first); without surge choices, more replicas
    # from scale-web and a batch that leaves headroom
    assert "run revert-web with batch 1 and surge 3" in f.suggestion
    assert "under utilisation 0.8" in f.suggestion
    # the proposal is the same change, in a form a plan takes
    assert f.proposal.settings == {"revert-web": {"batch": 1, "surge": 3, "drain": 10.0}}
    assert "drain 10s" in f.suggestion
    assert f.proposal.before == [] and f.proposal.skip == []
    no_surge = checkout.model_copy(deep=True)
    for step in no_surge.procedure.steps:
        step.settings.pop("surge", None)
    g = finding(analyze(no_surge, runs(checkout, plan)), "capacity_loss", "revert-web")
    assert "scale web to 12 (scale-web) before revert-web" in g.suggestion
    assert g.proposal.settings["scale-web"] == {"replicas": 12}
    assert ("scale-web", "revert-web") in g.proposal.before
    batch = g.proposal.settings["revert-web"].get("batch", 6)  # only what changes
    assert f"run revert-web with batch {batch}" in g.suggestion
    # the same cause without a profile is still found, from errors_by_source alone
    bare = analyze(checkout, runs(checkout, plan))
    assert finding(bare, "capacity_loss", "revert-web").share_of_downtime == pytest.approx(
        f.share_of_downtime, rel=0.05)


def test_surge_covering_the_batch_is_no_capacity_loss(checkout: Scenario) -> None:
    """Batch 3 of 6 web replicas sheds (400 rps on 300); with surge 3 the previous version
    starts beside the live one first and no capacity is lost."""
    bare = checkout_plan(checkout, scale_web={"replicas": 6}, revert_web={"batch": 3})
    surged = checkout_plan(checkout, scale_web={"replicas": 6},
                           revert_web={"batch": 3, "surge": 3})
    f = finding(analyze(checkout, runs(checkout, bare)), "capacity_loss", "revert-web")
    assert f.evidence["ready_replicas_during_batch"] == 3
    report = analyze(checkout, runs(checkout, surged))
    check_shares(report)
    assert not [g for g in report.by_kind("capacity_loss") if g.step == "revert-web"]


def test_estimates_use_the_simulators_parameters(checkout: Scenario, tmp_path: Path) -> None:
    plan = checkout_plan(checkout, scale_web={"replicas": 6}, revert_web={"batch": 6})
    rehearsals = runs(checkout, plan)
    default = finding(analyze(checkout, rehearsals), "capacity_loss", "revert-web")
    slow = finding(analyze(checkout, rehearsals, params=SimParams(stop_s=20.0)),
                   "capacity_loss", "revert-web")
    # one batch of 6 (drain 30s + stop + startup 20s) against two rounds of 3 surge
    # replicas (startup 20s + drain 10s + stop): 2s stops, then 20s stops
    assert "about 64s instead of 52s" in default.suggestion
    assert "about 100s instead of 70s" in slow.suggestion
    sc = scenario_file(tmp_path, LOCK_YAML, "lock")
    rehearsals = runs(sc)
    lock = finding(analyze(sc, rehearsals), "write_lock", "migrate-db-down")
    heavy = finding(analyze(sc, rehearsals, params=SimParams(online_migration_load=0.5)),
                    "write_lock", "migrate-db-down")
    assert "with 35% extra load, db at ~0.15" in lock.suggestion
    assert "with 50% extra load, db at ~0.20" in heavy.suggestion


def test_short_drain_is_dropped_requests_with_a_longer_drain_among_the_choices(
        checkout: Scenario) -> None:
    plan = checkout_plan(checkout, revert_web={"drain": 0.0}, revert_orders={"drain": 10.0})
    report = analyze(checkout, runs(checkout, plan))
    check_shares(report)
    web = finding(report, "dropped_requests", "revert-web")
    assert web.evidence["drain_s"] == 0.0 and web.evidence["inflight_time_s"] == 5.0
    assert web.evidence["mean_dropped_failed_requests"] > 0
    assert "use drain 10s (>= inflight_time 5s)" in web.suggestion
    assert web.proposal.settings == {"revert-web": {"drain": 10.0}}
    orders = finding(report, "dropped_requests", "revert-orders")  # 10s < 15s: 30s is enough
    assert "use drain 30s (>= inflight_time 15s)" in orders.suggestion
    assert orders.proposal.settings == {"revert-orders": {"drain": 30.0}}
    assert "10s drain, shorter than" in orders.suggestion  # spelled as the YAML spells it
    # the default 30s drains drop nothing
    assert not analyze(checkout, runs(checkout)).by_kind("dropped_requests")


def test_offline_migrate_down_is_write_lock(tmp_path: Path) -> None:
    sc = scenario_file(tmp_path, LOCK_YAML, "lock")
    report = analyze(sc, runs(sc))
    check_shares(report)
    f = finding(report, "write_lock", "migrate-db-down")
    assert f.runs_affected == len(SEEDS)
    assert f.evidence["settings"] == {"online": False}
    assert f.evidence["mean_write_lock_failed_requests"] > 100
    assert "online: true" in f.suggestion
    assert f.proposal.settings == {"migrate-db-down": {"online": True}}
    assert f.to_json()["proposal"] == {"settings": {"migrate-db-down": {"online": True}},
                                       "skip": [], "before": []}
    assert not report.by_kind("compatibility_window")
    online = analyze(sc, runs(sc, [("revert-app", {"batch": 1, "drain": 1.0}),
                                   ("migrate-db-down", {"online": True})]))
    assert not online.by_kind("write_lock")


def test_migration_long_after_the_version_rollback_is_compatibility_window() -> None:
    sc = load_scenario(SCENARIOS / "phys_compat.yaml")
    plan = [("revert-app", {"batch": 1, "drain": 1.0}), ("pause", {"duration": 300.0}),
            ("migrate-db-down", {"online": True})]
    report = analyze(sc, runs(sc, plan))
    check_shares(report)
    f = finding(report, "compatibility_window", "migrate-db-down")
    assert report.findings[0] is f
    assert f.share_of_downtime > 0.5
    assert f.evidence["rollback_step"] == "revert-app"
    assert f.evidence["steps_between"] == ["pause"]
    assert f.evidence["mean_gap_s"] == pytest.approx(300.0)
    assert "run migrate-db-down right after revert-app" in f.suggestion
    assert "skip pause" in f.suggestion and "online: false" in f.suggestion
    # the same mistake in the checkout runbook: revert-web between the two, online
    sc2 = load_scenario(ROOT / "envs" / "checkout.yaml")
    steps = dict(configured_plan(sc2.procedure))
    steps["migrate-db-down"] = {"online": True}
    order = ["disable-new-checkout", "scale-web", "revert-orders", "revert-web",
             "migrate-db-down", "flush-cache", "warm-cache"]
    g = finding(analyze(sc2, runs(sc2, [(n, steps[n]) for n in order])),
                "compatibility_window", "migrate-db-down")
    assert g.evidence["steps_between"] == ["revert-web"]
    assert g.share_of_downtime > 0.5
    assert ("run migrate-db-down right after revert-orders (move revert-web after "
            "migrate-db-down" in g.suggestion)
    assert "with online: false" in g.suggestion
    # adjacent and offline, the window (and its share) shrinks
    tight = analyze(sc, runs(sc, [("revert-app", {"batch": 1, "drain": 1.0}), ("pause", None),
                                  ("migrate-db-down", {"online": False})]))
    assert (finding(tight, "compatibility_window", "migrate-db-down").evidence["mean_window_s"]
            < f.evidence["mean_window_s"] / 3)


def test_flush_cache_in_front_of_a_small_datastore_is_cold_cache(tmp_path: Path) -> None:
    sc = load_scenario(SCENARIOS / "phys_cache.yaml")
    plan = [("revert-app", {"batch": 1, "drain": 1.0}), ("flush-cache", {}),
            ("warm-cache", None)]
    report = analyze(sc, runs(sc, plan, profile=True))
    check_shares(report)
    f = finding(report, "cold_cache", "flush-cache")
    assert report.findings[0] is f
    assert f.evidence["warmed_by"] == "none" and f.evidence["cache"] == "cache"
    assert f.evidence["max_db_cpu"] == pytest.approx(1.0)
    assert "run warm-cache right after flush-cache" in f.suggestion
    warmed = analyze(sc, runs(sc, [("revert-app", {"batch": 1, "drain": 1.0}),
                                   ("flush-cache", {}), ("warm-cache", {})]))
    assert (finding(warmed, "cold_cache", "flush-cache").share_of_downtime
            < f.share_of_downtime)
    # an optional flush with nothing to warm the cache: skipping it is the remedy
    flush = scenario_file(tmp_path, FLUSH_YAML, "flush")
    g = finding(analyze(flush, runs(flush)), "cold_cache", "flush-cache")
    assert "skip flush-cache" in g.suggestion


def test_irreversible_migration_is_failed_step() -> None:
    sc = load_scenario(SCENARIOS / "irreversible.yaml")
    report = analyze(sc, runs(sc))
    check_shares(report)
    top = report.findings[0]
    assert (top.kind, top.step) == ("failed_step", "migrate-db-down")
    assert top.runs_affected == len(SEEDS) and top.share_of_downtime > 0.5
    assert "irreversible" in top.evidence["message"]
    assert "irreversible" in top.suggestion


def test_external_cause_is_ineffective() -> None:
    sc = load_scenario(SCENARIOS / "external.yaml")
    report = analyze(sc, runs(sc))
    check_shares(report)
    top = report.findings[0]
    assert (top.kind, top.step) == ("ineffective", None)
    assert top.share_of_downtime > 0.9
    assert top.evidence["cause_kind"] == "external"
    assert "external" in top.suggestion


def test_load_above_capacity_after_a_scale_down_is_overload(tmp_path: Path) -> None:
    sc = scenario_file(tmp_path, SCALE_DOWN_YAML, "scale-down")
    report = analyze(sc, runs(sc))
    check_shares(report)
    f = finding(report, "overload", None)  # after the last step: no rollback batch explains it
    assert f.evidence["busiest_component"] == "app"
    assert f.evidence["mean_est_utilisation"] > 1
    assert "scale app to 4 (scale-app)" in f.suggestion
    assert f.proposal.settings == {"scale-app": {"replicas": 4}}
    # the rollback batch on the 2 remaining replicas is a capacity loss of its own
    finding(report, "capacity_loss", "revert-app")


def test_dominating_batch_1_rollout_is_slow_step() -> None:
    sc = load_scenario(SCENARIOS / "phys_rollout.yaml")
    report = analyze(sc, runs(sc))
    check_shares(report)
    f = report.findings[0]
    assert (f.kind, f.step) == ("slow_step", "revert-app")
    assert f.evidence["mean_share_of_rollback_time"] > 0.5
    assert "batch 4" in f.suggestion and "under utilisation 0.8" in f.suggestion
    assert f.proposal.settings["revert-app"]["batch"] == 4


# --------------------------------------------------------------------------- report


def test_checkout_configured_report(checkout: Scenario) -> None:
    rehearsals = runs(checkout, seeds=range(8))
    report = analyze(checkout, rehearsals)
    check_shares(report)
    names = {s.name for s in checkout.procedure.steps}
    assert report.top is not None and report.top.step in names
    assert [s.name for s in report.steps][-1] == "verify"
    assert {s.name for s in report.steps} == names | {"verify"}
    doc = report.to_json()
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert list(doc) == ["scenario", "procedure", "runs", "mean_downtime_s",
                         "mean_failed_requests", "steps", "findings", "unattributed"]
    assert doc["runs"] == 8 and doc["scenario"] == "checkout"
    assert set(doc["findings"][0]) == {"kind", "step", "share_of_downtime",
                                       "share_of_failed_requests", "runs_affected",
                                       "evidence", "suggestion", "proposal"}
    for f in doc["findings"]:  # a proposal names only the procedure's steps
        names_in = set(f["proposal"]["settings"]) | set(f["proposal"]["skip"]) | {
            n for pair in f["proposal"]["before"] for n in pair}
        assert names_in <= names
    assert set(doc["findings"][0]["runs_affected"]) == {"count", "fraction"}
    md = report.to_markdown()
    assert md.startswith("## Bottlenecks")
    assert "| `revert-web` |" in md and "| `verify` |" in md
    assert md.count("\n- **") == len(report.findings)
    # deterministic: the same rehearsals give the same report
    assert analyze(checkout, rehearsals).to_json() == doc


def test_empty_input() -> None:
    sc = load_scenario(SCENARIOS / "minimal.yaml")
    report = analyze(sc, [])
    assert report.runs == 0 and report.findings == [] and report.steps == []
    assert json.loads(json.dumps(report.to_json(), allow_nan=False)) == report.to_json()
    assert "No bottlenecks found." in report.to_markdown()

"""Qualitative physics of the simulated shadow (docs/architecture.md, The layers).

The numbers are calibrated later; what must hold now is the direction of every trade-off a
rollback procedure makes: batch size against capacity, drain against dropped requests,
headroom against latency, the gap between an app rollback and its schema migrate-down, and
which step removes which cause. Each test builds a purpose-made scenario
(``tests/scenarios/phys_*.yaml`` explain their sizing in comments) and compares runs that
differ in one setting only, on the same seed, so the jitter and the incident are common.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shadowrl.core.injection import ActiveEffect, Injection
from shadowrl.core.results import StepResult
from shadowrl.core.slo import run_until_breach
from shadowrl.core.spec import Scenario, Step, load_scenario
from shadowrl.rehearsal.deviation import DeviationSimulator
from shadowrl.rehearsal.runner import Rehearsal, rehearse, start_incident
from shadowrl.shadow.sim.engine import SimShadow

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "tests" / "scenarios"
ENVS = ["checkout", "payments", "search"]


def scenario(name: str) -> Scenario:
    return load_scenario(SCENARIOS / f"{name}.yaml")


def from_text(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Scenario:
    path = tmp_path / name
    path.write_text(text)
    return load_scenario(path)


def step_of(r: Rehearsal, name: str) -> StepResult:
    return next(s for s in r.steps if s.name == name)


def duration(s: StepResult) -> float:
    return s.end_s - s.start_s


def errors(s: StepResult, source: str) -> float:
    return s.span.errors_by_source.get(source, 0.0)


def edge_profile(r: Rehearsal, metric: str, step: str) -> list[float]:
    """The edge's per-second ``metric`` while ``step`` ran (needs ``record_profile``)."""
    p = r.profile
    assert p is not None
    return [v for v, c, s in zip(p[metric], p["component"], p["step"])
            if c == "edge" and s == step]


# --------------------------------------------------------------------------- batch

@pytest.fixture(scope="module")
def rollout() -> Scenario:
    return scenario("phys_rollout")


def run_rollout(sc: Scenario, *, batch: int = 1, drain: float = 10.0,
                scale: int | None = None, seed: int = 0) -> Rehearsal:
    plan = [("scale-app", None if scale is None else {"replicas": scale}),
            ("revert-app", {"batch": batch, "drain": drain})]
    return rehearse(sc, seed, plan=plan, record_profile=True)


def test_bigger_batch_rolls_back_faster(rollout: Scenario) -> None:
    times = [duration(step_of(run_rollout(rollout, batch=b), "revert-app")) for b in (1, 2, 4)]
    assert times[0] > times[1] > times[2], times
    # batch 1 replaces 4 replicas one at a time: about twice as long as two at a time
    assert times[0] > 1.7 * times[1]


def test_bigger_batch_costs_capacity_near_load(rollout: Scenario) -> None:
    """250 rps on 4 x 100: batch 1 leaves 0.83 utilisation, batch 2 sheds, batch 4 is down."""
    runs = {b: step_of(run_rollout(rollout, batch=b), "revert-app") for b in (1, 2, 4)}
    overload = {b: errors(s, "overload") for b, s in runs.items()}
    assert overload[1] == 0.0
    assert 0.0 < overload[2] < overload[4], overload
    # the shed requests are failed requests of the step, beyond what the incident costs
    assert runs[2].span.failed_requests > runs[1].span.failed_requests
    # batch 4 takes every replica out of service at once: the step is an outage
    assert overload[4] == pytest.approx(runs[4].span.requests, rel=1e-6)


def test_bigger_batch_raises_latency_during_the_step(rollout: Scenario) -> None:
    p99 = {b: max(edge_profile(run_rollout(rollout, batch=b), "latency_p99_ms", "revert-app"))
           for b in (1, 2)}
    assert p99[2] > 2 * p99[1], p99


# --------------------------------------------------------------------------- drain

DRAINS = (0.0, 2.0, 5.0, 10.0, 30.0)  # phys_rollout: inflight_time 10s


def test_longer_drain_lengthens_the_rollback(rollout: Scenario) -> None:
    times = [duration(step_of(run_rollout(rollout, drain=d), "revert-app")) for d in DRAINS]
    assert all(a < b for a, b in zip(times, times[1:])), times
    # four batches of one replica: each waits for its drain
    assert times[-1] - times[0] == pytest.approx(4 * (DRAINS[-1] - DRAINS[0]), rel=1e-6)


def test_longer_drain_drops_fewer_inflight_requests(rollout: Scenario) -> None:
    dropped = [errors(step_of(run_rollout(rollout, drain=d), "revert-app"), "dropped")
               for d in DRAINS]
    short = [d for d, drain in zip(dropped, DRAINS) if drain < 10.0]
    assert all(x > 0 for x in short), dropped
    assert all(a > b for a, b in zip(short, short[1:])), dropped
    # a drain at least as long as the in-flight time drops nothing
    assert dropped[DRAINS.index(10.0)] == 0.0
    assert dropped[DRAINS.index(30.0)] == 0.0


# --------------------------------------------------------------------------- scale

def test_scaling_first_keeps_latency_down_during_the_rollback(rollout: Scenario) -> None:
    # batch 1 leaves 3 replicas (6 servers) at 0.83: they queue, 8 replicas hardly; batch 2
    # leaves 2 at 1.25: overloaded, served after a full queue timeout
    for batch, factor in ((1, 0.9), (2, 0.5)):
        bare = run_rollout(rollout, batch=batch)
        scaled = run_rollout(rollout, batch=batch, scale=8)
        assert (max(edge_profile(scaled, "latency_p99_ms", "revert-app"))
                < factor * max(edge_profile(bare, "latency_p99_ms", "revert-app")))
        assert errors(step_of(scaled, "revert-app"), "overload") == 0.0
    # batch 2 without headroom sheds; with 8 replicas the same batch does not
    bare2 = step_of(run_rollout(rollout, batch=2), "revert-app")
    scaled2 = step_of(run_rollout(rollout, batch=2, scale=8), "revert-app")
    assert errors(bare2, "overload") > 0.0
    assert scaled2.span.failed_requests < bare2.span.failed_requests


def test_scaled_replicas_are_ready_only_after_startup(rollout: Scenario) -> None:
    r = run_rollout(rollout, batch=1, scale=8)
    scale = step_of(r, "scale-app")
    startup = rollout.deployment.services[0].startup
    assert 0.6 * startup < duration(scale) < 1.6 * startup  # startup with jitter
    # no extra capacity while the new replicas start: utilisation unchanged during the step
    p = r.profile
    assert p is not None
    cpu = [v for v, c, s in zip(p["cpu"], p["component"], p["step"])
           if c == "app" and s == "scale-app"]
    assert max(cpu) - min(cpu) < 0.1
    after = [v for v, c, s in zip(p["cpu"], p["component"], p["step"])
             if c == "app" and s == "revert-app"]
    assert max(after) < min(cpu)


# --------------------------------------------------------------------------- compatibility

@pytest.fixture(scope="module")
def compat() -> Scenario:
    return scenario("phys_compat")


def run_compat(sc: Scenario, *, pause: float | None = None, online: bool = True,
               batch: int = 2, seed: int = 0) -> Rehearsal:
    return rehearse(sc, seed, plan=[
        ("revert-app", {"batch": batch, "drain": 1.0}),
        ("pause", None if pause is None else {"duration": pause}),
        ("migrate-db-down", {"online": online})])


def compatible(tmp_path: Path) -> Scenario:
    text = (SCENARIOS / "phys_compat.yaml").read_text()
    assert "backward_compatible: false" in text
    return from_text(tmp_path, text.replace("backward_compatible: false",
                                            "backward_compatible: true"))


def test_compatibility_window_grows_with_the_gap(compat: Scenario) -> None:
    """v1 cannot run on schema 8: the longer migrate_down waits, the more requests fail."""
    runs = [run_compat(compat, pause=p) for p in (None, 30.0, 120.0, 300.0)]
    failed = [r.errors_by_source.get("compatibility", 0.0) for r in runs]
    assert failed[0] > 0.0
    assert all(a < b for a, b in zip(failed, failed[1:])), failed
    # the pause itself is the window: nearly every request in it fails on v1 + schema 8
    pause = step_of(runs[-1], "pause")
    assert errors(pause, "compatibility") > 0.9 * pause.span.requests
    assert set(pause.span.errors_by_source) == {"compatibility"}


def test_compatibility_window_depends_on_batching(compat: Scenario) -> None:
    """Replacing one replica at a time puts v1 on schema 8 while the rest still roll."""
    one = step_of(run_compat(compat, batch=1), "revert-app")
    two = step_of(run_compat(compat, batch=2), "revert-app")
    assert errors(one, "compatibility") > 0.0
    assert errors(two, "compatibility") == 0.0  # all at once: no v1 serves before the end


def test_backward_compatible_migration_has_no_window(tmp_path: Path) -> None:
    r = run_compat(compatible(tmp_path), pause=300.0)
    assert r.errors_by_source.get("compatibility", 0.0) == 0.0
    assert r.outcome == "recovered"


def test_migrate_down_before_the_app_rollback_breaks_the_live_app(tmp_path: Path) -> None:
    """The other direction of the window: v2 cannot run on schema 7."""
    text = (SCENARIOS / "phys_compat.yaml").read_text()
    sc = from_text(tmp_path, text.replace("after: [revert-app]\n      settings: {online",
                                          "settings: {online"))
    r = rehearse(sc, 0, plan=[("migrate-db-down", {"online": False}),
                              ("revert-app", {"batch": 1, "drain": 1.0}), ("pause", None)])
    assert errors(step_of(r, "revert-app"), "compatibility") > 0.0
    assert r.verify_end_s > step_of(r, "revert-app").end_s


def test_offline_migration_locks_writes_online_is_slower(tmp_path: Path) -> None:
    compat = compatible(tmp_path)  # no compatibility errors to share the failed requests
    offline = step_of(run_compat(compat, online=False), "migrate-db-down")
    online = step_of(run_compat(compat, online=True), "migrate-db-down")
    wf = compat.deployment.traffic.write_fraction
    # every write fails while the tables are locked, and only writes
    assert errors(offline, "write_lock") == pytest.approx(wf * offline.span.requests, rel=1e-6)
    assert offline.span.failed_requests == pytest.approx(errors(offline, "write_lock"))
    assert errors(online, "write_lock") == 0.0
    assert online.span.failed_requests == 0.0
    factor = compat.deployment.datastores[0].migration.online_factor  # type: ignore[union-attr]
    assert duration(online) == pytest.approx(factor * duration(offline), rel=1e-6)


def test_online_migration_loads_the_datastore(tmp_path: Path) -> None:
    compat = compatible(tmp_path)
    r = rehearse(compat, 0, record_profile=True, plan=[
        ("revert-app", {"batch": 2, "drain": 1.0}), ("pause", {"duration": 30.0}),
        ("migrate-db-down", {"online": True})])
    p = r.profile
    assert p is not None

    def db_cpu(step: str) -> list[float]:
        return [v for v, c, s in zip(p["cpu"], p["component"], p["step"])
                if c == "db" and s == step]

    assert min(db_cpu("migrate-db-down")) > max(db_cpu("pause"))


# --------------------------------------------------------------------------- causes

def test_irreversible_migration_fails_migrate_down() -> None:
    sc = scenario("irreversible")
    r = rehearse(sc, 0)
    mig = step_of(r, "migrate-db-down")
    assert mig.status == "failed"
    assert "irreversible" in mig.message
    assert r.outcome == "rollback_failed"
    failed = [a for a in r.alerts if a.kind == "rollback_failed"]
    assert len(failed) == 1
    assert failed[0].severity == "critical"
    assert failed[0].step == "migrate-db-down"
    assert "migrate-db-down" in failed[0].message


def test_external_cause_is_not_fixed_by_the_procedure() -> None:
    sc = scenario("external")
    r = rehearse(sc, 0)
    assert [s.status for s in r.steps] == ["ok"]
    assert r.outcome == "rollback_ineffective"
    alert = next(a for a in r.alerts if a.kind == "rollback_ineffective")
    assert alert.severity == "critical"
    assert r.verify_end_s == pytest.approx(r.breach.at_s + sc.procedure.verify.timeout)
    assert r.downtime_s == pytest.approx(sc.procedure.verify.timeout, abs=1.0)


CAUSES_FIX = {  # phys_causes.yaml: incident -> the only step that removes its cause
    "bad-version": "rollback-app",
    "bad-config": "revert-app-config",
    "bad-flag": "disable-beta",
    "bad-schema": "migrate-db-down",
    "bad-cmd": "fix-cmd",
    "outage": None,
}


@pytest.fixture(scope="module")
def causes() -> Scenario:
    return scenario("phys_causes")


@pytest.mark.parametrize("incident", list(CAUSES_FIX))
def test_each_cause_is_removed_only_by_its_step(causes: Scenario, incident: str) -> None:
    names = [s.name for s in causes.procedure.steps]
    assert set(CAUSES_FIX.values()) - {None} <= set(names)
    for name in names:
        step = causes.procedure.step(name)
        plan = [(n, step.default_settings() if n == name else None) for n in names]
        r = rehearse(causes, 0, incident=incident, plan=plan)
        fixes = CAUSES_FIX[incident] == name
        assert r.outcome == ("recovered" if fixes else "rollback_ineffective"), (incident, name)
        if not fixes:
            assert any(a.kind == "rollback_ineffective" for a in r.alerts)


def test_external_cause_survives_every_step(causes: Scenario) -> None:
    r = rehearse(causes, 0, incident="outage")
    assert all(s.status == "ok" for s in r.steps)
    assert r.outcome == "rollback_ineffective"
    assert r.errors_by_source.get("incident", 0.0) > 0.0


def test_version_cause_fades_with_replicas_on_previous(rollout: Scenario) -> None:
    r = run_rollout(rollout, batch=1)
    err = edge_profile(r, "error_rate", "revert-app")
    levels = sorted({round(e, 4) for e in err}, reverse=True)
    # One replica at a time out of 4: 3 serve while the 4th restarts, and the next leaves as
    # soon as one is ready, so the faulty share of serving replicas steps 3/3, 2/3, 1/3, 0/3.
    assert levels == pytest.approx([0.1, 0.2 / 3, 0.1 / 3, 0.0], abs=2e-4)
    assert all(a >= b - 1e-12 for a, b in zip(err, err[1:]))


# --------------------------------------------------------------------------- cache

def test_warm_cache_recovers_faster_than_natural_warmup() -> None:
    sc = scenario("phys_cache")
    plan: list[tuple[str, dict[str, Any] | None]] = [
        ("revert-app", {"batch": 2, "drain": 1.0}), ("flush-cache", {})]
    natural = rehearse(sc, 0, plan=[*plan, ("warm-cache", None)])
    warmed = rehearse(sc, 0, plan=[*plan, ("warm-cache", {})])
    warmup = sc.deployment.caches[0].warmup
    assert duration(step_of(warmed, "warm-cache")) <= warmup / 4 + 5.0
    assert warmed.downtime_s < natural.downtime_s
    assert warmed.errors_by_source.get("overload", 0.0) < natural.errors_by_source["overload"]


def test_flush_cache_sends_misses_to_the_datastore() -> None:
    sc = scenario("phys_cache")
    sh = SimShadow(sc)
    start_incident(sh, DeviationSimulator(sc), 0)
    warm = sh.sample().components["db"].rps
    sh.run_step(sc.procedure.step("flush-cache"), {})
    cold = sh.sample().components["db"].rps
    edge = sh.sample().edge.rps
    assert cold == pytest.approx(edge, rel=1e-6)  # every read misses
    assert warm < 0.4 * cold


# --------------------------------------------------------------------------- determinism

DETERMINISM = ["minimal", "phys_rollout", "phys_compat", "phys_cache", "irreversible"]


def _dump(r: Rehearsal) -> str:
    return json.dumps(r.to_json(), sort_keys=True)


@pytest.mark.parametrize("name", ENVS)
def test_same_seed_same_rehearsal_envs(name: str) -> None:
    sc = load_scenario(ROOT / "envs" / f"{name}.yaml")
    assert _dump(rehearse(sc, 3)) == _dump(rehearse(sc, 3))
    assert _dump(rehearse(sc, 3)) == _dump(rehearse(load_scenario(ROOT / "envs" /
                                                                  f"{name}.yaml"), 3))


@pytest.mark.parametrize("name", DETERMINISM)
def test_same_seed_same_rehearsal(name: str) -> None:
    sc = scenario(name)
    first = rehearse(sc, 11)
    assert _dump(first) == _dump(rehearse(sc, 11))
    assert first.errors_by_source == rehearse(sc, 11).errors_by_source


@pytest.mark.parametrize("name", ["checkout", "payments"])
def test_different_seeds_differ(name: str) -> None:
    sc = load_scenario(ROOT / "envs" / f"{name}.yaml")
    runs = []
    for seed in range(5):
        data = rehearse(sc, seed).to_json()
        data.pop("seed")
        runs.append(json.dumps(data, sort_keys=True))
    assert len(set(runs)) == len(runs)


def test_different_seeds_change_jitter_with_the_same_incident(rollout: Scenario) -> None:
    durations = {round(duration(step_of(run_rollout(rollout, seed=s), "revert-app")), 6)
                 for s in range(4)}
    assert len(durations) == 4


def _at_breach(sc: Scenario, seed: int, incident: str | None = None) -> SimShadow:
    sh = SimShadow(sc)
    start_incident(sh, DeviationSimulator(sc), seed, incident)
    return sh


@pytest.mark.parametrize("name", ["checkout", "payments"])
def test_snapshot_restore_replays_a_step_exactly(name: str) -> None:
    sc = load_scenario(ROOT / "envs" / f"{name}.yaml")
    sh = _at_breach(sc, 2)
    for step in sc.procedure.steps:
        snap = sh.snapshot()
        t = sh.now()
        first = sh.run_step(step, step.default_settings())
        sh.restore(snap)
        assert sh.now() == t
        again = sh.run_step(step, step.default_settings())
        assert again.span == first.span, step.name
        assert again.status == first.status
        # leave the shadow after the step, so the next one starts from a new state


def test_snapshot_is_independent_of_later_steps(rollout: Scenario) -> None:
    sh = _at_breach(rollout, 0)
    snap = sh.snapshot()
    revert = rollout.procedure.step("revert-app")
    first = sh.run_step(revert, {"batch": 1, "drain": 0.0})
    sh.run_step(revert, {"batch": 4, "drain": 0.0})  # mutate further
    sh.restore(snap)
    assert sh.run_step(revert, {"batch": 1, "drain": 0.0}).span == first.span
    # restoring twice from one snapshot works: the snapshot itself was not mutated
    sh.restore(snap)
    assert sh.run_step(revert, {"batch": 1, "drain": 0.0}).span == first.span


def test_restore_after_observing_gives_the_snapshot_state() -> None:
    """The env's pattern: run a step, observe (metrics), restore, observe again."""
    sc = scenario("minimal")
    sh = SimShadow(sc)
    sh.launch(0)
    sh.inject(Injection("bad-release", "version", "app", None,
                        (ActiveEffect("error_rate", "app", add=0.1),), onset_s=60.0))
    assert run_until_breach(sh, 600) is not None
    snap = sh.snapshot()
    before = sh.sample().components["app"].cpu
    scale = Step(name="scale-app", action="scale", target="app")
    sh.run_step(scale, {"replicas": 4})
    assert sh.sample().components["app"].cpu < 0.75 * before  # twice the replicas
    sh.restore(snap)
    assert sh.sample().components["app"].cpu == before


def test_restore_after_observing_replays_the_step() -> None:
    sc = load_scenario(ROOT / "envs" / "checkout.yaml")
    sh = _at_breach(sc, 0, "new-checkout-flag")
    step = sc.procedure.step("disable-new-checkout")
    snap = sh.snapshot()
    first = sh.run_step(step, step.default_settings())
    sh.sample()
    sh.restore(snap)
    assert sh.run_step(step, step.default_settings()).span == first.span


PROFILE_TOTALS = [
    "minimal", "phys_rollout", "phys_compat", "irreversible",
    "phys_cache",
    pytest.param(ROOT / "envs" / "payments.yaml", id="payments"),
    pytest.param(ROOT / "envs" / "checkout.yaml", id="checkout"),
]


@pytest.mark.parametrize("name", PROFILE_TOTALS)
def test_profile_totals_equal_the_fast_path(name: str | Path) -> None:
    sc = load_scenario(name) if isinstance(name, Path) else scenario(name)
    for seed in (0, 1):
        fast = rehearse(sc, seed)
        slow = rehearse(sc, seed, record_profile=True)
        assert fast.profile is None and slow.profile is not None
        assert slow.downtime_s == pytest.approx(fast.downtime_s, rel=1e-6, abs=1e-9)
        assert slow.failed_requests == pytest.approx(fast.failed_requests, rel=1e-6, abs=1e-9)
        for a, b in zip(fast.steps, slow.steps):
            assert b.span.downtime_s == pytest.approx(a.span.downtime_s, rel=1e-6, abs=1e-9)
            assert b.end_s == pytest.approx(a.end_s, rel=1e-9)


def test_profile_has_every_component_and_the_edge() -> None:
    sc = load_scenario(ROOT / "envs" / "checkout.yaml")
    r = rehearse(sc, 0, record_profile=True)
    p = r.profile
    assert p is not None
    lengths = {k: len(v) for k, v in p.items()}
    assert len(set(lengths.values())) == 1, lengths
    per_component = Counter(p["component"])
    assert set(per_component) == {"edge", *sc.components()}
    assert len(set(per_component.values())) == 1
    seconds = math.ceil(r.verify_end_s)
    assert per_component["edge"] >= seconds
    assert min(p["t"]) == 0.0 and max(p["t"]) < r.verify_end_s
    phases = set(p["phase"])
    assert {"incident", "rollback", "verify"} <= phases
    assert {s.name for s in sc.procedure.steps} <= set(p["step"])


@pytest.mark.parametrize("name", ["minimal"])
def test_profile_has_one_row_per_second_per_component(name: str) -> None:
    sc = scenario(name)
    r = rehearse(sc, 0, record_profile=True)
    p = r.profile
    assert p is not None
    seconds = math.ceil(r.verify_end_s)
    for comp in ("edge", *sc.components()):
        ts = [t for t, c in zip(p["t"], p["component"]) if c == comp]
        assert ts == [float(k) for k in range(seconds)], comp


# --------------------------------------------------------------------------- breach

BREACH_YAML = """\
apiVersion: shadowrl/v1
kind: Scenario
metadata: {name: breach}
deployment:
  traffic: {rps: 100}
  services:
    - {name: app, replicas: 2, capacity_rps: 100, version: {live: v2, previous: v1}}
slo:
  interval: 10s
  rules:
    - {name: errors, metric: error_rate, above: 0.01, for: FOR}
incidents:
  - name: outage
    cause: {kind: external}
    effects: [{metric: error_rate, target: app, add: 0.2}]
procedure:
  name: breach
  steps:
    - {name: revert-app, action: rollback_version, target: app}
"""


def breach_shadow(tmp_path: Path, for_: str, onset: float,
                  shape: tuple[float, ...] | None = None) -> SimShadow:
    sc = from_text(tmp_path, BREACH_YAML.replace("FOR", for_), f"breach-{for_}.yaml")
    sh = SimShadow(sc)
    sh.launch(0)
    effect = ActiveEffect("error_rate", "app", add=0.2, shape=shape, shape_step_s=5.0)
    sh.inject(Injection("outage", "external", None, None, (effect,), onset_s=onset))
    return sh


@pytest.mark.parametrize("for_,for_s", [("0s", 0.0), ("10s", 10.0), ("25s", 25.0),
                                        ("30s", 30.0), ("1m", 60.0)])
@pytest.mark.parametrize("onset", [60.0, 63.0, 95.5, 119.9])
def test_breach_at_an_interval_tick_after_for(tmp_path: Path, for_: str, for_s: float,
                                              onset: float) -> None:
    sh = breach_shadow(tmp_path, for_, onset)
    breach = run_until_breach(sh, 1000.0)
    assert breach is not None
    assert breach.rules == ("errors",)
    interval = 10.0
    assert breach.at_s / interval == pytest.approx(round(breach.at_s / interval), abs=1e-9)
    assert breach.at_s >= onset + for_s - 1e-9
    # Prometheus: pending from the first tick that sees the violation, firing at the first
    # tick at least `for` later
    first_tick = math.ceil(onset / interval - 1e-9) * interval
    assert breach.at_s == pytest.approx(first_tick + math.ceil(for_s / interval) * interval)
    assert sh.now() == pytest.approx(breach.at_s)


@pytest.mark.parametrize("violated_s", [5.0, 20.0, 25.0])
def test_short_violation_never_fires(tmp_path: Path, violated_s: float) -> None:
    shape = (1.0,) * int(violated_s / 5.0) + (0.0,)
    sh = breach_shadow(tmp_path, "30s", 63.0, shape)
    assert run_until_breach(sh, 1000.0) is None
    assert sh.now() == pytest.approx(1000.0)


def test_long_enough_violation_fires(tmp_path: Path) -> None:
    shape = (1.0,) * 12 + (0.0,)  # violated from 63s to 123s: ticks 70..120
    sh = breach_shadow(tmp_path, "30s", 63.0, shape)
    breach = run_until_breach(sh, 1000.0)
    assert breach is not None and breach.at_s == pytest.approx(100.0)


def test_interrupted_violation_restarts_the_for_clock(tmp_path: Path) -> None:
    # violated 63-83s, clean 83-93s (tick 90 clean), violated again from 93s: ticks 100..
    shape = (1.0,) * 4 + (0.0,) * 2 + (1.0,)
    sh = breach_shadow(tmp_path, "30s", 63.0, shape)
    breach = run_until_breach(sh, 1000.0)
    assert breach is not None and breach.at_s == pytest.approx(130.0)


def test_no_incident_no_breach(tmp_path: Path) -> None:
    sc = from_text(tmp_path, BREACH_YAML.replace("FOR", "30s"))
    sh = SimShadow(sc)
    sh.launch(0)
    assert run_until_breach(sh, 3600.0) is None
    m = sh.sample()
    assert m.edge.error_rate == 0.0 and m.failing_rules == ()


# --------------------------------------------------------------------------- stopped steps


def test_a_step_ending_at_its_deadline_completes_unchanged() -> None:
    sc = load_scenario(ROOT / "envs" / "checkout.yaml")
    sh = _at_breach(sc, 2)
    for step in sc.procedure.steps:
        snap = sh.snapshot()
        free = sh.run_step(step, step.default_settings())
        sh.restore(snap)
        bound = sh.run_step(step, step.default_settings(), timeout_s=free.end_s - free.start_s)
        assert (bound.status, bound.span) == (free.status, free.span), step.name


def test_a_timed_out_migration_releases_its_lock_and_keeps_the_schema() -> None:
    sc = load_scenario(ROOT / "envs" / "checkout.yaml")
    sh = _at_breach(sc, 2)
    db = sh.topo.index["db"]
    step = sc.procedure.step("migrate-db-down")
    r = sh.run_step(step, {"online": False}, timeout_s=30.0)
    assert r.status == "timed_out" and r.end_s - r.start_s == pytest.approx(30.0)
    assert errors(r, "write_lock") > 0  # writes failed while it ran
    # the migration process is gone: no lock, and the schema never reached the previous one
    assert not any(sh.state.locked) and not sh.state.schema_prev[db]
    after = sh.advance(60.0)
    assert after.errors_by_source.get("write_lock", 0.0) == 0.0


def test_a_timed_out_rollout_leaves_the_replicas_it_took_out() -> None:
    sc = load_scenario(ROOT / "envs" / "checkout.yaml")
    sh = _at_breach(sc, 2)
    web = sh.topo.index["web"]
    ready = sum(sh.state.buckets[web])
    step = sc.procedure.step("revert-web")
    r = sh.run_step(step, {"batch": 3, "drain": 30.0}, timeout_s=10.0)  # inside the drain
    assert r.status == "timed_out"
    assert sum(sh.state.buckets[web]) == ready - 3
    sh.advance(600.0)  # nothing brings them back
    assert sum(sh.state.buckets[web]) == ready - 3


# --------------------------------------------------------------------------- edge scope

EDGE_SCOPE_YAML = """\
apiVersion: shadowrl/v1
kind: Scenario
metadata: {name: edge-scope}
deployment:
  traffic: {rps: 100}
  services:
    - {name: front, edge: true, replicas: 2, capacity_rps: 100, calls: [back],
       version: {live: v2, previous: v1}}
    - {name: back, replicas: 2, capacity_rps: 100}
slo:
  interval: 10s
  rules:
    - {name: back-errors, metric: error_rate, scope: back, above: 0.01, for: 30s}
    - {name: edge-errors, metric: error_rate, scope: edge, above: 0.01, for: 30s}
    - {name: front-errors, metric: error_rate, scope: front, above: 0.5, for: 30s}
incidents:
  - name: bad-front
    cause: {kind: version, target: front}
    effects: [{metric: error_rate, target: front, add: 0.1}]
procedure:
  name: edge-scope
  steps:
    - {name: revert-front, action: rollback_version, target: front}
"""


def test_an_edge_services_own_errors_fire_the_edge_scope_rule(tmp_path: Path) -> None:
    """``scope: edge`` is the edge view (no component may be called ``edge``): the edge
    service ``front`` failing 10 % of its own requests fires it, not the ``back`` rule."""
    sc = from_text(tmp_path, EDGE_SCOPE_YAML)
    r = rehearse(sc, 0)
    assert r.breach.rules == ("edge-errors",)
    sh = _at_breach(sc, 0)
    m = sh.sample()
    assert m.edge.error_rate == pytest.approx(0.1) == m.components["front"].error_rate
    assert m.components["back"].error_rate == 0.0
    assert m.failing_rules == ("edge-errors",)


# --------------------------------------------------------------------------- queueing

def test_a_busy_service_rehearses_without_a_baseline_breach() -> None:
    """10 replicas at 87 %: M/M/c with 50 servers keeps the p99 far below the SLO, so the
    SLO holds until the incident and every rehearsal breaches on the incident's errors."""
    sc = scenario("busy")
    sh = SimShadow(sc)
    sh.launch(0)
    assert run_until_breach(sh, 3600.0) is None  # an hour of noisy load, no incident
    m = sh.sample()
    assert m.components["app"].cpu == pytest.approx(0.87, abs=0.05)
    assert m.edge.latency_p99_ms < 0.5 * 800
    for seed in range(6):
        r = rehearse(sc, seed)
        assert r.breach.at_s >= r.injection.onset_s, seed
        assert r.breach.rules == ("errors",), seed
        before = r.breach.before
        assert before is not None and before.errors_by_source.get("overload", 0.0) == 0.0
        assert r.outcome == "recovered", seed


def test_bad_requests_are_failed_ones_without_a_latency_rule() -> None:
    sc = scenario("minimal")  # one error_rate rule: no latency threshold
    r = rehearse(sc, 0)
    assert r.failed_requests > 0
    for s in r.steps:
        assert s.span.bad_requests == pytest.approx(s.span.failed_requests, rel=1e-12)
    assert r.breach.before is not None
    assert r.breach.before.bad_requests == pytest.approx(r.breach.before.failed_requests,
                                                         rel=1e-12)


def test_bad_requests_count_slow_ones_with_a_latency_rule(rollout: Scenario) -> None:
    """phys_rollout's p99 rule (300 ms) is the threshold: batch 2 overloads the app, whose
    served requests then wait a full queue timeout and are all slow."""
    for batch in (1, 2):
        span = step_of(run_rollout(rollout, batch=batch), "revert-app").span
        assert span.bad_requests >= span.failed_requests
        if batch == 2:
            assert span.bad_requests > 1.5 * span.failed_requests
    r = run_rollout(rollout, batch=2)
    total = sum(s.span.bad_requests for s in r.steps)
    assert total == pytest.approx(sum(s.span.bad_requests for s in r.steps))


# --------------------------------------------------------------------------- exact segments


def test_cache_warmth_does_not_depend_on_how_time_is_cut() -> None:
    """Warmth is a closed form of the time since the flush, stepped every effect quantum
    from it: moving one second at a time or in one go shows the same warmth and rates."""
    sc = scenario("phys_cache")
    coarse, fine = SimShadow(sc), SimShadow(sc)
    for sh in (coarse, fine):
        sh.launch(0)
        sh.advance(37.3)  # the flush lands between quanta
        sh.run_step(sc.procedure.step("flush-cache"), {})
    cache = coarse.topo.index["cache"]
    quantum = coarse.params.quantum_s
    flushed = coarse.now()
    warmup = sc.deployment.caches[0].warmup
    for t in range(1, 150):
        fine.advance(1.0)
        coarse.advance(float(t) - (coarse.now() - flushed))
        assert fine.now() == pytest.approx(coarse.now())
        expected = min(1.0, (t // quantum) * quantum / warmup)
        assert fine.state.warmth[cache] == pytest.approx(expected, abs=1e-12), t
        assert coarse.state.warmth[cache] == fine.state.warmth[cache], t
        assert coarse.sample().components["db"] == fine.sample().components["db"], t
    assert fine.state.warmth[cache] == 1.0


def test_effect_quanta_start_where_their_segment_starts(tmp_path: Path) -> None:
    """A ramp's quantum boundary computed in floating point (onset + k * quantum) starts the
    segment that carries the ramp's next level, with no lag: sampled at any time, the rates
    equal the ones the fast path integrates from the segment holding that time."""
    sc = from_text(tmp_path, BREACH_YAML.replace("FOR", "30s"))
    onset = 60.1 + 1e-9 * 3  # boundaries onset + 5k are not exact in binary
    eff = ActiveEffect("error_rate", "app", add=0.2, ramp_s=60.0)
    fast, probe = SimShadow(sc), SimShadow(sc)
    for sh in (fast, probe):
        sh.launch(0)
        sh.inject(Injection("outage", "external", None, None, (eff,), onset_s=onset))
    segments: list[tuple[float, float, float]] = []
    fast.advance_until(200.0, lambda t0, t1, flags: segments.append(
        (t0, t1, fast.sample().edge.error_rate)) and None)
    for t0, t1, err in segments:
        for t in (t0, (t0 + t1) / 2):
            probe.advance(t - probe.now())
            assert probe.sample().edge.error_rate == err, (t0, t)

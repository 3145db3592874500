"""The simulator's limits (docs/scenario-format.md, The simulator's limits): a horizon of
shadow time and a work budget per trajectory, so no valid scenario runs for long; and a data
file the simulator reads reported as bad input, not a traceback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shadowrl.core.spec import Scenario, SpecError, Step, load_scenario
from shadowrl.rehearsal.deviation import DeviationSimulator
from shadowrl.rehearsal.runner import rehearse, start_incident
from shadowrl.shadow.sim import engine
from shadowrl.shadow.sim.engine import MAX_SHADOW_S, SimShadow, SimulationLimitExceeded

ROOT = Path(__file__).resolve().parents[2]
ENVS = ["checkout", "payments", "search"]

# one service of 10000 replicas rolled back one at a time, each round an hour and more:
# valid, and about 10000 hours of shadow time without the horizon
SLOW_ROLLOUT = """\
apiVersion: shadowrl/v1
kind: Scenario
metadata: {name: slow}
deployment:
  traffic: {rps: 100}
  services:
    - {name: app, replicas: 10000, capacity_rps: 1, startup: 1h, inflight_time: 1h,
       version: {live: v2, previous: v1}}
slo:
  rules:
    - {name: errors, metric: error_rate, above: 0.01, for: 30s}
incidents:
  - name: bad-release
    cause: {kind: version, target: app}
    effects: [{metric: error_rate, target: app, add: 0.5}]
procedure:
  name: slow-rollback
  steps:
    - {name: revert-app, action: rollback_version, target: app,
       settings: {batch: 1, drain: 1h}}
    - {name: after, action: wait, settings: {duration: 1s}}
  verify: {hold: 1m, timeout: 1d}
"""


def from_text(tmp_path: Path, text: str) -> Scenario:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return load_scenario(path)


def test_a_step_past_the_horizon_is_stopped_there(tmp_path: Path) -> None:
    sc = from_text(tmp_path, SLOW_ROLLOUT)
    started = time.perf_counter()
    r = rehearse(sc, 0)
    elapsed = time.perf_counter() - started
    revert, after = r.steps
    assert revert.status == "timed_out"
    assert revert.end_s == pytest.approx(MAX_SHADOW_S)
    assert "simulator's horizon (48h of shadow time since launch)" in revert.message
    assert after.status == "skipped"
    assert r.outcome == "rollback_failed"
    assert elapsed < 5.0, f"{elapsed:.1f}s to simulate up to the horizon"


def test_time_past_the_horizon_outside_a_step_is_bad_input(tmp_path: Path) -> None:
    sc = from_text(tmp_path, SLOW_ROLLOUT)
    sh = SimShadow(sc)
    sh.launch(0)
    sh.advance(MAX_SHADOW_S - 10.0)
    with pytest.raises(SimulationLimitExceeded) as info:
        sh.advance(20.0)
    assert isinstance(info.value, SpecError)
    assert str(info.value).startswith(f"{tmp_path / 'scenario.yaml'}:1: too much to simulate: ")
    assert sh.now() == pytest.approx(MAX_SHADOW_S - 10.0)  # nothing was integrated


def test_a_step_stops_when_the_work_budget_runs_out(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sc = load_scenario(ROOT / "tests" / "scenarios" / "minimal.yaml")
    sh = SimShadow(sc)
    start_incident(sh, DeviationSimulator(sc), 0)
    spent = sh.state.work
    assert spent > 0
    # room for a few segments of steps only
    monkeypatch.setattr(engine, "STEPS_WORK", spent + 3 * sh._segment_work)
    wait = Step.model_validate({"name": "w", "action": "wait", "settings": {"duration": 3600}})
    result = sh.run_step(wait, {"duration": 3600.0})
    assert result.status == "timed_out"
    assert "work budget for steps" in result.message
    assert result.span.end_s - result.span.start_s < 3600.0
    # the verification still has the rest of the budget; past it, it is bad input
    monkeypatch.setattr(engine, "MAX_WORK", sh.state.work + 2 * sh._segment_work)
    with pytest.raises(SimulationLimitExceeded, match="work budget"):
        sh.advance(3600.0)


def test_work_is_counted_per_trajectory(tmp_path: Path) -> None:
    """A restored snapshot restores the work spent: search branches are limited one by one,
    and the state key (transpositions) ignores it."""
    sc = load_scenario(ROOT / "envs" / "checkout.yaml")
    sh = SimShadow(sc)
    start_incident(sh, DeviationSimulator(sc), 1)
    snap, key, spent = sh.snapshot(), sh.state_key(), sh.state.work
    sh.advance(600.0)
    assert sh.state.work > spent
    sh.restore(snap)
    assert sh.state.work == spent and sh.state_key() == key


@pytest.mark.parametrize("name", ENVS)
def test_shipped_scenarios_are_far_from_the_limits(name: str) -> None:
    """The limits never change a shipped scenario's rehearsal (the goldens stay valid)."""
    sc = load_scenario(ROOT / "envs" / f"{name}.yaml")
    spent: list[float] = []

    class Probe(SimShadow):
        def close(self) -> None:
            spent.append(self.state.work)
            super().close()

    for seed in range(3):
        r = rehearse(sc, seed, record_profile=True,
                     backend_factory=lambda s: Probe(s, record_profile=True))
        assert spent[-1] < engine.STEPS_WORK / 5, (seed, spent[-1])
        assert r.verify_end_s < MAX_SHADOW_S / 4
        assert all(s.status != "timed_out" for s in r.steps)


def test_a_bad_csv_pattern_is_bad_input_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "rps.csv").write_text("timestamp,value\nnoon,5\n")
    text = SLOW_ROLLOUT.replace("traffic: {rps: 100}",
                                "traffic: {rps: 100, pattern: {csv: rps.csv}}")
    sc = from_text(tmp_path, text)  # it exists: the loader does not read it
    with pytest.raises(SpecError) as info:
        SimShadow(sc)
    (problem,) = info.value.problems
    assert problem.file == str(tmp_path / "scenario.yaml") and problem.line == 5
    assert problem.path == "deployment.traffic.pattern.csv"
    assert problem.message.startswith(f"{tmp_path / 'rps.csv'}:2: ")

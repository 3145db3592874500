"""Identification experiments, on the simulator (the real shadow runs them in
tests/shadow/docker/test_calibrate.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shadowrl.calibration.experiments import (
    attempt_of,
    load_only,
    load_sweep,
    plan_from_json,
    plan_to_json,
    random_plan,
    rehearsal_record,
)
from shadowrl.calibration.fit import rehearsal_error
from shadowrl.core.plan import validate_plan
from shadowrl.core.spec import Scenario, load_scenario
from shadowrl.rehearsal.deviation import DeviationSimulator
from shadowrl.shadow.sim.engine import SimShadow
from shadowrl.shadow.sim.params import SimParams

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkout() -> Scenario:
    return load_scenario(ROOT / "envs" / "checkout.yaml")


def test_random_plans_are_valid_and_vary_order_settings_and_skips(checkout: Scenario) -> None:
    rng = np.random.default_rng(0)
    plans = [random_plan(checkout.procedure, rng) for _ in range(40)]
    for plan in plans:
        validate_plan(checkout.procedure, plan)
        names = [n for n, _ in plan]
        # the `after` chain holds in every order
        assert names.index("revert-orders") < names.index("migrate-db-down") < names.index(
            "flush-cache")
    assert len({tuple(n for n, _ in p) for p in plans}) > 5
    batches = {dict(p)["revert-web"]["batch"] for p in plans}
    assert len(batches) >= 3
    assert any(dict(p)["warm-cache"] is None for p in plans)
    assert plan_from_json(plan_to_json(plans[0])) == plans[0]


def test_a_load_only_injection_never_starts_its_incident(checkout: Scenario) -> None:
    inj = load_only(checkout, 1.3)
    assert inj.load_multiplier == 1.3 and inj.effects == () and inj.onset_s > 1e8


def test_the_sweep_sees_latency_grow_with_load_and_overload_at_the_top(
        checkout: Scenario) -> None:
    with SimShadow(checkout) as shadow:
        shadow.launch(0)
        rows = load_sweep(shadow, checkout, [0.5, 1.0, 1.45, 1.7], settle_s=60, windows=3)
    web = {r["load"]: r for r in rows if r["component"] == "web"}
    assert web[0.5]["rps"] == pytest.approx(200, rel=0.1)
    assert web[1.0]["rps"] == pytest.approx(400, rel=0.1)
    assert web[0.5]["p99_ms"] <= web[1.0]["p99_ms"] < web[1.45]["p99_ms"]
    assert web[1.7]["error_rate"] > 0  # 680 rps on 600 of capacity sheds
    assert {r["component"] for r in rows} == set(checkout.components())


def test_a_rehearsal_record_carries_the_plan_facts_and_steps(checkout: Scenario) -> None:
    plan = random_plan(checkout.procedure, np.random.default_rng(3))
    rec = rehearsal_record(checkout, 5, plan, "sim")
    assert rec["plan"] == plan_to_json(plan)
    assert rec["timings"] == []  # the simulator times nothing it did not model
    ran = [n for n, s in plan if s is not None]
    assert [s["name"] for s in rec["steps"]] == ran
    assert rec["facts"]["incident"] in [i.name for i in checkout.incidents]
    assert rec["facts"]["steps"] == {s["name"]: round(s["seconds"], 1) for s in rec["steps"]}
    assert rehearsal_record(checkout, 5, plan, "sim")["facts"] == rec["facts"]  # same seed


def test_a_replay_starts_from_the_draw_the_real_shadow_breached_on(checkout: Scenario) -> None:
    """A real shadow may redraw (its healthy noise breached before the onset) where the
    simulator would not: the simulator then replays that draw, not the seed's first."""
    plan = random_plan(checkout.procedure, np.random.default_rng(4))
    first = rehearsal_record(checkout, 9, plan, "sim")
    later = rehearsal_record(checkout, 9, plan, "sim", first_attempt=2)
    assert first["attempt"] == 0 and later["attempt"] >= 2
    drawn = DeviationSimulator(checkout).draw(9, None, later["attempt"])
    assert (later["facts"]["incident"], later["facts"]["magnitude"]) == (
        drawn.incident, round(drawn.magnitude, 4))
    assert later["facts"] != first["facts"]
    assert attempt_of(checkout, later) == later["attempt"]
    # records written before the attempt was: found by the incident and magnitude drawn
    assert attempt_of(checkout, {k: v for k, v in later.items() if k != "attempt"}) == (
        later["attempt"])
    _, sims = rehearsal_error(checkout, SimParams(), [later])
    assert sims[0]["attempt"] == later["attempt"]
    assert {k: sims[0]["facts"][k] for k in ("incident", "magnitude", "breach_at_s")} == {
        k: later["facts"][k] for k in ("incident", "magnitude", "breach_at_s")}

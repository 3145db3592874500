"""The fit recovers parameters it is shown: "real" data here comes from a simulator with
known, changed parameters, so every fitted value has a ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shadowrl.calibration import fit
from shadowrl.calibration.experiments import random_plan, rehearsal_record
from shadowrl.core.spec import Scenario, load_scenario
from shadowrl.shadow.sim.params import ComponentParams, SimParams, attach_params

ROOT = Path(__file__).resolve().parents[2]
LEVELS = [0.4, 0.7, 1.0, 1.3]


@pytest.fixture(scope="module")
def checkout() -> Scenario:
    return load_scenario(ROOT / "envs" / "checkout.yaml")


def test_the_queueing_fit_recovers_service_time_and_concurrency(checkout: Scenario) -> None:
    truth = SimParams(components={
        "web": ComponentParams(latency=0.07, concurrency=2, capacity=100),
        "db": ComponentParams(latency=0.012, concurrency=4, capacity=260)})
    real = fit.sim_sweep(checkout, truth, LEVELS)
    params, report = fit.fit_queueing(checkout, real)
    web, db = report["components"]["web"], report["components"]["db"]
    assert web["fitted"]["concurrency"] == 2
    assert web["fitted"]["latency_s"] == pytest.approx(0.07, rel=0.1)
    lo, hi = web["ci95"]["latency_s"]
    assert lo <= 0.07 <= hi
    assert db["fitted"]["latency_s"] == pytest.approx(0.012, rel=0.15)
    assert web["rss"] < web["rss_at_scenario"]
    assert params.components["web"].concurrency == 2
    # orders was left at the scenario's values and is found there
    orders = report["components"]["orders"]
    assert orders["fitted"]["latency_s"] == pytest.approx(0.03, rel=0.15)


def test_too_few_healthy_levels_skip_the_queueing_fit(checkout: Scenario) -> None:
    real = fit.sim_sweep(checkout, SimParams(), [1.0])
    params, report = fit.fit_queueing(checkout, real)
    assert params == SimParams() and "skipped" in report


def test_mechanics_come_from_the_real_timings_and_steps(checkout: Scenario) -> None:
    records = [
        {"timings": [["startup", "web", 30.0], ["startup", "web", 34.0],
                     ["startup", "orders", 50.0], ["stop", "web", 1.0],
                     ["stop", "orders", 1.4], ["migration_offline", "db", 96.0]],
         "steps": [{"action": "disable_flag", "status": "ok", "seconds": 0.2},
                   {"action": "flush_cache", "status": "ok", "seconds": 0.4}]},
        {"timings": [["startup", "web", 32.0], ["migration_online", "db", 384.0]],
         "steps": [{"action": "disable_flag", "status": "ok", "seconds": 0.4},
                   {"action": "flush_cache", "status": "failed", "seconds": 9.0}]},
    ]
    params, report = fit.fit_mechanics(checkout, records, SimParams())
    assert params.components["web"].startup == pytest.approx(32.0)
    assert params.components["orders"].startup == pytest.approx(50.0)
    assert params.stop_s == pytest.approx(1.2)
    assert params.drop_impulse_s <= params.stop_s
    assert params.components["db"].migration_duration == pytest.approx(96.0)
    assert params.components["db"].online_factor == pytest.approx(4.0)
    assert params.flag_toggle_s == pytest.approx(0.3)
    assert params.action_s == pytest.approx(0.4)  # the failed flush is not a duration
    assert params.jitter_sigma == pytest.approx(np.log([30, 34, 32]).std(ddof=1), rel=1e-3)
    assert report["timings"]["startup:web"]["n"] == 3


def test_the_rehearsal_fit_finds_the_latency_of_an_overloaded_component(
        checkout: Scenario) -> None:
    """On the "real" side an overloaded component answers after 0.5 s, not 2 s: fewer
    requests cross the SLO's latency bar. The fit finds the queue timeout from whole
    rehearsals of random procedures, and the error falls to nothing."""
    # the "real" shadow judges its SLO by sparse samples, as the fit assumes it does
    truth = SimParams(queue_timeout_s=0.5, observed_share=fit.observed_share(checkout))
    real_sc = attach_params(checkout, truth)
    rng = np.random.default_rng(7)
    records = [rehearsal_record(real_sc, 20 + i, random_plan(checkout.procedure, rng), "sim")
               for i in range(4)]
    fitted, report = fit.fit_rehearsals(checkout, SimParams(), records)
    assert report["error_before"] > 0.01
    assert report["chosen"]["queue_timeout_s"] == 0.5
    assert report["error_after"] < report["error_before"] / 10
    assert fitted.queue_timeout_s == 0.5
    assert fitted.observed_share == 0.0  # how the real shadow sees, not the physics


def test_the_real_shadow_window_is_the_one_the_fit_assumes() -> None:
    from shadowrl.shadow.docker.backend import WINDOW_S

    assert fit.REAL_WINDOW_S == WINDOW_S

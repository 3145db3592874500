"""Surge: rolling back with replacements started beside the old replicas (maxSurge).

``tests/scenarios/busy.yaml``: 10 replicas at 87 % utilisation, ``max_surge: 2``. Each test
compares runs of the same step on the same seed, differing in ``batch``/``surge`` only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from shadowrl.core.spec import Scenario, SpecError, load_scenario
from shadowrl.rehearsal.runner import rehearse
from shadowrl.shadow.sim.engine import SimShadow
from shadowrl.shadow.sim.params import SimParams

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


@pytest.fixture(scope="module")
def busy() -> Scenario:
    return load_scenario(SCENARIOS / "busy.yaml")


class Watched(SimShadow):
    """Records the target's ready and running replicas at every state change."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.ready: list[float] = []
        self.running: list[float] = []

    def _touch(self) -> None:
        super()._touch()
        if self.state.buckets:
            self.ready.append(sum(self.state.buckets[0]))
            self.running.append(sum(self.state.buckets[0]) + self.state.pending[0])


def rollback(sc: Scenario, batch: int, surge: int, *, drain: float = 10.0,
             params: SimParams | None = None, seed: int = 3) -> tuple[Watched, Any]:
    sh = Watched(sc, params=params)
    sh.launch(seed)
    sh.advance(30.0)
    sh.ready.clear()
    sh.running.clear()
    step = sc.procedure.step("revert-app")
    result = sh.run_step(step, {"batch": batch, "drain": drain, "surge": surge})
    assert result.status == "ok"
    return sh, result


@pytest.mark.parametrize(("batch", "surge"), [(1, 1), (2, 2), (1, 2)])
def test_surge_at_least_batch_never_drops_capacity(busy: Scenario, batch: int,
                                                   surge: int) -> None:
    sh, result = rollback(busy, batch, surge)
    replicas = busy.deployment.services[0].replicas
    assert min(sh.ready) == replicas  # never fewer ready replicas than before
    assert max(sh.running) == replicas + surge  # the surge runs beside them
    assert result.span.errors_by_source.get("overload", 0.0) == 0.0
    b = sh.state.buckets[0]
    assert (b[2] + b[3], b[0] + b[1]) == (replicas, 0.0)  # all on the previous version


@pytest.mark.parametrize(("batch", "surge", "low"), [(1, 0, 9), (2, 0, 8), (2, 1, 9)])
def test_without_enough_surge_the_uncovered_part_leaves_service(
        busy: Scenario, batch: int, surge: int, low: int) -> None:
    sh, _ = rollback(busy, batch, surge)
    assert min(sh.ready) == low  # maxUnavailable = batch - surge
    assert max(sh.running) == busy.deployment.services[0].replicas + surge


@pytest.mark.parametrize(("batch", "surge"), [(1, 1), (2, 2), (1, 2), (2, 1)])
def test_a_round_takes_startup_drain_and_stop(busy: Scenario, batch: int, surge: int) -> None:
    p = SimParams(jitter_sigma=0.0)
    svc = busy.deployment.services[0]
    _, result = rollback(busy, batch, surge, drain=7.0, params=p)
    rounds = math.ceil(svc.replicas / max(batch, surge))
    assert result.end_s - result.start_s == pytest.approx(
        rounds * (svc.startup + 7.0 + p.stop_s), rel=1e-9)


def test_jitter_is_drawn_per_round_as_per_batch(busy: Scenario) -> None:
    """Round k uses the startup jitter of batch k: surge = batch costs exactly the time the
    same batches cost without surge."""
    for batch in (1, 2):
        _, bare = rollback(busy, batch, 0)
        _, surged = rollback(busy, batch, batch)
        assert surged.end_s - surged.start_s == pytest.approx(bare.end_s - bare.start_s,
                                                              rel=1e-9)


def test_surge_spares_the_busy_service_its_overload(busy: Scenario) -> None:
    """One replica out at 87 % leaves 0.97 on the rest: requests queue (slow, hence bad for
    the error budget) and noisy minutes overload it. Summed over seeds, as a quiet seed may
    stay under capacity."""
    totals = {}
    for surge in (0, 1):
        failed = bad = overload = 0.0
        for seed in range(6):
            r = rehearse(busy, seed, plan=[("revert-app", {"batch": 1, "drain": 10.0,
                                                           "surge": surge})])
            span = next(s for s in r.steps if s.name == "revert-app").span
            failed += span.failed_requests
            bad += span.bad_requests
            overload += span.errors_by_source.get("overload", 0.0)
        totals[surge] = (failed, bad, overload)
    (failed, bad, overload), (failed_s, bad_s, overload_s) = totals[0], totals[1]
    assert overload > 0 and bad > 3 * failed
    assert overload_s == 0.0 and bad_s == pytest.approx(failed_s, rel=1e-4)  # hardly slow
    assert bad_s < bad / 3


def test_surge_replicas_show_in_the_profile(busy: Scenario) -> None:
    r = rehearse(busy, 0, record_profile=True,
                 plan=[("revert-app", {"batch": 1, "drain": 10.0, "surge": 2})])
    p = r.profile
    assert p is not None
    during = [n for n, c, s in zip(p["replicas"], p["component"], p["step"])
              if c == "app" and s == "revert-app"]
    before = [n for n, c, ph in zip(p["replicas"], p["component"], p["phase"])
              if c == "app" and ph == "normal"]
    assert set(before) == {10.0} and max(during) == 12.0
    edge = [n for n, c, s in zip(p["replicas"], p["component"], p["step"])
            if c == "edge" and s == "revert-app"]
    assert edge == during  # the edge row is the edge service's


SURGE_YAML = (SCENARIOS / "busy.yaml").read_text()


def test_surge_above_max_surge_is_a_file_line_error(tmp_path: Path) -> None:
    text = SURGE_YAML.replace("surge: {choices: [0, 1, 2], default: 1}",
                              "surge: {choices: [0, 3], default: 0}")
    path = tmp_path / "busy.yaml"
    path.write_text(text)
    line = text.splitlines().index(
        "        surge: {choices: [0, 3], default: 0}") + 1
    with pytest.raises(SpecError) as err:
        load_scenario(path)
    assert str(err.value) == (
        f"{path}:{line}: procedure.steps[0].settings.surge: surge 3 exceeds max_surge 2 of "
        f"'app' (room for at most 2 extra replicas)")
    path.write_text(text.replace("      max_surge: 2              # room for two extra pods\n",
                                 ""))
    with pytest.raises(SpecError, match=r"busy.yaml:\d+: procedure.steps\[0\].settings.surge: "
                                        r"surge 3 exceeds max_surge 0"):
        load_scenario(path)

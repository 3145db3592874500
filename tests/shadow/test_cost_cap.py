"""shadowrl.shadow.base.CostCapping on the simulator: a step stops once what it simulated
costs more than the cap, and a cap it never reaches changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shadowrl.core.spec import Step
from shadowrl.rl.env import RollbackEnv
from shadowrl.shadow.base import CostCapping, CostCapReached, CostWeights

ROOT = Path(__file__).resolve().parents[2]
SEARCH = ROOT / "envs" / "search.yaml"


@pytest.fixture(scope="module")
def env() -> RollbackEnv:
    return RollbackEnv(SEARCH)


def _slow_rollback(env: RollbackEnv) -> int:
    """The backend's rollback one replica at a time: an hour and more of shadow time."""
    return next(a for a, (i, settings) in enumerate(env.actions)
                if env.steps[i].name == "revert-backend" and settings is not None
                and settings["batch"] == 1)


def test_the_simulator_can_cap_costs(env: RollbackEnv) -> None:
    assert isinstance(env.shadow, CostCapping)


def _step(env: RollbackEnv, action: int) -> tuple[Step, dict[str, Any]]:
    i, settings = env.actions[action]
    assert settings is not None
    return env.steps[i], settings


def test_a_step_stops_soon_after_its_cost_passes_the_cap(env: RollbackEnv) -> None:
    env.reset(seed=3)
    shadow = env.shadow
    snap = shadow.snapshot()
    step, settings = _step(env, _slow_rollback(env))
    whole = shadow.run_step(step, settings, timeout_s=step.timeout)
    full_cost = env.cost_weights().of(whole.span)
    assert full_cost > 0
    shadow.restore(snap)
    limit = full_cost / 10
    with pytest.raises(CostCapReached) as stopped:
        with shadow.cost_cap(env.cost_weights(), limit):
            shadow.run_step(step, settings, timeout_s=step.timeout)
    assert limit < stopped.value.spent < full_cost / 2
    # stopped early in shadow time too: that is where the saving is
    assert shadow.now() - whole.span.start_s < (whole.span.end_s - whole.span.start_s) / 2


def test_a_cap_never_reached_changes_nothing(env: RollbackEnv) -> None:
    env.reset(seed=3)
    shadow = env.shadow
    a = _slow_rollback(env)
    _, free, *_ = env.step(a)
    free_state = shadow.state_key()
    env.reset(seed=3)
    with shadow.cost_cap(env.cost_weights(), -free * 1.001):
        _, capped, *_ = env.step(a)
    assert capped == free
    assert shadow.state_key() == free_state


def test_a_cap_covers_everything_simulated_in_its_block(env: RollbackEnv) -> None:
    """Two steps in one block: the second stops once both together pass the cap, though
    neither alone would."""
    first = next(a for a, (i, s) in enumerate(env.actions)
                 if env.steps[i].name == "scale-backend" and s == {"replicas": 64})
    env.reset(seed=5)
    costs = [-env.step(a)[1] for a in (first, _slow_rollback(env))]
    assert min(costs) > 0
    limit = (max(costs) + sum(costs)) / 2  # above each, below both
    env.reset(seed=5)
    with pytest.raises(CostCapReached):
        with env.shadow.cost_cap(env.cost_weights(), limit):
            for a in (first, _slow_rollback(env)):
                env.step(a)


def test_bad_requests_are_capped_as_spans_count_them(env: RollbackEnv) -> None:
    """Failed and bad requests are summed apart and the larger sum charged, as Span.bad
    does: a cap on failed requests alone is a cap on the larger of the two."""
    weights = CostWeights(bad_requests=1.0)
    env.reset(seed=3)
    shadow = env.shadow
    step, settings = _step(env, _slow_rollback(env))
    with pytest.raises(CostCapReached) as stopped:
        with shadow.cost_cap(weights, 1.0):  # one bad request
            shadow.run_step(step, settings, timeout_s=step.timeout)
    assert stopped.value.spent > 1.0


def test_cost_cap_blocks_do_not_nest(env: RollbackEnv) -> None:
    env.reset(seed=0)
    with env.shadow.cost_cap(CostWeights(downtime_s=1.0), 10.0):
        with pytest.raises(RuntimeError, match="nest"):
            with env.shadow.cost_cap(CostWeights(downtime_s=1.0), 10.0):
                pass

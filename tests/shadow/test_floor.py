"""shadowrl.shadow.base.CostFloor on the simulator: what an incident no step can fix is sure
to cost is never more than what the rest of an episode costs, whatever runs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from shadowrl.core.spec import load_scenario
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.search import cost_floor
from shadowrl.shadow.base import CostFloor
from shadowrl.shadow.sim.floor import edge_error_floor

ROOT = Path(__file__).resolve().parents[2]
CHAIN = ROOT / "tests" / "scenarios" / "floor_chain.yaml"
CHECKOUT = ROOT / "envs" / "checkout.yaml"


def _composed_edge_error(sheds: list[float], extra: list[float], u: float, c: float) -> float:
    """The edge error as the simulator composes it (``SimShadow._assemble``) for a chain of
    callers with shed shares ``sheds`` (their errors ``shed + extra``, at most 1) above a
    component failing ``u`` of its requests, behind a cache passing on ``c``."""
    survive, reach = 1.0, 1.0
    for s, x in zip(sheds, extra):
        err = min(1.0, 1.0 - (1.0 - s) * (1.0 - x))
        survive *= 1.0 - err * reach
        reach *= 1.0 - s
    return 1.0 - survive * (1.0 - u * reach * c)


@pytest.mark.parametrize("callers", [0, 1, 2, 3, 4])
def test_the_edge_error_floor_holds_for_any_shedding_along_the_chain(callers: int) -> None:
    rng = np.random.default_rng(callers)
    worst = np.inf
    grid = [0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.8, 1.0]
    cases = [list(g) for g in itertools.product(grid, repeat=callers)] if callers <= 3 else []
    cases += [list(rng.uniform(0, 1, callers) ** 2) for _ in range(3000)]
    for sheds in cases:
        for u in (0.05, 0.3, 1 / 3, 0.45, 0.5, 0.7, 1.0):
            c_min = 0.4
            floor = edge_error_floor(u * c_min, callers)
            for c, extra in ((c_min, [0.0] * callers), (1.0, [0.0] * callers),
                             (c_min, list(rng.uniform(0, 0.3, callers)))):
                got = _composed_edge_error(sheds, extra, u, c)
                assert got >= floor - 1e-12, (sheds, u, c, got, floor)
                worst = min(worst, got - floor)
    # and the floor is tight: some shedding comes within a hair of it
    assert worst < 0.02


def test_the_floor_is_what_the_depth_allows_and_no_more() -> None:
    # up to a 1/2 share no shedding hides any of it; above, shedding upstream hides part,
    # and more behind two callers than behind one
    assert edge_error_floor(0.5, 1) == edge_error_floor(0.5, 4) == pytest.approx(0.5)
    assert edge_error_floor(0.8, 2) < edge_error_floor(0.8, 1) < 0.8
    behind_two = min(_composed_edge_error([a, b], [0.0, 0.0], 0.8, 1.0)
                     for a in np.linspace(0, 1, 41) for b in np.linspace(0, 1, 41))
    assert edge_error_floor(0.8, 2) <= behind_two < edge_error_floor(0.8, 1)


def _incident_seeds(env: RollbackEnv, incidents: set[str], n: int) -> list[int]:
    seeds = []
    for seed in range(500):
        _, info = env.reset(seed=seed)
        if info["incident"] in incidents:
            seeds.append(seed)
            if len(seeds) == n:
                break
    return seeds


@pytest.mark.parametrize("path, incidents", [
    (CHAIN, {"leaf-provider-outage", "db-provider-outage"}),
    (CHECKOUT, {"payment-provider-outage"}),
])
def test_the_floor_never_exceeds_what_the_rest_of_an_episode_costs(
        path: Path, incidents: set[str]) -> None:
    env = RollbackEnv(path)
    assert isinstance(env.shadow, CostFloor)
    rng = np.random.default_rng(7)
    slack = []
    for seed in _incident_seeds(env, incidents, 6):
        for _episode in range(6):
            env.reset(seed=seed)
            floor = cost_floor(env)
            floors, spent = [floor(env.shadow.now())], [0.0]
            assert floors[0] > 0  # the outage is unfixable: some cost is sure
            done = False
            while not done:
                a = int(rng.choice(np.flatnonzero(env.action_masks())))
                _, reward, done, _, _ = env.step(a)
                spent.append(spent[-1] - reward)
                floors.append(0.0 if done else floor(env.shadow.now()))
            for before, f in zip(spent, floors):
                rest = spent[-1] - before
                assert f <= rest + 1e-9, (path.name, seed, f, rest)
                if f > 0:
                    slack.append(f / rest)
    # a bound worth having: most of what is left is proven unavoidable
    assert np.median(slack) > 0.5


def test_a_fixable_incident_has_no_floor() -> None:
    env = RollbackEnv(CHAIN)
    for seed in _incident_seeds(env, {"bad-mid-release"}, 3):
        env.reset(seed=seed)
        assert cost_floor(env)(env.shadow.now()) == 0.0


def test_a_command_step_that_may_fix_the_outage_takes_the_floor_away(tmp_path: Path) -> None:
    text = CHAIN.read_text().replace("  verify:", """    - name: fail-over
      action: command
      optional: true
      run: [./failover.sh]
      sim: {duration: 20s, fixes: [leaf-provider-outage]}
  verify:""")
    fixable = tmp_path / "fixable.yaml"
    fixable.write_text(text)
    load_scenario(fixable)
    env = RollbackEnv(fixable)
    leaf, db = (_incident_seeds(env, {name}, 1)[0]
                for name in ("leaf-provider-outage", "db-provider-outage"))
    env.reset(seed=leaf)
    assert cost_floor(env)(env.shadow.now()) == 0.0
    env.reset(seed=db)  # the command fixes only the other outage
    assert cost_floor(env)(env.shadow.now()) > 0.0

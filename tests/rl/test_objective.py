"""The optimisation objective: error budget burn by default, downtime on request, and a
full-outage penalty that changes which plan the optimizers choose."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowrl.core.plan import configured_plan
from shadowrl.core.spec import Scenario, load_scenario
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.evaluate import evaluate
from shadowrl.rl.policy import StaticPolicy, configured_policy
from shadowrl.rl.search import GreedyPolicy, best_static, episode_cost

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"

# Rolling back all 4 replicas at once is a ~28 s full outage; one at a time keeps 3 serving
# but lets the bad release fail 90 % of the rest for ~90 s. On budget burn alone the outage is
# cheaper; a team that dislikes total outages says so with full_outage_penalty.
OUTAGE = """\
apiVersion: shadowrl/v1
kind: Scenario
metadata: {name: outage}
deployment:
  traffic: {rps: 200}
  services:
    - {name: app, replicas: 4, capacity_rps: 100, latency: 20ms, startup: 20s,
       inflight_time: 10s, version: {live: v2, previous: v1}}
slo:
  rules:
    - {name: errors, metric: error_rate, above: 0.01, for: 30s}
incidents:
  - name: bad-release
    cause: {kind: version, target: app}
    effects: [{metric: error_rate, target: app, add: 0.9}]
procedure:
  name: outage-rollback
  steps:
    - name: revert-app
      action: rollback_version
      target: app
      settings: {batch: {choices: [1, 4], default: 1}, drain: 10s}
  verify: {hold: 1m, timeout: 30m}
"""


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    path = tmp_path_factory.mktemp("outage") / "outage.yaml"
    path.write_text(OUTAGE)
    return load_scenario(path)


def test_the_objective_switch_changes_the_reward() -> None:
    budget = RollbackEnv(CHECKOUT)  # the default
    downtime = RollbackEnv(CHECKOUT, objective="downtime")
    assert budget.objective == "budget" and downtime.objective == "downtime"
    runs = {}
    for name, env in (("budget", budget), ("downtime", downtime)):
        [episode] = evaluate(env, configured_policy(env), 1, 3)
        runs[name] = episode
    b, d = runs["budget"], runs["downtime"]
    assert b.actions == d.actions  # the same plan on the same incident...
    assert b.rehearsal.to_json() == d.rehearsal.to_json()
    assert b.cost != pytest.approx(d.cost)  # ...costs differently
    r = b.rehearsal
    assert b.cost == pytest.approx(100.0 * r.budget_burn, rel=1e-9)  # percent of the budget
    assert d.cost == pytest.approx(downtime.cost_of(r.downtime_s, r.failed_requests), rel=1e-9)
    assert episode_cost(r, budget) == pytest.approx(b.cost, rel=1e-9)
    with pytest.raises(ValueError, match="objective must be one of"):
        RollbackEnv(CHECKOUT, objective="latency")
    with pytest.raises(ValueError, match="full_outage_penalty"):
        RollbackEnv(CHECKOUT, full_outage_penalty=-1.0)


def test_budget_reward_prefers_partial_degradation_per_request(outage: Scenario) -> None:
    """On budget burn each second costs the share of users it fails: a full outage costs
    more per second than the partial one, although both are downtime alike."""
    env = RollbackEnv(outage)
    gentle, = evaluate(env, StaticPolicy([("revert-app", {"batch": 1, "drain": 10.0})]), 1, 0)
    total, = evaluate(env, StaticPolicy([("revert-app", {"batch": 4, "drain": 10.0})]), 1, 0)
    assert total.rehearsal.outage_s > 20.0 and gentle.rehearsal.outage_s == 0.0
    per_second = [e.cost / e.rehearsal.downtime_s for e in (gentle, total)]
    assert per_second[1] > per_second[0]


@pytest.mark.parametrize("objective", ["budget", "downtime"])
def test_full_outage_penalty_changes_the_chosen_plan(outage: Scenario, objective: str) -> None:
    seeds = [1, 2, 3]
    plain = RollbackEnv(outage, objective=objective)
    found = best_static(plain, seeds)
    assert found.method == "exhaustive"
    assert found.plan == [("revert-app", {"batch": 4, "drain": 10.0})]  # all at once
    # a second of full outage costs 0.05 % of the budget (or 0.05 min) more: now too dear
    averse = RollbackEnv(outage, objective=objective, full_outage_penalty=0.05)
    careful = best_static(averse, seeds)
    assert careful.plan == [("revert-app", {"batch": 1, "drain": 10.0})]
    assert careful.train_cost > found.train_cost
    # greedy (and so the oracle, on a one-step procedure) agrees, incident by incident
    for env, batch in ((plain, 4), (averse, 1)):
        episode, = evaluate(env, GreedyPolicy(), 1, seeds[0])
        assert env.actions[episode.actions[0]][1]["batch"] == batch
        if batch == 1:
            assert episode.rehearsal.outage_s == 0.0
    # the penalty is what it says: cost per second of full outage
    total, = evaluate(averse, StaticPolicy(found.plan), 1, seeds[0])
    base, = evaluate(plain, StaticPolicy(found.plan), 1, seeds[0])
    assert total.cost == pytest.approx(base.cost + 0.05 * total.rehearsal.outage_s, rel=1e-9)


def test_configured_plan_runs_under_both_objectives(outage: Scenario) -> None:
    plan = configured_plan(outage.procedure)
    for objective in ("budget", "downtime"):
        env = RollbackEnv(outage, objective=objective)
        episodes = evaluate(env, StaticPolicy(plan), 2, 0)
        assert all(e.cost > 0 for e in episodes)
        assert all(e.rehearsal.budget_burn > 0 for e in episodes)


def test_agent_config_env_block_checks_the_objective() -> None:
    from shadowrl.core.spec import SpecError
    from shadowrl.rl.agents import agent_config_from_data

    ok = agent_config_from_data({"env": {"objective": "downtime", "full_outage_penalty": 0.5}})
    assert ok.env == {"objective": "downtime", "full_outage_penalty": 0.5}
    for env, path in (({"objective": "uptime"}, "env.objective"),
                      ({"full_outage_penalty": -1}, "env.full_outage_penalty"),
                      ({"full_outage_penalty": "lots"}, "env.full_outage_penalty")):
        with pytest.raises(SpecError) as info:
            agent_config_from_data({"env": env})
        assert [p.path for p in info.value.problems] == [path], env


@pytest.mark.parametrize("objective", ["budget", "downtime"])
def test_the_cost_weights_are_the_objective(outage: Scenario, objective: str) -> None:
    """A backend capping a branch's cost reads the objective as weights: they must give what
    the env charges, the full-outage penalty included."""
    from shadowrl.core.results import Span

    env = RollbackEnv(outage, objective=objective, full_outage_penalty=0.5)
    env.reset(seed=0)
    weights = env.cost_weights()
    spans = [Span(0.0, 60.0, downtime_s=40.0, failed_requests=900.0, bad_requests=1500.0,
                  outage_s=12.0),
             # a backend that counts no slow requests: failed ones are the bad ones
             Span(0.0, 60.0, downtime_s=5.0, failed_requests=300.0, outage_s=0.0)]
    for span in spans:
        assert weights.of(span) == pytest.approx(env._cost(span), rel=1e-12)
        assert env._cost(span) > 0

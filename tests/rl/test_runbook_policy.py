"""shadowrl.rl.runbook_policy and ``evaluate --policy RUNBOOK.yaml``: the branch is chosen
from what is seen at the breach, then its procedure runs as a procedure file would."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from shadowrl.app.evaluate import resolve_policy
from shadowrl.cli.main import app
from shadowrl.core.runbook import load_runbook
from shadowrl.core.spec import procedure_file_data, procedure_to_data
from shadowrl.rl.evaluate import run_episode
from shadowrl.rl.runbook_policy import RunbookPolicy, observe

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
SEED, EPISODES = 10000, 8  # seeds 10000..10007: every branch applies to at least one
WEB = {"component": "web", "metric": "error_rate", "above": 0.05}
DB = {"component": "db", "metric": "latency_ratio", "above": 1.5}


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def with_settings(proc: dict[str, Any], order: list[str] | None = None,
                  **defaults: dict[str, Any]) -> dict[str, Any]:
    """The procedure data with some steps' settings fixed (and the steps reordered)."""
    steps = []
    for step in proc["steps"]:
        step = dict(step)
        if step["name"] in defaults:
            step["settings"] = {**step.get("settings", {}), **defaults[step["name"]]}
        steps.append(step)
    if order is not None:
        steps.sort(key=lambda s: order.index(s["name"]))
    return {**proc, "steps": steps}


@pytest.fixture(scope="module")
def procedures(checkout) -> dict[str, dict[str, Any]]:
    """Three different checkout procedures: a fast web rollback, orders first, configured."""
    base = procedure_to_data(checkout.procedure)
    web = with_settings(base, **{"scale-web": {"replicas": 12},
                                 "revert-web": {"batch": 3, "drain": "10s"}})
    web["steps"] = [s for s in web["steps"] if s["name"] != "warm-cache"]  # skipped
    orders = with_settings(
        base, order=["revert-orders", "migrate-db-down", "flush-cache", "warm-cache",
                     "disable-new-checkout", "scale-web", "revert-web"],
        **{"revert-orders": {"batch": 2, "drain": "10s"}, "migrate-db-down": {"online": True}})
    return {"web-release": web, "orders-release": orders, "default": base}


@pytest.fixture(scope="module")
def book_file(tmp_path_factory, procedures) -> Path:
    data = {"apiVersion": "shadowrl/v1", "kind": "Runbook",
            "metadata": {"name": "checkout-runbook", "scenario": "checkout"},
            "branches": [
                {"name": "web-release", "when": [WEB, {"rule": "edge-errors", "firing": True}],
                 "procedure": procedures["web-release"]},
                {"name": "orders-release", "when": [DB], "procedure": procedures[
                    "orders-release"]}],
            "default": {"procedure": procedures["default"]}}
    path = tmp_path_factory.mktemp("runbook") / "runbook.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def branch_files(tmp_path_factory, checkout, book_file) -> dict[str, Path]:
    """Each branch's procedure as a procedure file (what ``--policy PROC.yaml`` reads)."""
    book = load_runbook(book_file, checkout)
    folder = tmp_path_factory.mktemp("procedures")
    out = {}
    for name, proc in book.procedures().items():
        out[name] = folder / f"{name}.yaml"
        out[name].write_text(yaml.safe_dump(procedure_file_data(proc, "checkout"),
                                            sort_keys=False))
    return out


@pytest.fixture(scope="module")
def incidents(checkout) -> dict[int, tuple[str, Any]]:
    """Seed -> (incident, what is seen at its breach)."""
    from shadowrl.rl.env import RollbackEnv

    env = RollbackEnv(checkout)
    out = {}
    for seed in range(SEED, SEED + EPISODES):
        env.reset(seed=seed)
        assert env.injection is not None
        out[seed] = (env.injection.incident, observe(env))
    return out


def expected_branch(seen: Any) -> str:
    if seen.error_rate["web"] > 0.05 and "edge-errors" in seen.firing:
        return "web-release"
    if seen.latency_ratio["db"] > 1.5:
        return "orders-release"
    return "default"


def test_observe_at_the_breach(incidents, checkout) -> None:
    for incident, seen in incidents.values():
        assert set(seen.error_rate) == set(seen.latency_ratio) == {*checkout.components(),
                                                                   "edge"}
        assert seen.ran == frozenset()  # nothing has run at the breach
        assert seen.firing  # the SLO breached: some rule is violated
        if incident != "bad-web-release":
            assert seen.error_rate["web"] <= 0.05  # the web condition tells the incident
    assert {name for name, _ in incidents.values()} >= {"bad-web-release",
                                                         "bad-orders-release"}


def test_the_branch_matches_the_incident(checkout, book_file, incidents) -> None:
    from shadowrl.rl.env import RollbackEnv

    policy, proc = resolve_policy(str(book_file), checkout)
    assert isinstance(policy, RunbookPolicy) and proc is None
    env = RollbackEnv(checkout)
    chosen = {}
    for seed, (incident, seen) in incidents.items():
        env.reset(seed=seed)
        policy.reset(env)
        chosen[seed] = policy.branch
        assert policy.branch == expected_branch(seen), seed
        if policy.branch == "web-release":
            assert incident == "bad-web-release"
        if policy.branch == "orders-release":
            assert incident == "bad-orders-release"
    assert set(chosen.values()) == {"web-release", "orders-release", "default"}


def test_the_policy_plays_the_branch_procedure(checkout, book_file, incidents) -> None:
    """Episode by episode: the actions are the branch procedure's plan, the same costs as
    that procedure file run as a policy."""
    from shadowrl.core.plan import configured_plan
    from shadowrl.rl.env import RollbackEnv
    from shadowrl.rl.policy import StaticPolicy, actions_to_plan

    book = load_runbook(book_file, checkout)
    env = RollbackEnv(checkout)
    policy = RunbookPolicy(book)
    for seed, (_, seen) in incidents.items():
        episode = run_episode(env, policy, seed)
        name = expected_branch(seen)
        branch = book.procedures()[name]
        plan = actions_to_plan(env, episode.actions)
        listed = [s.name for s in branch.steps]
        assert [n for n, _ in plan][:len(listed)] == listed
        assert all(settings is None for _, settings in plan[len(listed):])  # skipped
        alone = RollbackEnv(checkout, procedure=branch)
        static = run_episode(alone, StaticPolicy(configured_plan(branch)), seed)
        assert episode.cost == pytest.approx(static.cost, abs=1e-9), (seed, name)
        assert episode.rehearsal.outcome == static.rehearsal.outcome


def test_evaluate_a_runbook_from_the_cli(book_file, branch_files, incidents) -> None:
    """``evaluate --policy runbook.yaml``: the mean of the costs of each seed's branch
    procedure, each evaluated as ``--policy PROC.yaml`` on its own seed."""
    result = run("evaluate", CHECKOUT, "--policy", book_file, "--episodes", EPISODES,
                 "--seed", SEED, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["policy"] == str(book_file) and summary["runs"] == EPISODES
    costs, downtimes = [], []
    for seed, (_, seen) in incidents.items():
        one = run("evaluate", CHECKOUT, "--policy", branch_files[expected_branch(seen)],
                  "--episodes", 1, "--seed", seed, "--json")
        assert one.exit_code == 0, one.stderr
        data = json.loads(one.stdout)
        costs.append(data["cost"]["mean"])
        downtimes.append(data["downtime_s"]["mean"])
    assert summary["cost"]["mean"] == pytest.approx(sum(costs) / EPISODES, abs=1e-3)
    assert summary["downtime_s"]["mean"] == pytest.approx(sum(downtimes) / EPISODES,
                                                          abs=1e-2)


def test_a_default_only_runbook_is_the_configured_procedure(tmp_path, checkout) -> None:
    data = {"apiVersion": "shadowrl/v1", "kind": "Runbook", "metadata": {"name": "plain"},
            "default": {"procedure": procedure_to_data(checkout.procedure)}}
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(data))
    ours = run("evaluate", CHECKOUT, "--policy", path, "--episodes", 5, "--json")
    configured = run("evaluate", CHECKOUT, "--policy", "configured", "--episodes", 5, "--json")
    assert ours.exit_code == configured.exit_code == 0, ours.stderr
    a, b = json.loads(ours.stdout), json.loads(configured.stdout)
    assert a.pop("policy") == str(path) and b.pop("policy") == "configured"
    assert a == b


def test_a_bad_runbook_exits_2_with_file_line_field(tmp_path, book_file) -> None:
    text = book_file.read_text().replace("rule: edge-errors", "rule: no-such-rule", 1)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "no-such-rule" in t)
    result = run("evaluate", CHECKOUT, "--policy", path, "--episodes", 1)
    assert result.exit_code == 2
    assert (f"{path}:{line}: branches[0].when[1].rule: unknown SLO rule 'no-such-rule'"
            in result.stderr)
    assert "Traceback" not in result.stderr


def test_a_runbook_policy_pickles(checkout, book_file) -> None:
    """Ray ships the policy to its workers."""
    from shadowrl.rl.env import RollbackEnv

    policy = RunbookPolicy(load_runbook(book_file, checkout))
    env = RollbackEnv(checkout)
    env.reset(seed=SEED)
    policy.reset(env)
    again = pickle.loads(pickle.dumps(policy))
    assert again.book == policy.book and again.name == "runbook:checkout-runbook"
    again.reset(env)
    assert again.branch == policy.branch


def test_observe_sees_every_metric_of_every_component_and_the_edge() -> None:
    from shadowrl.core.runbook import EDGE, METRICS
    from shadowrl.rl.env import RollbackEnv
    from shadowrl.rl.runbook_policy import observe

    env = RollbackEnv(CHECKOUT)
    env.reset(seed=3)
    seen = observe(env)
    components = {*env.scenario.components(), EDGE}
    for metric in METRICS:
        assert set(seen.metric(metric)) == components, metric
    assert seen.error_rate[EDGE] > 0 and seen.load_ratio[EDGE] > 0.3  # a breach, under load
    assert 0 <= min(seen.cpu.values()) and max(seen.cpu.values()) <= 1.5
    assert seen.firing and not seen.ran

"""The Rollback Optimization Engine through its commands: ``shadowrl optimize`` and
``shadowrl evaluate`` (docs/architecture.md, How data flows)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner, Result

from shadowrl.cli.main import app
from shadowrl.core.spec import load_procedure, load_scenario
from shadowrl.rl.optimizer import RL_METHODS, SEARCH_METHODS, methods_for
from shadowrl.rl.results import OptimizeResult

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
SUMMARY_KEYS = {"scenario", "policy", "runs", "outcomes", "downtime_s", "failed_requests",
                "bad_requests", "budget_burn", "outage_s", "peak_error_rate", "alerts",
                "steps"}  # the `rehearse --json` summary
STATS = {"mean", "p50", "p95", "max"}
OUTCOMES = {"recovered", "rollback_failed", "rollback_ineffective"}


def run(*args: Any) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def ok_json(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, (result.stderr, repr(result.exception))
    return json.loads(result.stdout)  # exactly one JSON object on stdout


def check_summary(summary: dict[str, Any], runs: int) -> None:
    assert SUMMARY_KEYS <= set(summary), sorted(SUMMARY_KEYS - set(summary))
    assert summary["scenario"] == "checkout"
    assert summary["runs"] == runs
    assert set(summary["outcomes"]) == OUTCOMES
    assert sum(summary["outcomes"].values()) == runs
    assert set(summary["downtime_s"]) == STATS and set(summary["failed_requests"]) == STATS
    assert set(summary["budget_burn"]) == STATS and set(summary["bad_requests"]) == STATS
    assert summary["downtime_s"]["mean"] <= summary["downtime_s"]["max"]


def test_methods_for() -> None:
    assert methods_for("search") == SEARCH_METHODS
    assert set(SEARCH_METHODS) == {"configured", "random", "greedy", "best_static", "oracle"}
    assert methods_for("rl") == RL_METHODS
    assert set(methods_for("all")) == set(SEARCH_METHODS) | {"rl"}
    with pytest.raises(ValueError, match="bogus"):
        methods_for("bogus")


# --------------------------------------------------------------------------- optimize search


@pytest.fixture(scope="module")
def search_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("optimize-search") / "out"
    result = run("optimize", CHECKOUT, "--method", "search", "--episodes", 4, "--trials", 10,
                 "--oracle-nodes", 500, "--out", out, "--json")
    return out, ok_json(result)


def test_optimize_search_json(search_run) -> None:
    out, data = search_run
    assert set(data["methods"]) == set(SEARCH_METHODS)
    for name, summary in data["methods"].items():
        check_summary(summary, 4)
        assert summary["policy"] == name
    assert data["episodes"] == 4 and data["eval_seed"] == 10_000
    assert data["policy"] is None  # no RL in --method search
    assert data["oracle"]["max_nodes"] == 500
    assert json.loads((out / "summary.json").read_text()) == data
    typed = OptimizeResult.model_validate(data)  # the typed result, keys and all
    assert typed.model_dump(mode="json") == data and typed.rl is None
    assert typed.search is not None and typed.search.plans >= 1
    # every method faced the same incidents, and the oracle started from the configured and
    # best static plans (and greedy), so on average it is no worse than they are
    cost = {name: s["cost"]["mean"] for name, s in data["methods"].items()}
    for name in ("configured", "greedy", "best_static"):
        assert cost["oracle"] <= cost[name] + 1e-4, cost
    assert cost["best_static"] < cost["configured"]


def test_optimize_search_files(search_run) -> None:
    out, data = search_run
    for key in ("procedure", "bottlenecks", "comparison"):
        assert Path(data[key]).is_file(), key
    assert Path(data["procedure"]) == out / "procedure.yaml"
    assert isinstance(json.loads((out / "bottlenecks.json").read_text()), dict)
    proc = load_procedure(out / "procedure.yaml", load_scenario(CHECKOUT))
    assert proc.name == "checkout-rollback-optimized"
    header = (out / "procedure.yaml").read_text().split("apiVersion")[0]
    best = data["methods"]["best_static"]["downtime_s"]["mean"]
    assert f"downtime mean {best:.0f}s" in header
    table, budget = (out / "comparison.md").read_text().split("## Error budget")
    for section in (table, budget):
        rows = re.findall(r"^\| (\w+) \|", section, flags=re.M)
        assert rows[0] == "method"
        assert sorted(rows[1:]) == sorted(SEARCH_METHODS)  # one row per method
    for name in SEARCH_METHODS:
        mean = data["methods"][name]["downtime_s"]["mean"]
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert row.split("|")[2].strip().startswith(f"{mean:.1f}")
        assert f"| {data['methods'][name]['outcomes']['recovered']}/4 |" in row
        burn = data["methods"][name]["budget_burn"]
        row = next(line for line in budget.splitlines() if line.startswith(f"| {name} |"))
        assert row.split("|")[2].strip().startswith(f"{burn['mean']:.3%}")
        assert row.split("|")[5].strip() == f"{burn['max']:.3%}"
    # per-incident results of every method, on the held-out seeds, for paired comparisons
    per_seed = json.loads(Path(data["episodes_file"]).read_text())
    assert per_seed["objective"] == data["objective"] == "budget"
    for name in SEARCH_METHODS:
        record = per_seed["methods"][name]
        assert record["seed"] == data["eval_seed"] and record["episodes"] == 4
        assert len(record["outcomes"]) == len(record["budget_burn"]) == 4
        assert np.mean(record["budget_burn"]) == pytest.approx(
            data["methods"][name]["budget_burn"]["mean"], abs=1e-8)


def test_optimized_procedure_rehearses(search_run) -> None:
    out, data = search_run
    summary = ok_json(run("rehearse", CHECKOUT, "--procedure", out / "procedure.yaml",
                          "--runs", 2, "--json"))
    check_summary(summary, 2)
    # the optimized procedure is the best static plan: same held-out numbers
    evaluated = ok_json(run("evaluate", CHECKOUT, "--policy", out / "procedure.yaml",
                            "--episodes", 4, "--json"))
    best = data["methods"]["best_static"]
    assert evaluated["downtime_s"] == best["downtime_s"]
    assert evaluated["outcomes"] == best["outcomes"]


# --------------------------------------------------------------------------- optimize rl


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("optimize-rl") / "out"
    result = run("optimize", CHECKOUT, "--method", "rl", "--timesteps", 512, "--episodes", 3,
                 "--out", out, "--json")
    return out, ok_json(result)


def test_optimize_rl_writes_a_policy(rl_run) -> None:
    out, data = rl_run
    assert set(data["methods"]) == set(RL_METHODS)
    assert data["policy"] == str(out / "policy.zip")
    assert (out / "policy.zip").is_file()
    assert data["rl"]["timesteps"] >= 512
    assert OptimizeResult.model_validate(data).model_dump(mode="json") == data
    assert "policy" not in data["rl"]  # trained here: the training facts, no given policy
    for summary in data["methods"].values():
        check_summary(summary, 3)
    evaluated = ok_json(run("evaluate", CHECKOUT, "--policy", out / "policy.zip",
                            "--episodes", 3, "--json"))
    check_summary(evaluated, 3)
    assert evaluated["policy"] == str(out / "policy.zip")
    rl = data["methods"]["rl"]  # the same seeds (10000..10002): the same numbers
    for key in ("outcomes", "downtime_s", "failed_requests", "cost"):
        assert evaluated[key] == rl[key], key


# --------------------------------------------------------------------------- bad input


def test_unknown_method_exits_2() -> None:
    result = run("optimize", CHECKOUT, "--method", "bogus", "--json")
    assert result.exit_code == 2
    assert "bogus" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("policy", ["nope.yaml", "nope.zip"])
def test_unknown_policy_exits_2(policy: str) -> None:
    result = run("evaluate", CHECKOUT, "--policy", policy, "--episodes", 2, "--json")
    assert result.exit_code == 2
    assert f"{policy}: no such policy" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- evaluate


def test_evaluate_configured_equals_rehearse() -> None:
    evaluated = ok_json(run("evaluate", CHECKOUT, "--policy", "configured", "--episodes", 5,
                            "--json"))
    rehearsed = ok_json(run("rehearse", CHECKOUT, "--runs", 5, "--seed", 10_000, "--json"))
    check_summary(evaluated, 5)
    for key in ("outcomes", "downtime_s", "failed_requests", "steps"):
        assert evaluated[key] == rehearsed[key], key
    assert evaluated["policy"] == rehearsed["policy"] == "configured"


@pytest.mark.parametrize("policy", ["random", "procedure", "policy"])
def test_evaluate_replicas_give_identical_json(policy: str, ray_local: Any, search_run,
                                               rl_run) -> None:
    spec = {"random": "random", "procedure": search_run[0] / "procedure.yaml",
            "policy": rl_run[0] / "policy.zip"}[policy]
    serial = run("evaluate", CHECKOUT, "--policy", spec, "--episodes", 4, "--replicas", 1,
                 "--json")
    fanned = run("evaluate", CHECKOUT, "--policy", spec, "--episodes", 4, "--replicas", 2,
                 "--json")
    ok_json(serial)
    ok_json(fanned)
    assert fanned.stdout == serial.stdout

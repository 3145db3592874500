"""The optimizer's outputs say what they describe: procedure.yaml without no-op steps and in
the scenario format's spelling, "What changed" about the procedure it sits beside, and
bottleneck advice measured against that procedure before it stands beside it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from shadowrl.analysis.summary import summarize
from shadowrl.core.plan import configured_plan, validate_plan
from shadowrl.core.spec import load_procedure
from shadowrl.export.sources import read_header
from shadowrl.rehearsal.runner import rehearse
from shadowrl.rl.optimizer import (
    OptimizeOptions,
    apply_proposal,
    describe_changes,
    noop_reasons,
    optimize,
    procedure_yaml,
)
from shadowrl.rl.search import noop_steps, plan_to_procedure

COMMAND = "shadowrl optimize envs/checkout.yaml"
PYTHON_SPELLINGS = re.compile(r"\d\.0\b|\bTrue\b|\bFalse\b|\{'|'\}")


def _plan(checkout: Any, order: list[str], **settings: dict[str, Any]) -> list[Any]:
    configured = dict(configured_plan(checkout.procedure))
    plan = [(n, {**(configured[n] or {}), **settings.get(n.replace("-", "_"), {})})
            for n in order]
    validate_plan(checkout.procedure, plan)
    return plan


ORDER = ["disable-new-checkout", "revert-web", "revert-orders", "migrate-db-down",
         "scale-web", "flush-cache", "warm-cache"]


@pytest.fixture(scope="module")
def summary(checkout: Any) -> Any:
    return summarize(checkout.name, "best_static", [rehearse(checkout, s) for s in (0, 1)])


# --------------------------------------------------------------------------- no-op steps


def test_a_scale_to_the_replicas_already_there_is_a_noop(checkout: Any) -> None:
    web = next(s for s in checkout.deployment.services if s.name == "web").replicas
    assert web == 6
    last = _plan(checkout, ORDER, scale_web={"replicas": 6})
    assert noop_steps(checkout, last) == ["scale-web"]
    assert noop_reasons(checkout, last) == {"scale-web": "web already runs 6 replicas there"}
    first = _plan(checkout, ["disable-new-checkout", "scale-web", *ORDER[1:4], *ORDER[5:]],
                  scale_web={"replicas": 6})
    assert noop_steps(checkout, first) == ["scale-web"]
    assert noop_steps(checkout, _plan(checkout, ORDER, scale_web={"replicas": 9})) == []


def test_procedure_yaml_leaves_noops_out_and_reads_as_yaml(checkout: Any, summary: Any,
                                                          tmp_path: Path) -> None:
    plan = _plan(checkout, ORDER, scale_web={"replicas": 6},
                 revert_web={"batch": 3, "drain": 10.0, "surge": 3})
    omitted = noop_reasons(checkout, plan)
    text = procedure_yaml(checkout, plan, summary, COMMAND, omitted=omitted)
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert not any(PYTHON_SPELLINGS.search(line) for line in header), header
    o = summary.outcomes
    assert (f"outcomes recovered {o.recovered}, rollback_failed {o.rollback_failed}, "
            f"rollback_ineffective {o.rollback_ineffective};") in text
    assert "# left out, changes nothing: scale-web (web already runs 6 replicas there)" in text
    command, evaluation, verification = read_header(text)  # what export reads back
    assert verification is not None and verification["status"] == "none"
    assert "not verified on a real shadow" in verification["lines"][0]
    assert command == COMMAND and evaluation is not None
    assert evaluation["outcomes"] == summary.outcomes.model_dump()
    assert evaluation["runs"] == summary.runs
    path = tmp_path / "procedure.yaml"
    path.write_text(text)
    loaded = load_procedure(path, checkout)
    assert [s.name for s in loaded.steps] == [n for n in ORDER if n != "scale-web"]
    assert "default: 10s" in text and "10.0" not in text
    assert loaded.step("revert-web").default_settings()["drain"] == 10.0
    # without the no-op the rollback is the plan's, minus the no-op's few seconds
    for seed in (0, 3):
        with_noop = rehearse(checkout, seed, plan=plan)
        without = rehearse(checkout, seed, procedure=loaded)
        assert without.outcome == with_noop.outcome
        assert without.rollback_s <= with_noop.rollback_s + 1e-6
        assert without.downtime_s <= with_noop.downtime_s + 1e-6


def test_a_noop_steps_after_constraints_pass_on(checkout: Any) -> None:
    """flush-cache runs after migrate-db-down; with migrate-db-down left out it must still
    come after what migrate-db-down waited for (revert-orders)."""
    plan = configured_plan(checkout.procedure)
    proc = plan_to_procedure(checkout.procedure, plan, omit={"migrate-db-down"})
    flush = proc.step("flush-cache")
    assert "migrate-db-down" not in flush.after
    assert set(checkout.procedure.step("migrate-db-down").after) <= set(flush.after)


def test_configured_procedure_file_says_no_search_ran(checkout: Any, summary: Any) -> None:
    text = procedure_yaml(checkout, configured_plan(checkout.procedure), summary, COMMAND,
                          searched=False)
    assert "best static" not in text and "no static search ran" in text
    assert f"name: {checkout.procedure.name}\n" in text  # not "-optimized"
    assert read_header(text)[0] == COMMAND


# --------------------------------------------------------------------------- what changed


def test_what_changed_omits_noops_and_spells_settings_as_yaml(checkout: Any) -> None:
    configured = configured_plan(checkout.procedure)
    best = _plan(checkout, ORDER, scale_web={"replicas": 6},
                 revert_web={"batch": 3, "drain": 10.0, "surge": 3},
                 migrate_db_down={"online": True})
    lines = describe_changes(configured, best, {"scale-web": (17.0, 0.0)},
                             [{"kind": "slow_step", "step": "revert-web",
                               "share_of_downtime": 0.43, "suggestion": "ADVICE"}],
                             procedure=checkout.procedure,
                             omitted=noop_reasons(checkout, best))
    text = "\n".join(lines)
    assert not PYTHON_SPELLINGS.search(text), text
    assert "`revert-web`: batch=1, drain=30s, surge=0 -> batch=3, drain=10s, surge=3." in text
    assert "`migrate-db-down`: online=false -> online=true." in text
    assert ("`scale-web` is left out: web already runs 6 replicas there, so it changes "
            "nothing (the configured procedure runs it with replicas=9).") in text
    # the no-op is no change of order, of settings or of downtime
    assert not [line for line in lines if line.startswith("`scale-web`:")]
    assert "`scale-web` causes" not in text
    # moving it last was its only move: the other steps keep the configured order
    assert not [line for line in lines if line.startswith("Order:")]
    moved = describe_changes(configured, [best[2], best[1], *best[:1], *best[3:]], {}, [],
                             procedure=checkout.procedure,
                             omitted=noop_reasons(checkout, best))
    order = next(line for line in moved if line.startswith("Order:"))
    assert "scale-web" not in order and "revert-orders -> revert-web" in order
    # the configured procedure's findings say why, never with their advice
    assert "Why: in the configured procedure, slow_step at `revert-web` caused 43%" in text
    assert "ADVICE" not in text


# --------------------------------------------------------------------------- proposals


def test_apply_proposal(checkout: Any) -> None:
    plan = configured_plan(checkout.procedure)
    proc = checkout.procedure
    changed = apply_proposal(proc, plan, {"settings": {"revert-web": {"batch": 3}},
                                          "skip": ["warm-cache"],
                                          "before": [["revert-orders", "revert-web"]]})
    assert changed is not None
    validate_plan(proc, changed)
    as_dict = dict(changed)
    assert as_dict["revert-web"] == {**dict(plan)["revert-web"], "batch": 3}
    assert as_dict["warm-cache"] is None
    names = [n for n, _ in changed]
    assert names.index("revert-orders") < names.index("revert-web")
    assert apply_proposal(proc, plan, {"skip": ["revert-web"]}) is None  # required
    assert apply_proposal(proc, plan, {"settings": {"nope": {"a": 1}}}) is None
    assert apply_proposal(proc, plan, {"before": [["flush-cache", "migrate-db-down"]]}) is None
    same = dict(plan)["revert-web"]
    assert apply_proposal(proc, plan, {"settings": {"revert-web": same}}) is None  # no change
    assert apply_proposal(proc, plan, {}) is None


def test_optimize_advice_never_contradicts_procedure_yaml_unchecked(checkout: Any,
                                                                     tmp_path: Path) -> None:
    """bottlenecks.json describes procedure.yaml (the best static procedure), and every
    change it proposes was measured against it: either procedure.yaml already does it, or
    the advice says what the measurement found."""
    result = optimize(checkout, tmp_path, OptimizeOptions(
        method="search", episodes=6, search_trials=12, search_incidents=4, oracle_nodes=20),
        COMMAND)
    doc = json.loads(Path(result.bottlenecks).read_text())
    proc = load_procedure(result.procedure, checkout)
    assert doc["method"] == "best_static" and doc["procedure"] == proc.name
    settings = {s.name: s.default_settings() for s in proc.steps}
    for f in doc["findings"]:
        wanted = f["proposal"]["settings"]
        agrees = all(settings.get(step, {}).get(k) == v for step, values in wanted.items()
                     for k, v in values.items()) and not f["proposal"]["skip"] and not \
            f["proposal"]["before"]
        if "checked" in f:
            c = f["checked"]
            assert c["incidents"] == 4 and c["better"] == (c["cost"] < c["procedure_cost"])
            assert ("Not adopted" in f["suggestion"]) != c["better"]
            assert "Measured" in f["suggestion"] or "Not adopted" in f["suggestion"]
        elif wanted or f["proposal"]["skip"] or f["proposal"]["before"]:
            # unchecked only when it cannot change procedure.yaml's plan
            assert agrees or f["step"] not in settings
    comparison = Path(result.comparison).read_text()
    assert "## What the best static procedure (procedure.yaml) changes from the configured " \
           "one" in comparison
    assert "## Bottlenecks of the best static procedure (procedure.yaml" in comparison
    changed = comparison.split("## What the best static")[1].split("## ")[0]
    assert not PYTHON_SPELLINGS.search(changed), changed
    assert "Bottleneck of the configured procedure" not in comparison
    assert (tmp_path / "procedure.yaml").read_text().count("outcomes recovered") == 1
    # the oracle's searches, incident by incident: within the budget, and each bound proven
    # below what the search found (the budget of 20 nodes cannot prove checkout's optima)
    methods = json.loads(Path(result.episodes_file).read_text())["methods"]
    searched, oracle = methods["oracle"]["search"], result.oracle
    assert len(searched["nodes"]) == 6 and all(0 < n <= 20 for n in searched["nodes"])
    assert all(0 <= b <= c + 1e-9 for b, c in zip(searched["bound"], methods["oracle"]["cost"]))
    assert oracle is not None and oracle.exact == sum(searched["exact"]) < 6
    assert oracle.most_nodes == max(searched["nodes"]) and oracle.max_nodes == 20
    assert "search" not in methods["best_static"]
    assert f"{oracle.most_nodes} at most, of a budget of 20 per incident" in comparison
    # the run's wall time phase by phase (no training in a search run)
    phases = result.phases_s
    assert list(phases) == ["baselines", "best_static", "oracle", "verify", "runbook", "total"]
    assert all(v >= 0 for v in phases.values())
    assert phases["total"] >= sum(v for k, v in phases.items() if k != "total") - 1e-6

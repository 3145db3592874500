"""Verification before export (shadowrl.rehearsal.verification), without Docker: the pass
rule over records of real simulator rehearsals (the simulator stands in for the real backend,
so "real" and "simulated" runs coincide), the header lines and their round trip, and the
optimizer writing a verified procedure.yaml, verification.json and summary.json.

The real shadow's end to end test is tests/shadow/docker/test_verification.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from shadowrl.core.plan import configured_plan
from shadowrl.core.spec import Procedure, Scenario, load_scenario
from shadowrl.export.sources import read_header
from shadowrl.rehearsal.runner import rehearse
from shadowrl.rehearsal.verification import (
    Verification,
    difference,
    header_lines,
    judge,
    not_verified_line,
    read_header_lines,
    same_procedure,
    summary_line,
    verify_procedures,
)
from shadowrl.rl.search import plan_to_procedure

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [10000, 10001, 10002]


@pytest.fixture(scope="module")
def faster(checkout: Scenario) -> Procedure:
    """checkout's procedure with web rolled back two at a time beside three surge replicas
    and a 10 s drain: less downtime on every one of SEEDS (measured by the tests below)."""
    plan = dict(configured_plan(checkout.procedure))
    plan["revert-web"] = {**(plan["revert-web"] or {}), "batch": 2, "drain": 10.0, "surge": 3}
    return plan_to_procedure(checkout.procedure, list(plan.items()))


def _sim(checkout: Scenario, winner: Any, configured: Any, seeds: list[int] = SEEDS,
         objective: str = "budget", **kwargs: Any) -> Verification:
    return verify_procedures(checkout, winner, configured, seeds, backend="sim",
                             objective=objective, **kwargs)


# --------------------------------------------------------------------------- the pass rule


def test_a_better_procedure_passes_and_the_record_holds_every_run(checkout: Scenario,
                                                                   faster: Procedure) -> None:
    logged: list[str] = []
    ticks: list[tuple[int, int, str]] = []
    v = _sim(checkout, faster, checkout.procedure, objective="downtime", on_log=logged.append,
             on_progress=lambda *a: ticks.append(a))
    assert v.passed and v.reasons == [] and v.status == "passed"
    assert v.backend == "sim" and v.runs == 3 and v.seeds == SEEDS and not v.same_procedure
    assert v.winner == "checkout-rollback-optimized" and v.configured == "checkout-rollback"
    # both procedures faced the same incidents, and these are the runs of `rehearse`
    for r, seed in zip(v.results, SEEDS, strict=True):
        alone = rehearse(checkout, seed, procedure=faster)
        assert r.seed == seed and r.incident == alone.incident == r.configured.incident
        assert r.winner.downtime_s == pytest.approx(alone.downtime_s, abs=0.05)
        assert r.winner.budget_burn == pytest.approx(alone.budget_burn, abs=1e-6)
        assert r.configured.outcome == rehearse(checkout, seed).outcome
        assert r.gap["same_incident"] and r.gap["downtime_s"] == 0
    # every seed is better, so the paired difference is negative and the prediction agrees
    d = v.difference
    assert d.measure == "downtime_s" and d.mean < 0 and not d.worse_beyond_noise
    assert v.predicted == d  # the "real" backend is the simulator here
    winner, configured = v.means["winner"], v.means["configured"]
    assert winner.recovered == configured.recovered == 3
    assert d.mean == pytest.approx(winner.downtime_s - configured.downtime_s, abs=1e-3)
    assert v.gap.downtime_s == v.gap.bad_requests == v.gap.budget_burn == 0
    # progress counts the rehearsals on the verified backend: winner, configured per seed
    assert [t[:2] for t in ticks] == [(k, 6) for k in range(1, 7)]
    assert logged[0] == "verification 1/6: checkout-rollback-optimized on sim, seed 10000"
    assert json.loads(v.model_dump_json()) == v.model_dump(mode="json")


def test_worse_beyond_noise_fails_and_says_why(checkout: Scenario, faster: Procedure) -> None:
    """The configured procedure verified against the faster one: more downtime on every
    incident, far more than two standard errors of the differences."""
    v = _sim(checkout, checkout.procedure, faster, objective="downtime")
    d = v.difference
    assert d.mean > 2 * d.standard_error > 0 and d.worse_beyond_noise
    assert not v.passed and len(v.reasons) == 1
    assert v.reasons[0].startswith("checkout-rollback is worse than checkout-rollback-optimized "
                                   "on sim beyond noise: downtime +")
    assert "more than 2 standard errors" in v.reasons[0]


def test_one_run_has_no_noise_estimate_so_any_loss_fails(checkout: Scenario,
                                                         faster: Procedure) -> None:
    """On seed 10000 the configured procedure burns a little more error budget than the
    faster one: with one run that alone fails it (no standard error to hide in), while
    the winner the other way round passes."""
    worse = _sim(checkout, checkout.procedure, faster, seeds=[10000])
    assert worse.difference.mean > 0 and worse.difference.standard_error == 0
    assert not worse.passed and "error budget burn +" in worse.reasons[0]
    better = _sim(checkout, faster, checkout.procedure, seeds=[10000])
    assert better.passed and better.difference.mean < 0


def test_within_noise_is_not_worse(checkout: Scenario, faster: Procedure) -> None:
    """On SEEDS the faster procedure burns less budget on average, but not on every seed by
    the same amount: swapped, the configured one is worse by less than 2 standard errors of
    the paired differences, which the rule reads as noise."""
    v = _sim(checkout, checkout.procedure, faster)
    d = v.difference
    assert 0 < d.mean <= 2 * d.standard_error
    assert v.passed and not d.worse_beyond_noise


def test_the_same_procedure_runs_once_and_is_equal(checkout: Scenario) -> None:
    ticks: list[tuple[int, int, str]] = []
    copy = checkout.procedure.model_copy(deep=True)
    assert same_procedure(checkout.procedure, copy)
    v = _sim(checkout, copy, checkout.procedure, on_progress=lambda *a: ticks.append(a))
    assert v.same_procedure and v.passed and [t[:2] for t in ticks] == [(1, 3), (2, 3), (3, 3)]
    assert v.difference.mean == 0 and v.difference.standard_error == 0
    assert all(r.winner == r.configured for r in v.results)


def test_a_run_that_does_not_recover_fails(tmp_path: Path) -> None:
    """An irreversible migration: migrate_down fails on every incident, so the winner ends
    rollback_failed; being no worse than the configured procedure does not save it."""
    sc = load_scenario(ROOT / "tests" / "scenarios" / "irreversible.yaml")
    v = verify_procedures(sc, sc.procedure, sc.procedure, [1, 2], backend="sim")
    assert not v.difference.worse_beyond_noise
    assert not v.passed and v.means["winner"].outcomes["rollback_failed"] == 2
    assert v.reasons == [f"on seed {s} (bad-schema) irreversible-rollback ended rollback_failed "
                         f"on sim" for s in (1, 2)]


def test_a_policy_rolled_out_per_seed_faces_the_same_incidents(checkout: Scenario,
                                                               faster: Procedure) -> None:
    """A contender may be a runner (what train passes for a policy): the faster plan as a
    static policy through RollbackEnv verifies exactly as the procedure does."""
    from shadowrl.rl.evaluate import policy_runner
    from shadowrl.rl.policy import StaticPolicy

    as_policy = policy_runner(checkout, StaticPolicy(configured_plan(faster), name="p"),
                              procedure=faster)
    by_policy = _sim(checkout, as_policy, checkout.procedure, winner_name="the policy")
    by_procedure = _sim(checkout, faster, checkout.procedure)
    assert by_policy.winner == "the policy" and not by_policy.same_procedure
    for a, b in zip(by_policy.results, by_procedure.results, strict=True):
        assert a.winner == b.winner and a.configured == b.configured


def test_difference_is_the_paired_standard_error() -> None:
    d = difference([3.0, 5.0, 4.0], [1.0, 2.0, 4.0], "downtime_s")
    diffs = [2.0, 3.0, 0.0]
    mean = sum(diffs) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2) / math.sqrt(3)
    assert d.mean == pytest.approx(mean, abs=1e-3)
    assert d.standard_error == pytest.approx(se, abs=1e-3)
    assert d.worse_beyond_noise is (mean > 2 * se)
    assert not difference([1.0, 2.0], [1.0, 2.0], "budget_burn").worse_beyond_noise  # equal
    with pytest.raises(ValueError, match="objective"):
        judge([], backend="sim", objective="latency", winner="a", configured="b")


# --------------------------------------------------------------------------- header lines


def test_header_lines_read_back(checkout: Scenario, faster: Procedure) -> None:
    for v in (_sim(checkout, faster, checkout.procedure),
              _sim(checkout, checkout.procedure, faster, objective="downtime")):
        lines = header_lines(v)
        assert lines[0].startswith(f"verification: {'passed' if v.passed else 'FAILED'} on the "
                                   f"simulated shadow (sim): 3 incidents, seeds 10000..10002")
        back = read_header_lines([(k + 7, line) for k, line in enumerate(lines)])
        assert back is not None and back["line"] == 7 and back["lines"] == lines
        assert back["status"] == v.status and back["backend"] == "sim"
        assert back["runs"] == 3 and back["seeds"] == SEEDS and back["reasons"] == v.reasons
        w, c = v.means["winner"], v.means["configured"]
        assert back["outcomes"] == w.outcomes and back["configured"]["outcomes"] == c.outcomes
        assert back["downtime_s"]["mean"] == pytest.approx(w.downtime_s, abs=0.5)
        assert back["budget_burn"]["mean"] == pytest.approx(w.budget_burn, abs=5e-6)
        assert back["configured"]["budget_burn"]["mean"] == pytest.approx(c.budget_burn,
                                                                          abs=5e-6)
        assert back["bad_requests"]["mean"] == pytest.approx(w.bad_requests, abs=0.5)
        assert back["gap"] == {"downtime_s": 0.0, "bad_requests": 0.0, "budget_burn": 0.0}
        assert "seeds 10000..10002" in summary_line(v)


def test_not_verified_reads_as_none_in_plain_words() -> None:
    line = not_verified_line("shadowrl optimize envs/checkout.yaml --verify docker")
    assert "not verified on a real shadow" in line
    back = read_header_lines([(3, line)])
    assert back == {"status": "none", "line": 3, "lines": [line]}
    assert read_header_lines([(1, "held-out evaluation (3 incidents): ...")]) is None


# --------------------------------------------------------------------------- the optimizer


@pytest.fixture(scope="module")
def verified_out(tmp_path_factory: pytest.TempPathFactory, checkout: Scenario) -> Path:
    """``optimize --method search`` verified on the simulator (the engine's option; the
    command line offers only real backends)."""
    from shadowrl.rl.optimizer import OptimizeOptions, optimize

    out = tmp_path_factory.mktemp("verified")
    (out / "verification.json").write_text("{}")  # an earlier run's: replaced
    optimize(checkout, out, OptimizeOptions(method="search", episodes=3, search_trials=5,
                                            oracle_nodes=50, verify_backend="sim",
                                            verify_runs=2),
             "shadowrl optimize envs/checkout.yaml --method search")
    return out


def test_optimize_writes_the_verification_everywhere(verified_out: Path) -> None:
    record = json.loads((verified_out / "verification.json").read_text())
    summary = json.loads((verified_out / "summary.json").read_text())
    assert summary["verification"] == record
    assert summary["verification_file"] == str(verified_out / "verification.json")
    assert record["backend"] == "sim" and record["seeds"] == [10000, 10001]
    assert record["winner"] == "checkout-rollback-optimized"
    # the verified procedure is procedure.yaml's, measured as the comparison measured it
    episodes = json.loads((verified_out / "episodes.json").read_text())["methods"]
    for k, r in enumerate(record["results"]):
        assert r["winner_sim"]["budget_burn"] == pytest.approx(
            episodes["best_static"]["budget_burn"][k], abs=1e-6)
        assert r["configured_sim"]["budget_burn"] == pytest.approx(
            episodes["configured"]["budget_burn"][k], abs=1e-6)
    text = (verified_out / "procedure.yaml").read_text()
    header = read_header(text).verification
    assert header is not None and header["status"] == ("passed" if record["passed"]
                                                        else "failed")
    assert header["runs"] == 2 and header["seeds"] == [10000, 10001]
    assert "not verified" not in text
    assert "- verification: " in (verified_out / "comparison.md").read_text()


def test_optimize_without_verification_says_so_and_drops_an_old_record(
        verified_out: Path, checkout: Scenario) -> None:
    from shadowrl.rl.optimizer import OptimizeOptions, optimize

    command = "shadowrl optimize envs/checkout.yaml --method search --verify none --out X"
    result = optimize(checkout, verified_out, OptimizeOptions(
        method="search", episodes=2, search_trials=3, oracle_nodes=20), command)
    assert result.verification is None and result.verification_file is None
    assert not (verified_out / "verification.json").exists()
    assert "verification" not in json.loads((verified_out / "summary.json").read_text())
    text = (verified_out / "procedure.yaml").read_text()
    line = next(x for x in text.splitlines() if x.startswith("# verification:"))
    assert line == ("# verification: none: not verified on a real shadow: run `shadowrl "
                    "optimize envs/checkout.yaml --method search --out X --verify docker` to "
                    "rehearse it there before exporting it")

"""A run's verification in MLflow (tag ``shadowrl.verified``, ``verify_*`` metrics,
``verification.json``) and the champion gate that requires a passed one when the experiment
names a real backend; against a real SQLite store. The verifications ran on the simulator
(the record does not depend on the backend that wrote it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
import yaml

from shadowrl.analysis.summary import summarize
from shadowrl.app.export import ExportRequest, export
from shadowrl.core.plan import configured_plan
from shadowrl.core.spec import Scenario
from shadowrl.integrations import mlflow as tracking
from shadowrl.rehearsal.runner import rehearse
from shadowrl.rehearsal.verification import Verification, verify_procedures
from shadowrl.rl.agents import train
from shadowrl.rl.optimizer import procedure_yaml
from shadowrl.rl.search import plan_to_procedure
from tests.app.test_experiment import TINY_AGENT

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
SEED, N = 20_000, 20


@pytest.fixture(scope="module")
def policy_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("policy")
    (folder / "agent.yaml").write_text(yaml.safe_dump(TINY_AGENT))
    return train(CHECKOUT, folder / "agent.yaml", folder / "out", progress=False).model_path


@pytest.fixture(scope="module")
def verifications(checkout: Scenario) -> dict[str, Verification]:
    """A passed verification (a faster procedure against the configured one) and a failed
    one (the other way round, on downtime: worse beyond noise)."""
    plan = dict(configured_plan(checkout.procedure))
    plan["revert-web"] = {**(plan["revert-web"] or {}), "batch": 2, "drain": 10.0, "surge": 3}
    faster = plan_to_procedure(checkout.procedure, list(plan.items()))
    seeds = [10000, 10001, 10002]
    out = {"passed": verify_procedures(checkout, faster, checkout.procedure, seeds,
                                       backend="sim", objective="downtime"),
           "failed": verify_procedures(checkout, checkout.procedure, faster, seeds,
                                       backend="sim", objective="downtime")}
    assert out["passed"].passed and not out["failed"].passed
    return out


def test_a_run_records_its_verification(mlflow_store: Any,
                                        verifications: dict[str, Verification]) -> None:
    client = mlflow_store.client
    v = verifications["passed"]
    with mlflow.start_run(experiment_id=mlflow_store.experiment_id) as run:
        assert tracking.log_verification(v) == "passed"
    data = client.get_run(run.info.run_id).data
    assert data.tags["shadowrl.verified"] == "passed"
    assert data.tags["shadowrl.verify_backend"] == "sim"
    assert data.tags["shadowrl.verification"].startswith(
        "passed on the simulated shadow (sim), seeds 10000..10002: checkout-rollback-optimized "
        "recovered 3/3, downtime mean ")
    m = data.metrics
    assert m["verify_passed"] == 1.0 and m["verify_runs"] == 3.0
    assert m["verify_winner_recovered_rate"] == 1.0
    assert m["verify_winner_downtime_mean"] == pytest.approx(v.means["winner"].downtime_s)
    assert m["verify_configured_budget_burn_mean"] == pytest.approx(
        v.means["configured"].budget_burn)
    assert m["verify_difference_mean"] == pytest.approx(v.difference.mean)
    assert m["verify_difference_mean"] < 0
    assert m["verify_difference_se"] == pytest.approx(v.difference.standard_error)
    assert {"verify_gap_downtime_s", "verify_gap_bad_requests",
            "verify_gap_budget_burn"} <= set(m)
    folder = Path(client.download_artifacts(run.info.run_id, "verification.json",
                                            str(mlflow_store.path.parent / "dl")))
    assert json.loads(folder.read_text()) == v.model_dump(mode="json")

    with mlflow.start_run(experiment_id=mlflow_store.experiment_id) as bare:
        assert tracking.log_verification(None) == "none"
    data = client.get_run(bare.info.run_id).data
    assert data.tags["shadowrl.verified"] == "none"
    assert "not verified on a real shadow" in data.tags["shadowrl.verification"]
    assert not [k for k in data.metrics if k.startswith("verify_")]


def _record(burns: list[float], recovered: int) -> dict[str, Any]:
    return {"seed": SEED, "episodes": len(burns),
            "outcomes": ["recovered"] * recovered + ["rollback_ineffective"] * (len(burns)
                                                                                 - recovered),
            "budget_burn": list(burns), "downtime_s": [100.0 * b for b in burns]}


def _burns(level: float, jitter: float) -> list[float]:
    wiggle = np.sin(np.arange(N) * 1.7)
    return [float(level + jitter * w) for w in wiggle - wiggle.mean()]


def _version(policy: Path, name: str, experiment_id: str, record: dict[str, Any],
             verification: Verification | None | str, procedure: Path | None = None) -> Any:
    """A registered version with clear held-out evidence and the given verification
    (``"untagged"``: a run logged before verification existed)."""
    with mlflow.start_run(experiment_id=experiment_id):
        tracking.log_per_seed(record)
        if verification != "untagged":
            tracking.log_verification(verification)  # type: ignore[arg-type]
        return tracking.log_policy_model(policy, CHECKOUT, registered_model_name=name,
                                         procedure_path=procedure)


def test_promotion_requires_a_passed_verification_when_asked(
        mlflow_store: Any, policy_zip: Path, verifications: dict[str, Verification],
        checkout: Scenario, tmp_path: Path) -> None:
    client, exp = mlflow_store.client, mlflow_store.experiment_id
    good = _record(_burns(0.04, 0.01), recovered=19)  # clearly better than configured
    promote = dict(scenario=CHECKOUT, eval_seed=SEED, episodes=N,
                   baselines={"configured": _record(_burns(0.08, 0.02), recovered=18)})
    name = "verified-rollback"

    for version, verification, words in (
            (1, None, "was not verified on a real shadow (shadowrl.verified = none)"),
            (2, "untagged", "was not verified on a real shadow (shadowrl.verified = none)"),
            (3, verifications["failed"],
             "failed its verification on the real shadow (shadowrl.verified = failed)")):
        _version(policy_zip, name, exp, good, verification)
        decision = tracking.promote_if_better(name, version, require_verification=True,
                                              **promote)
        assert not decision["promoted"] and decision["champion_version"] == ""
        assert decision["reason"].startswith(f"not promoted: version {version}'s run {words}")
        assert "evidence alone would have promoted it" in decision["reason"]
        assert decision["p_value"] < 0.05  # the evidence itself was there
        tags = client.get_model_version(name, str(version)).tags
        assert tags["shadowrl.promotion.verified"] == decision["verified"]
        assert tags["shadowrl.promotion"].startswith("not promoted")
    assert "champion" not in client.get_registered_model(name).aliases

    logged = tmp_path / "procedure.yaml"  # the best static procedure train logs: unverified
    logged.write_text(procedure_yaml(checkout, configured_plan(checkout.procedure),
                                     summarize("checkout", "best_static",
                                               [rehearse(checkout, SEED)]),
                                     "shadowrl train exp.yaml"))
    _version(policy_zip, name, exp, good, verifications["passed"], procedure=logged)
    passed = tracking.promote_if_better(name, 4, require_verification=True, **promote)
    assert passed["promoted"] and passed["verified"] == "passed"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "4"
    # its export: the logged procedure (not verified, in plain words) and the policy's
    exported = export(ExportRequest(source=f"models:/{name}@champion", format="shell"))
    header = [line for line in exported.text.splitlines() if "verification" in line]
    assert header[0].startswith("# verification: none: not verified on a real shadow")
    assert header[1].startswith("# policy verification (the policy, not this procedure): "
                                "passed on the simulated shadow (sim), seeds 10000..10002")

    # without a real backend in the experiment nothing changes: an unverified version with
    # the same evidence is promoted, and no verification status is part of the decision
    _version(policy_zip, "unverified-rollback", exp, good, None)
    plain = tracking.promote_if_better("unverified-rollback", 1, **promote)
    assert plain["promoted"] and "verified" not in plain

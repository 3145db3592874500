"""Verification before export on the real shadow: ``shadowrl optimize --verify docker`` writes
a procedure.yaml whose header carries the verification, verification.json and summary.json;
``shadowrl train`` with ``verify: {backend: docker}`` rolls the policy out on the real shadow
and records it in MLflow.

checkout with time compressed 60x and one verification incident, so each command spends
about a minute in real rehearsals (two of them: the winner and the configured procedure).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shadowrl.core.spec import load_scenario
from shadowrl.export.sources import read_header
from tests.shadow.docker.test_backend import ROOT, cli, fast_scenario

ROOT_ENV = {"PYTHONPATH": str(ROOT)}


def test_optimize_verify_docker_writes_a_verified_procedure(docker_client: Any,
                                                            shadow_images: Any,
                                                            tmp_path: Path) -> None:
    scenario = fast_scenario(tmp_path)
    out = tmp_path / "v"
    started = time.monotonic()
    done = cli("optimize", str(scenario), "--method", "search", "--episodes", "2",
               "--trials", "5", "--oracle-nodes", "50", "--verify", "docker",
               "--verify-runs", "1", "--out", str(out), "--json", timeout=900)
    wall = time.monotonic() - started
    # exit 1 is a verification that failed (recorded, not an error); anything else is not
    assert done.returncode in (0, 1), done.stderr[-3000:]
    v = json.loads(done.stdout)["verification"]
    assert (done.returncode == 0) is v["passed"], done.stderr[-3000:]
    assert v["backend"] == "docker" and v["runs"] == 1 and v["seeds"] == [10000]
    assert json.loads((out / "verification.json").read_text()) == v
    assert json.loads((out / "summary.json").read_text())["verification"] == v
    # the real runs were measured on real containers: a shadow came up for each (and again
    # for a drawn deviation too weak to breach, which is drawn again)
    assert done.stderr.count(" up in ") >= 2, done.stderr[-3000:]
    assert "verification 1/2: checkout-rollback-optimized on docker, seed 10000" in done.stderr
    assert "verification 2/2: checkout-rollback on docker, seed 10000" in done.stderr
    [r] = v["results"]
    # the same seed draws the same incident, unless a busy host's healthy shadow breached
    # before the onset and drew again: the gap says which
    incidents = {i.name for i in load_scenario(scenario).incidents}
    assert {r[k]["incident"] for k in ("winner", "configured", "winner_sim")} <= incidents
    assert r["gap"]["same_incident"] == (r["winner"]["incident"] == r["winner_sim"]["incident"])
    assert r["winner"]["rollback_s"] > 0
    # the simulated side is what the held-out comparison measured on that seed
    methods = json.loads((out / "episodes.json").read_text())["methods"]
    assert r["winner_sim"]["budget_burn"] == pytest.approx(
        methods["best_static"]["budget_burn"][0], abs=1e-6)
    assert r["configured_sim"]["budget_burn"] == pytest.approx(
        methods["configured"]["budget_burn"][0], abs=1e-6)
    # procedure.yaml says it, and export reads it back (or refuses a failed one)
    text = (out / "procedure.yaml").read_text()
    header = read_header(text).verification
    assert header is not None and header["status"] == ("passed" if v["passed"] else "failed")
    assert header["backend"] == "docker" and header["runs"] == 1
    assert header["budget_burn"]["mean"] == pytest.approx(v["means"]["winner"]["budget_burn"],
                                                          abs=5e-6)
    assert "not verified" not in text
    exported = cli("export", str(out / "procedure.yaml"), "--format", "shell", "--scenario",
                   str(scenario))
    if v["passed"]:
        assert exported.returncode == 0, exported.stderr
        assert "# verification: passed on the real shadow (docker): 1 incident, seed 10000" \
            in exported.stdout
    else:
        assert exported.returncode == 2 and ": verification: " in exported.stderr
        assert "verification FAILED on docker" in done.stderr
    print(done.stderr[-4000:])
    print(f"optimize --verify docker --verify-runs 1: {wall:.0f} s of wall time")


EXPERIMENT = """\
apiVersion: shadowrl/v1
kind: Experiment
metadata: {{name: verify-checkout}}
scenario: {scenario}
agent: {agent}
timesteps: 128
replicas: 1
seed: 0
evaluation: {{episodes: 2, seed: 10000}}
tracking: {{experiment: verify-checkout, model: verify-checkout-rollback}}
search_trials: 3
verify: {{backend: docker, runs: 1}}
"""
TINY_AGENT = """\
algorithm: maskable_ppo
policy: MlpPolicy
n_envs: 1
timesteps: 128
hyperparameters: {n_steps: 64, batch_size: 64, n_epochs: 1, gamma: 1.0}
policy_kwargs: {net_arch: [16]}
eval: {freq: 1000000, episodes: 1, seed: 1000}
checkpoint: {freq: 1000000}
"""


def test_train_verifies_the_policy_on_the_real_shadow(docker_client: Any, shadow_images: Any,
                                                      mlflow_template_db: Path,
                                                      tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from shadowrl.shadow.docker.daemon import docker_host

    scenario = fast_scenario(tmp_path)
    (tmp_path / "agent.yaml").write_text(TINY_AGENT)
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXPERIMENT.format(scenario=scenario, agent=tmp_path / "agent.yaml"))
    db = tmp_path / "mlflow.db"
    db.write_bytes(mlflow_template_db.read_bytes())
    uri = f"sqlite:///{db}"
    env = {**os.environ, **ROOT_ENV, "DOCKER_HOST": docker_host(),
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-m", "shadowrl", "train", str(exp),
                           "--tracking-uri", uri, "--out", str(tmp_path / "run"), "--json"],
                          capture_output=True, text=True, timeout=1200, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    v = result["verification"]
    assert v["backend"] == "docker" and v["winner"] == "the policy" and v["seeds"] == [10000]
    assert result["verified"] == ("passed" if v["passed"] else "failed")
    assert "verification 1/2: the policy on docker, seed 10000" in done.stderr
    [r] = v["results"]
    # the same incident on both sides unless a busy host's real shadow drew again
    assert r["gap"]["same_incident"] == (r["winner"]["incident"] == r["winner_sim"]["incident"])
    # the policy's simulated run is its held-out episode on that seed
    held_out = json.loads((tmp_path / "run" / "episodes.json").read_text())["methods"]["rl"]
    assert r["winner_sim"]["budget_burn"] == pytest.approx(held_out["budget_burn"][0],
                                                           abs=1e-6)
    run = MlflowClient(tracking_uri=uri).get_run(result["run_id"]).data
    assert run.tags["shadowrl.verified"] == result["verified"]
    assert run.metrics["verify_passed"] == float(v["passed"])
    # promotion needs a passed verification: 2 held-out incidents are no evidence anyway,
    # so the decision is "not promoted", and it says what the verification was
    champion = result["champion"]
    assert not champion["promoted"] and champion["verified"] == result["verified"]
    if not v["passed"]:
        assert "failed its verification" in champion["reason"]
    print(next(line for line in done.stderr.splitlines() if line.startswith("verification: ")))

"""``shadowrl train`` stopped and rerun, as real processes on a real MLflow SQLite store:
SIGTERM ends the MLflow run KILLED, SIGKILL leaves it RUNNING until the next start marks it
FAILED, and each rerun continues from the last checkpoint; a tracking server that does not
answer fails in seconds with exit 2.

Training is tiny (a 32x32 network, checkpoints every 64 timesteps, 3 held-out incidents).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from shadowrl.app.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
TIMESTEPS = 1024
AGENT = {
    "algorithm": "maskable_ppo", "policy": "MlpPolicy", "n_envs": 1, "timesteps": TIMESTEPS,
    "hyperparameters": {"n_steps": 64, "batch_size": 64, "n_epochs": 2, "gamma": 1.0},
    "policy_kwargs": {"net_arch": [32, 32]},
    "eval": {"freq": 1_000_000, "episodes": 2, "seed": 1000},
    "checkpoint": {"freq": 64},
}
EXPERIMENT = {
    "apiVersion": "shadowrl/v1", "kind": "Experiment", "metadata": {"name": "resumable"},
    "scenario": str(CHECKOUT), "agent": "agent.yaml", "timesteps": TIMESTEPS, "replicas": 1,
    "seed": 0, "evaluation": {"episodes": 3, "seed": 10000},
    "tracking": {"experiment": "resumable", "model": "resumable-rollback"},
    "search_trials": 3,
}


def _write_experiment(folder: Path, **changes: Any) -> Path:
    (folder / "agent.yaml").write_text(yaml.safe_dump(AGENT))
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump({**EXPERIMENT, **changes}))
    return path


def _start(folder: Path, *args: str) -> subprocess.Popen[str]:
    """``python -m shadowrl train`` in its own process group (Ray's processes included)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(ROOT), MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
               RAY_USAGE_STATS_ENABLED="0")
    return subprocess.Popen([sys.executable, "-m", "shadowrl", "train", *args], cwd=folder,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _checkpoints(out: Path) -> list[int]:
    folder = out / "rl" / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split("_")[2]) for p in folder.glob("rl_model_*_steps.zip"))


def _stop_after(proc: subprocess.Popen[str], out: Path, beyond: int, sig: int,
                timeout: float = 300.0) -> tuple[int, str]:
    """Send ``sig`` once a checkpoint past ``beyond`` timesteps exists; (exit code, stderr).
    SIGKILL goes to the whole group, as a crash or an OOM kill would take it."""
    deadline = time.monotonic() + timeout
    while not [c for c in _checkpoints(out) if c > beyond]:
        if proc.poll() is not None:
            pytest.fail(f"train ended before the checkpoint: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint in time")
        time.sleep(0.05)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def stopped_and_resumed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One experiment: run 1 stopped by SIGTERM, run 2 (a rerun) killed by SIGKILL, run 3
    (a rerun) to the end; the store is fresh (created by run 1)."""
    folder = tmp_path_factory.mktemp("resume")
    exp = _write_experiment(folder)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    out = folder / "out"
    args = [str(exp.name), "--tracking-uri", uri, "--out", str(out), "--json"]
    got: dict[str, Any] = {"folder": folder, "uri": uri, "out": out}
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(_start(folder, *args))
        got["term_code"], got["term_err"] = _stop_after(procs[-1], out, 0, signal.SIGTERM)
        got["after_term"] = _checkpoints(out)
        got["state_after_term"] = json.loads((out / "train_run.json").read_text())
        procs.append(_start(folder, *args))
        got["kill_code"], _ = _stop_after(procs[-1], out, max(got["after_term"]),
                                          signal.SIGKILL)
        got["after_kill"] = _checkpoints(out)
        got["state_after_kill"] = json.loads((out / "train_run.json").read_text())
        got["status_after_kill"] = {
            r.info.run_id: r.info.status for r in _runs(MlflowClient(tracking_uri=uri))}
        procs.append(_start(folder, *args))
        stdout, got["final_err"] = procs[-1].communicate(timeout=900)
        assert procs[-1].returncode == 0, got["final_err"][-3000:]
        got["result"] = json.loads(stdout)
    finally:
        for proc in procs:
            _kill_group(proc)
    got["client"] = MlflowClient(tracking_uri=uri)
    return got


def _runs(client: MlflowClient) -> list[Any]:
    experiment = client.get_experiment_by_name("resumable")
    return sorted(client.search_runs([experiment.experiment_id]),
                  key=lambda r: r.info.start_time)


def test_sigterm_ends_the_run_killed_and_keeps_the_checkpoint(stopped_and_resumed) -> None:
    got = stopped_and_resumed
    assert got["term_code"] in (130, 143), got["term_err"][-2000:]
    assert "interrupted by SIGTERM" in got["term_err"] and "Traceback" not in got["term_err"]
    assert got["after_term"] and max(got["after_term"]) < TIMESTEPS
    assert got["state_after_term"]["status"] == "interrupted"
    first = _runs(got["client"])[0]
    assert first.info.run_id == got["state_after_term"]["mlflow_run_id"]
    assert first.info.status == "KILLED"
    assert "SIGTERM" in first.data.tags["shadowrl.failure"]


def test_sigkill_leaves_running_until_the_next_start_marks_it_failed(
        stopped_and_resumed) -> None:
    got = stopped_and_resumed
    assert got["kill_code"] == -signal.SIGKILL
    killed = got["state_after_kill"]["mlflow_run_id"]
    assert got["state_after_kill"]["status"] == "running"  # nobody could write otherwise
    assert got["status_after_kill"][killed] == "RUNNING"
    run = got["client"].get_run(killed)
    assert run.info.status == "FAILED"  # by run 3, at its start
    assert got["result"]["stale_runs"] == [killed]
    assert f"process {run.data.tags['shadowrl.pid']} on" in run.data.tags["shadowrl.failure"]
    assert "marked FAILED" in got["final_err"]


def test_each_rerun_continues_from_the_last_checkpoint(stopped_and_resumed) -> None:
    got = stopped_and_resumed
    client: MlflowClient = got["client"]
    first, second, third = _runs(client)
    # run 2 continued run 1's checkpoint, run 3 run 2's
    assert second.data.tags["shadowrl.resumed_from_run"] == first.info.run_id
    assert int(second.data.tags["shadowrl.resumed_from_timesteps"]) == max(got["after_term"])
    assert min(got["after_kill"]) == min(got["after_term"])  # nothing was deleted
    resumed = max(got["after_kill"])
    assert resumed > max(got["after_term"])
    result = got["result"]
    assert result["resumed_from"] == resumed and result["run_id"] == third.info.run_id
    assert third.data.tags["shadowrl.resumed_from_run"] == second.info.run_id
    assert third.info.status == "FINISHED"
    # the step count continues: run 3's training curve starts after the checkpoint
    steps = [m.step for m in client.get_metric_history(third.info.run_id,
                                                       "train_reward_mean")]
    assert steps and min(steps) > resumed and max(steps) == TIMESTEPS
    state = json.loads((got["out"] / "rl" / "train_state.json").read_text())
    assert state["timesteps"] == TIMESTEPS and state["resumed_from"].endswith(
        f"rl_model_{resumed}_steps.zip")
    assert json.loads((got["out"] / "train_run.json").read_text())["status"] == "finished"
    assert "(resumed at" in third.info.run_name


def test_the_run_reads_well_in_mlflow(stopped_and_resumed) -> None:
    """A description, a readable name and source, constants as params, the scenario once."""
    got = stopped_and_resumed
    client: MlflowClient = got["client"]
    run = client.get_run(got["result"]["run_id"])
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.run_name.startswith("resumable 20")
    assert tags["mlflow.source.name"] == "shadowrl train exp.yaml"
    note = tags["mlflow.note.content"]
    assert "maskable_ppo" in note and "10000..10002" in note
    assert f"Resumed from the checkpoint at {got['result']['resumed_from']}" in note
    assert params["eval_holdout_seed"] == "10000" and params["eval_holdout_episodes"] == "3"
    assert params["eval_episodes"] == "2" and params["search_trials"] == "3"
    for constant in ("eval_holdout_seed", "eval_holdout_episodes", "eval_episodes"):
        assert constant not in metrics
    assert {"eval_mean_cost", "eval_mean_budget_burn", "eval_holdout_budget_burn_mean",
            "holdout_best_static_budget_burn_mean", "train_reward_mean"} <= set(metrics)
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "scenario" in top and "checkout.yaml" not in top
    assert [a.path for a in client.list_artifacts(run.info.run_id, "scenario")] == [
        "scenario/checkout.yaml"]
    comparison = (got["out"] / "comparison.md").read_text()
    assert "registers the `rl` policy" in comparison
    assert "## What the best static procedure (procedure.yaml) changes" in comparison


# --------------------------------------------------------------------------- refusals


def test_a_folder_of_another_configuration_is_refused(tmp_path: Path,
                                                      mlflow_store: Any) -> None:
    """Resuming a checkpoint trained another way would mix two trainings: refused before
    any work, naming what differs and --fresh."""
    from shadowrl.app.train import TrainRequest, train

    out = tmp_path / "out"
    out.mkdir()
    (out / "train_run.json").write_text(json.dumps({
        "status": "interrupted", "fingerprint": {"experiment": "resumable", "seed": 7}}))
    exp = _write_experiment(tmp_path)
    with pytest.raises(UsageError, match=r"another configuration \(.*seed.*--fresh"):
        train(TrainRequest(experiment=exp, tracking_uri=mlflow_store.uri, out=out))


def test_a_dead_tracking_server_fails_in_seconds(tmp_path: Path, dead_url: str) -> None:
    """Refused connections used to be retried for about 250 s, then a traceback."""
    server = dead_url.rsplit("/", 1)[0]
    exp = _write_experiment(tmp_path)
    start = time.monotonic()
    proc = _start(tmp_path, exp.name, "--tracking-uri", server)
    _, err = proc.communicate(timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, err[-2000:]
    assert f"MLflow tracking server {server} does not answer" in err
    assert "--tracking-uri" in err and "MLFLOW_TRACKING_URI" in err
    assert "Traceback" not in err
    assert elapsed < 60  # most of it is importing torch and MLflow; no retries
    assert not (tmp_path / "runs").exists()  # nothing started

"""shadowrl.integrations.mlflow against a real MLflow: a migrated SQLite store per test (a
copy of one made per session) and a real ``mlflow server`` process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from shadowrl.core.spec import load_scenario, procedure_to_data
from shadowrl.export.renderers import to_shell
from shadowrl.export.sources import load_source
from shadowrl.integrations import mlflow as tracking
from shadowrl.integrations.sources import RESOLVERS
from shadowrl.rl.agents import load_policy, train
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.evaluate import evaluate, run_episode

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
SEED = 20_000  # held-out evaluation seeds of these tests
TINY_AGENT = {
    "algorithm": "maskable_ppo", "policy": "MlpPolicy", "n_envs": 1, "timesteps": 256,
    "hyperparameters": {"n_steps": 64, "batch_size": 64, "n_epochs": 2, "gamma": 1.0},
    "policy_kwargs": {"net_arch": [32, 32]},
    "eval": {"freq": 1_000_000, "episodes": 3, "seed": 1000},
    "checkpoint": {"freq": 1_000_000},
}


@pytest.fixture(scope="module", autouse=True)
def _boot_server(mlflow_server_process: Any) -> None:
    """Start the MLflow server at the first test so its boot overlaps the other tests."""


def _agent(folder: Path) -> Path:
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump(TINY_AGENT))
    return path


@pytest.fixture(scope="session")
def policy_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("policy")
    return train(CHECKOUT, _agent(folder), folder / "out", progress=False).model_path


def _log_version(policy: Path, name: str | None, experiment_id: str, *,
                 holdout: dict[str, float] | None = None,
                 procedure: Path | None = None) -> Any:
    """One run: optional held-out metrics, the pyfunc model (registered under ``name``)."""
    with mlflow.start_run(experiment_id=experiment_id):
        if holdout is not None:
            mlflow.log_metrics(holdout)
        return tracking.log_policy_model(policy, CHECKOUT, procedure_path=procedure,
                                         registered_model_name=name)


def _holdout(mean: float, seed: int = SEED, episodes: int = 3) -> dict[str, float]:
    return {"eval_holdout_downtime_mean": mean, "eval_holdout_seed": seed,
            "eval_holdout_episodes": episodes}


# --------------------------------------------------------------------------- basics


def test_tracking_uri_precedence(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "recorded")  # so the test's changes are undone
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    default = tracking.tracking_uri()
    assert default == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert default.startswith("sqlite:////")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.tracking_uri() == "http://127.0.0.1:1"
    assert tracking.tracking_uri("sqlite:////x/y.db") == "sqlite:////x/y.db"
    deep = f"sqlite:///{tmp_path}/a/b/mlflow.db"
    try:
        assert tracking.configure(deep) == deep
        assert (tmp_path / "a" / "b").is_dir()
        assert mlflow.get_tracking_uri() == deep
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def test_flatten_hash_and_commit(tmp_path, monkeypatch) -> None:
    flat = tracking.flatten({"agent": {"hyperparameters": {"learning_rate": 3e-4, "gamma": 1.0},
                                       "policy_kwargs": {"net_arch": [64, 64]}, "on": True,
                                       "none": None, "name": "ppo"},
                             "stages": [{"a": 1}, {"a": 2}], "long": "x" * 10_000,
                             "bad key!": 1})
    assert flat["agent.hyperparameters.learning_rate"] == "0.0003"
    assert flat["agent.policy_kwargs.net_arch"] == "[64, 64]"
    assert flat["agent.on"] == "true" and flat["agent.none"] == "null"
    assert flat["agent.name"] == "ppo"
    assert flat["stages.0.a"] == "1" and flat["stages.1.a"] == "2"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("[truncated]")
    assert flat["bad key_"] == "1"
    assert all(isinstance(v, str) for v in flat.values())

    h = tracking.scenario_hash(CHECKOUT)
    assert len(h) == 16 and int(h, 16) >= 0 and h == tracking.scenario_hash(CHECKOUT)
    other = tmp_path / "s.yaml"
    other.write_bytes(CHECKOUT.read_bytes() + b"\n")
    assert tracking.scenario_hash(other) != h

    def fake_run(args, **kwargs):
        assert args == ["git", "rev-parse", "HEAD"]
        assert Path(kwargs["cwd"]) == Path(tracking.__file__).resolve().parent
        return subprocess.CompletedProcess(args, 0, "a" * 40 + "\n", "")

    monkeypatch.setattr(tracking.subprocess, "run", fake_run)
    assert tracking.git_commit() == "a" * 40
    monkeypatch.setattr(tracking.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a[0], 128, "", "fatal: not a git repository"))
    assert tracking.git_commit() == "unknown"

    def missing(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(tracking.subprocess, "run", missing)
    assert tracking.git_commit() == "unknown"


# --------------------------------------------------------------------------- training


def test_training_logs_metrics_at_timesteps(mlflow_store, tmp_path) -> None:
    client = mlflow_store.client
    with mlflow.start_run(experiment_id=mlflow_store.experiment_id) as run:
        cb = tracking.MlflowMetricsCallback()
        result = train(CHECKOUT, _agent(tmp_path), tmp_path / "out", progress=False,
                       callbacks=[cb])
        assert tracking.log_eval_history(result.eval_history) > 0
    run_id = run.info.run_id
    assert result.timesteps == 256
    history = client.get_metric_history(run_id, "train_reward_mean")
    steps = [m.step for m in history]
    assert steps == cb.logged_steps and steps == sorted(steps) and len(steps) >= 2
    assert all(s % 64 == 0 and 0 < s <= 256 for s in steps) and steps[-1] == 256
    downtime = client.get_metric_history(run_id, "train_downtime_mean")
    assert [m.step for m in downtime] == steps and all(m.value > 0 for m in downtime)
    burn = client.get_metric_history(run_id, "train_budget_burn_mean")
    assert [m.step for m in burn] == steps and all(0 < m.value < 1 for m in burn)
    assert all(m.value < 0 for m in history)  # rewards are minus costs
    episodes = client.get_metric_history(run_id, "train_episodes")
    assert all(m.value >= 1 for m in episodes)
    ev = client.get_metric_history(run_id, "eval_mean_cost")
    assert [(m.step, m.value) for m in ev] == [(256, result.eval_history[-1]["mean_cost"])]
    data = client.get_run(run_id).data
    assert "eval_timesteps" not in data.metrics
    # the episodes per evaluation are the same every time: a param, logged once
    assert "eval_episodes" not in data.metrics and data.params["eval_episodes"] == "3"
    tracking.log_eval_history(result.eval_history, run_id)  # again: no conflict, no change
    assert client.get_run(run_id).data.params["eval_episodes"] == "3"


def test_callback_needs_a_run(tmp_path) -> None:
    cb = tracking.MlflowMetricsCallback()
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        cb._on_training_start()


# --------------------------------------------------------------------------- registry


N = 20  # held-out seeds of the synthetic promotion evidence


def _record(burns: list[float], recovered: int | None = None, seed: int = SEED
            ) -> dict[str, Any]:
    """A per-seed held-out record: the first ``recovered`` incidents recovered (default all),
    the rest ineffective."""
    recovered = len(burns) if recovered is None else recovered
    return {"seed": seed, "episodes": len(burns),
            "outcomes": ["recovered"] * recovered + ["rollback_ineffective"] * (len(burns)
                                                                                 - recovered),
            "budget_burn": list(burns), "downtime_s": [100.0 * b for b in burns]}


def _burns(level: float, jitter: float = 0.0, n: int = N) -> list[float]:
    """``level`` plus a fixed, zero-mean wiggle (the same per seed for every caller)."""
    wiggle = np.sin(np.arange(n) * 1.7)
    wiggle -= wiggle.mean()
    return [float(level + jitter * w) for w in wiggle]


def _noise(n: int = N) -> np.ndarray:
    """Per-seed differences that average slightly below zero by chance: no evidence."""
    wiggle = np.cos(np.arange(n) * 2.3)
    return 0.004 * (wiggle - wiggle.mean()) - 0.0001


def _evidence_version(policy: Path, name: str, experiment_id: str,
                      record: dict[str, Any]) -> Any:
    """A registered version whose run holds ``record`` as its ``eval_holdout.json``."""
    with mlflow.start_run(experiment_id=experiment_id):
        tracking.log_per_seed(record)
        return tracking.log_policy_model(policy, CHECKOUT, registered_model_name=name)


def test_paired_test() -> None:
    base = np.array(_burns(0.05, 0.01))
    for test in ("wilcoxon", "bootstrap"):
        p, name = tracking.paired_test(base - 0.01, base, test)
        assert p < 0.05 and test in name, (test, p, name)
        p, _ = tracking.paired_test(base, base, test)
        assert p == 1.0  # identical: no evidence at all
        p, _ = tracking.paired_test(base + 0.01, base, test)
        assert p > 0.5  # higher is not lower
        p, _ = tracking.paired_test(base + _noise(), base, test)  # lower mean, by noise
        assert p >= 0.05, (test, p)
    assert tracking.paired_test(base - 0.01, base, "bootstrap") == tracking.paired_test(
        base - 0.01, base, "bootstrap")  # a fixed seed: the same p every time
    p, name = tracking.paired_test(base - 0.01, base)  # auto: scipy is installed here
    assert "wilcoxon" in name and p < 0.05
    with pytest.raises(ValueError):
        tracking.paired_test([1.0], [1.0, 2.0])


def test_promotion_needs_recoveries_and_a_significant_burn_reduction(mlflow_store,
                                                                     policy_zip) -> None:
    client = mlflow_store.client
    exp = mlflow_store.experiment_id
    name = "checkout-rollback"
    configured = _record(_burns(0.08, 0.02), recovered=18)
    promote = dict(scenario=CHECKOUT, eval_seed=SEED, episodes=N,
                   baselines={"configured": configured})

    # the first version: compared with the configured procedure
    v1 = _evidence_version(policy_zip, name, exp, _record(_burns(0.04, 0.01), recovered=19))
    first = tracking.promote_if_better(name, 1, **promote)
    assert first["promoted"] and first["champion_version"] == "1" and first["old"] is None
    assert first["sources"]["new"] == f"run {v1.run_id}"
    assert first["new"] == pytest.approx(0.04)
    assert first["metric"] == "eval_holdout_budget_burn_mean"
    assert first["recovered"] == {"new": 0.95, "configured": 0.9}
    assert first["p_value"] < 0.05 and "wilcoxon" in first["test"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    tags = client.get_model_version(name, "1").tags
    assert tags["shadowrl.promotion"].startswith("promoted")
    assert float(tags["shadowrl.promotion.p_value"]) == pytest.approx(first["p_value"])
    assert tags["shadowrl.promotion.recovered.new"] == "0.95"
    assert json.loads(tags["eval_holdout_per_seed"])["outcomes"] == "R" * 19 + "I"
    run_tags = client.get_run(v1.run_id).data.tags  # the run says the same
    assert run_tags["shadowrl.promotion"] == tags["shadowrl.promotion"]
    assert run_tags["shadowrl.promotion.test"] == first["test"]

    # lower mean burn (and cost) but fewer recoveries than the champion: not promoted
    _evidence_version(policy_zip, name, exp, _record(_burns(0.01, 0.002), recovered=17))
    fewer = tracking.promote_if_better(name, 2, **promote)
    assert not fewer["promoted"] and fewer["champion_version"] == "1"
    assert fewer["new"] < fewer["old"] and fewer["p_value"] < 0.05
    assert fewer["recovered"] == {"new": 0.85, "old": 0.95, "configured": 0.9}
    assert "fewer than version 1 (19/20), configured (18/20)" in fewer["reason"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert "not promoted" in client.get_model_version(name, "2").tags["shadowrl.promotion"]

    # a lower mean burn within the noise: not significant, not promoted
    champion = np.array(_burns(0.04, 0.01))
    _evidence_version(policy_zip, name, exp, _record(list(champion + _noise()), recovered=19))
    weak = tracking.promote_if_better(name, 3, **promote)
    assert weak["new"] < weak["old"] and weak["p_value"] >= 0.05
    assert not weak["promoted"] and weak["champion_version"] == "1"
    assert "not lower with evidence" in weak["reason"]

    # as many recoveries and clearly lower on the same incidents: promoted
    _evidence_version(policy_zip, name, exp, _record(list(champion * 0.6), recovered=19))
    better = tracking.promote_if_better(name, "4", **promote)
    assert better["promoted"] and better["champion_version"] == "4"
    assert better["p_value"] < 0.05 and better["old"] == pytest.approx(0.04)
    assert str(client.get_model_version_by_alias(name, "champion").version) == "4"
    again = tracking.promote_if_better(name, 4, **promote)  # already the champion
    assert not again["promoted"] and again["champion_version"] == "4"

    # more recoveries than the configured procedure is needed too, even without a champion
    _evidence_version(policy_zip, "other", exp, _record(_burns(0.01, 0.002), recovered=17))
    lone = tracking.promote_if_better("other", 1, **promote)
    assert not lone["promoted"] and lone["champion_version"] == ""
    assert "configured (18/20)" in lone["reason"]

    with pytest.raises(ValueError, match="metric must be one of"):
        tracking.promote_if_better(name, 4, metric="recovered_rate", **promote)


def test_promote_evaluates_what_is_missing(mlflow_store, policy_zip) -> None:
    """Versions without per-seed results on the seeds are evaluated (and tagged with them),
    the configured procedure too when the caller gives no baseline."""
    client = mlflow_store.client
    name = "fresh"
    _log_version(policy_zip, name, mlflow_store.experiment_id)  # no per-seed record at all
    result = tracking.promote_if_better(name, 1, scenario=CHECKOUT, eval_seed=SEED, episodes=3)
    assert result["sources"] == {"new": "evaluated", "configured": "evaluated"}
    env = RollbackEnv(CHECKOUT)
    episodes = evaluate(env, load_policy(policy_zip), 3, SEED)
    assert result["new"] == pytest.approx(np.mean([e.rehearsal.budget_burn for e in episodes]))
    # three incidents can never show a significant difference: no champion on that evidence
    assert not result["promoted"] and result["p_value"] >= 0.05
    tags = client.get_model_version(name, "1").tags
    assert float(tags["eval_holdout_budget_burn_mean"]) == pytest.approx(result["new"])
    assert float(tags["eval_holdout_recovered_rate"]) <= 1.0
    assert json.loads(tags["eval_holdout_per_seed"])["seed"] == SEED
    # the next decision reads the version's tag instead of evaluating again
    second = tracking.promote_if_better(name, 1, scenario=CHECKOUT, eval_seed=SEED, episodes=3)
    assert second["sources"]["new"] == "version tags"

    # a champion measured on other seeds is evaluated on the new ones
    other = SEED + 500
    client.set_registered_model_alias(name, "champion", "1")
    _evidence_version(policy_zip, name, mlflow_store.experiment_id,
                      _record([1.0, 1.0, 1.0], seed=other))  # hopeless
    fair = tracking.promote_if_better(name, 2, scenario=CHECKOUT, eval_seed=other, episodes=3)
    assert fair["sources"]["old"] == "evaluated" and not fair["promoted"]
    expected = np.mean([e.rehearsal.budget_burn for e in
                        evaluate(env, load_policy(policy_zip), 3, other)])
    assert fair["old"] == pytest.approx(expected)
    tags = client.get_model_version(name, "1").tags
    assert json.loads(tags["eval_holdout_per_seed"])["seed"] == other
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"


def test_log_holdout_writes_metrics_and_per_seed_results(mlflow_store, policy_zip,
                                                        tmp_path) -> None:
    env = RollbackEnv(CHECKOUT)
    episodes = evaluate(env, load_policy(policy_zip), 3, SEED)
    with mlflow.start_run(experiment_id=mlflow_store.experiment_id) as run:
        values = tracking.log_holdout(episodes, SEED)
    data = mlflow_store.client.get_run(run.info.run_id).data
    metrics = data.metrics
    # which incidents: constants of the run, params rather than metrics
    assert data.params["eval_holdout_seed"] == str(SEED)
    assert data.params["eval_holdout_episodes"] == "3"
    assert not {"eval_holdout_seed", "eval_holdout_episodes"} & set(metrics)
    for key in ("bad_requests", "budget_burn"):
        for q in ("mean", "p50", "p95", "max"):
            assert metrics[f"eval_holdout_{key}_{q}"] == pytest.approx(
                values[f"eval_holdout_{key}_{q}"])
    assert metrics["eval_holdout_budget_burn_mean"] == pytest.approx(
        np.mean([e.rehearsal.budget_burn for e in episodes]))
    path = mlflow_store.client.download_artifacts(run.info.run_id, "eval_holdout.json",
                                                  str(tmp_path))
    record = json.loads(Path(path).read_text())
    assert record["seed"] == SEED and record["episodes"] == 3
    assert record["outcomes"] == [e.rehearsal.outcome for e in episodes]
    assert record["budget_burn"] == [e.rehearsal.budget_burn for e in episodes]


def test_load_registered_policy(mlflow_store, policy_zip) -> None:
    name = "checkout-rollback"
    _log_version(policy_zip, name, mlflow_store.experiment_id, holdout=_holdout(1.0))
    mlflow_store.client.set_registered_model_alias(name, "champion", "1")
    policy = tracking.load_registered_policy(f"models:/{name}@champion")
    env = RollbackEnv(CHECKOUT)
    episodes = evaluate(env, policy, 3, SEED)
    assert len(episodes) == 3 and all(e.rehearsal is not None for e in episodes)
    local = evaluate(env, load_policy(policy_zip), 3, SEED)
    assert [e.actions for e in episodes] == [e.actions for e in local]
    assert tracking.load_registered_policy(f"models:/{name}/1").name == f"models:/{name}/1"
    with pytest.raises(ValueError, match=f"models:/{name}@missing.*no alias 'missing'"):
        tracking.load_registered_policy(f"models:/{name}@missing")
    with pytest.raises(ValueError, match="models:/nobody@champion.*no registered model"):
        tracking.load_registered_policy("models:/nobody@champion")
    with pytest.raises(ValueError, match="models:/NAME@ALIAS"):
        tracking.load_registered_policy(f"models:/{name}")


def test_dead_server_fails_in_seconds_with_a_clear_message(dead_url, monkeypatch) -> None:
    """One request without retries, not MLflow's 7 retries with backoff (about 250 s)."""
    server = dead_url.rsplit("/", 1)[0]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    retries = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                              "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    assert retries["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] is not None  # bounded on import
    for call in (lambda: tracking.configure(server),
                 lambda: tracking.load_registered_policy("models:/x@champion")):
        start = time.monotonic()
        with pytest.raises(tracking.TrackingUnavailable) as info:
            call()
        assert time.monotonic() - start < 10
        message = str(info.value)
        assert f"MLflow tracking server {server} does not answer (connection refused)" in message
        assert "--tracking-uri" in message and "MLFLOW_TRACKING_URI" in message
    # the probe's own settings (no retry, a short timeout) do not outlive it
    assert {k: os.environ.get(k) for k in retries} == retries


def test_a_server_that_never_answers_times_out(monkeypatch) -> None:
    """A listening socket that accepts nothing: the probe's timeout, then the message."""
    monkeypatch.setattr(tracking, "PROBE_TIMEOUT_S", 1)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        server = f"http://127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(tracking.TrackingUnavailable, match="does not answer"):
            tracking.configure(server)
        assert time.monotonic() - start < 10


def test_stale_runs_of_dead_processes_are_failed(mlflow_store) -> None:
    client = mlflow_store.client
    exp = mlflow_store.experiment_id
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid names no process now
    me = tracking.process_tags()
    host = me["shadowrl.host"]

    def running(tags: dict[str, str]) -> str:
        return client.create_run(exp, tags=tags).info.run_id

    dead = running({"shadowrl.pid": str(gone.pid), "shadowrl.host": host})
    alive = running(me)
    reused = running({**me, "shadowrl.process_start": "1"})  # our pid, another process
    elsewhere = running({"shadowrl.pid": str(gone.pid), "shadowrl.host": host + "-other"})
    untagged = running({})
    finished = running({"shadowrl.pid": str(gone.pid), "shadowrl.host": host})
    client.set_terminated(finished, "FINISHED")

    marked = tracking.fail_stale_runs(exp, client)
    assert sorted(marked) == sorted([dead, reused])
    status = {r: client.get_run(r).info.status for r in (dead, alive, reused, elsewhere,
                                                         untagged, finished)}
    assert status == {dead: "FAILED", alive: "RUNNING", reused: "FAILED",
                      elsewhere: "RUNNING", untagged: "RUNNING", finished: "FINISHED"}
    assert f"process {gone.pid} on {host} ended" in client.get_run(dead).data.tags[
        "shadowrl.failure"]
    assert tracking.fail_stale_runs(exp, client) == []  # nothing left to mark


def test_end_run_records_the_status_and_why(mlflow_store) -> None:
    with mlflow.start_run(experiment_id=mlflow_store.experiment_id) as run:
        tracking.end_run("KILLED", "stopped by SIGTERM in process 1")
    assert mlflow.active_run() is None
    got = mlflow_store.client.get_run(run.info.run_id)
    assert got.info.status == "KILLED"
    assert got.data.tags["shadowrl.failure"] == "stopped by SIGTERM in process 1"
    tracking.end_run("FAILED")  # no active run: nothing to do


def test_missing_store_is_an_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/nothing/mlflow.db")
    with pytest.raises(ValueError, match="no MLflow tracking store"):
        tracking.load_registered_policy("models:/x@champion")
    assert not (tmp_path / "nothing").exists()


# --------------------------------------------------------------------------- pyfunc


def _check_plan(plan: list[dict[str, Any]]) -> None:
    sc = load_scenario(CHECKOUT)
    names = [p["step"] for p in plan]
    assert len(names) == len(set(names))
    for p in plan:
        step = sc.procedure.step(p["step"])
        assert p["action"] == step.action and p["target"] == step.target
        assert set(p["settings"]) == set(step.tunables())
        for key, value in p["settings"].items():
            assert value in step.tunables()[key].choices
        for dep in step.after:
            assert dep in names[:names.index(p["step"])] or sc.procedure.step(dep).optional
    required = [s.name for s in sc.procedure.steps if not s.optional]
    assert set(required) <= set(names)


def test_pyfunc_predicts_rehearsal_backed_plans(mlflow_store, policy_zip) -> None:
    info = _log_version(policy_zip, None, mlflow_store.experiment_id)
    model = mlflow.pyfunc.load_model(info.model_uri)
    schema = model.metadata.get_input_schema()
    assert "failing_rules" in schema.input_names()
    assert "web.latency_p99_ms" in schema.input_names()
    assert all(not col.required for col in schema.inputs)

    env = RollbackEnv(CHECKOUT)
    env.reset(seed=7)
    incident = env.injection.incident
    frame = tracking.breach_frame(env)
    healthy_only = pd.DataFrame([{"failing_rules": "edge-errors", "web.error_rate": 1,
                                  "orders.latency_p99_ms": 500}])  # ints, other columns missing
    out = model.predict(pd.concat([frame, healthy_only], ignore_index=True))
    assert list(out.columns[:4]) == ["matched_seed", "matched_incident", "plan",
                                     "expected_downtime_s"]
    assert len(out) == 2
    first = out.iloc[0]
    assert first["matched_seed"] == 7 and first["matched_incident"] == incident
    assert first["match_distance"] == pytest.approx(0.0, abs=1e-9)
    plan = json.loads(first["plan"])
    _check_plan(plan)
    episode = run_episode(RollbackEnv(CHECKOUT), load_policy(policy_zip), 7)
    assert first["expected_downtime_s"] == pytest.approx(episode.rehearsal.downtime_s)
    assert first["outcome"] == episode.rehearsal.outcome
    _check_plan(json.loads(out.iloc[1]["plan"]))
    assert 0 <= out.iloc[1]["matched_seed"] < 64

    as_list = model.predict(frame.assign(failing_rules=[frame["failing_rules"].iloc[0].split(
        ",")]))
    assert as_list.iloc[0]["matched_seed"] == 7
    python_model = model.unwrap_python_model()
    with pytest.raises(ValueError, match="web.error_rate"):
        python_model.predict(None, pd.DataFrame([{"web.error_rate": "high"}]))


# --------------------------------------------------------------------------- export


def _procedure_file(folder: Path, header: bool = True) -> Path:
    sc = load_scenario(CHECKOUT)
    path = folder / ("procedure.yaml" if header else "plain/procedure.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump({"apiVersion": "shadowrl/v1", "kind": "Procedure",
                           "metadata": {"name": "checkout-rollback", "scenario": "checkout"},
                           "procedure": procedure_to_data(sc.procedure)}, sort_keys=False)
    text = ("# best static order and settings found by `shadowrl optimize "
            "envs/checkout.yaml`\n# held-out evaluation (5 incidents): downtime mean "
            "310s p95 400s; outcomes {'recovered': 5}\n") if header else ""
    path.write_text(text + body)
    return path


def test_load_export_source(mlflow_store, policy_zip, tmp_path) -> None:
    client = mlflow_store.client
    proc = _procedure_file(tmp_path)
    info = _log_version(policy_zip, "checkout-rollback", mlflow_store.experiment_id,
                        holdout=_holdout(300.0), procedure=proc)
    run_id = info.run_id
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"procedure.yaml", "scenario"} <= arts

    src = tracking.load_export_source(run_id)
    assert src.procedure.name == "checkout-rollback" and src.origin == run_id
    assert src.scenario is not None and src.scenario_name == "checkout"
    assert src.command == "shadowrl optimize envs/checkout.yaml"
    assert src.evaluation["downtime_s"] == {"mean": 310.0, "p95": 400.0}  # the file's header

    summary = {"scenario": "checkout", "policy": "rl", "runs": 7,
               "downtime_s": {"mean": 123.0, "p50": 1.0, "p95": 200.0, "max": 300.0},
               "outcomes": {"recovered": 7}}
    tracking.log_run_files(summary=summary, run_id=run_id)
    assert tracking.load_export_source(run_id).evaluation == summary

    client.set_registered_model_alias("checkout-rollback", "champion", "1")
    by_alias = load_source("models:/checkout-rollback@champion", resolvers=RESOLVERS)
    assert by_alias.procedure.name == "checkout-rollback"
    assert "downtime mean 123s p95 200s" in to_shell(by_alias)

    # A version without a run: the procedure comes from the model's own artifact.
    client.create_model_version("checkout-rollback", info.model_uri)
    client.set_registered_model_alias("checkout-rollback", "bare", "2")
    bare = tracking.load_export_source("models:/checkout-rollback@bare")
    assert bare.procedure.name == "checkout-rollback" and bare.scenario is not None

    # A plain run (no model): procedure and scenario files, evaluation from its metrics.
    with mlflow.start_run(experiment_id=mlflow_store.experiment_id) as plain:
        mlflow.log_metrics({**_holdout(99.0, episodes=4), "eval_holdout_recovered_rate": 0.5})
        tracking.log_run_files(CHECKOUT, _procedure_file(tmp_path, header=False))
    src = tracking.load_export_source(plain.info.run_id)
    assert src.scenario is not None and src.command is None
    assert src.evaluation == {"downtime_s": {"mean": 99.0}, "runs": 4,
                              "outcomes": {"recovered": 2}}
    assert client.get_run(plain.info.run_id).data.tags["shadowrl.scenario_hash"] == \
        tracking.scenario_hash(CHECKOUT)

    # today's runs: the incidents as params
    with mlflow.start_run(experiment_id=mlflow_store.experiment_id) as params_run:
        mlflow.log_metrics({"eval_holdout_downtime_mean": 88.0,
                            "eval_holdout_recovered_rate": 0.75})
        mlflow.log_params(tracking.holdout_params(SEED, 4))
        tracking.log_run_files(CHECKOUT, _procedure_file(tmp_path, header=False))
    assert tracking.load_export_source(params_run.info.run_id).evaluation == {
        "downtime_s": {"mean": 88.0}, "runs": 4, "outcomes": {"recovered": 3}}

    with mlflow.start_run(experiment_id=mlflow_store.experiment_id) as empty:
        pass
    with pytest.raises(LookupError, match="no procedure.yaml"):
        tracking.load_export_source(empty.info.run_id)
    with pytest.raises(ValueError, match="no MLflow run"):
        tracking.load_export_source("f" * 32)
    with pytest.raises(ValueError, match="no alias 'nope'"):
        tracking.load_export_source("models:/checkout-rollback@nope")


def _runbook_file(folder: Path, branches: int) -> Path:
    """A runbook for checkout: ``branches`` branches (on web's error rate), then the default."""
    sc = load_scenario(CHECKOUT)
    proc = procedure_to_data(sc.procedure)
    data = {"apiVersion": "shadowrl/v1", "kind": "Runbook",
            "metadata": {"name": f"checkout-runbook-{branches}", "scenario": "checkout"},
            "branches": [{"name": f"web-errors-{i}",
                          "when": [{"component": "web", "metric": "error_rate",
                                    "above": 0.05 * (i + 1)}],
                          "procedure": {**proc, "name": f"branch-{i}"}}
                         for i in range(branches)],
            "default": {"procedure": proc}}
    path = folder / f"runbook-{branches}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_model_exports_its_runbook_when_it_branches(mlflow_store, policy_zip,
                                                      tmp_path) -> None:
    from shadowrl.export.renderers import render

    client = mlflow_store.client
    proc = _procedure_file(tmp_path)
    for name, branches in (("with-branches", 2), ("one-procedure", 0)):
        with mlflow.start_run(experiment_id=mlflow_store.experiment_id):
            info = tracking.log_policy_model(policy_zip, CHECKOUT, procedure_path=proc,
                                             runbook_path=_runbook_file(tmp_path, branches),
                                             registered_model_name=name)
        client.set_registered_model_alias(name, "champion", "1")
        src = load_source(f"models:/{name}@champion", resolvers=RESOLVERS)
        if branches:
            assert src.runbook is not None and len(src.runbook.branches) == 2
            argo = yaml.safe_load(render(src, "argo"))
            whens = [t.get("when", "") for tmpl in argo["spec"]["templates"]
                     for t in tmpl.get("dag", {}).get("tasks", [])]
            assert any("0.1" in w for w in whens), whens  # the second branch's threshold
        else:  # a runbook that is one procedure alone: the procedure is exported
            assert src.runbook is None and src.procedure.name == "checkout-rollback"
        # a version without a run reads the model's own runbook artifact
        client.create_model_version(name, info.model_uri)
        bare = tracking.load_export_source(f"models:/{name}/2")
        assert (bare.runbook is not None) == bool(branches)


# --------------------------------------------------------------------------- server


def test_registry_flow_against_mlflow_server(mlflow_server, policy_zip, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracking.configure(tracking.tracking_uri())
    try:
        client = mlflow.MlflowClient()
        assert client._tracking_client.tracking_uri == mlflow_server
        exp = client.create_experiment("server-flow")
        name = "served-rollback"
        promote = dict(scenario=CHECKOUT, eval_seed=SEED, episodes=N,
                       baselines={"configured": _record(_burns(0.08, 0.02))})
        v1 = _evidence_version(policy_zip, name, exp, _record(_burns(0.04, 0.01)))
        assert int(v1.registered_model_version) == 1
        assert tracking.promote_if_better(name, 1, **promote)["promoted"]
        _evidence_version(policy_zip, name, exp, _record(_burns(0.041, 0.01)))
        worse = tracking.promote_if_better(name, 2, **promote)
        assert not worse["promoted"] and worse["champion_version"] == "1"
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
        policy = tracking.load_registered_policy(f"models:/{name}@champion")
        assert len(evaluate(RollbackEnv(CHECKOUT), policy, 3, SEED)) == 3
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]

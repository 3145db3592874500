"""Use case ``train``: run an experiment file end to end.

A run trains the agent on Ray shadow replicas, logs params/metrics/artifacts to MLflow,
measures the policy against the configured and best static procedures on held-out seeds,
logs the policy as a pyfunc model, registers it, and moves the ``champion`` alias only when
it recovers at least as many held-out incidents as the champion and the configured and best
static procedures and burns less error budget than the champion by a paired test (p < 0.05).
Ray and MLflow are imported when it runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from shadowrl.app.common import LogFn, ProgressFn
from shadowrl.app.errors import UsageError
from shadowrl.app.experiment import Experiment, load_experiment, run_sweep
from shadowrl.app.models import Promotion, RayInfo, SweepResult, TrainResult
from shadowrl.core.spec import Scenario, load_scenario
from shadowrl.rl.results import OptimizeResult

if TYPE_CHECKING:
    from shadowrl.rl.agents import AgentConfig


class TrainRequest(BaseModel):
    experiment: Path  # experiments/*.yaml
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    ray_address: str | None = None  # default: RAY_ADDRESS, else a local Ray
    out: Path | None = None  # default: runs/NAME/TIMESTAMP


def train(request: TrainRequest, *, on_progress: ProgressFn | None = None,
          on_log: LogFn | None = None) -> TrainResult:
    """Raises SpecError for a bad experiment (or its scenario or agent file), UsageError when
    the run cannot start or go on (e.g. an unreachable Ray address)."""
    exp = load_experiment(request.experiment)
    try:
        return _run(exp, request, on_progress, on_log or (lambda _m: None))
    except (ConnectionError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _run(exp: Experiment, request: TrainRequest, progress: ProgressFn | None,
         log: LogFn) -> TrainResult:
    import mlflow

    from shadowrl.integrations import mlflow as tracking
    from shadowrl.integrations.ray import ray_session
    from shadowrl.rl.agents import load_agent_config

    scenario_path = exp.path_of(exp.scenario)
    scenario = load_scenario(scenario_path)
    config = load_agent_config(exp.path_of(exp.agent))
    if exp.timesteps:
        config.timesteps = exp.timesteps
    config.n_envs = exp.replicas
    objective = exp.objective_env(config.env)
    config.env = {**config.env, **objective}
    uri = tracking.tracking_uri(request.tracking_uri)
    tracking.configure(uri)
    mlflow.set_experiment(exp.tracking.experiment)
    out_dir = (request.out or Path("runs") / exp.metadata.name
               / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with ray_session(request.ray_address) as session:
        ray = RayInfo(address=getattr(session, "address", None), replicas=exp.replicas)
        sweep = None
        if exp.sweep is not None:
            sweep = run_sweep(exp, out_dir, log)
            config.hyperparameters = {**config.hyperparameters, **sweep.params}
        with mlflow.start_run(run_name=exp.metadata.name) as run:
            mlflow.log_params(tracking.flatten({
                "agent": config.model_dump(mode="json"), "scenario": scenario.name,
                "scenario_hash": tracking.scenario_hash(scenario_path), "seed": exp.seed,
                "git_commit": tracking.git_commit(), "replicas": exp.replicas,
                "experiment_file": str(request.experiment)}))
            policy_zip = _train_policy(exp, config, scenario_path, out_dir, sweep, log, progress)
            log("measuring configured, best_static and rl on the held-out seeds")
            compared, per_seed = _compare(exp, scenario, out_dir, policy_zip, request.experiment,
                                          objective, log, progress)
            _rehearse_policy(exp, scenario, config.env, out_dir, request.experiment)
            _log_artifacts(scenario_path, out_dir)
            info = tracking.log_policy_model(out_dir / "policy.zip", scenario_path,
                                             procedure_path=out_dir / "procedure.yaml",
                                             registered_model_name=exp.tracking.model)
            version = str(info.registered_model_version)
        log("deciding the champion on the held-out seeds")
        promoted = tracking.promote_if_better(
            exp.tracking.model, version, scenario=scenario, eval_seed=exp.evaluation.seed,
            episodes=exp.evaluation.episodes,
            baselines={k: v for k, v in per_seed.items() if k != "rl"})
        log(f"champion: {promoted['reason']}")
    return TrainResult(experiment=exp.metadata.name, tracking_uri=uri, out=str(out_dir), ray=ray,
                       sweep=sweep, run_id=run.info.run_id, model=exp.tracking.model,
                       version=version, champion=Promotion.model_validate(promoted),
                       methods={k: v.downtime_s for k, v in compared.methods.items()},
                       budget_burn={k: v.budget_burn for k, v in compared.methods.items()},
                       objective=objective["objective"], comparison=compared.comparison)


def _train_policy(exp: Experiment, config: AgentConfig, scenario_path: Path, out_dir: Path,
                  sweep: SweepResult | None, log: LogFn, progress: ProgressFn | None) -> Path:
    """The policy to register: the sweep's best trial's, else one trained now on Ray
    replicas with its metrics tracked; logs the training wall time."""
    import mlflow

    from shadowrl.integrations import mlflow as tracking
    from shadowrl.integrations.ray import RayVecEnv
    from shadowrl.rl.agents import train

    if sweep is not None:
        mlflow.log_dict({"trials": [t.model_dump(mode="json") for t in sweep.trials]},
                        "sweep.json")
        policy_zip, train_s = Path(sweep.policy), 0.0
    else:
        log(f"training {config.algorithm} on {exp.replicas} Ray replicas for "
            f"{config.timesteps} timesteps")
        trained = train(scenario_path, config, out_dir / "rl", seed=exp.seed,
                        progress=progress is not None, vec_env_factory=RayVecEnv,
                        callbacks=[tracking.MlflowMetricsCallback()])
        tracking.log_eval_history(trained.eval_history)
        policy_zip, train_s = Path(trained.model_path), trained.wall_s
    mlflow.log_metric("train_wall_s", train_s)
    return policy_zip


def _compare(exp: Experiment, scenario: Scenario, out_dir: Path, policy_zip: Path,
             experiment_file: Path, objective: dict[str, Any], log: LogFn,
             progress: ProgressFn | None) -> tuple[OptimizeResult, dict[str, Any]]:
    """configured, best_static and the policy on the held-out seeds, logged as metrics; the
    policy's per-seed results are logged as ``eval_holdout.json`` (what promotion pairs).
    Returns the comparison and every method's per-seed record."""
    import mlflow

    from shadowrl.integrations import mlflow as tracking
    from shadowrl.rl.optimizer import OptimizeOptions, optimize

    compared = optimize(scenario, out_dir, OptimizeOptions(
        method="search_rl", episodes=exp.evaluation.episodes, eval_seed=exp.evaluation.seed,
        seed=exp.seed, policy=policy_zip, search_trials=exp.search_trials, **objective),
        f"shadowrl train {experiment_file}", log=log, progress=progress)
    rl = compared.methods["rl"]
    metrics: dict[str, float] = {}
    for name, summary in compared.methods.items():
        metrics[f"holdout_{name}_downtime_mean"] = summary.downtime_s.mean
        metrics[f"holdout_{name}_budget_burn_mean"] = summary.budget_burn.mean
        metrics[f"holdout_{name}_recovered_rate"] = summary.outcomes.recovered / summary.runs
    p = tracking.HOLDOUT_PREFIX
    metrics.update({
        f"{p}downtime_mean": rl.downtime_s.mean,
        f"{p}downtime_p95": rl.downtime_s.p95,
        f"{p}failed_requests_mean": rl.failed_requests.mean,
        f"{p}cost_mean": rl.cost.mean,
        f"{p}recovered_rate": rl.outcomes.recovered / rl.runs,
        f"{p}seed": exp.evaluation.seed,
        f"{p}episodes": exp.evaluation.episodes})
    for key in ("bad_requests", "budget_burn"):
        stats = getattr(rl, key)
        metrics.update({f"{p}{key}_{q}": getattr(stats, q) for q in ("mean", "p50", "p95",
                                                                      "max")})
    mlflow.log_metrics(metrics)
    per_seed = json.loads(Path(compared.episodes_file).read_text())["methods"]
    tracking.log_per_seed(per_seed["rl"])
    return compared, per_seed


def _rehearse_policy(exp: Experiment, scenario: Scenario, env_kwargs: dict[str, Any],
                     out_dir: Path, experiment_file: Path) -> None:
    """The learned policy rehearsed with per-second profiles: report.html, parquet."""
    from shadowrl.analysis.summary import summarize
    from shadowrl.rehearsal.campaign import write_outputs
    from shadowrl.rl.agents import load_policy
    from shadowrl.rl.env import RollbackEnv
    from shadowrl.rl.evaluate import evaluate

    env = RollbackEnv(scenario, record_profile=True, **env_kwargs)
    episodes = evaluate(env, load_policy(out_dir / "policy.zip"),
                        min(20, exp.evaluation.episodes), exp.evaluation.seed)
    runs = [e.rehearsal for e in episodes]
    write_outputs(out_dir / "rehearsal", scenario, summarize(scenario.name, "rl", runs), runs,
                  f"shadowrl train {experiment_file}")


def _log_artifacts(scenario_path: Path, out_dir: Path) -> None:
    import mlflow

    for artifact in (scenario_path, out_dir / "bottlenecks.json", out_dir / "comparison.md",
                     out_dir / "procedure.yaml", out_dir / "summary.json",
                     out_dir / "episodes.json",
                     out_dir / "rehearsal" / "report.html",
                     out_dir / "rehearsal" / "profiles.parquet"):
        mlflow.log_artifact(str(artifact))

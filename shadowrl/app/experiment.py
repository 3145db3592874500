"""Experiments: one file ties a scenario, an agent config, Ray replicas, seeds, evaluation
and MLflow names together; ``shadowrl train EXPERIMENT.yaml`` runs it end to end.

A run trains the agent on Ray shadow replicas, logs params/metrics/artifacts to MLflow,
measures the policy against the configured and best static procedures on held-out seeds,
logs the policy as a pyfunc model, registers it, and moves the ``champion`` alias only when
it beats the current champion on the same seeds. With a ``sweep:`` block, a Ray Tune search
over agent hyperparameters picks the configuration first.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shadowrl.core.spec import Problem, SpecError, load_scenario, load_yaml_file, validate_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class ExperimentMetadata(_Strict):
    name: str
    description: str = ""


class Evaluation(_Strict):
    episodes: int = Field(default=100, ge=1)
    seed: int = 10000


class Tracking(_Strict):
    experiment: str
    model: str


class Sweep(_Strict):
    """Ray Tune search: a numeric ``[low, high]`` range (log-uniform when high/low >= 10) or
    ``{choices: [...]}`` per hyperparameter."""

    samples: int = Field(default=8, ge=1)
    timesteps: int | None = Field(default=None, ge=1)  # per trial; default: the experiment's
    params: dict[str, list[float] | dict[str, list[Any]]]

    @field_validator("params")
    @classmethod
    def _ranges(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, spec in value.items():
            if isinstance(spec, dict):
                if set(spec) != {"choices"} or not spec["choices"]:
                    raise ValueError(f"{key}: use [low, high] or {{choices: [...]}}")
            elif len(spec) != 2 or spec[0] > spec[1]:
                raise ValueError(f"{key}: a range is [low, high] with low <= high")
        return value


class Experiment(_Strict):
    api_version: Literal["shadowrl/v1"] = Field(alias="apiVersion")
    kind: Literal["Experiment"]
    metadata: ExperimentMetadata
    scenario: str
    agent: str = "../agents/maskable_ppo.yaml"
    timesteps: int | None = Field(default=None, ge=1)
    replicas: int = Field(default=2, ge=1)
    seed: int = 0
    evaluation: Evaluation = Field(default_factory=Evaluation)
    tracking: Tracking
    sweep: Sweep | None = None
    search_trials: int = Field(default=100, ge=1)  # best_static search budget for comparison

    def path_of(self, value: str) -> Path:
        base: Path = self.__dict__.get("_base", Path("."))
        return (base / value).resolve()


def load_experiment(path: str | Path) -> Experiment:
    """Load an experiment; its scenario and agent files are validated too (paths are
    relative to the experiment file)."""
    file = str(path)
    data, lines = load_yaml_file(path)
    exp = validate_model(Experiment, data, file, lines)
    exp.__dict__["_base"] = Path(path).resolve().parent
    problems = []
    for key in ("scenario", "agent"):
        target = exp.path_of(getattr(exp, key))
        if not target.is_file():
            problems.append(Problem(file, lines.line((key,)), key, f"no such file: {target}"))
    if problems:
        raise SpecError(problems)
    load_scenario(exp.path_of(exp.scenario))
    from shadowrl.rl.agents import load_agent_config

    load_agent_config(exp.path_of(exp.agent))
    return exp


# --------------------------------------------------------------------------- sweep


def _search_space(sweep: Sweep) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for key, spec in sweep.params.items():
        if isinstance(spec, dict):
            space[key] = tune.choice(spec["choices"])
        else:
            low, high = float(spec[0]), float(spec[1])
            space[key] = (tune.loguniform(low, high) if low > 0 and high / low >= 10
                          else tune.uniform(low, high))
    return space


def run_sweep(exp: Experiment, out_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Ray Tune over the agent's hyperparameters; returns the best trial's params/policy."""
    from ray import tune

    from shadowrl.rl.agents import load_agent_config

    base = load_agent_config(exp.path_of(exp.agent))
    scenario_path = exp.path_of(exp.scenario)
    timesteps = exp.sweep.timesteps or exp.timesteps or base.timesteps  # type: ignore[union-attr]
    eval_seed, episodes = exp.evaluation.seed + 50_000, min(exp.evaluation.episodes, 50)

    def trainable(params: dict[str, Any]) -> dict[str, Any]:
        import torch

        from shadowrl.rl.agents import load_policy, train
        from shadowrl.rl.env import RollbackEnv
        from shadowrl.rl.evaluate import evaluate

        torch.set_num_threads(1)
        config = base.model_copy(deep=True)
        config.hyperparameters = {**config.hyperparameters, **params}
        trial_dir = out_dir / "sweep" / tune.get_context().get_trial_id()
        result = train(scenario_path, config, trial_dir, seed=exp.seed, timesteps=timesteps,
                       progress=False)
        env = RollbackEnv(scenario_path, **config.env)
        eps = evaluate(env, load_policy(result.model_path), episodes, eval_seed)
        cost = sum(e.cost for e in eps) / len(eps)
        downtime = sum(e.rehearsal.downtime_s for e in eps) / len(eps)
        return {"cost": cost, "downtime": downtime, "policy": str(result.model_path)}

    log(f"sweep: {exp.sweep.samples} trials of {timesteps} timesteps")  # type: ignore[union-attr]
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=_search_space(exp.sweep),  # type: ignore[arg-type]
        tune_config=tune.TuneConfig(num_samples=exp.sweep.samples,  # type: ignore[union-attr]
                                    metric="cost", mode="min"),
        run_config=tune.RunConfig(storage_path=str((out_dir / "tune").resolve()),
                                  name=exp.metadata.name, verbose=0),
    )
    # Tune prints progress tables on stdout; `--json` promises stdout holds one JSON object.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    with contextlib.redirect_stdout(sys.stderr):
        grid = tuner.fit()
    best = grid.get_best_result(metric="cost", mode="min")
    trials = [{"params": r.config, "cost": r.metrics.get("cost"),
               "downtime": r.metrics.get("downtime")} for r in grid if r.metrics]
    return {"params": best.config, "cost": best.metrics["cost"],
            "downtime": best.metrics["downtime"], "policy": best.metrics["policy"],
            "trials": trials}


# --------------------------------------------------------------------------- the run


def run_experiment(path: str | Path, *, tracking_uri: str | None = None,
                   ray_address: str | None = None, out_dir: Path | None = None,
                   log: Callable[[str], None] = lambda _m: None,
                   progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    import mlflow

    from shadowrl.analysis.summary import summarize
    from shadowrl.integrations import mlflow as tracking
    from shadowrl.integrations.ray import RayVecEnv, ray_session
    from shadowrl.rehearsal.campaign import write_outputs
    from shadowrl.rl.agents import load_agent_config, load_policy, train
    from shadowrl.rl.env import RollbackEnv
    from shadowrl.rl.evaluate import evaluate
    from shadowrl.rl.optimizer import OptimizeOptions, optimize

    exp = load_experiment(path)
    scenario_path = exp.path_of(exp.scenario)
    scenario = load_scenario(scenario_path)
    config = load_agent_config(exp.path_of(exp.agent))
    if exp.timesteps:
        config.timesteps = exp.timesteps
    config.n_envs = exp.replicas
    uri = tracking.tracking_uri(tracking_uri)
    tracking.configure(uri)
    mlflow.set_experiment(exp.tracking.experiment)
    out_dir = (out_dir or Path("runs") / exp.metadata.name
               / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"experiment": exp.metadata.name, "tracking_uri": uri,
                              "out": str(out_dir)}
    with ray_session(ray_address) as session:
        result["ray"] = {"address": getattr(session, "address", None),
                         "replicas": exp.replicas}
        sweep_result = None
        if exp.sweep is not None:
            sweep_result = run_sweep(exp, out_dir, log)
            config.hyperparameters = {**config.hyperparameters, **sweep_result["params"]}
            result["sweep"] = sweep_result
        with mlflow.start_run(run_name=exp.metadata.name) as run:
            result["run_id"] = run.info.run_id
            mlflow.log_params(tracking.flatten({
                "agent": config.model_dump(mode="json"), "scenario": scenario.name,
                "scenario_hash": tracking.scenario_hash(scenario_path), "seed": exp.seed,
                "git_commit": tracking.git_commit(), "replicas": exp.replicas,
                "experiment_file": str(Path(path))}))
            if sweep_result is not None:
                policy_zip = Path(sweep_result["policy"])
                mlflow.log_dict({"trials": sweep_result["trials"]}, "sweep.json")
                train_s = 0.0
            else:
                log(f"training {config.algorithm} on {exp.replicas} Ray replicas for "
                    f"{config.timesteps} timesteps")
                trained = train(scenario_path, config, out_dir / "rl", seed=exp.seed,
                                progress=progress is not None, vec_env_factory=RayVecEnv,
                                callbacks=[tracking.MlflowMetricsCallback()])
                tracking.log_eval_history(trained.eval_history)
                policy_zip, train_s = Path(trained.model_path), trained.wall_s
            mlflow.log_metric("train_wall_s", train_s)
            log("measuring configured, best_static and rl on the held-out seeds")
            compared = optimize(scenario, out_dir, OptimizeOptions(
                method="search_rl", episodes=exp.evaluation.episodes,
                eval_seed=exp.evaluation.seed, seed=exp.seed, policy=policy_zip,
                search_trials=exp.search_trials), f"shadowrl train {path}", log=log,
                progress=progress)
            rl = compared["methods"]["rl"]
            for name, summary in compared["methods"].items():
                mlflow.log_metric(f"holdout_{name}_downtime_mean", summary["downtime_s"]["mean"])
            mlflow.log_metrics({
                "eval_holdout_downtime_mean": rl["downtime_s"]["mean"],
                "eval_holdout_downtime_p95": rl["downtime_s"]["p95"],
                "eval_holdout_failed_requests_mean": rl["failed_requests"]["mean"],
                "eval_holdout_seed": exp.evaluation.seed,
                "eval_holdout_episodes": exp.evaluation.episodes})
            # the learned policy rehearsed with per-second profiles: report.html, parquet
            env = RollbackEnv(scenario, record_profile=True, **config.env)
            episodes = evaluate(env, load_policy(out_dir / "policy.zip"),
                                min(20, exp.evaluation.episodes), exp.evaluation.seed)
            runs = [e.rehearsal for e in episodes]
            write_outputs(out_dir / "rehearsal", scenario, summarize(
                scenario.name, "rl", runs), runs, f"shadowrl train {path}")
            for artifact in (scenario_path, out_dir / "bottlenecks.json",
                             out_dir / "comparison.md", out_dir / "procedure.yaml",
                             out_dir / "summary.json", out_dir / "rehearsal" / "report.html",
                             out_dir / "rehearsal" / "profiles.parquet"):
                mlflow.log_artifact(str(artifact))
            info = tracking.log_policy_model(out_dir / "policy.zip", scenario_path,
                                             procedure_path=out_dir / "procedure.yaml",
                                             registered_model_name=exp.tracking.model)
            version = str(info.registered_model_version)
        promoted = tracking.promote_if_better(
            exp.tracking.model, version, scenario=scenario, eval_seed=exp.evaluation.seed,
            episodes=exp.evaluation.episodes)
    result.update({"model": exp.tracking.model, "version": version, "champion": promoted,
                   "methods": {k: v["downtime_s"] for k, v in compared["methods"].items()},
                   "comparison": compared["comparison"]})
    return result

"""Experiments: one file ties a scenario, an agent config, Ray replicas, seeds, evaluation
and MLflow names together; ``shadowrl train EXPERIMENT.yaml`` runs it end to end.

This module holds the experiment file model and the Ray Tune sweep; the run itself is the
``train`` use case (``shadowrl.app.train``). With a ``sweep:`` block, a Ray Tune search over
agent hyperparameters picks the configuration first.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shadowrl.app.models import SweepResult, SweepTrial
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
    # what the policy, the search and the comparison minimise; default: the agent config's
    # env block, else budget
    objective: Literal["budget", "downtime"] | None = None
    full_outage_penalty: float | None = Field(default=None, ge=0)

    def path_of(self, value: str) -> Path:
        base: Path = self.__dict__.get("_base", Path("."))
        return (base / value).resolve()

    def objective_env(self, agent_env: dict[str, Any]) -> dict[str, Any]:
        """The RollbackEnv objective arguments of this experiment: its own ``objective`` and
        ``full_outage_penalty``, else the agent config's ``env`` block's, else the defaults
        (budget, no penalty)."""
        objective = self.objective or agent_env.get("objective") or "budget"
        penalty = (self.full_outage_penalty if self.full_outage_penalty is not None
                   else agent_env.get("full_outage_penalty", 0.0))
        return {"objective": objective, "full_outage_penalty": float(penalty)}


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


def run_sweep(exp: Experiment, out_dir: Path, log: Callable[[str], None]) -> SweepResult:
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
        config.env = {**config.env, **exp.objective_env(config.env)}
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
    trials = [SweepTrial(params=r.config, cost=r.metrics.get("cost"),
                         downtime=r.metrics.get("downtime")) for r in grid if r.metrics]
    return SweepResult(params=best.config, cost=best.metrics["cost"],
                       downtime=best.metrics["downtime"], policy=best.metrics["policy"],
                       trials=trials)

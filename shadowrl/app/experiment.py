"""Experiments: one file ties a scenario, an agent config, Ray replicas, seeds, evaluation
and MLflow names together; ``shadowrl train EXPERIMENT.yaml`` runs it end to end.

This module holds the experiment file model and the Ray Tune sweep; the run itself is the
``train`` use case (``shadowrl.app.train``). With a ``sweep:`` block, a Ray Tune search over
agent hyperparameters picks the configuration first. Every value is bounded
(docs/inputs.md): ``metadata.name`` names an output folder, so it is a slug, never a path.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from shadowrl.app.models import SweepResult, SweepTrial
from shadowrl.core.spec import (
    MAX_FILE_BYTES,
    PathKey,
    Problem,
    Problems,
    SpecError,
    format_path,
    load_scenario,
    load_yaml_file,
    shown,
    validate_model,
)
from shadowrl.rehearsal.verification import MAX_VERIFY_RUNS

if TYPE_CHECKING:
    from shadowrl.core.spec import Scenario
    from shadowrl.rl.agents import AgentConfig

# Bounds (docs/inputs.md). The run-size ones match shadowrl.rl.agents' (MAX_TIMESTEPS,
# MAX_N_ENVS, MAX_SEED) and shadowrl.rl.search's MAX_TRIALS; tests check they agree.
SLUG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # fullmatch: one safe path component
MAX_NAME_CHARS = 64
MAX_TRACKING_CHARS = 128
MAX_PATH_CHARS = 1024
MAX_TIMESTEPS = 10_000_000
MAX_REPLICAS = 256
MAX_SEED = 2**31 - 1  # + offsets (timesteps, episodes) stays below numpy's 2**32
MAX_EPISODES = 10_000
MAX_TRIALS = 10_000
MAX_SWEEP_SAMPLES = 1_000
MAX_SWEEP_PARAMS = 16
MAX_CHOICES = 64
MAX_SWEEP_CHECKS = 256  # combinations of the sweep's extremes checked against the agent
MAX_PENALTY = 1e6
SWEEP_EVAL_OFFSET = 50_000  # sweep trials evaluate on seeds evaluation.seed + this + i


def _slug(value: str, limit: int) -> str:
    if not SLUG_RE.fullmatch(value) or len(value) > limit:
        raise ValueError(f"invalid name {value[:80]!r}: use at most {limit} letters, digits, "
                         "'.', '_' and '-', starting with a letter or digit (it names a "
                         "folder: no '/', no '..')")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False,
                              str_max_length=10_000)


class ExperimentMetadata(_Strict):
    name: str
    description: str = ""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return _slug(value, MAX_NAME_CHARS)


class Evaluation(_Strict):
    episodes: StrictInt = Field(default=100, ge=1, le=MAX_EPISODES)
    seed: StrictInt = Field(default=10000, ge=0, le=MAX_SEED)


class Tracking(_Strict):
    experiment: str
    model: str

    @field_validator("experiment", "model")
    @classmethod
    def _safe_names(cls, value: str) -> str:
        return _slug(value, MAX_TRACKING_CHARS)


_NUMBER_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond any float
        return False


def _as_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string: such a string is taken as the number."""
    if isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()):
        return float(value)
    return value


def _range_problem(spec: Any) -> str | None:
    """What is wrong with one sweep parameter's ``[low, high]`` or ``{choices: [...]}``."""
    if isinstance(spec, dict):
        choices = spec.get("choices")
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            return "use [low, high] or {choices: [...]}"
        if len(choices) > MAX_CHOICES:
            return f"at most {MAX_CHOICES} choices, got {len(choices)}"
        if not all(c is None or isinstance(c, (bool, str)) or _is_number(c) for c in choices):
            return "choices are numbers, strings, true/false or null"
        return None
    if not isinstance(spec, list) or len(spec) != 2 or not all(_is_number(x) for x in spec):
        return "a range is [low, high] of two finite numbers; or use {choices: [...]}"
    if spec[0] > spec[1]:
        return "a range is [low, high] with low <= high"
    return None


class Sweep(_Strict):
    """Ray Tune search: a numeric ``[low, high]`` range (log-uniform when high/low >= 10;
    whole numbers for whole-number hyperparameters) or ``{choices: [...]}`` per
    hyperparameter."""

    samples: StrictInt = Field(default=8, ge=1, le=MAX_SWEEP_SAMPLES)
    timesteps: StrictInt | None = Field(default=None, ge=1, le=MAX_TIMESTEPS)  # per trial
    params: dict[str, Any]

    @field_validator("params")
    @classmethod
    def _ranges(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("name at least one hyperparameter to sweep")
        if len(value) > MAX_SWEEP_PARAMS:
            raise ValueError(f"at most {MAX_SWEEP_PARAMS} hyperparameters, got {len(value)}")
        out: dict[str, Any] = {}
        for key, spec in value.items():
            if isinstance(spec, list):
                spec = [_as_number(x) for x in spec]
            wrong = _range_problem(spec)
            if wrong:
                raise ValueError(f"{str(key)[:80]}: {wrong}")
            out[key] = spec
        return out


class Verify(_Strict):
    """A real backend to verify the trained policy on (against the configured procedure, on
    the first ``runs`` held-out seeds) before it may become champion."""

    backend: Literal["docker"]
    runs: StrictInt = Field(default=3, ge=1, le=MAX_VERIFY_RUNS)


class Experiment(_Strict):
    api_version: Literal["shadowrl/v1"] = Field(alias="apiVersion")
    kind: Literal["Experiment"]
    metadata: ExperimentMetadata
    scenario: str
    agent: str = "../agents/maskable_ppo.yaml"
    timesteps: StrictInt | None = Field(default=None, ge=1, le=MAX_TIMESTEPS)
    replicas: StrictInt = Field(default=2, ge=1, le=MAX_REPLICAS)
    seed: StrictInt = Field(default=0, ge=0, le=MAX_SEED)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    tracking: Tracking
    sweep: Sweep | None = None
    # best_static search budget for the comparison
    search_trials: StrictInt = Field(default=100, ge=1, le=MAX_TRIALS)
    # what the policy, the search and the comparison minimise; default: the agent config's
    # env block, else budget
    objective: Literal["budget", "downtime"] | None = None
    full_outage_penalty: float | None = Field(default=None, ge=0, le=MAX_PENALTY)
    # a real backend the policy must pass verification on before it may become champion
    verify: Verify | None = None

    @field_validator("scenario", "agent")
    @classmethod
    def _plain_path(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("expected a file path, got an empty string")
        if len(value) > MAX_PATH_CHARS:
            raise ValueError(f"path too long ({len(value)} characters; the limit is "
                             f"{MAX_PATH_CHARS})")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("path contains control characters")
        return value

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
    relative to the experiment file), and the agent as this experiment runs it: with its
    timesteps, replicas, objective and every corner of its sweep."""
    file = str(path)
    data, lines = load_yaml_file(path)
    exp = validate_model(Experiment, data, file, lines)
    exp.__dict__["_base"] = Path(path).resolve().parent
    problems = [Problem(file, lines.line((key,)), key, wrong)
                for key in ("scenario", "agent")
                if (wrong := _input_file_problem(exp, getattr(exp, key)))]
    if problems:
        raise SpecError(problems)
    scenario = load_scenario(exp.path_of(exp.scenario))
    from shadowrl.rl.agents import load_agent_config

    config = load_agent_config(exp.path_of(exp.agent))
    found = experiment_problems(exp, config, scenario) + verify_problems(exp)
    if found:
        raise SpecError.at_paths(file, lines, found)
    return exp


def verify_problems(exp: Experiment) -> Problems:
    """``verify.runs`` within the held-out incidents: the verification rehearses the first
    of them, which the comparison also measured on the simulator."""
    if exp.verify is not None and exp.verify.runs > exp.evaluation.episodes:
        return [(("verify", "runs"), f"{exp.verify.runs} is more than evaluation.episodes "
                                     f"({exp.evaluation.episodes}): the verification "
                                     f"rehearses the first held-out incidents")]
    return []


def _input_file_problem(exp: Experiment, value: str) -> str | None:
    """Why the scenario or agent file named ``value`` cannot be read, or None."""
    try:
        target = exp.path_of(value)
        if not target.is_file():
            return (f"not a regular file: {target}" if target.exists()
                    else f"no such file: {target}")
        size = target.stat().st_size
    except (OSError, RuntimeError, ValueError) as exc:  # too long, a symlink loop, ...
        return f"cannot use {value[:80]!r}: {getattr(exc, 'strerror', None) or exc}"
    if size > MAX_FILE_BYTES:
        return f"{target}: file too large ({size} bytes; the limit is {MAX_FILE_BYTES})"
    return None


def experiment_problems(exp: Experiment, config: AgentConfig,
                        scenario: Scenario | None = None) -> Problems:
    """The agent config as ``exp`` runs it (its timesteps, replicas and objective, each
    sweep corner), with problems placed on the experiment's fields."""
    from shadowrl.rl.agents import config_problems

    run = _as_run(exp, config, config.hyperparameters, exp.timesteps or config.timesteps)
    problems = _placed(config_problems(run), exp.agent)
    incident = config.env.get("incident")
    if scenario is not None and incident is not None and incident not in {
            i.name for i in scenario.incidents}:
        problems.append((("agent",), f"{exp.agent}: env.incident: {incident!r} is not an "
                                     f"incident of scenario '{scenario.name}'"))
    if exp.sweep is not None and not problems:
        problems += _sweep_problems(exp, config)
    return problems


def _as_run(exp: Experiment, config: AgentConfig, hyperparameters: dict[str, Any],
            timesteps: int) -> AgentConfig:
    return config.model_copy(update={
        "timesteps": timesteps, "n_envs": exp.replicas, "hyperparameters": hyperparameters,
        "env": {**config.env, **exp.objective_env(config.env)}})


def _placed(problems: Problems, agent_file: str) -> Problems:
    """Agent problems that come from this experiment's values, on the experiment's fields:
    timesteps and n_envs (= replicas) on theirs, the rest on ``agent``."""
    out: Problems = []
    for where, message in problems:
        if where == ("timesteps",):
            out.append((("timesteps",), message))
        elif where == ("n_envs",):
            out.append((("replicas",), message))
        else:
            out.append((("agent",), f"{agent_file}: {format_path(where)}: {message} (with "
                                    "this experiment's timesteps, replicas and objective)"))
    return out


def _corners(spec: Any) -> list[Any]:
    return list(spec["choices"]) if isinstance(spec, dict) else list(spec)


def _sweep_problems(exp: Experiment, config: AgentConfig) -> Problems:
    """Every hyperparameter the sweep sets is one the agent accepts, and every value it can
    draw is valid: each choice and both ends of each range, alone and (up to
    MAX_SWEEP_CHECKS combinations) together, at the trials' and the final run's timesteps."""
    from shadowrl.rl.agents import config_problems, integer_hyperparameter

    assert exp.sweep is not None
    base = config.hyperparameters
    params = exp.sweep.params
    budgets = {exp.sweep.timesteps or exp.timesteps or config.timesteps,
               exp.timesteps or config.timesteps}
    problems: Problems = []
    for key, spec in params.items():
        where: PathKey = ("sweep", "params", key)
        if not isinstance(spec, dict) and integer_hyperparameter(config.algorithm, key) and (
                not all(isinstance(x, int) for x in spec)):
            problems.append((where, f"{key} is a whole number: give the range as whole "
                                    "numbers"))
            continue
        for value in _corners(spec):
            found = config_problems(_as_run(exp, config, {**base, key: value}, max(budgets)))
            if found:
                problems.append((where, f"{value!r}: {format_path(found[0][0])}: "
                                        f"{found[0][1]}"))
                break
    if problems:
        return problems
    combos = itertools.islice(itertools.product(*(_corners(s) for s in params.values())),
                              MAX_SWEEP_CHECKS)
    for combo in combos:
        hp = {**base, **dict(zip(params, combo, strict=True))}
        for steps in sorted(budgets):
            found = config_problems(_as_run(exp, config, hp, steps))
            if found:
                combination = ", ".join(f"{k}={shown(v)}"
                                        for k, v in zip(params, combo, strict=True))
                return [(("sweep", "params"), f"the combination {combination} at {steps} "
                                             f"timesteps: {format_path(found[0][0])}: "
                                             f"{found[0][1]}")]
    return problems


# --------------------------------------------------------------------------- sweep


def _search_space(sweep: Sweep, algorithm: str = "maskable_ppo") -> dict[str, Any]:
    from ray import tune

    from shadowrl.rl.agents import integer_hyperparameter

    space: dict[str, Any] = {}
    for key, spec in sweep.params.items():
        if isinstance(spec, dict):
            space[key] = tune.choice(spec["choices"])
        elif integer_hyperparameter(algorithm, key):
            low, high = int(spec[0]), int(spec[1])
            space[key] = (tune.lograndint(low, high + 1) if low > 0 and high / low >= 10
                          else tune.randint(low, high + 1))
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
    eval_seed = exp.evaluation.seed + SWEEP_EVAL_OFFSET
    episodes = min(exp.evaluation.episodes, 50)

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
        param_space=_search_space(exp.sweep, base.algorithm),  # type: ignore[arg-type]
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

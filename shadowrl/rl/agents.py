"""RL agents for :class:`RollbackEnv`: agent configs, an algorithm registry, training and
loading trained policies.

An agent config (``agents/*.yaml``, RL-Zoo style) names a registered algorithm, its
constructor hyperparameters, the policy network, the number of parallel envs, the training
budget, the ``RollbackEnv`` keyword arguments and how often to evaluate and checkpoint::

    algorithm: maskable_ppo
    policy: MlpPolicy
    n_envs: 4
    timesteps: 60000
    hyperparameters: {learning_rate: 3.0e-4, n_steps: 256, gamma: 1.0}
    policy_kwargs: {net_arch: [128, 128]}
    env: {objective: budget, full_outage_penalty: 0.0}
    eval: {freq: 5000, episodes: 50, seed: 100000}
    checkpoint: {freq: 10000}

:func:`train` writes into its output folder ``policy.zip`` (the final model) with a sidecar
``policy.json`` (algorithm, scenario, action list), ``best_policy.zip`` (best mean cost on
the evaluation seeds), ``checkpoints/rl_model_<N>_steps.zip`` and ``train_state.json``.
Every value of a config has a documented range, and the run as a whole is bounded (rollout
buffer, gradient steps, evaluations, checkpoints): docs/inputs.md. A config that validates
builds and trains without an error inside SB3 or torch and without running for ever.

Evaluations during training run :func:`shadowrl.rl.evaluate.evaluate` on seeds
``eval.seed + i``, exactly like ``shadowrl evaluate``, so every evaluation faces the same
incidents and its numbers are comparable with the other policies'.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import sys
import time
import types
import typing
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, SupportsFloat

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    ValidationError,
)

from shadowrl.core.extras import missing_extra

try:
    import gymnasium as gym
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import A2C, DQN, PPO
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.utils import LinearSchedule, set_random_seed
    from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
except ImportError as exc:
    raise missing_extra("rl", exc) from exc

from shadowrl.core.atomic import atomic_write_json, atomic_write_with
from shadowrl.core.spec import (
    NAME_RE,
    LineMap,
    PathKey,
    Problems,
    Scenario,
    SpecError,
    as_scenario,
    format_path,
    load_yaml_file,
    shown,
    validate_model,
)
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.evaluate import evaluate
from shadowrl.rl.results import ORACLE_NODES

__all__ = [
    "ALGORITHMS", "AgentConfig", "AtomicCheckpointCallback", "CheckpointConfig", "CostEvalCallback",
    "EvalConfig", "SB3Policy", "TrainResult", "agent_config_from_data", "check_run",
    "config_problems", "env_args", "integer_hyperparameter",
    "load_agent_config", "load_policy", "make_vec_env_for", "read_sidecar", "register_algorithm",
    "sidecar_path", "train", "uses_masks",
]

# --------------------------------------------------------------------------- registry

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {
    "maskable_ppo": MaskablePPO,
    "ppo": PPO,
    "a2c": A2C,
    "dqn": DQN,
}

# Constructor arguments that the config sets through its own fields or that train() owns.
_RESERVED_ARGS = {"self", "policy", "env", "policy_kwargs", "seed", "device", "verbose",
                  "tensorboard_log", "_init_setup_model"}
# RollbackEnv arguments that are not plain YAML values or that train() owns.
_RESERVED_ENV_ARGS = {"self", "scenario", "procedure", "history", "render_mode"}
_SCHEDULED = {"learning_rate", "clip_range", "clip_range_vf"}
_LIN_RE = re.compile(r"^lin_([0-9.eE+-]+)$")
_ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh", "elu": "ELU", "leaky_relu": "LeakyReLU",
                "gelu": "GELU", "silu": "SiLU"}


def register_algorithm(name: str, cls: type[BaseAlgorithm]) -> None:
    """Make ``cls`` (an SB3-style algorithm class) available to configs as ``name``."""
    if not (isinstance(cls, type) and hasattr(cls, "load") and hasattr(cls, "learn")):
        raise TypeError(f"{cls!r} is not an SB3-style algorithm class")
    ALGORITHMS[name] = cls


def uses_masks(name: str) -> bool:
    """Whether the algorithm takes action masks (its ``predict`` has ``action_masks``)."""
    return _masked_class(ALGORITHMS[name])


def _masked_class(cls: type[BaseAlgorithm]) -> bool:
    return "action_masks" in inspect.signature(cls.predict).parameters


# --------------------------------------------------------------------------- config

# Bounds of an agent config (docs/inputs.md). Every hyperparameter has a documented range,
# and the ones that set how much work a run does are bounded together, so a config that
# validates neither crashes inside SB3/torch nor runs (or allocates) without end.
MAX_TIMESTEPS = 10_000_000  # ~70x the shipped agents' 150k: hours, not weeks
MAX_N_ENVS = 256
MAX_ROLLOUT = 262_144  # n_steps x n_envs: the rollout buffer of an on-policy update
MAX_BATCH = 65_536
MAX_GRADIENT_STEPS = 1_000_000  # minibatch updates over a whole run (~1 h at 3 ms each)
MAX_EVAL_EPISODES = 10_000  # per evaluation
MAX_EVAL_TOTAL = 100_000  # evaluation episodes over a whole run
MAX_CHECKPOINTS = 1_000  # checkpoints written over a whole run
MAX_LAYERS = 8
MAX_WIDTH = 1_024
MAX_SEED = 2**31 - 1
MAX_PENALTY = 1e6  # cost weights and penalties of the env block
MAX_REPLAY = 1_000_000  # DQN replay buffer transitions (SB3's default; ~0.5 GB on checkout)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EvalConfig(_Strict):
    freq: StrictInt = Field(default=5000, ge=1, le=MAX_TIMESTEPS,
                            description="timesteps between evaluations")
    episodes: StrictInt = Field(default=50, ge=1, le=MAX_EVAL_EPISODES)
    seed: StrictInt = Field(default=100_000, ge=0, le=MAX_SEED,
                            description="episode i uses seed + i")


class CheckpointConfig(_Strict):
    freq: StrictInt = Field(default=10_000, ge=1, le=MAX_TIMESTEPS,
                            description="timesteps between checkpoints")


class WarmStartConfig(_Strict):
    """Imitation of the oracle's plans before PPO (:mod:`shadowrl.rl.warm_start`)."""

    library_incidents: StrictInt = Field(
        default=30, ge=1, le=10_000,
        description="incidents the oracle solves; its distinct plans are the library")
    oracle_nodes: StrictInt = Field(
        default=ORACLE_NODES, ge=1, le=10_000_000,
        description="the oracle's node budget per library incident (its best plan within "
                    "them, proven optimal or not)")
    incidents: StrictInt = Field(
        default=1000, ge=2, le=100_000,
        description="training incidents every library plan is played on")
    neighbours: StrictInt = Field(
        default=20, ge=1, le=10_000,
        description="nearest breaches whose mean cost picks each incident's plan")
    epochs: StrictInt = Field(default=30, ge=1, le=1_000)
    batch_size: StrictInt = Field(default=256, ge=1, le=MAX_BATCH)
    learning_rate: float = Field(default=1e-3, gt=0, le=1)


class AgentConfig(_Strict):
    algorithm: str = Field(default="maskable_ppo", max_length=100)
    policy: str = Field(default="MlpPolicy", max_length=100)
    n_envs: StrictInt = Field(default=4, ge=1, le=MAX_N_ENVS)
    timesteps: StrictInt = Field(default=60_000, ge=1, le=MAX_TIMESTEPS)
    stop_after: StrictInt | None = Field(
        default=None, ge=1, le=MAX_TIMESTEPS,
        description="stop once a rollout would pass this many timesteps, on the schedules "
                    "of a run of `timesteps`: their tail is cut, not compressed, so the "
                    "run is the longer one's beginning (none when past `timesteps`: a "
                    "shorter run, e.g. --timesteps, is not cut)")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    policy_kwargs: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, Any] = Field(default_factory=dict)
    critic: Literal["observed", "hidden"] = Field(
        default="observed",
        description="what PPO's critic learns from: the observation, or also the hidden "
                    "incident (an asymmetric actor-critic, maskable_ppo only; the actor "
                    "always sees the observation alone)")
    warm_start: WarmStartConfig | None = Field(
        default=None,
        description="imitate the oracle's plans, chosen by the breach alone, before PPO "
                    "(maskable_ppo with critic: observed only)")
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @property
    def algorithm_class(self) -> type[BaseAlgorithm]:
        return ALGORITHMS[self.algorithm]

    def constructor_kwargs(self) -> dict[str, Any]:
        """Hyperparameters with ``lin_X`` schedules and the policy kwargs resolved."""
        values = _normalised(self.hyperparameters, _spec_of(self.algorithm_class) or {})
        kwargs = {k: _schedule(v) if k in _SCHEDULED else v for k, v in values.items()}
        policy_kwargs = dict(self.policy_kwargs)
        if isinstance(policy_kwargs.get("activation_fn"), str):
            import torch.nn as nn
            policy_kwargs["activation_fn"] = getattr(
                nn, _ACTIVATIONS[policy_kwargs["activation_fn"]])
        if policy_kwargs:
            kwargs["policy_kwargs"] = policy_kwargs
        return kwargs


def _schedule(value: Any) -> Any:
    if isinstance(value, str):
        match = _LIN_RE.match(value)
        if match:
            return LinearSchedule(float(match.group(1)), 0.0, 1.0)
    return value


def agent_config_from_data(data: Any, file: str = "<agent>",
                           lines: LineMap | None = None) -> AgentConfig:
    """Validate parsed YAML as an agent config; :class:`SpecError` names file:line: field."""
    lines = lines or LineMap()
    config = validate_model(AgentConfig, data, file, lines)
    problems = config_problems(config)
    if problems:
        raise SpecError.at_paths(file, lines, problems)
    config.hyperparameters = _normalised(config.hyperparameters,
                                         _spec_of(config.algorithm_class) or {})
    config.env = _normalised(config.env, _ENV_SPEC)
    return config


def load_agent_config(path: str | Path) -> AgentConfig:
    """Load and check an agent config file; raises :class:`SpecError` on any problem."""
    data, lines = load_yaml_file(path)
    return agent_config_from_data(data, str(path), lines)


def config_problems(config: AgentConfig) -> Problems:
    """Everything wrong with ``config`` as (field path, message): names, types and ranges
    of each value, then the budget of the run as a whole. Callers that change a loaded
    config (an experiment's timesteps and replicas, a sweep's hyperparameters) check the
    result again with this."""
    cls = ALGORITHMS.get(config.algorithm)
    if cls is None:
        known = ", ".join(sorted(ALGORITHMS))
        return [(("algorithm",), f"unknown algorithm {config.algorithm!r} (known: {known})")]
    problems = _check_hyperparameters(cls, config.hyperparameters)
    problems += _check_policy(cls, config)
    if config.critic == "hidden" and config.algorithm != "maskable_ppo":
        problems.append((("critic",), f"a critic on the hidden incident needs maskable_ppo, "
                                      f"not {config.algorithm}"))
    if config.warm_start is not None and (config.algorithm != "maskable_ppo"
                                          or config.critic != "observed"):
        problems.append((("warm_start",), "a warm start needs maskable_ppo with critic: "
                                          f"observed, not {config.algorithm} with critic: "
                                          f"{config.critic}"))
    problems += _check_env(config.env)
    if not problems:  # the budget needs every value to be of the right type
        problems += _check_budget(cls, config)
    return problems


def check_run(config: AgentConfig, timesteps: int | None = None) -> None:
    """ValueError naming every problem of ``config`` trained for ``timesteps`` (default its
    own): the last check before a model is built, for configs changed after loading."""
    if timesteps is not None:
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or not (
                1 <= timesteps <= MAX_TIMESTEPS):
            raise ValueError(f"timesteps must be a whole number in [1, {MAX_TIMESTEPS}], "
                             f"got {timesteps!r}")
        config = config.model_copy(update={"timesteps": timesteps})
    problems = config_problems(config)
    if problems:
        raise ValueError("agent config: " + "; ".join(
            f"{format_path(p)}: {m}" for p, m in problems))


# Value checkers: pydantic adapters whose messages say what was expected and what came.


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _interval(lo: float, hi: float, open_lo: bool) -> str:
    return f"{'(' if open_lo else '['}{lo:g}, {hi:g}]"


def _whole_check(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {_show(value)}")
        if not lo <= value <= hi:
            raise ValueError(f"must be in [{lo}, {hi}], got {_show(value)}")
        return value
    return check


# YAML 1.1 reads ``1e-4`` (no dot) as a string: such a string is taken as the number.
_NUMBER_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _number_check(lo: float, hi: float, open_lo: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {_show(value)}")
        try:
            x = float(value)
        except OverflowError:
            x = float("inf")
        if not math.isfinite(x) or x < lo or x > hi or (open_lo and x <= lo):
            raise ValueError(f"must be in {_interval(lo, hi, open_lo)}, got {_show(value)}")
        return value
    return check


def _adapter(check: Callable[[Any], Any]) -> TypeAdapter[Any]:
    return TypeAdapter(Annotated[Any, BeforeValidator(check)])


def _whole(lo: int, hi: int) -> TypeAdapter[Any]:
    return _adapter(_whole_check(lo, hi))


def _number(lo: float, hi: float, open_lo: bool = False) -> TypeAdapter[Any]:
    return _adapter(_number_check(lo, hi, open_lo))


def _schedulable(lo: float, hi: float, open_lo: bool = True,
                 nullable: bool = False) -> TypeAdapter[Any]:
    """A number in the range, or ``lin_<number>`` (linear decay from it to 0)."""
    number = _number_check(lo, hi, open_lo)

    def check(value: Any) -> Any:
        if value is None and nullable:
            return value
        if isinstance(value, str) and not _NUMBER_RE.fullmatch(value.strip()):
            match = _LIN_RE.match(value)
            try:
                start = float(match.group(1)) if match else math.nan
            except ValueError:
                start = math.nan
            if math.isnan(start):
                raise ValueError(f"expected a number or 'lin_<number>', got {_show(value)}")
            number(start)
            return value
        return number(value)
    return _adapter(check)


def _flag() -> TypeAdapter[Any]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_show(value)}")
        return value
    return _adapter(check)


def _one_of(*choices: Any) -> TypeAdapter[Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or value not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}, got "
                             f"{_show(value)}")
        return value
    return _adapter(check)


def _gradient_steps(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (
            value == -1 or 1 <= value <= 1000):
        raise ValueError(f"expected -1 (as many as steps collected) or a whole number in "
                         f"[1, 1000], got {_show(value)}")
    return value


def _optional(adapter: TypeAdapter[Any]) -> TypeAdapter[Any]:
    def check(value: Any) -> Any:
        return value if value is None else adapter.validate_python(value)
    return _adapter(check)


def _check_value(adapter: TypeAdapter[Any], value: Any) -> str | None:
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        msg = str(exc.errors()[0]["msg"])
        return msg.removeprefix("Value error, ")
    return None


def _normalised(values: dict[str, Any], spec: dict[str, TypeAdapter[Any]]) -> dict[str, Any]:
    """``values`` as their checkers return them (``'1e-4'`` -> 1e-4); a value that does not
    pass is kept as it is, for :func:`check_run` to report."""
    out = dict(values)
    for key, value in values.items():
        if key in spec:
            with suppress(ValidationError):
                out[key] = spec[key].validate_python(value)
    return out


_COMMON: dict[str, TypeAdapter[Any]] = {
    "learning_rate": _schedulable(0.0, 1.0),
    "gamma": _number(0.0, 1.0),
    "max_grad_norm": _number(0.0, 1e6, open_lo=True),
    "stats_window_size": _whole(1, 10_000),
}
_ON_POLICY = {
    **_COMMON,
    "n_steps": _whole(1, 65_536),
    "gae_lambda": _number(0.0, 1.0),
    "ent_coef": _number(0.0, 1.0),
    "vf_coef": _number(0.0, 10.0),
    "normalize_advantage": _flag(),
}
_PPO_SPEC = {
    **_ON_POLICY,
    "batch_size": _whole(2, MAX_BATCH),
    "n_epochs": _whole(1, 100),
    "clip_range": _schedulable(0.0, 10.0),
    "clip_range_vf": _schedulable(0.0, 10.0, nullable=True),
    "target_kl": _optional(_number(0.0, 10.0, open_lo=True)),
}
_A2C_SPEC = {
    **_ON_POLICY,
    "rms_prop_eps": _number(0.0, 1.0, open_lo=True),
    "use_rms_prop": _flag(),
}
_DQN_SPEC = {
    **_COMMON,
    "buffer_size": _whole(1, MAX_REPLAY),
    "learning_starts": _whole(0, MAX_TIMESTEPS),
    "batch_size": _whole(1, MAX_BATCH),
    "tau": _number(0.0, 1.0, open_lo=True),
    "train_freq": _whole(1, 1_000_000),
    "gradient_steps": _adapter(_gradient_steps),
    "n_steps": _whole(1, 100),
    "target_update_interval": _whole(1, MAX_TIMESTEPS),
    "exploration_fraction": _number(0.0, 1.0),
    "exploration_initial_eps": _number(0.0, 1.0),
    "exploration_final_eps": _number(0.0, 1.0),
}
# The hyperparameters of each built-in algorithm shadowrl accepts; a registered subclass
# gets its base's, and its other arguments are type-checked from its signature.
_SPECS: dict[type, dict[str, TypeAdapter[Any]]] = {
    MaskablePPO: _PPO_SPEC, PPO: _PPO_SPEC, A2C: _A2C_SPEC, DQN: _DQN_SPEC}
_UNSUPPORTED = {
    "use_sde": "gSDE needs a continuous action space; RollbackEnv's is discrete",
    "sde_sample_freq": "gSDE needs a continuous action space; RollbackEnv's is discrete",
    "rollout_buffer_class": "buffer classes cannot be set from an agent config",
    "rollout_buffer_kwargs": "buffer classes cannot be set from an agent config",
    "replay_buffer_class": "buffer classes cannot be set from an agent config",
    "replay_buffer_kwargs": "buffer classes cannot be set from an agent config",
    "optimize_memory_usage": "not supported (SB3 needs timeout handling off for it)",
}


_WHOLE_NUMBERS = {"n_steps", "batch_size", "n_epochs", "stats_window_size", "buffer_size",
                  "learning_starts", "train_freq", "gradient_steps", "target_update_interval"}


def integer_hyperparameter(algorithm: str, key: str) -> bool:
    """Whether ``key`` of ``algorithm`` takes whole numbers (a sweep then draws integers)."""
    cls = ALGORITHMS.get(algorithm)
    if cls is None:
        return False
    if _spec_of(cls) is not None and key in _WHOLE_NUMBERS:
        return True
    param = inspect.signature(cls.__init__).parameters.get(key)
    return param is not None and param.annotation in (int, "int")


def _spec_of(cls: type[BaseAlgorithm]) -> dict[str, TypeAdapter[Any]] | None:
    return next((_SPECS[base] for base in cls.__mro__ if base in _SPECS), None)


def _accepted(cls: type[BaseAlgorithm]) -> set[str]:
    params = _init_params(cls) - _RESERVED_ARGS - set(_UNSUPPORTED)
    spec = _spec_of(cls)
    if spec is None:
        return params
    own = params - _init_params(next(b for b in cls.__mro__ if b in _SPECS))
    return (set(spec) & params) | own


def _check_hyperparameters(cls: type[BaseAlgorithm], hyperparameters: dict[str, Any]
                           ) -> Problems:
    """Each hyperparameter is one shadowrl accepts for ``cls``, with a value in its range."""
    problems: Problems = []
    accepted = _accepted(cls)
    spec = _spec_of(cls) or {}
    annotations = {k: p.annotation for k, p in inspect.signature(cls.__init__).parameters.items()}
    for key, value in hyperparameters.items():
        wrong = _hyperparameter_problem(cls, accepted, key)
        if wrong is None:
            wrong = (_check_value(spec[key], value) if key in spec
                     else _type_problem(annotations.get(key), value))
        if wrong:
            problems.append((("hyperparameters", key), wrong))
    return problems


def _hyperparameter_problem(cls: type[BaseAlgorithm], accepted: set[str], key: str
                            ) -> str | None:
    """What is wrong with one hyperparameter's name."""
    if key == "n_envs":
        return "n_envs is a top-level field, not a hyperparameter"
    if key in _RESERVED_ARGS:
        return f"'{key}' is set by shadowrl, not by the agent config"
    if key in _UNSUPPORTED and key in _init_params(cls):
        return f"'{key}': {_UNSUPPORTED[key]}"
    if key not in accepted:
        return (f"{cls.__name__} does not accept {_show(key)} (accepted: "
                f"{', '.join(sorted(accepted))})")
    return None


def _effective(cls: type[BaseAlgorithm], hyperparameters: dict[str, Any], key: str) -> Any:
    """The value a hyperparameter will have: the config's, else the constructor default."""
    if key in hyperparameters:
        return hyperparameters[key]
    param = inspect.signature(cls.__init__).parameters.get(key)
    return None if param is None or param.default is param.empty else param.default


def _check_budget(cls: type[BaseAlgorithm], config: AgentConfig) -> Problems:
    """The run as a whole: its rollout buffer, minibatches, gradient steps, evaluations and
    checkpoints, each within its bound (and what SB3 asserts, before SB3 does)."""
    hp = config.hyperparameters
    n_envs, total = config.n_envs, config.timesteps
    problems: Problems = []
    n_steps = _effective(cls, hp, "n_steps")
    if issubclass(cls, OnPolicyAlgorithm) and isinstance(n_steps, int):
        problems += _check_rollout(cls, hp, n_envs, total, n_steps)
    elif issubclass(cls, OffPolicyAlgorithm):
        problems += _check_off_policy(cls, hp, n_envs, total)
    evals = total // config.eval.freq + 1
    if evals * config.eval.episodes > MAX_EVAL_TOTAL:
        problems.append((("eval", "freq"), (
            f"{evals} evaluations of {config.eval.episodes} episodes over {total} timesteps "
            f"is more than {MAX_EVAL_TOTAL} episodes: evaluate less often or on fewer")))
    if total // config.checkpoint.freq > MAX_CHECKPOINTS:
        problems.append((("checkpoint", "freq"), (
            f"{total // config.checkpoint.freq} checkpoints over {total} timesteps; the "
            f"limit is {MAX_CHECKPOINTS}: checkpoint less often")))
    return problems


def _check_rollout(cls: type[BaseAlgorithm], hp: dict[str, Any], n_envs: int, total: int,
                   n_steps: int) -> Problems:
    where = ("hyperparameters", "n_steps") if "n_steps" in hp else ("n_envs",)
    rollout = n_steps * n_envs
    if rollout > MAX_ROLLOUT:
        return [(where, f"n_steps x n_envs = {n_steps} x {n_envs} = {rollout}; the limit is "
                        f"{MAX_ROLLOUT}")]
    if _effective(cls, hp, "normalize_advantage") and rollout < 2:
        return [(where, "n_steps x n_envs must be at least 2 to normalise advantages")]
    updates = -(-total // rollout)
    if "batch_size" in (_spec_of(cls) or {}):
        batch = _effective(cls, hp, "batch_size")
        if isinstance(batch, int) and batch > rollout:
            return [(("hyperparameters", "batch_size") if "batch_size" in hp else where,
                     f"batch_size {batch} is larger than n_steps x n_envs = {rollout}")]
        epochs = _effective(cls, hp, "n_epochs")
        if isinstance(batch, int) and isinstance(epochs, int):
            updates *= epochs * -(-rollout // batch)
    if updates > MAX_GRADIENT_STEPS:
        key = next((k for k in ("n_epochs", "batch_size", "n_steps") if k in hp), None)
        return [(("hyperparameters", key) if key else ("timesteps",),
                 f"{updates} gradient steps over {total} timesteps; the limit is "
                 f"{MAX_GRADIENT_STEPS} (fewer epochs, larger batches or fewer timesteps)")]
    return []


def _check_off_policy(cls: type[BaseAlgorithm], hp: dict[str, Any], n_envs: int,
                      total: int) -> Problems:
    freq = _effective(cls, hp, "train_freq")
    steps = _effective(cls, hp, "gradient_steps")
    if not (isinstance(freq, int) and isinstance(steps, int)):
        return []
    rounds = -(-total // (freq * n_envs))
    updates = total if steps < 0 else rounds * steps
    if updates > MAX_GRADIENT_STEPS:
        where = ("hyperparameters", "gradient_steps" if "gradient_steps" in hp
                 else "train_freq")
        return [(where, f"{updates} gradient steps over {total} timesteps; the limit is "
                        f"{MAX_GRADIENT_STEPS}")]
    return []


_MLP = "MlpPolicy"  # RollbackEnv's observations are one flat vector


def _check_policy(cls: type[BaseAlgorithm], config: AgentConfig) -> Problems:
    """The policy is one of ``cls``'s (MlpPolicy for the built-in algorithms) and accepts
    the policy kwargs, each of a supported kind and size."""
    aliases = getattr(cls, "policy_aliases", {})
    policy_cls = aliases.get(config.policy)
    if policy_cls is None:
        known = ", ".join(sorted(aliases))
        return [(("policy",), f"{cls.__name__} has no policy {_show(config.policy)} "
                              f"(known: {known})")]
    if _spec_of(cls) is not None and config.policy != _MLP:
        return [(("policy",), f"{config.policy} needs image or dict observations; "
                              f"RollbackEnv's are a flat vector: use {_MLP}")]
    problems: Problems = []
    policy_params = _init_params(policy_cls)
    # actor-critic policies (SB3's and sb3-contrib's masked one) take separate pi/vf nets
    actor_critic = issubclass(policy_cls, ActorCriticPolicy) or "ortho_init" in policy_params
    allowed = {"net_arch", "activation_fn"} | (
        {"ortho_init", "share_features_extractor"} if actor_critic else set())
    for key, value in config.policy_kwargs.items():
        path: PathKey = ("policy_kwargs", key)
        if key not in policy_params or key in {"self", "observation_space", "action_space",
                                               "lr_schedule"}:
            problems.append((path, f"{policy_cls.__name__} does not accept {_show(key)}"))
        elif key not in allowed:
            problems.append((path, f"{policy_cls.__name__}'s {_show(key)} cannot be set from "
                                   f"an agent config (supported: {', '.join(sorted(allowed))})"))
        elif key == "net_arch":
            wrong = _net_arch_problem(value, actor_critic)
            if wrong:
                problems.append((path, wrong))
        elif key == "activation_fn" and (not isinstance(value, str)
                                         or value not in _ACTIVATIONS):
            problems.append((path, f"unknown activation {_show(value)} (known: "
                                   f"{', '.join(sorted(_ACTIVATIONS))})"))
        elif key in {"ortho_init", "share_features_extractor"} and not isinstance(value, bool):
            problems.append((path, f"expected true or false, got {_show(value)}"))
    return problems


def _layers_problem(value: Any) -> str | None:
    if not isinstance(value, list) or len(value) > MAX_LAYERS or not all(
            isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_WIDTH
            for w in value):
        return (f"expected a list of at most {MAX_LAYERS} layer widths in [1, {MAX_WIDTH}], "
                f"got {_show(value)}")
    return None


def _net_arch_problem(value: Any, actor_critic: bool) -> str | None:
    """A list of layer widths, or for actor-critic policies ``{pi: [...], vf: [...]}``."""
    if isinstance(value, dict) and actor_critic:
        if not value or set(value) - {"pi", "vf"}:
            return f"expected a list of widths or {{pi: [...], vf: [...]}}, got {_show(value)}"
        return next((f"{k}: {p}" for k in sorted(value)
                     if (p := _layers_problem(value[k]))), None)
    return _layers_problem(value)


def _incident_name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ValueError(f"expected an incident name (lowercase letters, digits and '-'), "
                         f"got {_show(value)}")
    return value


_ENV_SPEC: dict[str, TypeAdapter[Any]] = {
    "objective": _one_of("budget", "downtime"),
    "full_outage_penalty": _number(0.0, MAX_PENALTY),
    "failed_request_weight": _number(0.0, MAX_PENALTY),
    "failed_step_penalty": _number(0.0, MAX_PENALTY),
    "invalid_penalty": _number(0.0, MAX_PENALTY),
    "backend": _one_of("sim"),
    "at": _one_of("now", "peak"),
    "incident": _optional(_adapter(_incident_name)),
}
_ENV_OWNED = {"record_profile": "'record_profile' is set by shadowrl, not by the agent config"}


def _check_env(env: dict[str, Any]) -> Problems:
    """The ``env`` block: RollbackEnv arguments, each of its kind and range."""
    accepted = env_args() - set(_ENV_OWNED)
    annotations = {k: p.annotation
                   for k, p in inspect.signature(RollbackEnv.__init__).parameters.items()}
    problems: Problems = []
    for key, value in env.items():
        path: PathKey = ("env", key)
        if key in _ENV_OWNED:
            problems.append((path, _ENV_OWNED[key]))
        elif key not in accepted:
            problems.append((path, f"RollbackEnv does not accept {_show(key)} (accepted: "
                                   f"{', '.join(sorted(accepted))})"))
        elif (wrong := (_check_value(_ENV_SPEC[key], value) if key in _ENV_SPEC
                        else _type_problem(annotations.get(key), value))):
            problems.append((path, wrong))
    return problems


def env_args() -> set[str]:
    """The :class:`RollbackEnv` keyword arguments an agent config's ``env`` may set (also what
    a trained policy's sidecar ``env`` passes on to a new environment)."""
    return _init_params(RollbackEnv) - _RESERVED_ENV_ARGS


_SIMPLE = {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
           type(None): "null"}


def _type_problem(annotation: Any, value: Any) -> str | None:
    """Check a YAML value against a constructor annotation built from int/float/bool/None
    (other annotations are left to the constructor)."""
    if annotation is inspect.Parameter.empty or annotation is None:
        return None
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = typing.get_args(annotation) if union else (annotation,)
    simple = [m for m in members if m in _SIMPLE]
    if len(simple) != len(members) or not simple:
        return None
    for m in simple:
        if m is bool and isinstance(value, bool):
            return None
        if m is int and isinstance(value, int) and not isinstance(value, bool):
            return None
        if m is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return None
        if m is str and isinstance(value, str):
            return None
        if m is type(None) and value is None:
            return None
    expected = " or ".join(_SIMPLE[m] for m in simple)
    return f"expected {expected}, got {shown(value)}"


def _init_params(cls: type) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    return {name for name, p in params.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


# --------------------------------------------------------------------------- environments


def _sub_seeds(seed: int, n: int, salt: int = 0) -> list[int]:
    """``n`` well-separated, deterministic seeds for the sub-envs of one training run."""
    children = np.random.SeedSequence([int(seed), int(salt)]).spawn(n)
    return [int(c.generate_state(1, dtype=np.uint32)[0]) for c in children]


class _EnvFactory:
    """Builds one seeded, Monitor-wrapped RollbackEnv (picklable, for subprocess/Ray VecEnvs)."""

    def __init__(self, scenario: Scenario, env_kwargs: dict[str, Any], seed: int,
                 hidden: bool = False) -> None:
        self.scenario = scenario
        self.env_kwargs = env_kwargs
        self.seed = seed
        self.hidden = hidden

    def __call__(self) -> Monitor:
        env = RollbackEnv(self.scenario, **self.env_kwargs)
        # Seed the env's own generator: episode seeds are drawn from it on every reset, so
        # the sub-env's episode sequence is fixed by `seed` whichever VecEnv runs it.
        env.np_random = np.random.Generator(np.random.PCG64(self.seed))
        env.action_space.seed(self.seed)
        if self.hidden:  # the critic's extra input (shadowrl.rl.asymmetric)
            from shadowrl.rl.asymmetric import HiddenIncident

            return WithoutRehearsal(Monitor(HiddenIncident(env)))
        return WithoutRehearsal(Monitor(env))


class WithoutRehearsal(gym.Wrapper[Any, Any, Any, Any]):
    """Drops the finished :class:`~shadowrl.rehearsal.runner.Rehearsal` from a training
    env's last ``info``: SB3's VecEnvs deep-copy every step's infos, and copying each
    episode's whole rehearsal cost about 5 % of a payments training run. The numbers
    training callbacks read (``downtime_s``, ``budget_burn``, ``outcome``) stay."""

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info.pop("rehearsal", None)
        return obs, reward, terminated, truncated, info


def make_vec_env_for(scenario: str | Path | Scenario, config: AgentConfig, seed: int,
                     vec_env_factory: Callable[[list[Callable[[], Any]]], VecEnv] | None = None,
                     *, salt: int = 0) -> VecEnv:
    """``config.n_envs`` RollbackEnv copies in ``Monitor``, in a DummyVecEnv by default.

    Sub-env ``i`` draws its episode seeds from a generator seeded with the i-th child of
    ``SeedSequence([seed, salt])``: different per sub-env, identical across runs.
    ``vec_env_factory(env_fns)`` replaces DummyVecEnv (e.g. a Ray-backed VecEnv).
    """
    sc = as_scenario(scenario)
    env_fns: list[Callable[[], Any]] = [
        _EnvFactory(sc, dict(config.env), s, hidden=config.critic == "hidden")
        for s in _sub_seeds(seed, config.n_envs, salt)]
    factory = vec_env_factory or DummyVecEnv
    return factory(env_fns)


# --------------------------------------------------------------------------- policies


class SB3Policy:
    """A trained SB3 model as a :class:`shadowrl.rl.policy.Policy`.

    Masked models (MaskablePPO) get ``env.action_masks()``. For unmasked models, a predicted
    action that the mask forbids is replaced by the most probable valid action (the highest
    Q-value for DQN), so the policy never asks the env for an invalid step.
    """

    def __init__(self, model: BaseAlgorithm, name: str = "rl") -> None:
        self.model = model
        self.name = name
        self.masked = _masked_class(type(model))
        self.fallbacks = 0  # how often the mask overrode an unmasked model's choice

    def reset(self, env: RollbackEnv) -> None:
        self.check_fit(env)

    def check_fit(self, env: RollbackEnv) -> None:
        """ValueError unless ``env`` has the action and observation spaces the model was
        trained on (a policy fits only its scenario and procedure)."""
        n = getattr(env.action_space, "n", None)
        if n != getattr(self.model.action_space, "n", None) or (
                env.observation_space.shape != self.model.observation_space.shape):
            raise ValueError(
                f"policy '{self.name}' was trained on {self.model.action_space} actions and "
                f"observations of shape {self.model.observation_space.shape}; this "
                f"environment has {env.action_space} and {env.observation_space.shape} "
                "(a different scenario or procedure?)")

    def act(self, env: RollbackEnv, obs: np.ndarray) -> int:
        mask = np.asarray(env.action_masks(), dtype=bool)
        if self.masked:
            action, _ = self.model.predict(obs, action_masks=mask,  # type: ignore[call-arg]
                                           deterministic=True)
            return int(np.asarray(action).reshape(-1)[0])
        action, _ = self.model.predict(obs, deterministic=True)
        a = int(np.asarray(action).reshape(-1)[0])
        if 0 <= a < mask.size and mask[a]:
            return a
        if not mask.any():
            return a  # nothing is valid: the episode is over; let the env say so
        self.fallbacks += 1
        scores = self.action_scores(obs)
        scores = np.where(mask, scores, -np.inf)
        return int(np.argmax(scores))

    def action_scores(self, obs: np.ndarray) -> np.ndarray:
        """Per-action preference: probabilities (actor-critic) or Q-values (DQN)."""
        import torch as th

        policy = self.model.policy
        obs_tensor, _ = policy.obs_to_tensor(obs)
        with th.no_grad():
            if hasattr(policy, "get_distribution"):
                dist = policy.get_distribution(obs_tensor)  # type: ignore[operator]
                scores = dist.distribution.probs  # type: ignore[union-attr]
            elif hasattr(policy, "q_net"):
                scores = policy.q_net(obs_tensor)  # type: ignore[operator]
            else:
                raise TypeError(f"cannot score actions of {type(policy).__name__}")
        return scores.reshape(-1).cpu().numpy().astype(np.float64)


def sidecar_path(policy_zip: Path) -> Path:
    """The ``.json`` beside a saved policy: its algorithm, scenario, actions and env args."""
    return policy_zip.with_suffix(".json")


def read_sidecar(policy_zip: Path) -> dict[str, Any]:
    """A saved policy's sidecar, ``{}`` when it is missing or unreadable."""
    try:
        meta = json.loads(sidecar_path(policy_zip).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _save_model(model: BaseAlgorithm, path: Path, meta: dict[str, Any]) -> None:
    """Save atomically (SB3 appends .zip to names without it, so the tmp name ends in .zip)."""
    def write(tmp: str) -> None:
        model.save(tmp)
    atomic_write_with(path, write)
    atomic_write_json(sidecar_path(path), meta)


def _zip_data(path: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("data"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return {}


def _candidates(path: Path) -> list[str]:
    """Registered algorithms ordered by how well they fit the saved model's attributes."""
    data = _zip_data(path)
    policy_module = str((data.get("policy_class") or {}).get("__module__", ""))
    keys = set(data)

    def score(name: str) -> tuple[float, int]:
        cls = ALGORITHMS[name]
        params = _init_params(cls) - _RESERVED_ARGS - {"stats_window_size"}
        foreign = {"clip_range", "exploration_fraction", "target_update_interval"} & (
            keys - params)  # attributes only another algorithm has
        fit = len(params & keys) / max(len(params), 1) - 0.5 * len(foreign)
        modules = {p.__module__ for p in getattr(cls, "policy_aliases", {}).values()}
        return (fit, int(policy_module in modules))

    return sorted(ALGORITHMS, key=score, reverse=True)


def load_policy(path: str | Path, name: str = "rl", device: str = "cpu") -> SB3Policy:
    """Load a saved model as a policy: the algorithm comes from the sidecar ``.json`` that
    :func:`train` writes, else from trying the registered algorithms (best fit first)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such policy file: {path}")
    algorithm = read_sidecar(path).get("algorithm")
    order = [algorithm] if algorithm in ALGORITHMS else _candidates(path)
    errors = []
    for algo in order:
        try:
            model = ALGORITHMS[algo].load(path, device=device)
        except Exception as exc:  # noqa: BLE001 - any loader failure means "not this class"
            errors.append(f"{algo}: {type(exc).__name__}: {exc}")
            continue
        return SB3Policy(model, name=name)
    raise ValueError(f"cannot load {path} with any registered algorithm:\n  "
                     + "\n  ".join(errors))


# --------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    model_path: Path
    timesteps: int
    wall_s: float
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    best_mean_cost: float | None = None
    best_model_path: Path | None = None


def _as_trained(model: BaseAlgorithm) -> BaseAlgorithm:
    return model


def deployable_for(config: AgentConfig, env: RollbackEnv) -> Callable[[BaseAlgorithm],
                                                                        BaseAlgorithm]:
    """What turns a model in training into the one that acts on ``env`` and is saved as a
    policy: itself, or for a critic on the hidden incident the actor alone
    (:func:`shadowrl.rl.asymmetric.actor_only`)."""
    if config.critic != "hidden":
        return _as_trained
    from shadowrl.rl.asymmetric import actor_only

    return lambda model: actor_only(model, env)  # type: ignore[arg-type]


class CostEvalCallback(BaseCallback):
    """Every ``freq`` timesteps (checked between rollouts) and at the end of training, run
    ``evaluate`` on seeds ``seed + i``; save the best model.

    SB3's (Maskable)EvalCallback resets its eval env without seeds, so each evaluation
    would face different incidents; this one faces the same ones every time, the same way
    ``shadowrl evaluate`` does, so the eval history is a learning curve, not noise.
    """

    def __init__(self, env: RollbackEnv, freq: int, episodes: int, seed: int,
                 best_path: Path | None = None, meta: dict[str, Any] | None = None,
                 history: list[dict[str, Any]] | None = None,
                 best_cost: float | None = None, log: bool = False,
                 deployable: Callable[[BaseAlgorithm], BaseAlgorithm] | None = None) -> None:
        super().__init__(verbose=0)
        self.env = env
        # the model as it acts and is saved (an asymmetric one without its critic's input)
        self.deployable = deployable or _as_trained
        self.freq = freq
        self.episodes = episodes
        self.seed = seed
        self.best_path = best_path
        self.meta = meta or {}
        self.history: list[dict[str, Any]] = list(history or [])
        self.best_cost = best_cost
        self.log = log
        self._last = None if not self.history else int(self.history[-1]["timesteps"])

    def _on_training_start(self) -> None:
        if self._last is None:
            self._last = self.num_timesteps

    def _on_rollout_start(self) -> None:
        # Here, not in _on_step: on-policy algorithms update after collecting a rollout, so
        # only at the start of the next one does the model include every sample seen so far.
        assert self._last is not None
        if self.num_timesteps - self._last >= self.freq:
            self.run()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if self._last != self.num_timesteps:
            self.run()

    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        acting = self.deployable(self.model)
        episodes = evaluate(self.env, SB3Policy(acting), self.episodes, self.seed)
        costs = np.array([e.cost for e in episodes])
        downtime = np.array([e.rehearsal.downtime_s for e in episodes])
        burn = np.array([e.rehearsal.budget_burn for e in episodes])
        recovered = sum(e.rehearsal.outcome == "recovered" for e in episodes)
        row = {"timesteps": int(self.num_timesteps), "mean_cost": float(costs.mean()),
               "std_cost": float(costs.std()), "mean_downtime_s": float(downtime.mean()),
               "mean_budget_burn": float(burn.mean()),
               "recovered": int(recovered), "episodes": len(episodes),
               "eval_s": round(time.perf_counter() - start, 3)}
        self.history.append(row)
        self._last = self.num_timesteps
        self.logger.record("eval/mean_cost", row["mean_cost"])
        self.logger.record("eval/mean_downtime_s", row["mean_downtime_s"])
        self.logger.record("eval/mean_budget_burn", row["mean_budget_burn"])
        improved = self.best_cost is None or row["mean_cost"] < self.best_cost
        if improved:
            self.best_cost = row["mean_cost"]
            if self.best_path is not None:
                _save_model(acting, self.best_path, {
                    **self.meta, "timesteps": int(self.num_timesteps),
                    "mean_cost": row["mean_cost"]})
        if self.log:
            print(f"[train] {row['timesteps']:>8} steps  eval cost {row['mean_cost']:7.3f}  "
                  f"downtime {row['mean_downtime_s']:6.1f} s  budget burn "
                  f"{row['mean_budget_burn']:.3%}  recovered "
                  f"{recovered}/{len(episodes)}{'  (best)' if improved else ''}",
                  file=sys.stderr, flush=True)
        return row


class StopAfterCallback(BaseCallback):
    """Ends training at the first step past ``limit`` timesteps; SB3 then drops the rollout
    it was collecting, so the model is the one after the last update at or before it."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def _on_step(self) -> bool:
        return self.num_timesteps <= self.limit


class AtomicCheckpointCallback(CheckpointCallback):
    """SB3's CheckpointCallback with two changes: a crash never leaves a truncated checkpoint
    behind (atomic rename, sidecar ``.json`` with the algorithm), and checkpoints are taken
    between rollouts, every ``freq`` timesteps and at the end, so a checkpoint named N steps
    includes the update from the last rollout (SB3's, taken mid-rollout, lacks it)."""

    def __init__(self, freq: int, save_path: str, meta: dict[str, Any]) -> None:
        super().__init__(freq, save_path)
        self.meta = meta
        self._next = freq

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.save_freq + 1) * self.save_freq

    def _save_if_due(self) -> None:
        if self.num_timesteps >= self._next:
            path = Path(self._checkpoint_path(extension="zip"))
            _save_model(self.model, path, {**self.meta, "timesteps": int(self.num_timesteps)})
            self._next = (self.num_timesteps // self.save_freq + 1) * self.save_freq

    def _on_rollout_start(self) -> None:
        self._save_if_due()

    def _on_training_end(self) -> None:
        self._save_if_due()

    def _on_step(self) -> bool:
        return True


_CKPT_RE = re.compile(r"^rl_model_(\d+)_steps\.zip$")


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.match(p.name))]
    return sorted(found)


def _read_state(out_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((out_dir / "train_state.json").read_text())
    except (OSError, ValueError):
        return {}


def _latest(out_dir: Path, with_policy: bool = True) -> tuple[int, Path] | None:
    options = _checkpoints(out_dir / "checkpoints")
    state = _read_state(out_dir)
    if with_policy and (out_dir / "policy.zip").is_file() and isinstance(
            state.get("timesteps"), int):
        options.append((state["timesteps"], out_dir / "policy.zip"))
    return max(options, key=lambda o: o[0]) if options else None


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run tiny-network training on ``n`` intra-op threads, then restore the setting.

    The networks here are a few 128-wide layers on batches of 4 to 256 rows: thread
    hand-off costs more than it saves, and on a 2-core machine shared with the simulator
    (and numpy's own threads) 2 torch threads made training 2-6x slower than 1.
    """
    import torch as th

    before = th.get_num_threads()
    th.set_num_threads(n)
    try:
        yield
    finally:
        th.set_num_threads(before)


def _progress_log(progress: bool) -> Callable[[str], None] | None:
    """``[train]`` lines on stderr while ``progress``: the warm start's stages are minutes."""
    if not progress:
        return None
    return lambda message: print(f"[train] {message}", file=sys.stderr, flush=True)


def _show_progress(progress: bool) -> bool:
    if not progress or not sys.stderr.isatty():
        return False
    try:
        import rich  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def train(scenario: str | Path | Scenario, config: AgentConfig | str | Path,
          out_dir: str | Path, *, seed: int = 0, timesteps: int | None = None,
          resume: bool = False,
          vec_env_factory: Callable[[list[Callable[[], Any]]], VecEnv] | None = None,
          progress: bool = True, callbacks: Sequence[BaseCallback] = (),
          torch_threads: int = 1) -> TrainResult:
    """Train ``config``'s algorithm on ``scenario`` until ``timesteps`` (default
    ``config.timesteps``) in total; ``resume=True`` continues from the latest checkpoint
    (or ``policy.zip``) in ``out_dir`` instead of starting over.

    Writes ``policy.zip`` + ``policy.json``, ``best_policy.zip`` + ``best_policy.json``,
    ``checkpoints/`` and ``train_state.json`` into ``out_dir``.
    """
    with _torch_threads(torch_threads):
        return _train(scenario, config, out_dir, seed=seed, timesteps=timesteps,
                      resume=resume, vec_env_factory=vec_env_factory, progress=progress,
                      callbacks=callbacks)


def _train(scenario: str | Path | Scenario, config: AgentConfig | str | Path,
           out_dir: str | Path, *, seed: int, timesteps: int | None, resume: bool,
           vec_env_factory: Callable[[list[Callable[[], Any]]], VecEnv] | None,
           progress: bool, callbacks: Sequence[BaseCallback]) -> TrainResult:
    start = time.perf_counter()
    if not isinstance(config, AgentConfig):
        config = load_agent_config(config)
    check_run(config, timesteps)  # a config changed since loading (sweep, replicas) too
    sc = as_scenario(scenario)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    total = int(timesteps if timesteps is not None else config.timesteps)
    cls = config.algorithm_class
    eval_env = RollbackEnv(sc, **config.env)
    meta = {"algorithm": config.algorithm, "class": f"{cls.__module__}.{cls.__qualname__}",
            "scenario": sc.name, "procedure": sc.procedure.name,
            "actions": [eval_env.describe(a) for a in range(int(eval_env.action_space.n))],
            "observation_dim": int(eval_env.observation_space.shape[0]),  # type: ignore[index]
            "env": dict(config.env), "seed": seed}

    state = _read_state(out) if resume else {}
    if state.get("algorithm") not in (None, config.algorithm):
        raise ValueError(f"cannot resume {out}: it was trained with '{state['algorithm']}', "
                         f"the agent config says '{config.algorithm}'")
    # an asymmetric run resumes from its checkpoints: policy.zip holds the actor alone
    latest = _latest(out, with_policy=config.critic != "hidden") if resume else None
    done = latest[0] if latest else 0
    history: list[dict[str, Any]] = [r for r in state.get("eval_history", [])
                                     if r.get("timesteps", 0) <= done]
    best = min((r["mean_cost"] for r in history), default=None)
    if not resume:
        for _, stale in _checkpoints(ckpt_dir):  # a fresh run must not resume someone's old one
            stale.unlink(missing_ok=True)
            sidecar_path(stale).unlink(missing_ok=True)

    vec_env = make_vec_env_for(sc, config, seed, vec_env_factory, salt=done)
    try:
        # Seed torch/numpy before the network is built (its initial weights), and again after
        # a resume: the envs carry their own sub-seeds.
        set_random_seed(seed + done)
        if latest is not None:
            model = cls.load(latest[1], env=vec_env, device="cpu")
            if model.num_timesteps != done:
                done = int(model.num_timesteps)
                set_random_seed(seed + done)
        elif config.critic == "hidden":
            from shadowrl.rl.asymmetric import AsymmetricMaskablePolicy

            kwargs = config.constructor_kwargs()
            kwargs["policy_kwargs"] = {**kwargs.get("policy_kwargs", {}),
                                       "n_observed": meta["observation_dim"]}
            model = cls(AsymmetricMaskablePolicy, vec_env, verbose=0, device="cpu", **kwargs)
        else:
            model = cls(config.policy, vec_env, verbose=0, device="cpu",
                        **config.constructor_kwargs())
        model.action_space.seed(seed + done)
        warm = state.get("warm_start") if latest is not None else None
        if latest is None and config.warm_start is not None:
            from shadowrl.rl.warm_start import warm_start

            ws = config.warm_start
            warm = warm_start(model.policy, RollbackEnv(sc, **config.env),
                              library_incidents=ws.library_incidents, incidents=ws.incidents,
                              neighbours=ws.neighbours, epochs=ws.epochs,
                              batch_size=ws.batch_size, learning_rate=ws.learning_rate,
                              oracle_nodes=ws.oracle_nodes, seed=seed,
                              log=_progress_log(progress)).as_dict()

        show_bar = _show_progress(progress)
        deployable = deployable_for(config, eval_env)
        eval_cb = CostEvalCallback(eval_env, config.eval.freq, config.eval.episodes,
                                   config.eval.seed, best_path=out / "best_policy.zip",
                                   meta=meta, history=history, best_cost=best,
                                   log=progress and not show_bar, deployable=deployable)
        ckpt_cb = AtomicCheckpointCallback(config.checkpoint.freq, str(ckpt_dir), meta)
        remaining = total - done
        stop = [] if config.stop_after is None else [StopAfterCallback(config.stop_after)]
        if remaining > 0 and (config.stop_after is None or done < config.stop_after):
            model.learn(remaining, callback=[*stop, ckpt_cb, eval_cb, *callbacks],
                        reset_num_timesteps=latest is None, progress_bar=show_bar)
        elif not history:
            eval_cb.init_callback(model)
            eval_cb.run()
        steps = int(model.num_timesteps)
        model_path = out / "policy.zip"
        _save_model(deployable(model), model_path, {**meta, "timesteps": steps})
    finally:
        vec_env.close()
    wall = time.perf_counter() - start
    best = eval_cb.best_cost
    atomic_write_json(out / "train_state.json", {
        "timesteps": steps, "target_timesteps": total, "seed": seed,
        "algorithm": config.algorithm, "scenario": sc.name,
        "config": config.model_dump(mode="json"),
        "resumed_from": str(latest[1]) if latest else None,
        "wall_s": round(wall, 3), "wall_s_total": round(wall + float(
            state.get("wall_s_total", 0.0)), 3),
        "best_mean_cost": best, "eval_history": eval_cb.history, "warm_start": warm})
    best_path = out / "best_policy.zip"
    return TrainResult(model_path, steps, wall, eval_cb.history, best,
                       best_path if best_path.is_file() else None)

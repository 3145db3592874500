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
Evaluations during training run :func:`shadowrl.rl.evaluate.evaluate` on seeds
``eval.seed + i``, exactly like ``shadowrl evaluate``, so every evaluation faces the same
incidents and its numbers are comparable with the other policies'.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import time
import types
import typing
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shadowrl.core.extras import missing_extra

try:
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import A2C, DQN, PPO
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.utils import LinearSchedule, set_random_seed
    from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
except ImportError as exc:
    raise missing_extra("rl", exc) from exc

from shadowrl.core.atomic import atomic_write_json, atomic_write_with
from shadowrl.core.spec import (
    LineMap,
    PathKey,
    Problems,
    Scenario,
    SpecError,
    as_scenario,
    load_yaml_file,
    validate_model,
)
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.evaluate import evaluate

__all__ = [
    "ALGORITHMS", "AgentConfig", "AtomicCheckpointCallback", "CheckpointConfig", "CostEvalCallback",
    "EvalConfig", "SB3Policy", "TrainResult", "agent_config_from_data", "env_args",
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EvalConfig(_Strict):
    freq: int = Field(default=5000, ge=1, description="timesteps between evaluations")
    episodes: int = Field(default=50, ge=1)
    seed: int = Field(default=100_000, ge=0, description="episode i uses seed + i")


class CheckpointConfig(_Strict):
    freq: int = Field(default=10_000, ge=1, description="timesteps between checkpoints")


class AgentConfig(_Strict):
    algorithm: str = "maskable_ppo"
    policy: str = "MlpPolicy"
    n_envs: int = Field(default=4, ge=1, le=256)
    timesteps: int = Field(default=60_000, ge=1)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    policy_kwargs: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, Any] = Field(default_factory=dict)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @property
    def algorithm_class(self) -> type[BaseAlgorithm]:
        return ALGORITHMS[self.algorithm]

    def constructor_kwargs(self) -> dict[str, Any]:
        """Hyperparameters with ``lin_X`` schedules and the policy kwargs resolved."""
        kwargs = {k: _schedule(v) if k in _SCHEDULED else v
                  for k, v in self.hyperparameters.items()}
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
    problems = _check_config(config)
    if problems:
        raise SpecError.at_paths(file, lines, problems)
    return config


def load_agent_config(path: str | Path) -> AgentConfig:
    """Load and check an agent config file; raises :class:`SpecError` on any problem."""
    data, lines = load_yaml_file(path)
    return agent_config_from_data(data, str(path), lines)


def _check_config(config: AgentConfig) -> Problems:
    cls = ALGORITHMS.get(config.algorithm)
    if cls is None:
        known = ", ".join(sorted(ALGORITHMS))
        return [(("algorithm",), f"unknown algorithm {config.algorithm!r} (known: {known})")]
    problems = _check_hyperparameters(cls, config.hyperparameters)
    problems += _check_policy(cls, config)
    accepted = env_args()
    for key in config.env:
        if key not in accepted:
            problems.append((("env", key), f"RollbackEnv does not accept '{key}' (accepted: "
                                           f"{', '.join(sorted(accepted))})"))
    problems += _check_env_values(config.env)
    return problems


def _check_env_values(env: dict[str, Any]) -> Problems:
    """The objective settings of the ``env`` block: a known objective, a penalty >= 0."""
    from shadowrl.rl.env import OBJECTIVES

    problems: Problems = []
    if "objective" in env and env["objective"] not in OBJECTIVES:
        problems.append((("env", "objective"), f"expected one of {', '.join(OBJECTIVES)}, got "
                                               f"{env['objective']!r}"))
    penalty = env.get("full_outage_penalty")
    if penalty is not None and (isinstance(penalty, bool) or not isinstance(
            penalty, (int, float)) or penalty < 0):
        problems.append((("env", "full_outage_penalty"),
                         f"expected a number >= 0, got {penalty!r}"))
    return problems


def _check_hyperparameters(cls: type[BaseAlgorithm], hyperparameters: dict[str, Any]
                           ) -> Problems:
    """Each hyperparameter is a constructor argument of ``cls`` with a value of its type."""
    problems: Problems = []
    accepted = _init_params(cls) - _RESERVED_ARGS
    annotations = {k: p.annotation for k, p in inspect.signature(cls.__init__).parameters.items()}
    for key, value in hyperparameters.items():
        wrong = _hyperparameter_problem(cls, accepted, key, value)
        if wrong is None and not (key in _SCHEDULED and isinstance(value, str)):
            wrong = _type_problem(annotations.get(key), value)
        if wrong:
            problems.append((("hyperparameters", key), wrong))
    gamma = hyperparameters.get("gamma")
    if isinstance(gamma, (int, float)) and not 0 <= gamma <= 1:
        problems.append((("hyperparameters", "gamma"), f"must be in [0, 1], got {gamma}"))
    return problems


def _hyperparameter_problem(cls: type[BaseAlgorithm], accepted: set[str], key: str,
                            value: Any) -> str | None:
    """What is wrong with one hyperparameter, its type aside."""
    if key == "n_envs":
        return "n_envs is a top-level field, not a hyperparameter"
    if key in _RESERVED_ARGS:
        return f"'{key}' is set by shadowrl, not by the agent config"
    if key not in accepted:
        return (f"{cls.__name__} does not accept '{key}' (accepted: "
                f"{', '.join(sorted(accepted))})")
    if key in _SCHEDULED and isinstance(value, str) and not _LIN_RE.match(value):
        return f"expected a number or 'lin_<number>', got {value!r}"
    if key in _SCHEDULED and isinstance(value, (int, float)) and not isinstance(
            value, bool) and value < 0:
        return f"must be >= 0, got {value}"
    return None


def _check_policy(cls: type[BaseAlgorithm], config: AgentConfig) -> Problems:
    """The policy is one of ``cls``'s and accepts the policy kwargs."""
    policy_cls = getattr(cls, "policy_aliases", {}).get(config.policy)
    if policy_cls is None:
        known = ", ".join(sorted(getattr(cls, "policy_aliases", {})))
        return [(("policy",), f"{cls.__name__} has no policy {config.policy!r} "
                              f"(known: {known})")]
    problems: Problems = []
    policy_params = _init_params(policy_cls)
    for key, value in config.policy_kwargs.items():
        path: PathKey = ("policy_kwargs", key)
        if key not in policy_params or key in {"self", "observation_space", "action_space",
                                               "lr_schedule"}:
            problems.append((path, f"{policy_cls.__name__} does not accept '{key}'"))
        elif key == "activation_fn" and value not in _ACTIVATIONS:
            problems.append((path, f"unknown activation {value!r} (known: "
                                   f"{', '.join(sorted(_ACTIVATIONS))})"))
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
    return f"expected {expected}, got {value!r}"


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

    def __init__(self, scenario: Scenario, env_kwargs: dict[str, Any], seed: int) -> None:
        self.scenario = scenario
        self.env_kwargs = env_kwargs
        self.seed = seed

    def __call__(self) -> Monitor:
        env = RollbackEnv(self.scenario, **self.env_kwargs)
        # Seed the env's own generator: episode seeds are drawn from it on every reset, so
        # the sub-env's episode sequence is fixed by `seed` whichever VecEnv runs it.
        env.np_random = np.random.Generator(np.random.PCG64(self.seed))
        env.action_space.seed(self.seed)
        return Monitor(env)


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
        _EnvFactory(sc, dict(config.env), s) for s in _sub_seeds(seed, config.n_envs, salt)]
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
                 best_cost: float | None = None, log: bool = False) -> None:
        super().__init__(verbose=0)
        self.env = env
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
        episodes = evaluate(self.env, SB3Policy(self.model), self.episodes, self.seed)
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
                _save_model(self.model, self.best_path, {
                    **self.meta, "timesteps": int(self.num_timesteps),
                    "mean_cost": row["mean_cost"]})
        if self.log:
            print(f"[train] {row['timesteps']:>8} steps  eval cost {row['mean_cost']:7.3f}  "
                  f"downtime {row['mean_downtime_s']:6.1f} s  budget burn "
                  f"{row['mean_budget_burn']:.3%}  recovered "
                  f"{recovered}/{len(episodes)}{'  (best)' if improved else ''}",
                  file=sys.stderr, flush=True)
        return row


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


def _latest(out_dir: Path) -> tuple[int, Path] | None:
    options = _checkpoints(out_dir / "checkpoints")
    state = _read_state(out_dir)
    if (out_dir / "policy.zip").is_file() and isinstance(state.get("timesteps"), int):
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
    latest = _latest(out) if resume else None
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
        else:
            model = cls(config.policy, vec_env, verbose=0, device="cpu",
                        **config.constructor_kwargs())
        model.action_space.seed(seed + done)

        show_bar = _show_progress(progress)
        eval_cb = CostEvalCallback(eval_env, config.eval.freq, config.eval.episodes,
                                   config.eval.seed, best_path=out / "best_policy.zip",
                                   meta=meta, history=history, best_cost=best,
                                   log=progress and not show_bar)
        ckpt_cb = AtomicCheckpointCallback(config.checkpoint.freq, str(ckpt_dir), meta)
        remaining = total - done
        if remaining > 0:
            model.learn(remaining, callback=[ckpt_cb, eval_cb, *callbacks],
                        reset_num_timesteps=latest is None, progress_bar=show_bar)
        elif not history:
            eval_cb.init_callback(model)
            eval_cb.run()
        steps = int(model.num_timesteps)
        model_path = out / "policy.zip"
        _save_model(model, model_path, {**meta, "timesteps": steps})
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
        "best_mean_cost": best, "eval_history": eval_cb.history})
    best_path = out / "best_policy.zip"
    return TrainResult(model_path, steps, wall, eval_cb.history, best,
                       best_path if best_path.is_file() else None)

"""Fuzz agent configs: mutated ``agents/*.yaml`` either validate (and then SB3 builds the
model, and a short rollout and update run, without an error) or are refused with a
``SpecError`` whose every problem names file:line: field; through the CLI they exit 2
without a traceback, in bounded time and resident memory.

Examples: 140 structural mutants + 40 value mutants in-process, 1 CLI run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowrl.core.spec import SpecError, load_scenario
from shadowrl.rl.agents import (
    MAX_ROLLOUT,
    AgentConfig,
    load_agent_config,
    make_vec_env_for,
)
from tests.fuzz._mutate_files import (
    EXTREME_NUMBERS,
    PLAUSIBLE,
    ROOT,
    Mutant,
    mutated_yaml,
    run_cli_rss,
)
from tests.fuzz.conftest import FUZZ

CHECKOUT = ROOT / "envs" / "checkout.yaml"
DQN = {"algorithm": "dqn", "policy": "MlpPolicy", "n_envs": 2, "timesteps": 20000,
       "hyperparameters": {"learning_rate": 1.0e-3, "buffer_size": 5000, "learning_starts": 100,
                           "batch_size": 32, "train_freq": 4, "gradient_steps": 1,
                           "target_update_interval": 500, "exploration_fraction": 0.3},
       "policy_kwargs": {"net_arch": [64, 64]}, "eval": {"freq": 5000, "episodes": 5},
       "checkpoint": {"freq": 10000}}
BASES: dict[str, dict[str, Any]] = {
    **{p.stem: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "agents").glob("*.yaml"))},
    "dqn": DQN,
}

torch.set_num_threads(1)


def _load(mutant: Mutant, folder: Path) -> tuple[Path, AgentConfig | None]:
    """Load in-process: a config, or a SpecError whose problems each name this file, a line
    inside it (or the line after its end) and the field."""
    path = mutant.write(folder, "agent")
    n_lines = mutant.content.count(b"\n") + 2
    start = time.thread_time()  # CPU, not wall: a busy host must not fail it
    try:
        config = load_agent_config(path)
    except SpecError as exc:
        assert exc.problems, mutant.what
        for problem in exc.problems:
            assert problem.file == str(path), (mutant.what, str(problem))
            assert 1 <= problem.line <= n_lines, (mutant.what, str(problem))
            assert problem.message, mutant.what
            assert str(problem).startswith(f"{path}:{problem.line}: "), str(problem)
        return path, None
    finally:
        assert time.thread_time() - start < 2.0, mutant.what
    return path, config


def _build_and_step(config: AgentConfig) -> None:
    """What training does first: the vec env, the model, and (for small rollouts) one
    rollout and update. A config that validated must get through this."""
    rollout = config.hyperparameters.get("n_steps", 1) * config.n_envs
    assert rollout <= MAX_ROLLOUT
    vec_env = make_vec_env_for(SCENARIO, config, seed=0)
    try:
        model = config.algorithm_class(config.policy, vec_env, device="cpu", verbose=0,
                                       **config.constructor_kwargs())
        if rollout <= 32:
            model.learn(total_timesteps=1)
    finally:
        vec_env.close()


SCENARIO = load_scenario(CHECKOUT)


@settings(FUZZ, max_examples=140)
@given(st.sampled_from(sorted(BASES)).flatmap(lambda name: mutated_yaml(BASES[name])))
def test_mutated_agent_configs_validate_or_name_file_line_and_field(mutant: Mutant) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _load(mutant, Path(tmp))


# The ends of each documented range (docs/inputs.md), where libraries break if anywhere.
EDGES: dict[str, tuple[Any, ...]] = {
    "learning_rate": (1e-9, 1.0, "lin_1.0", "lin_1e-9", "1e-4"),
    "gamma": (0.0, 1.0), "gae_lambda": (0.0, 1.0), "ent_coef": (0.0, 1.0),
    "vf_coef": (0.0, 10.0), "max_grad_norm": (1e-9, 1e6), "clip_range": (1e-9, 10.0),
    "n_steps": (1, 2, 8), "batch_size": (2, 8), "n_epochs": (1, 10),
    "buffer_size": (1, 64), "learning_starts": (0, 20_000), "tau": (1e-9, 1.0),
    "train_freq": (1, 1000), "gradient_steps": (-1, 1), "target_update_interval": (1, 10**7),
    "exploration_fraction": (0.0, 1.0), "n_envs": (1, 2, 3),
}


def _value_mutant(base: dict[str, Any]) -> st.SearchStrategy[Mutant]:
    """Only the numbers of the hyperparameters, n_envs and the net change, mostly to the
    ends of their ranges: the mutants most likely to pass validation, so the model is really
    built (and for small rollouts trained) from them."""
    numeric = [("hyperparameters", k) for k, v in base.get("hyperparameters", {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)] + [("n_envs",)]

    @st.composite
    def build(draw: st.DrawFn) -> Mutant:
        rnd = draw(st.randoms(use_true_random=True))
        data = yaml.safe_load(yaml.safe_dump(base))
        data["timesteps"] = min(data["timesteps"], 20_000)
        for _ in range(rnd.choice((1, 2, 3))):
            path = rnd.choice(numeric)
            target = data
            for part in path[:-1]:
                target = target[part]
            edges = EDGES.get(path[-1], PLAUSIBLE)
            target[path[-1]] = rnd.choice(edges if rnd.random() < 0.75 else EXTREME_NUMBERS)
        if rnd.random() < 0.5:
            data["policy_kwargs"] = {"net_arch": rnd.choice(
                [[], [1], [1024] * 8, [8, 8], {"pi": [4], "vf": [4]}])}
        return Mutant(yaml.safe_dump(data).encode(), ".yaml", repr(data))
    return build()


@settings(FUZZ, max_examples=40)
@given(st.sampled_from(sorted(BASES)).flatmap(lambda name: _value_mutant(BASES[name])))
def test_value_mutants_that_validate_build_and_train(mutant: Mutant) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _, config = _load(mutant, Path(tmp))
    if config is not None:
        _build_and_step(config)


def test_every_base_builds_a_model() -> None:
    """The bases validate and build: the mutations make the fuzz fail, not the bases."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in BASES.items():
            mutant = Mutant(yaml.safe_dump({**data, "timesteps": 1000}).encode(), ".yaml", name)
            _, config = _load(mutant, Path(tmp))
            assert config is not None, name
            small = {k: 8 for k in ("n_steps", "batch_size") if k in config.hyperparameters}
            _build_and_step(config.model_copy(update={"hyperparameters": {
                **config.hyperparameters, **small}}))


# --------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("override", [{"hyperparameters": {"learning_rate": -1, "n_steps": 0}}])
def test_cli_refuses_a_bad_agent_without_traceback(tmp_path: Path,
                                                   override: dict[str, Any]) -> None:
    """``optimize --agent`` checks the agent before any work. Importing torch alone maps
    ~700 MB of address space and takes seconds on a busy core, so this run is bounded by
    its resident memory (500 MB) and a 15 s timeout."""
    data = {**BASES["maskable_ppo"], **override}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    run = run_cli_rss(["optimize", str(CHECKOUT), "--method", "rl", "--agent", str(path),
                       "--out", str(tmp_path / "out")], timeout=15.0)
    assert run.returncode == 2, run.stderr[-2000:]
    assert not run.traceback, run.stderr[-2000:]
    assert f"{path}:" in run.stderr and "hyperparameters.learning_rate" in run.stderr
    assert run.max_rss_mb < 500, run.max_rss_mb
    assert not (tmp_path / "out").exists()  # nothing half-written

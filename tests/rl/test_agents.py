"""RL agent layer: agent configs, the registry, training/resume and loading policies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO

from shadowrl.core.spec import SpecError, load_scenario
from shadowrl.rl.agents import (
    ALGORITHMS,
    AgentConfig,
    SB3Policy,
    agent_config_from_data,
    check_run,
    config_problems,
    integer_hyperparameter,
    load_agent_config,
    load_policy,
    make_vec_env_for,
    register_algorithm,
    train,
    uses_masks,
)
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"

TINY = """\
algorithm: maskable_ppo
policy: MlpPolicy
n_envs: 2
timesteps: 512
hyperparameters:
  learning_rate: 3.0e-4
  n_steps: 64
  batch_size: 64
  n_epochs: 2
  gamma: 1.0
policy_kwargs: {net_arch: [32, 32]}
env: {failed_request_weight: 0.5}
eval: {freq: 256, episodes: 4, seed: 100000}
checkpoint: {freq: 256}
"""


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(CHECKOUT)


def _write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["maskable_ppo", "ppo", "a2c"])
def test_shipped_agent_configs_load(name: str) -> None:
    config = load_agent_config(ROOT / "agents" / f"{name}.yaml")
    assert config.algorithm == name
    assert config.timesteps > 0 and config.n_envs >= 1
    kwargs = config.constructor_kwargs()
    assert callable(kwargs["learning_rate"])  # lin_X became a schedule
    assert kwargs["learning_rate"](1.0) > kwargs["learning_rate"](0.5) > 0


def test_bad_algorithm_names_file_line_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "policy: MlpPolicy\nalgorithm: ppo2\ntimesteps: 10\n")
    with pytest.raises(SpecError) as info:
        load_agent_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:2: algorithm: unknown algorithm 'ppo2'")
    assert "maskable_ppo" in msg


def test_unknown_hyperparameter_is_an_error(tmp_path: Path) -> None:
    text = TINY.replace("  n_epochs: 2\n", "  n_epochs: 2\n  learnig_rate: 0.1\n")
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_agent_config(path)
    assert str(info.value).startswith(
        f"{path}:10: hyperparameters.learnig_rate: MaskablePPO does not accept 'learnig_rate'")


@pytest.mark.parametrize("old,new,where", [
    ("n_envs: 2\n", "n_envs: 2\nextra: 1\n", ":4: extra: unknown field"),
    ("  n_steps: 64\n", "  n_steps: lots\n", ":7: hyperparameters.n_steps: expected a whole"),
    ("  gamma: 1.0\n", "  gamma: 1.5\n", ":10: hyperparameters.gamma: must be in [0, 1]"),
    ("3.0e-4", "lin_fast", ":6: hyperparameters.learning_rate: expected a number or 'lin_"),
    ("{failed_request_weight: 0.5}", "{weight: 0.5}", ":12: env.weight: RollbackEnv does"),
    ("net_arch: [32, 32]", "layers: [32]", ":11: policy_kwargs.layers: MaskableActorCritic"),
    ("policy: MlpPolicy", "policy: BigPolicy", ":2: policy: MaskablePPO has no policy"),
    ("n_envs: 2", "n_envs: 0", ":3: n_envs: Input should be greater than or equal to 1"),
    ("{freq: 256, episodes: 4", "{freq: 256, episodes: many", ":13: eval.episodes:"),
])
def test_config_problems_name_file_line_and_field(tmp_path: Path, old: str, new: str,
                                                  where: str) -> None:
    assert old in TINY
    path = _write(tmp_path, TINY.replace(old, new))
    with pytest.raises(SpecError) as info:
        load_agent_config(path)
    assert f"{path}{where}" in str(info.value)


# Each: (hyperparameters or top-level changes, field path, words in the message). These are
# the values the fuzzing of agent configs found crashing SB3/torch or hanging training.
BAD_VALUES = [
    ({"hyperparameters": {"learning_rate": -1}}, "hyperparameters.learning_rate",
     "must be in (0, 1], got -1"),
    ({"hyperparameters": {"learning_rate": "lin_-1"}}, "hyperparameters.learning_rate",
     "must be in (0, 1]"),
    ({"hyperparameters": {"learning_rate": "lin_1.2.3"}}, "hyperparameters.learning_rate",
     "expected a number or 'lin_<number>'"),
    ({"hyperparameters": {"n_steps": 0}}, "hyperparameters.n_steps", "must be in [1, 65536]"),
    ({"hyperparameters": {"n_steps": 10**30}}, "hyperparameters.n_steps", "must be in [1, "),
    ({"hyperparameters": {"n_steps": 64.5}}, "hyperparameters.n_steps", "a whole number"),
    ({"hyperparameters": {"batch_size": 1}}, "hyperparameters.batch_size", "must be in [2, "),
    ({"hyperparameters": {"batch_size": 256}}, "hyperparameters.batch_size",
     "batch_size 256 is larger than n_steps x n_envs = 128"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "must be in [1, 100]"),
    ({"hyperparameters": {"n_epochs": 100, "batch_size": 2}, "timesteps": 100_000},
     "hyperparameters.n_epochs", "gradient steps over 100000 timesteps; the limit is 1000000"),
    ({"hyperparameters": {"n_steps": 65536}, "n_envs": 8}, "hyperparameters.n_steps",
     "n_steps x n_envs = 65536 x 8 = 524288; the limit is 262144"),
    ({"hyperparameters": {"gae_lambda": 1e308}}, "hyperparameters.gae_lambda", "[0, 1]"),
    ({"hyperparameters": {"ent_coef": float("nan")}}, "hyperparameters.ent_coef", "got nan"),
    ({"hyperparameters": {"max_grad_norm": 0}}, "hyperparameters.max_grad_norm", "(0, 1e+06]"),
    ({"hyperparameters": {"clip_range": True}}, "hyperparameters.clip_range", "got True"),
    ({"hyperparameters": {"target_kl": -1}}, "hyperparameters.target_kl", "(0, 10]"),
    ({"hyperparameters": {"rollout_buffer_class": "x"}}, "hyperparameters.rollout_buffer_class",
     "buffer classes cannot be set"),
    ({"policy": "CnnPolicy"}, "policy", "RollbackEnv's are a flat vector: use MlpPolicy"),
    ({"policy_kwargs": {"net_arch": [10**6]}}, "policy_kwargs.net_arch",
     "at most 8 layer widths in [1, 1024]"),
    ({"policy_kwargs": {"net_arch": {"pi": [8], "q": [8]}}}, "policy_kwargs.net_arch",
     "{pi: [...], vf: [...]}"),
    ({"policy_kwargs": {"optimizer_kwargs": {"eps": -1}}}, "policy_kwargs.optimizer_kwargs",
     "cannot be set from an agent config"),
    ({"policy_kwargs": {"activation_fn": ["relu"]}}, "policy_kwargs.activation_fn",
     "unknown activation"),
    ({"env": {"record_profile": True}}, "env.record_profile", "set by shadowrl"),
    ({"env": {"invalid_penalty": 1e308}}, "env.invalid_penalty", "[0, 1e+06]"),
    ({"env": {"incident": "../x"}}, "env.incident", "an incident name"),
    ({"env": {"at": "noon"}}, "env.at", "expected one of now, peak"),
    ({"eval": {"freq": 1, "episodes": 50}, "timesteps": 10_000}, "eval.freq",
     "10001 evaluations of 50 episodes over 10000 timesteps is more than 100000 episodes"),
    ({"checkpoint": {"freq": 1}, "timesteps": 10_000}, "checkpoint.freq",
     "10000 checkpoints over 10000 timesteps; the limit is 1000"),
    ({"timesteps": 10**12}, "timesteps", "less than or equal to 10000000"),
    ({"n_envs": True}, "n_envs", "valid integer"),
]


@pytest.mark.parametrize(("change", "field", "words"), BAD_VALUES,
                         ids=[f"{f}-{i}" for i, (_, f, _) in enumerate(BAD_VALUES)])
def test_out_of_range_values_are_refused_with_file_line_and_field(
        tmp_path: Path, change: dict[str, Any], field: str, words: str) -> None:
    data = yaml.safe_load(TINY)
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    path = _write(tmp_path, yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError) as info:
        load_agent_config(path)
    problem = next((p for p in info.value.problems if p.path == field), None)
    assert problem is not None, str(info.value)
    assert words in problem.message, problem.message
    text = path.read_text().splitlines()
    key = field.split(".")[-1]
    assert key in text[problem.line - 1] or field.split(".")[0] in text[problem.line - 1]


def test_dqn_and_a2c_hyperparameters_are_checked_too() -> None:
    with pytest.raises(SpecError) as info:
        agent_config_from_data({"algorithm": "dqn", "hyperparameters": {
            "gradient_steps": 0, "buffer_size": 10**7, "tau": 0, "n_epochs": 3}})
    found = {p.path: p.message for p in info.value.problems}
    assert "-1 (as many as steps collected)" in found["hyperparameters.gradient_steps"]
    assert "must be in [1, 1000000]" in found["hyperparameters.buffer_size"]
    assert "(0, 1]" in found["hyperparameters.tau"]
    assert "DQN does not accept 'n_epochs'" in found["hyperparameters.n_epochs"]
    with pytest.raises(SpecError, match="gSDE needs a continuous action space"):
        agent_config_from_data({"algorithm": "a2c", "hyperparameters": {"use_sde": True}})
    with pytest.raises(SpecError, match="gradient steps over"):
        agent_config_from_data({"algorithm": "dqn", "timesteps": 1_000_000, "hyperparameters": {
            "train_freq": 1, "gradient_steps": 10}})


def test_numbers_written_as_yaml_strings_are_taken_as_numbers(tmp_path: Path) -> None:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; the config takes it as the number."""
    path = _write(tmp_path, TINY.replace("3.0e-4", "1e-4").replace("gamma: 1.0", "gamma: '1'"))
    config = load_agent_config(path)
    assert config.hyperparameters["learning_rate"] == 1e-4
    assert config.hyperparameters["gamma"] == 1.0
    assert config.constructor_kwargs()["learning_rate"] == 1e-4


def test_check_run_refuses_a_config_changed_after_loading(tmp_path: Path) -> None:
    config = load_agent_config(_write(tmp_path, TINY))
    check_run(config)
    with pytest.raises(ValueError, match=r"timesteps must be a whole number in \[1, 10000000\]"):
        check_run(config, timesteps=10**9)
    bad = config.model_copy(update={"n_envs": 1, "hyperparameters": {
        **config.hyperparameters, "n_steps": 16}})  # batch_size 64 > 16 x 1
    with pytest.raises(ValueError, match="hyperparameters.batch_size: batch_size 64 is larger"):
        check_run(bad)
    with pytest.raises(ValueError, match="agent config: hyperparameters.learning_rate"):
        train(CHECKOUT, config.model_copy(update={"hyperparameters": {
            **config.hyperparameters, "learning_rate": -1}}), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_integer_hyperparameters_are_known() -> None:
    assert integer_hyperparameter("maskable_ppo", "n_steps")
    assert integer_hyperparameter("dqn", "train_freq")
    assert not integer_hyperparameter("ppo", "learning_rate")
    assert not integer_hyperparameter("nope", "n_steps")


@pytest.mark.parametrize(("algorithm", "hyperparameters"), [
    ("maskable_ppo", {"learning_rate": 1.0, "n_steps": 8, "batch_size": 2, "n_epochs": 3,
                      "gamma": 0.0, "gae_lambda": 0.0, "ent_coef": 1.0, "vf_coef": 10.0,
                      "clip_range": 10.0, "clip_range_vf": "lin_10", "max_grad_norm": 1e6,
                      "target_kl": 1e-9, "normalize_advantage": True}),
    ("ppo", {"learning_rate": "lin_1e-9", "n_steps": 1, "batch_size": 2, "gamma": 1.0,
             "gae_lambda": 1.0, "ent_coef": 0.0, "vf_coef": 0.0, "max_grad_norm": 1e-9}),
    ("a2c", {"learning_rate": 1.0, "n_steps": 1, "gamma": 0.0, "rms_prop_eps": 1.0,
             "use_rms_prop": False, "normalize_advantage": True, "ent_coef": 1.0}),
    ("dqn", {"learning_rate": 1.0, "buffer_size": 1, "learning_starts": 0, "batch_size": 64,
             "tau": 1e-9, "train_freq": 1, "gradient_steps": -1, "n_steps": 100,
             "target_update_interval": 1, "exploration_fraction": 0.0,
             "exploration_initial_eps": 0.0, "exploration_final_eps": 1.0, "gamma": 1.0}),
])
def test_the_edges_of_every_range_train(tmp_path: Path, algorithm: str,
                                        hyperparameters: dict[str, Any]) -> None:
    """Values at the ends of the documented ranges build a model and train through two
    rollouts and updates without an error inside SB3 or torch."""
    config = agent_config_from_data({
        "algorithm": algorithm, "n_envs": 2, "timesteps": 32, "hyperparameters": hyperparameters,
        "policy_kwargs": {"net_arch": [1024] * 2 if algorithm == "a2c" else [4]},
        "eval": {"freq": 100_000, "episodes": 1}, "checkpoint": {"freq": 100_000}})
    result = train(CHECKOUT, config, tmp_path, progress=False)
    assert result.timesteps >= 32
    assert result.best_mean_cost is not None and np.isfinite(result.best_mean_cost)



def test_registry() -> None:
    assert uses_masks("maskable_ppo")
    assert not uses_masks("ppo") and not uses_masks("a2c") and not uses_masks("dqn")

    class MyPPO(PPO):
        pass

    register_algorithm("my_ppo", MyPPO)
    try:
        assert ALGORITHMS["my_ppo"] is MyPPO and not uses_masks("my_ppo")
        config = AgentConfig.model_validate({"algorithm": "my_ppo"})
        assert config.algorithm_class is MyPPO
    finally:
        del ALGORITHMS["my_ppo"]
    with pytest.raises(TypeError):
        register_algorithm("bad", dict)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- envs


def test_vec_env_sub_envs_are_seeded_differently_and_deterministically(scenario) -> None:
    config = AgentConfig.model_validate({"n_envs": 3})

    def episode_seeds(seed: int) -> list[int]:
        vec = make_vec_env_for(scenario, config, seed)
        try:
            vec.reset()
            return [int(s) for s in vec.get_attr("episode_seed")]
        finally:
            vec.close()

    first = episode_seeds(0)
    assert len(set(first)) == 3
    assert episode_seeds(0) == first
    assert episode_seeds(1) != first


def test_training_envs_report_an_episode_s_numbers_without_its_rehearsal(scenario) -> None:
    """The VecEnv deep-copies every info: the finished rehearsal is left out of them, the
    numbers the training callbacks log stay (as the env reports them)."""
    from sb3_contrib.common.maskable.utils import get_action_masks

    vec = make_vec_env_for(scenario, AgentConfig.model_validate({"n_envs": 2}), seed=0)
    plain = RollbackEnv(scenario)
    try:
        vec.reset()
        seeds = [int(s) for s in vec.get_attr("episode_seed")]
        plain.reset(seed=seeds[0])
        rng = np.random.default_rng(0)
        finished: dict[str, Any] = {}
        for _ in range(40):
            masks = get_action_masks(vec)
            actions = np.array([rng.choice(np.flatnonzero(m)) for m in masks])
            if not finished:
                _, _, plain_done, _, plain_info = plain.step(int(actions[0]))
            _, _, dones, infos = vec.step(actions)
            if dones[0] and not finished:
                finished = infos[0]
                assert plain_done
            if finished:
                break
        assert finished, "no episode ended in 40 steps"
        assert "rehearsal" not in finished and "rehearsal" in plain_info
        for key in ("downtime_s", "budget_burn", "outcome"):
            assert finished[key] == plain_info[key]
        assert "episode" in finished  # Monitor's statistics still reach the callbacks
    finally:
        vec.close()


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, scenario):
    out = tmp_path_factory.mktemp("agent")
    config_path = _write(out, TINY, "tiny.yaml")
    result = train(scenario, config_path, out / "run", seed=0, progress=False)
    return out / "run", result, load_agent_config(config_path)


def test_train_writes_policy_checkpoints_and_state(trained) -> None:
    out, result, config = trained
    assert result.model_path == out / "policy.zip" and result.model_path.is_file()
    assert result.timesteps >= 512
    sidecar = json.loads((out / "policy.json").read_text())
    assert sidecar["algorithm"] == "maskable_ppo" and sidecar["scenario"] == "checkout"
    assert len(sidecar["actions"]) == len(RollbackEnv(CHECKOUT).actions)  # every action
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.zip"))
    assert ckpts == ["rl_model_256_steps.zip", "rl_model_512_steps.zip"]
    state = json.loads((out / "train_state.json").read_text())
    assert state["timesteps"] == result.timesteps and state["seed"] == 0
    assert state["config"]["hyperparameters"]["n_steps"] == 64
    assert [r["timesteps"] for r in state["eval_history"]] == [256, 512]
    assert result.eval_history == state["eval_history"]
    assert result.best_mean_cost == min(r["mean_cost"] for r in result.eval_history)
    assert (out / "best_policy.zip").is_file()
    assert not list(out.glob(".*.zip")) and not list(out.glob("*.tmp"))  # no leftovers
    # checkpoints are taken between rollouts: the last one is the final model
    final = load_policy(out / "policy.zip").model.policy.state_dict()
    ckpt = load_policy(out / "checkpoints" / "rl_model_512_steps.zip").model.policy.state_dict()
    assert all(np.array_equal(final[k].numpy(), ckpt[k].numpy()) for k in final)

    # evaluations use seeds eval.seed + i: the last one is exactly `evaluate` on those seeds
    policy = load_policy(out / "policy.zip")
    episodes = evaluate(RollbackEnv(CHECKOUT, **config.env), policy, config.eval.episodes,
                        config.eval.seed)
    last = result.eval_history[-1]
    assert np.isclose(np.mean([e.cost for e in episodes]), last["mean_cost"])
    assert np.isclose(np.mean([e.rehearsal.downtime_s for e in episodes]),
                      last["mean_downtime_s"])


def test_resume_continues_from_the_latest_checkpoint(trained, tmp_path: Path, scenario) -> None:
    src, first, config = trained
    out = tmp_path / "run"
    shutil.copytree(src, out)
    (out / "policy.zip").unlink()  # as if the first run died after its last checkpoint
    result = train(scenario, config, out, seed=0, timesteps=1024, resume=True,
                   progress=False)
    assert result.timesteps == 1024  # 512 done + 512 more, not 1024 from scratch
    state = json.loads((out / "train_state.json").read_text())
    assert state["resumed_from"].endswith("rl_model_512_steps.zip")
    assert state["timesteps"] == 1024 and state["target_timesteps"] == 1024
    assert [r["timesteps"] for r in state["eval_history"]] == [256, 512, 768, 1024]
    assert state["eval_history"][:2] == first.eval_history
    ckpts = sorted(int(p.name.split("_")[2]) for p in (out / "checkpoints").glob("*.zip"))
    assert ckpts == [256, 512, 768, 1024]
    assert load_policy(out / "policy.zip").model.num_timesteps == 1024

    # already at the target: nothing more is trained
    again = train(scenario, config, out, seed=0, timesteps=1024, resume=True, progress=False)
    assert again.timesteps == 1024

    with pytest.raises(ValueError, match="trained with 'maskable_ppo'"):
        train(scenario, config.model_copy(update={"algorithm": "ppo"}), out, timesteps=2048,
              resume=True, progress=False)


def test_load_policy_and_evaluate_uses_valid_actions_only(trained) -> None:
    out, _, _ = trained
    policy = load_policy(out / "policy.zip")
    assert policy.masked and policy.name == "rl"
    env = RollbackEnv(CHECKOUT)
    checked = _MaskChecked(policy)
    episodes = evaluate(env, checked, 5, 10_000)
    assert len(episodes) == 5 and checked.calls == sum(len(e.actions) for e in episodes)
    assert all(e.rehearsal is not None for e in episodes)


def test_load_policy_without_sidecar_detects_the_algorithm(trained, tmp_path: Path,
                                                           scenario) -> None:
    out, _, _ = trained
    bare = tmp_path / "bare.zip"
    shutil.copyfile(out / "checkpoints" / "rl_model_512_steps.zip", bare)
    assert type(load_policy(bare).model).__name__ == "MaskablePPO"

    env = RollbackEnv(scenario)
    PPO("MlpPolicy", env, n_steps=32, batch_size=32, device="cpu").save(tmp_path / "ppo.zip")
    assert type(load_policy(tmp_path / "ppo.zip").model) is PPO

    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot load"):
        load_policy(tmp_path / "junk.zip")


def test_unmasked_policy_never_returns_a_masked_action(scenario) -> None:
    env = RollbackEnv(scenario)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, seed=0, device="cpu")
    model.learn(64)  # barely trained: it picks done steps often
    policy = SB3Policy(model)
    assert not policy.masked
    checked = _MaskChecked(policy)
    evaluate(env, checked, 5, 10_000)
    assert checked.calls == 35

    # a model that always wants action 0 (the first step): after it ran, the mask forbids
    # it and the most probable valid action is taken instead
    model.predict = lambda obs, deterministic=False, **kw: (np.array(0), None)  # type: ignore
    stubborn = SB3Policy(model)
    checked = _MaskChecked(stubborn)
    evaluate(env, checked, 3, 10_000)
    assert stubborn.fallbacks == 3 * 6


def test_sb3_policy_rejects_an_env_of_another_shape(trained) -> None:
    out, _, _ = trained
    policy = load_policy(out / "policy.zip")
    other = RollbackEnv(ROOT / "envs" / "payments.yaml")
    if other.action_space == policy.model.action_space:
        pytest.skip("payments happens to have the same action space")
    other.reset(seed=1)
    with pytest.raises(ValueError, match="trained on"):
        policy.reset(other)


class _MaskChecked:
    """Wraps a policy and fails the test if it ever returns an action the mask forbids."""

    def __init__(self, inner: SB3Policy) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls = 0

    def reset(self, env: RollbackEnv) -> None:
        self.inner.reset(env)

    def act(self, env: RollbackEnv, obs: np.ndarray) -> int:
        action = self.inner.act(env, obs)
        assert env.action_masks()[action], f"masked action {env.describe(action)}"
        self.calls += 1
        return action


def test_stop_after_cuts_the_schedule_s_tail_instead_of_compressing_it(tmp_path: Path) -> None:
    """A run of 2,048 steps stopped after 512 is that run's beginning: it ends after the
    update at 512 with the learning rate of 512 steps into 2,048 (3/4 of the start), where a
    512-step run has decayed it to 0 by its last update."""
    data = {"algorithm": "maskable_ppo", "n_envs": 2, "timesteps": 2048, "stop_after": 512,
            "hyperparameters": {"n_steps": 128, "batch_size": 64, "n_epochs": 1,
                                "learning_rate": "lin_1.0e-3"},
            "policy_kwargs": {"net_arch": [8]},
            "eval": {"freq": 100_000, "episodes": 1}, "checkpoint": {"freq": 100_000}}
    result = train(CHECKOUT, agent_config_from_data(data), tmp_path / "cut", progress=False)
    assert 512 < result.timesteps <= 512 + 2  # the step past the limit ends it
    model = MaskablePPO.load(result.model_path, device="cpu")
    assert model.policy.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 3 / 4)
    short = train(CHECKOUT, agent_config_from_data({**data, "timesteps": 512,
                                                    "stop_after": None}),
                  tmp_path / "short", progress=False)
    model = MaskablePPO.load(short.model_path, device="cpu")
    assert model.policy.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_stop_after_past_a_shorter_run_cuts_nothing(tmp_path: Path) -> None:
    """An agent stopped after 107,520 steps still trains a --timesteps 256 run whole."""
    config = agent_config_from_data({
        "n_envs": 2, "timesteps": 150_000, "stop_after": 107_520,
        "hyperparameters": {"n_steps": 64, "batch_size": 64, "n_epochs": 1},
        "policy_kwargs": {"net_arch": [8]},
        "eval": {"freq": 100_000, "episodes": 1}, "checkpoint": {"freq": 100_000}})
    assert config_problems(config.model_copy(update={"timesteps": 256})) == []
    result = train(CHECKOUT, config, tmp_path, timesteps=256, progress=False)
    assert result.timesteps == 256

"""RL agent layer: agent configs, the registry, training/resume and loading policies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3 import PPO

from shadowrl.core.spec import SpecError, load_scenario
from shadowrl.rl.agents import (
    ALGORITHMS,
    AgentConfig,
    SB3Policy,
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

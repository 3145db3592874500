"""The asymmetric actor-critic: the critic's hidden input, an actor blind to it, and the
policy a run saves (on the plain observation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import DummyVecEnv

from shadowrl.core.spec import SpecError
from shadowrl.rl.agents import agent_config_from_data, load_policy, train
from shadowrl.rl.asymmetric import (
    AsymmetricMaskablePolicy,
    HiddenIncident,
    actor_only,
    hidden_size,
)
from shadowrl.rl.env import RollbackEnv
from tests.agents import TINY_AGENT

ROOT = Path(__file__).resolve().parents[2]
SEARCH = ROOT / "envs" / "search.yaml"


def _probs(policy: torch.nn.Module, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        dist = policy.get_distribution(torch.as_tensor(obs[None]),  # type: ignore[operator]
                                       action_masks=mask[None])
        return dist.distribution.probs.numpy()[0]


def test_the_critic_input_is_the_observation_then_the_hidden_incident() -> None:
    env = RollbackEnv(SEARCH)
    wrapped = HiddenIncident(env)
    n = env.observation_space.shape[0]  # type: ignore[index]
    assert wrapped.observation_space.shape == (n + hidden_size(env),)
    for seed in (10_000, 10_010, 10_011):
        obs, _ = wrapped.reset(seed=seed)
        plain, _ = env.reset(seed=seed)
        np.testing.assert_array_equal(obs[:n], plain)
        inj = env.injection
        assert inj is not None
        names = [i.name for i in env.scenario.incidents]
        onehot = obs[n:n + len(names)]
        assert onehot.sum() == 1.0 and names[int(onehot.argmax())] == inj.incident
        assert obs[n + len(names)] == pytest.approx(inj.magnitude, rel=1e-6)
        assert obs[n + len(names) + 1] == pytest.approx(inj.load_multiplier, rel=1e-6)
        assert obs in wrapped.observation_space
    np.testing.assert_array_equal(wrapped.action_masks(), env.action_masks())


def _asymmetric_model() -> tuple[MaskablePPO, RollbackEnv, HiddenIncident]:
    env = RollbackEnv(SEARCH)
    wrapped = HiddenIncident(RollbackEnv(SEARCH))
    n = env.observation_space.shape[0]  # type: ignore[index]
    model = MaskablePPO(AsymmetricMaskablePolicy, DummyVecEnv([lambda: wrapped]), device="cpu",
                        n_steps=64, batch_size=32, seed=3,
                        policy_kwargs={"net_arch": [16, 16], "n_observed": n})
    return model, env, wrapped


def test_the_actor_never_reads_the_hidden_incident() -> None:
    """Changing the hidden entries changes the critic's value, never the actor's choice; a
    change of the observation changes both."""
    model, env, wrapped = _asymmetric_model()
    obs, _ = wrapped.reset(seed=10_000)
    mask = wrapped.action_masks()
    n = env.observation_space.shape[0]  # type: ignore[index]
    other = obs.copy()
    other[n:] = np.linspace(-3.0, 3.0, len(obs) - n)
    np.testing.assert_array_equal(_probs(model.policy, obs, mask),
                                  _probs(model.policy, other, mask))
    with torch.no_grad():
        values = [float(model.policy.predict_values(torch.as_tensor(o[None])))
                  for o in (obs, other)]
    assert values[0] != values[1]
    moved = obs.copy()
    moved[:n] += 0.5
    assert not np.allclose(_probs(model.policy, obs, mask), _probs(model.policy, moved, mask))


def test_actor_only_acts_like_the_trained_actor_on_the_plain_observation() -> None:
    model, env, wrapped = _asymmetric_model()
    model.learn(128)  # weights away from their initial values
    plain = actor_only(model, env)
    assert plain.observation_space.shape == env.observation_space.shape
    for seed in (10_000, 10_002, 10_010):
        full, _ = wrapped.reset(seed=seed)
        obs, _ = env.reset(seed=seed)
        mask = env.action_masks()
        np.testing.assert_allclose(_probs(plain.policy, obs, mask),
                                   _probs(model.policy, full, mask), rtol=1e-5, atol=1e-7)


def test_a_run_with_a_hidden_critic_saves_a_plain_policy_and_resumes(tmp_path: Path) -> None:
    config = agent_config_from_data({**_tiny(), "critic": "hidden", "checkpoint": {"freq": 512}})
    result = train(SEARCH, config, tmp_path, seed=1, progress=False)
    policy = load_policy(result.model_path)
    env = RollbackEnv(SEARCH)
    policy.check_fit(env)  # the plain observation: evaluate, registry and export take it
    assert json.loads((tmp_path / "policy.json").read_text())["observation_dim"] == \
        env.observation_space.shape[0]  # type: ignore[index]
    obs, _ = env.reset(seed=10_000)
    assert env.action_masks()[policy.act(env, obs)]
    more = train(SEARCH, config, tmp_path, seed=1, timesteps=2048, resume=True,
                 progress=False)
    assert more.timesteps == 2048
    state = json.loads((tmp_path / "train_state.json").read_text())
    assert "checkpoints" in str(state["resumed_from"])  # not the actor-only policy.zip


def test_a_hidden_critic_needs_maskable_ppo() -> None:
    with pytest.raises(SpecError, match="critic"):
        agent_config_from_data({**_tiny(), "algorithm": "ppo", "critic": "hidden"})
    with pytest.raises(SpecError, match="critic"):
        agent_config_from_data({**_tiny(), "critic": "omniscient"})


def _tiny() -> dict[str, object]:
    import yaml

    data = yaml.safe_load(TINY_AGENT)
    assert isinstance(data, dict)
    return data


def test_the_hidden_incident_carries_the_hour_and_the_pattern_load() -> None:
    from shadowrl.shadow.sim.params import SimParams
    from shadowrl.shadow.sim.topology import diurnal_factor

    env = RollbackEnv(SEARCH)
    wrapped = HiddenIncident(env)
    n = env.observation_space.shape[0] + len(env.scenario.incidents)  # type: ignore[index]
    obs, _ = wrapped.reset(seed=10_037)
    assert env.injection is not None
    at = env.injection.start_offset_s + env.shadow.now()
    assert obs[n + 2] == pytest.approx(diurnal_factor(at, SimParams()), rel=1e-6)
    hour = np.arctan2(obs[n + 3], obs[n + 4]) / (2 * np.pi) * 24 % 24
    assert hour == pytest.approx(at / 3600 % 24, abs=1e-3)
    assert obs[n + 5] == pytest.approx((env.shadow.now() - env.injection.onset_s) / 600,
                                       rel=1e-6)

"""RollbackEnv: registration, the Gymnasium API, seeding, masks, rewards, MaskablePPO."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import shadowrl  # noqa: F401  (registers shadowrl/Rollback-v0)
from shadowrl.core.plan import configured_plan
from shadowrl.core.spec import Scenario, load_scenario
from shadowrl.rehearsal.runner import rehearse
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.policy import action_for

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "tests" / "scenarios"
ENV_ID = "shadowrl/Rollback-v0"

# gymnasium's passive checker warns that an env with render_modes declares no render_fps
pytestmark = pytest.mark.filterwarnings("ignore:.*render fps.*")


@pytest.fixture
def in_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    yield


def make(scenario: str | Path | Scenario, **kwargs: Any) -> RollbackEnv:
    return RollbackEnv(scenario if not isinstance(scenario, str) else ROOT / scenario, **kwargs)


def play(env: RollbackEnv, plan: list[tuple[str, dict[str, Any] | None]]
         ) -> tuple[list[float], dict[str, Any]]:
    rewards: list[float] = []
    info: dict[str, Any] = {}
    for k, (name, settings) in enumerate(plan):
        action = action_for(env, name, settings)
        assert env.action_masks()[action], (name, settings)
        _, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        assert not truncated
        assert terminated == (k == len(plan) - 1)
    return rewards, info


# --------------------------------------------------------------------------- registration

def test_gym_make_after_import(in_root: None) -> None:
    env = gym.make(ENV_ID, scenario="envs/checkout.yaml")
    try:
        assert isinstance(env.unwrapped, RollbackEnv)
        assert env.unwrapped.scenario.name == "checkout"
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        assert info["incident"] in {i.name for i in env.unwrapped.scenario.incidents}
    finally:
        env.close()


def test_registration_is_idempotent() -> None:
    import importlib

    importlib.reload(shadowrl)
    assert gym.spec(ENV_ID).entry_point == "shadowrl.rl.env:RollbackEnv"


@pytest.mark.parametrize("name", [
    "checkout", "payments", "search"])
def test_check_env(name: str) -> None:
    env = gym.make(ENV_ID, scenario=str(ROOT / "envs" / f"{name}.yaml"))
    try:
        env.reset(seed=0)  # seeds the env's generator, so check_env's bare resets repeat
        check_env(env.unwrapped)
    finally:
        env.close()


@pytest.mark.parametrize("name", ["checkout", "payments", "search"])
def test_reset_works_for_every_seed(name: str) -> None:
    env = make(f"envs/{name}.yaml")
    for seed in range(40):
        obs, _ = env.reset(seed=seed)
        assert env.observation_space.contains(obs)


# --------------------------------------------------------------------------- seeding

def rollout(env: RollbackEnv, seed: int, pick_seed: int) -> tuple[list[np.ndarray], list[float]]:
    """A random masked policy (its own seeded generator) from reset(seed) to the end."""
    rng = np.random.default_rng(pick_seed)
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for _ in range(env.max_actions):
        valid = np.flatnonzero(env.action_masks())
        obs, reward, terminated, truncated, _ = env.step(int(rng.choice(valid)))
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return observations, rewards


@pytest.mark.parametrize("name", ["checkout", "payments"])
def test_exact_seeding(name: str) -> None:
    a, b = make(f"envs/{name}.yaml"), make(f"envs/{name}.yaml")
    for seed in (0, 5):
        obs_a, rew_a = rollout(a, seed, seed + 100)
        obs_b, rew_b = rollout(b, seed, seed + 100)
        assert rew_a == rew_b
        assert len(obs_a) == len(obs_b)
        assert all(np.array_equal(x, y) for x, y in zip(obs_a, obs_b))
    # the same env instance, reset again with the same seed, repeats itself too
    again = rollout(a, 5, 105)
    assert again[1] == rew_a


def test_bare_reset_after_a_seeded_one_is_reproducible() -> None:
    a, b = make("envs/checkout.yaml"), make("envs/checkout.yaml")
    a.reset(seed=42)
    b.reset(seed=42)
    for _ in range(3):
        (oa, ia), (ob, ib) = a.reset(), b.reset()
        assert ia["episode_seed"] == ib["episode_seed"]
        assert np.array_equal(oa, ob)


def test_different_seeds_face_different_incidents() -> None:
    env = make("envs/checkout.yaml")
    seen = {(info["incident"], info["breach_at_s"])
            for info in (env.reset(seed=s)[1] for s in range(8))}
    assert len(seen) >= 6


@pytest.mark.parametrize("name", ["checkout", "payments"])
def test_reset_faces_the_rehearsal_incident(name: str) -> None:
    sc = load_scenario(ROOT / "envs" / f"{name}.yaml")
    env = make(sc)
    for seed in range(5):
        _, info = env.reset(seed=seed)
        r = rehearse(sc, seed)
        assert info["incident"] == r.incident
        assert info["breach_at_s"] == r.breach.at_s
        assert info["episode_seed"] == seed
        assert env.injection == r.injection


# --------------------------------------------------------------------------- masks

def test_action_space_and_masks_at_reset() -> None:
    env = make("envs/checkout.yaml")
    env.reset(seed=0)
    proc = env.procedure
    assert env.action_space.n == len(env.actions)
    mask = env.action_masks()
    assert mask.dtype == bool and mask.shape == (env.action_space.n,)
    open_steps = {env.steps[i].name for a, (i, _) in enumerate(env.actions) if mask[a]}
    # steps whose `after` are not done are masked; the rest are open
    assert open_steps == {s.name for s in proc.steps if not s.after}
    # one skip action per optional step, and only for optional steps
    skips = [env.steps[i] for i, s in env.actions if s is None]
    assert sorted(s.name for s in skips) == sorted(s.name for s in proc.steps if s.optional)
    # every combination of tunable choices is one action
    revert = proc.step("revert-web")
    n_revert = sum(1 for i, _ in env.actions if env.steps[i].name == "revert-web")
    assert n_revert == math.prod(len(t.choices) for t in revert.tunables().values())


def test_masks_follow_the_episode() -> None:
    env = make("envs/checkout.yaml")
    env.reset(seed=0)

    def open_steps() -> set[str]:
        mask = env.action_masks()
        return {env.steps[i].name for a, (i, _) in enumerate(env.actions) if mask[a]}

    assert "migrate-db-down" not in open_steps()
    env.step(action_for(env, "revert-orders", {"batch": 1, "drain": 30.0}))
    assert "revert-orders" not in open_steps()  # done
    assert "migrate-db-down" in open_steps()  # its `after` is done
    assert "flush-cache" not in open_steps()
    env.step(action_for(env, "migrate-db-down", {"online": True}))
    env.step(action_for(env, "flush-cache", {}))
    assert "warm-cache" in open_steps()
    skip = action_for(env, "warm-cache", None)
    assert env.action_masks()[skip]


def test_masked_action_costs_the_penalty_and_changes_nothing() -> None:
    env = make("envs/checkout.yaml", invalid_penalty=2.5)
    obs, _ = env.reset(seed=1)
    masked = np.flatnonzero(~env.action_masks())
    assert masked.size > 0
    status, now, results = env.status.copy(), env.shadow.now(), list(env.results)
    for action in [*masked.tolist(), -1, env.action_space.n, 10**9]:
        obs2, reward, terminated, truncated, info = env.step(action)
        assert reward == -2.5
        assert not terminated
        assert info.get("invalid_action") is True
        assert np.array_equal(obs2, obs)
        assert np.array_equal(env.status, status)
        assert env.shadow.now() == now
        assert env.results == results
        if truncated:
            break


def test_repeated_masked_actions_truncate() -> None:
    env = make("envs/checkout.yaml")
    env.reset(seed=1)
    bad = int(np.flatnonzero(~env.action_masks())[0])
    truncated = False
    for _ in range(env.max_actions):
        _, _, terminated, truncated, _ = env.step(bad)
        assert not terminated
    assert truncated


def test_stepping_after_the_end_never_crashes() -> None:
    env = make("tests/scenarios/minimal.yaml")
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(0)
    assert terminated and info["outcome"] == "recovered"
    assert not env.action_masks().any()
    obs, reward, terminated, _, info = env.step(0)
    assert reward == -env.invalid_penalty and not terminated and info["invalid_action"]
    assert env.observation_space.contains(obs)


@pytest.mark.parametrize("path", ["envs/checkout.yaml", "envs/payments.yaml",
                                  "tests/scenarios/phys_causes.yaml",
                                  "tests/scenarios/irreversible.yaml"])
def test_random_actions_never_crash(path: str) -> None:
    env = make(path)
    rng = np.random.default_rng(0)
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        for _ in range(env.max_actions):
            action = int(rng.integers(-1, env.action_space.n + 1))
            obs, reward, terminated, truncated, info = env.step(action)
            assert env.observation_space.contains(obs)
            assert math.isfinite(reward)
            if terminated or truncated:
                break
        assert terminated or truncated


# --------------------------------------------------------------------------- rewards

@pytest.mark.parametrize("name,seed", [("checkout", 0), ("checkout", 1), ("payments", 2)])
def test_episode_reward_is_minus_the_rehearsal_downtime(name: str, seed: int) -> None:
    sc = load_scenario(ROOT / "envs" / f"{name}.yaml")
    plan = configured_plan(sc.procedure)
    env = make(sc, failed_request_weight=0.0, objective="downtime")
    env.reset(seed=seed)
    rewards, info = play(env, plan)
    expected = rehearse(sc, seed)  # the same incident, procedure and settings
    r = info["rehearsal"]
    assert info["outcome"] == r.outcome == expected.outcome
    assert info["downtime_s"] == r.downtime_s
    assert r.to_json() == expected.to_json()
    assert sum(rewards) == pytest.approx(-r.downtime_s / 60.0, rel=1e-9, abs=1e-9)
    # failed requests cost extra when weighted
    weighted = make(sc, objective="downtime")
    weighted.reset(seed=seed)
    weighted_rewards, _ = play(weighted, plan)
    assert r.failed_requests > 0
    assert sum(weighted_rewards) < sum(rewards)


def test_reward_of_each_step_is_its_downtime() -> None:
    sc = load_scenario(ROOT / "envs" / "checkout.yaml")
    env = make(sc, failed_request_weight=0.0, objective="downtime")
    env.reset(seed=0)
    rewards, info = play(env, configured_plan(sc.procedure))
    steps = info["rehearsal"].steps
    for reward, step in zip(rewards[:-1], steps[:-1]):
        assert reward == pytest.approx(-step.span.downtime_s / 60.0, abs=1e-12)


def test_failed_step_is_penalised_and_ends_the_episode() -> None:
    sc = load_scenario(SCENARIOS / "irreversible.yaml")
    env = make(sc, failed_request_weight=0.0, failed_step_penalty=10.0, objective="downtime")
    env.reset(seed=0)
    rewards, info = play(env, configured_plan(sc.procedure))
    r = info["rehearsal"]
    assert info["outcome"] == "rollback_failed"
    assert sum(rewards) == pytest.approx(-r.downtime_s / 60.0 - 10.0, rel=1e-9)
    budget = make(sc, failed_step_penalty=10.0)  # the default objective: budget burn
    budget.reset(seed=0)
    rewards, info = play(budget, configured_plan(sc.procedure))
    assert sum(rewards) == pytest.approx(-100.0 * info["rehearsal"].budget_burn - 10.0,
                                         rel=1e-9)


def test_skip_costs_nothing_and_is_recorded() -> None:
    sc = load_scenario(SCENARIOS / "phys_rollout.yaml")
    env = make(sc)
    env.reset(seed=0)
    now = env.shadow.now()
    _, reward, terminated, _, info = env.step(action_for(env, "scale-app", None))
    assert reward == 0.0 and not terminated and info["step"] == "scale-app"
    assert env.shadow.now() == now
    _, _, terminated, _, info = env.step(action_for(env, "revert-app",
                                                    {"batch": 1, "drain": 10.0}))
    assert terminated
    assert [s.status for s in info["rehearsal"].steps] == ["skipped", "ok"]


# --------------------------------------------------------------------------- MaskablePPO

def test_maskable_ppo_smoke(in_root: None) -> None:
    torch = pytest.importorskip("torch")
    from sb3_contrib import MaskablePPO

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: threads only contend (10x slower on 2 cores)
    try:
        env = gym.make(ENV_ID, scenario="envs/checkout.yaml")
        model = MaskablePPO("MlpPolicy", env, n_steps=64, batch_size=32, seed=0, verbose=0)
        model.learn(total_timesteps=256)
        assert model.num_timesteps >= 256
        obs, _ = env.reset(seed=123)
        for _ in range(env.unwrapped.max_actions):
            masks = env.unwrapped.action_masks()
            action, _ = model.predict(obs, action_masks=masks, deterministic=True)
            assert masks[int(action)]
            obs, _, terminated, truncated, info = env.step(int(action))
            assert not info.get("invalid_action")
            if terminated or truncated:
                break
        assert terminated
        assert info["outcome"] in {"recovered", "rollback_failed", "rollback_ineffective"}
        env.close()
    finally:
        torch.set_num_threads(threads)

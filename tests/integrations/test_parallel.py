"""shadowrl.integrations.ray: RayVecEnv against DummyVecEnv, fault tolerance, evaluation fan-out."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.utils import get_action_masks
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from shadowrl.core.spec import load_scenario
from shadowrl.integrations.ray import (
    RayRehearseFn,
    RayVecEnv,
    parallel_evaluate,
    parallel_plan_costs,
    parallel_rehearse,
    ray_session,
)
from shadowrl.rehearsal.campaign import run_campaign
from shadowrl.rehearsal.runner import rehearse
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.evaluate import evaluate, run_episode
from shadowrl.rl.policy import RandomPolicy, StaticPolicy, actions_to_plan, configured_policy
from shadowrl.rl.search import GreedyPolicy
from tests.agents import TINY_AGENT

CHECKOUT = Path(__file__).resolve().parents[2] / "envs" / "checkout.yaml"


@pytest.fixture(scope="module")
def scenario() -> Any:
    return load_scenario(CHECKOUT)


@pytest.fixture(scope="module")
def vec2(ray_local: Any, scenario: Any) -> Any:
    vec = RayVecEnv([{"scenario": scenario}, {"scenario": scenario}])
    yield vec
    vec.close()


def _random_actions(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.choice(np.flatnonzero(m)) for m in masks])


def _without_wall_time(info: dict[str, Any]) -> dict[str, Any]:
    out = dict(info)
    if "episode" in out:  # Monitor's "t" is wall-clock time
        out["episode"] = {k: v for k, v in out["episode"].items() if k != "t"}
    return out


def _same_info(a: dict[str, Any], b: dict[str, Any]) -> None:
    a, b = _without_wall_time(a), _without_wall_time(b)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key])
        else:
            assert a[key] == b[key], key


# --------------------------------------------------------------------------- sessions


def test_ray_session_reuses_running_ray_and_rejects_unreachable(ray_local: Any) -> None:
    with ray_session() as session:
        assert not session.started and session.num_cpus >= 1
    assert ray_local.is_initialized()  # reused, so not shut down
    with pytest.raises(ValueError, match="127.0.0.1:1"):
        with ray_session("127.0.0.1:1"):
            pass


_SESSION_SCRIPT = """
import sys, ray
from shadowrl.integrations.ray import ray_session
with ray_session(address=sys.argv[1]) as s:  # join the test's cluster
    assert s.started and s.address == sys.argv[1], s
    assert ray.get(ray.remote(lambda: 41).remote()) == 41
assert not ray.is_initialized()
with ray_session(num_cpus=1) as s:  # a private local instance
    assert s.started and s.address is None and s.num_cpus == 1, s
    with ray_session() as inner:  # nested: reused, left running
        assert not inner.started
    assert ray.is_initialized()
assert not ray.is_initialized()
print("ok")
"""


def test_ray_session_joins_and_starts_and_shuts_down(ray_local: Any) -> None:
    address = ray_local.get_runtime_context().gcs_address
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", _SESSION_SCRIPT, address], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# --------------------------------------------------------------------------- RayVecEnv


def test_vec_env_basic_checks(vec2: Any) -> None:
    n = vec2.num_envs
    assert n == 2 and isinstance(vec2.action_space, spaces.Discrete)
    assert vec2.env_is_wrapped(Monitor) == [True, True]
    assert vec2.get_attr("max_actions") == vec2.get_attr("max_actions", indices=[0]) * 2
    vec2.seed(3)
    obs = vec2.reset()
    assert obs.shape == (n, *vec2.observation_space.shape) and obs.dtype == np.float32
    assert all(vec2.observation_space.contains(o) for o in obs)
    assert [i["episode_seed"] for i in vec2.reset_infos] == [3, 4]
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(30):
        obs, rewards, dones, infos = vec2.step(_random_actions(vec2.action_masks(), rng))
        assert obs.shape == (n, *vec2.observation_space.shape)
        assert rewards.shape == (n,) and rewards.dtype == np.float32
        assert dones.shape == (n,) and dones.dtype == bool
        assert len(infos) == n and all("TimeLimit.truncated" in i for i in infos)
        for done, info in zip(dones, infos):
            if done:
                ended += 1
                assert vec2.observation_space.contains(info["terminal_observation"])
                assert "episode" in info and "rehearsal" in info  # Monitor and env infos
            else:
                assert "terminal_observation" not in info
    assert ended >= 4
    vec2.set_attr("invalid_penalty", 2.5, indices=[1])
    assert vec2.get_attr("invalid_penalty") == [1.0, 2.5]  # on the Monitor, as DummyVecEnv
    vec2.set_attr("invalid_penalty", 1.0)


def test_vec_env_matches_dummy_vec_env(vec2: Any, scenario: Any) -> None:
    dummy = DummyVecEnv([lambda: Monitor(RollbackEnv(scenario)) for _ in range(2)])
    for v in (vec2, dummy):
        v.seed(7)
    np.testing.assert_array_equal(vec2.reset(), dummy.reset())
    assert [i["episode_seed"] for i in vec2.reset_infos] == [
        i["episode_seed"] for i in dummy.reset_infos]
    rng = np.random.default_rng(1)
    for _ in range(40):  # several auto-resets per env: unseeded, drawn from each env's RNG
        masks = get_action_masks(dummy)
        np.testing.assert_array_equal(get_action_masks(vec2), masks)
        actions = _random_actions(masks, rng)
        ray_out, dummy_out = vec2.step(actions), dummy.step(actions)
        for a, b in zip(ray_out[:3], dummy_out[:3]):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(ray_out[3], dummy_out[3]):
            _same_info(a, b)
        for a, b in zip(vec2.reset_infos, dummy.reset_infos):
            _same_info(a, b)
    dummy.close()


def test_make_vec_env_for_accepts_ray_vec_env(ray_local: Any, scenario: Any) -> None:
    """The training hook: ``vec_env_factory=RayVecEnv`` gives DummyVecEnv's episodes."""
    from shadowrl.rl.agents import AgentConfig, make_vec_env_for

    config = AgentConfig(n_envs=2)
    dummy = make_vec_env_for(scenario, config, seed=4)
    vec = make_vec_env_for(scenario, config, seed=4, vec_env_factory=RayVecEnv)
    try:
        assert isinstance(vec, RayVecEnv) and vec.env_is_wrapped(Monitor) == [True, True]
        np.testing.assert_array_equal(vec.reset(), dummy.reset())
        rng = np.random.default_rng(3)
        for _ in range(15):
            actions = _random_actions(get_action_masks(dummy), rng)
            for a, b in zip(vec.step(actions)[:3], dummy.step(actions)[:3]):
                np.testing.assert_array_equal(a, b)
        assert [i["episode_seed"] for i in vec.reset_infos] == [
            i["episode_seed"] for i in dummy.reset_infos]
    finally:
        vec.close()
        dummy.close()


def test_action_masks_match_the_replicas(vec2: Any, ray_local: Any) -> None:
    vec2.reset()
    rng = np.random.default_rng(2)
    for _ in range(5):
        masks = get_action_masks(vec2)  # env_method("action_masks"): answered from the cache
        remote = np.stack(ray_local.get([a.action_masks.remote() for a in vec2.actors]))
        np.testing.assert_array_equal(masks, remote)
        np.testing.assert_array_equal(vec2.action_masks(), remote)
        assert masks.shape == (2, vec2.action_space.n) and masks.dtype == bool
        vec2.step(_random_actions(masks, rng))


class _KillReplica(BaseCallback):
    def __init__(self, vec: RayVecEnv, at: int) -> None:
        super().__init__()
        self.vec, self.at, self.killed, self.cut = vec, at, False, 0

    def _on_step(self) -> bool:
        import ray

        self.cut += sum(bool(i.get("replica_restarted")) for i in self.locals["infos"])
        if not self.killed and self.num_timesteps >= self.at:
            ray.kill(self.vec.actors[0])
            self.killed = True
        return True


def test_maskable_ppo_survives_a_killed_replica(ray_local: Any, scenario: Any,
                                                tmp_path: Path) -> None:
    vec = RayVecEnv([{"scenario": scenario}, {"scenario": scenario}])
    try:
        model = MaskablePPO("MlpPolicy", vec, n_steps=64, batch_size=64, n_epochs=2, seed=0,
                            policy_kwargs={"net_arch": [32]}, device="cpu")
        killer = _KillReplica(vec, at=100)
        model.learn(256, callback=killer)
        assert model.num_timesteps >= 256
        assert killer.killed and vec.restarts == 1 and killer.cut == 1
        assert len(model.ep_info_buffer) > 0  # Monitor episodes reached the learner
        model.save(tmp_path / "policy.zip")
    finally:
        vec.close()
    # the trained policy, shipped to the tasks as a .zip, evaluates as it does serially
    from shadowrl.rl.agents import load_policy

    serial = evaluate(RollbackEnv(scenario), load_policy(tmp_path / "policy.zip"), 4, 50)
    assert parallel_evaluate(scenario, tmp_path / "policy.zip", 4, 50, replicas=2) == serial


# --------------------------------------------------------------------------- fan-out


def test_parallel_evaluate_matches_serial(ray_local: Any, scenario: Any) -> None:
    env = RollbackEnv(scenario)
    seen: list[int] = []
    for policy in ["configured", RandomPolicy(3), GreedyPolicy()]:
        serial_policy = configured_policy(env) if policy == "configured" else policy
        serial = evaluate(env, serial_policy, 7, 1000)
        got = parallel_evaluate(CHECKOUT, policy, 7, 1000, replicas=2, on_episode=seen.append)
        assert [e.rehearsal.seed for e in got] == list(range(1000, 1007))
        assert got == serial
    assert sorted(seen) == sorted(list(range(7)) * 3)


def test_parallel_plan_costs_match_serial_episodes(ray_local: Any, scenario: Any) -> None:
    env = RollbackEnv(scenario, objective="downtime")
    plans = [actions_to_plan(env, e.actions) for e in evaluate(env, RandomPolicy(5), 3, 40)]
    seen: list[int] = []
    got = parallel_plan_costs(scenario, plans, 5, 1000, replicas=2, on_episode=seen.append,
                              env_kwargs={"objective": "downtime"})
    serial = [[run_episode(env, StaticPolicy(plan), s).cost for plan in plans]
              for s in range(1000, 1005)]
    assert got == serial
    assert sorted(seen) == list(range(5))
    assert len({tuple(row) for row in got}) > 1  # the incidents differ, and so do the costs


def test_parallel_rehearse_matches_serial(ray_local: Any, scenario: Any) -> None:
    serial = [rehearse(scenario, 200 + i, record_profile=True) for i in range(9)]
    got = parallel_rehearse(scenario, 9, seed=200, replicas=2, record_profile=True)
    assert got == serial
    # run_campaign with the prefetching hook (windows of 5 seeds: two submissions)
    campaign = run_campaign(scenario, 9, 200, rehearse_fn=RayRehearseFn(replicas=2, window=5))
    assert campaign.runs == run_campaign(scenario, 9, 200).runs


def test_ray_rehearse_fn_keeps_a_bounded_window_and_stops_at_the_end(
        ray_local: Any, scenario: Any) -> None:
    fn = RayRehearseFn(replicas=2, window=4, stop=210)  # chunks of 2 seeds
    seen: list[list[int]] = []

    def tracked(sc: Any, seed: int, **kwargs: Any) -> Any:
        r = fn(sc, seed, **kwargs)
        seen.append(fn.in_flight)
        return r

    campaign = run_campaign(scenario, 10, 200, rehearse_fn=tracked)
    assert campaign.runs == run_campaign(scenario, 10, 200).runs
    # memory holds at most the window (4 seeds), fetched ahead of the campaign, never past
    # its end (seed 209)
    assert all(len(pending) <= 4 for pending in seen)
    assert all(s > 200 + k for k, pending in enumerate(seen) for s in pending)
    assert max(s for pending in seen for s in pending) == 209
    assert seen[-1] == []
    fn.cancel()


def _descendants(pid: int) -> list[tuple[int, bytes]]:
    """(pid, start time) of every descendant of ``pid`` (Linux /proc)."""
    parents: dict[int, list[tuple[int, bytes]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _alive(pid: int, start: bytes) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == start and fields[0] != b"Z"


_KILLED_DRIVER = """
import os, signal, ray
from shadowrl.integrations.ray import ray_session
with ray_session(num_cpus=1):
    assert ray.get(ray.remote(lambda: 1).remote()) == 1
    print("ready", flush=True)
    signal.pause()  # the test SIGKILLs this driver
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_driver_takes_its_local_ray_along() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen([sys.executable, "-c", _KILLED_DRIVER], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        assert driver.stdout is not None
        assert driver.stdout.readline().strip() == b"ready"
        ray_processes = _descendants(driver.pid)
        assert len(ray_processes) >= 3  # GCS, raylet, agents, workers, the reaper
        driver.kill()
        driver.wait()
        # Ray's own fate sharing leaves the raylet's agents for about a minute
        deadline = time.monotonic() + 20
        while any(_alive(*p) for p in ray_processes) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in ray_processes if _alive(*p)]
        assert left == [], left
    finally:
        if driver.poll() is None:
            driver.kill()
        for pid, start in _descendants(driver.pid):
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)


def test_rehearse_json_stays_parseable_when_a_ray_worker_dies(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = subprocess.Popen([sys.executable, "-m", "shadowrl", "rehearse", str(CHECKOUT),
                            "--runs", "400", "--replicas", "2", "--json"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           start_new_session=True)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and cmd.poll() is None and time.monotonic() < deadline:
        for pid, _ in _descendants(cmd.pid):
            try:
                name = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"_rehearse_chunk" in name:  # a worker running a chunk of rehearsals
                os.kill(pid, signal.SIGKILL)
                killed = pid
                break
        time.sleep(0.05)
    out, err = cmd.communicate(timeout=300)
    assert killed is not None, "no worker seen running a chunk"
    assert cmd.returncode == 0, err[-3000:]
    assert b"(raylet)" not in out
    summary = json.loads(out)  # only the JSON object: Ray's messages went to stderr
    assert summary["runs"] == 400  # the lost chunk was retried


def test_results_are_picklable(scenario: Any) -> None:
    episode = evaluate(RollbackEnv(scenario), RandomPolicy(0), 1, 5)[0]
    assert pickle.loads(pickle.dumps(episode)) == episode
    r = rehearse(scenario, 5, record_profile=True)
    assert pickle.loads(pickle.dumps(r)) == r


def test_optimize_searches_beside_the_training_on_ray(ray_local: Any, tmp_path: Path) -> None:
    """With replicas the oracle's searches run as Ray tasks while the driver trains, and find
    what the same searches find one after the other."""
    from shadowrl.rl.optimizer import OptimizeOptions, optimize
    from shadowrl.rl.search import OraclePolicy

    sc = load_scenario(Path(__file__).resolve().parents[1] / "scenarios" / "minimal.yaml")
    agent = tmp_path / "agent.yaml"
    agent.write_text(TINY_AGENT)
    logs: list[str] = []
    result = optimize(sc, tmp_path / "out", OptimizeOptions(
        method="all", agent=agent, episodes=4, eval_seed=500, search_trials=4,
        search_incidents=2, replicas=2), "test", log=logs.append)
    assert any("oracle), beside the training" in m for m in logs), logs
    assert result.oracle is not None and result.oracle.exact == 4
    assert list(result.phases_s) == ["baselines", "best_static", "rl", "oracle", "verify",
                                     "runbook", "total"]
    assert set(result.methods) == {"configured", "random", "greedy", "best_static", "rl",
                                   "oracle"}
    serial = evaluate(RollbackEnv(sc), OraclePolicy(), 4, 500)
    costs = json.loads(Path(result.episodes_file).read_text())["methods"]["oracle"]["cost"]
    assert costs == pytest.approx([e.cost for e in serial], rel=1e-9, abs=1e-12)

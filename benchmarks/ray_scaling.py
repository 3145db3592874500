"""Ray scaling: env steps/s of shadow replicas as Ray actors, 1 replica against 2.

Two ways of driving the replicas are measured, each for ``--seconds`` of wall time:

- *VecEnv interface* (what SB3 training uses): ``get_action_masks(vec)`` then
  ``vec.step(random valid actions)``, one Ray round trip per vector step. Configs: a plain
  ``DummyVecEnv`` with 2 envs in this process, ``RayVecEnv`` with 1 and with 2 replicas.
- *Chunked rollouts*: ``RayVecEnv.rollout_chunk(N)``; each actor plays N random valid steps
  locally and returns the count, one Ray call per replica per chunk. For reference, the same
  loop in this process on one env (``local_1``). ``chunked_replica_cpu_share`` is the share
  of a core each replica's actor got while playing (CPU time / wall time); well below 1 means
  other processes competed for the cores and the ratio understates the scaling.

A RollbackEnv step is sub-millisecond, about the cost of one Ray actor call, so on the
VecEnv interface the driver's per-call overhead dominates and 2 replicas cannot double the
rate; chunked rollouts keep each replica busy on its own core. ``ratio`` is 2-replica over
1-replica for each mode; the target is >= 1.6 on 2 cores. Actor start-up and a warm-up are
excluded from the timings. One JSON object goes to stdout; progress goes to stderr.

    python benchmarks/ray_scaling.py                      # envs/checkout.yaml, 15 s/config
    python benchmarks/ray_scaling.py --seconds 5 --chunk-steps 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sb3_contrib.common.maskable.utils import get_action_masks
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from shadowrl.core.spec import Scenario, load_scenario
from shadowrl.integrations.ray import RayVecEnv, random_rollout, ray_session
from shadowrl.rl.env import RollbackEnv

TARGET_RATIO = 1.6
ROOT = Path(__file__).resolve().parent.parent


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def vec_rate(vec: VecEnv, seconds: float, seed: int = 0) -> dict[str, float]:
    """Env steps/s through the VecEnv interface with random valid actions."""
    rng = np.random.default_rng(seed)
    vec.seed(seed)
    vec.reset()
    for _ in range(20):  # warm-up
        masks = get_action_masks(vec)
        vec.step(np.array([rng.choice(np.flatnonzero(m)) for m in masks]))
    steps = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        masks = get_action_masks(vec)
        vec.step(np.array([rng.choice(np.flatnonzero(m)) for m in masks]))
        steps += vec.num_envs
    elapsed = time.perf_counter() - start
    return {"steps": steps, "elapsed": elapsed, "rate": steps / elapsed}


def chunk_rate(vec: RayVecEnv, seconds: float, chunk_steps: int) -> dict[str, float]:
    """Env steps/s with every replica playing ``chunk_steps`` steps per Ray call."""
    vec.rollout_chunk(50, seed=10**6)  # warm-up
    steps = calls = 0
    cpu_s = 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        steps += vec.rollout_chunk(chunk_steps, seed=calls * vec.num_envs)
        cpu_s += sum(s["cpu_s"] for s in vec.last_chunk_stats)
        calls += 1
    elapsed = time.perf_counter() - start
    vec.reset()
    # share of a core each replica actually got: < 1 means other processes took CPU
    return {"steps": steps, "elapsed": elapsed, "rate": steps / elapsed, "calls": calls,
            "replica_cpu_share": cpu_s / (elapsed * vec.num_envs)}


def local_rate(scenario: Scenario, seconds: float, chunk_steps: int) -> dict[str, float]:
    """The chunked loop in this process on one env: the single-core reference."""
    env = Monitor(RollbackEnv(scenario))
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    random_rollout(env, 50, rng, needs_reset=False)
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        steps += random_rollout(env, chunk_steps, rng, needs_reset=False)["steps"]
    elapsed = time.perf_counter() - start
    return {"steps": steps, "elapsed": elapsed, "rate": steps / elapsed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="envs/checkout.yaml")
    ap.add_argument("--seconds", type=float, default=15.0, help="wall time per config")
    ap.add_argument("--chunk-steps", type=int, default=2000,
                    help="steps each replica plays per rollout_chunk call")
    ap.add_argument("--address", default=None, help="join this Ray cluster instead")
    args = ap.parse_args(argv)

    path = Path(args.scenario)
    if not path.exists() and (ROOT / path).exists():
        path = ROOT / path
    scenario = load_scenario(path)
    load_before = round(os.getloadavg()[0], 2)
    rates: dict[str, dict[str, Any]] = {"vecenv": {}, "chunked": {}}

    _log(f"DummyVecEnv, 2 envs, {args.seconds:g}s ...")
    dummy = DummyVecEnv([lambda: Monitor(RollbackEnv(scenario)) for _ in range(2)])
    rates["vecenv"]["dummy_2"] = vec_rate(dummy, args.seconds)
    dummy.close()
    _log(f"  {rates['vecenv']['dummy_2']['rate']:,.0f} steps/s")
    _log(f"one env in this process, chunked loop, {args.seconds:g}s ...")
    rates["chunked"]["local_1"] = local_rate(scenario, args.seconds, args.chunk_steps)
    _log(f"  {rates['chunked']['local_1']['rate']:,.0f} steps/s")

    with ray_session(args.address) as session:
        for n in (1, 2):
            vec = RayVecEnv([{"scenario": scenario} for _ in range(n)])
            try:
                _log(f"RayVecEnv, {n} replica(s), VecEnv interface, {args.seconds:g}s ...")
                rates["vecenv"][f"ray_{n}"] = vec_rate(vec, args.seconds)
                _log(f"  {rates['vecenv'][f'ray_{n}']['rate']:,.0f} steps/s")
                _log(f"RayVecEnv, {n} replica(s), rollout_chunk({args.chunk_steps}), "
                     f"{args.seconds:g}s ...")
                rates["chunked"][f"ray_{n}"] = chunk_rate(vec, args.seconds, args.chunk_steps)
                _log(f"  {rates['chunked'][f'ray_{n}']['rate']:,.0f} steps/s")
            finally:
                vec.close()
        cpus = session.num_cpus

    def ratio(mode: str) -> float:
        return rates[mode]["ray_2"]["rate"] / rates[mode]["ray_1"]["rate"]

    out = {
        "scenario": scenario.name,
        "seconds": args.seconds,
        "cpus": cpus,
        "machine_cpus": os.cpu_count(),
        "vecenv_steps_per_s": {k: round(v["rate"], 1) for k, v in rates["vecenv"].items()},
        "vecenv_ratio_2_over_1": round(ratio("vecenv"), 3),
        "chunked_steps_per_s": {k: round(v["rate"], 1) for k, v in rates["chunked"].items()},
        "chunked_ratio_2_over_1": round(ratio("chunked"), 3),
        "chunked_replica_cpu_share": {k: round(v["replica_cpu_share"], 3)
                                      for k, v in rates["chunked"].items() if k != "local_1"},
        "chunk_steps": args.chunk_steps,
        # other processes on the machine distort scaling: report the load around the run
        "loadavg_1m": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "target_ratio": TARGET_RATIO,
        "meets_target": {"vecenv": ratio("vecenv") >= TARGET_RATIO,
                         "chunked": ratio("chunked") >= TARGET_RATIO},
        "python": platform.python_version(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Env throughput: RollbackEnv steps/s against Gymnasium's CartPole-v1, in one process.

Both envs are stepped for the same wall time. RollbackEnv takes random *valid* actions
(picked from ``action_masks()`` with a pre-seeded numpy Generator); CartPole takes
``action_space.sample()``. Resets are part of the timed loop for both (a RollbackEnv episode
seed whose incident never breaches raises ``NoBreachError`` at reset; it is skipped and
counted in ``skipped_seeds``). The process is pinned to one core when the OS allows it.
One JSON object goes to stdout; progress goes to stderr.

    python benchmarks/env_throughput.py                       # envs/checkout.yaml, 5 s each
    python benchmarks/env_throughput.py --scenario envs/search.yaml --seconds 10
    python benchmarks/env_throughput.py --all                 # every envs/*.yaml
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

import gymnasium
import numpy as np

import shadowrl  # noqa: F401  (registers shadowrl/Rollback-v0)
from shadowrl.core.errors import NoBreachError

TARGET_RATIO = 0.25
ROOT = Path(__file__).resolve().parent.parent


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pin_one_core() -> int | None:
    """Pin this process to one CPU it may run on; return that CPU, or None if unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1]})
        return cpus[-1]
    except OSError:
        return None


def _reset(env: Any, episode: int) -> tuple[int, int]:
    """Reset with episode seed ``episode``, moving past seeds whose draws never breach.
    Returns the seed used and how many were skipped."""
    skipped = 0
    while True:
        try:
            env.reset(seed=episode)
            return episode, skipped
        except NoBreachError:
            episode += 1
            skipped += 1


def bench_rollback(scenario: str, seconds: float, seed: int = 0) -> dict[str, Any]:
    env = gymnasium.make("shadowrl/Rollback-v0", scenario=scenario)
    base = env.unwrapped
    rng = np.random.default_rng(seed)
    steps = episodes = 0
    episode, skipped = _reset(env, seed)
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        valid = np.flatnonzero(base.action_masks())
        action = int(valid[rng.integers(len(valid))])
        _, _, terminated, truncated, _ = env.step(action)
        steps += 1
        if terminated or truncated:
            episodes += 1
            episode, n = _reset(env, episode + 1)
            skipped += n
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    env.close()
    return {"steps": steps, "episodes": episodes, "elapsed": elapsed, "skipped": skipped}


def bench_cartpole(seconds: float, seed: int = 0) -> dict[str, Any]:
    env = gymnasium.make("CartPole-v1")
    env.action_space.seed(seed)
    env.reset(seed=seed)
    steps = episodes = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
        if terminated or truncated:
            episodes += 1
            env.reset()
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    env.close()
    return {"steps": steps, "episodes": episodes, "elapsed": elapsed}


def measure(scenario: str, seconds: float, cartpole_sps: float) -> dict[str, Any]:
    _log(f"RollbackEnv on {scenario} for {seconds:g}s ...")
    rb = bench_rollback(scenario, seconds)
    sps = rb["steps"] / rb["elapsed"]
    ratio = sps / cartpole_sps if cartpole_sps > 0 else 0.0
    _log(f"  {sps:,.0f} steps/s ({rb['steps']} steps, {rb['episodes']} episodes), "
         f"ratio {ratio:.4f}")
    return {
        "scenario": scenario,
        "rollback_env_steps_per_s": round(sps, 1),
        "cartpole_steps_per_s": round(cartpole_sps, 1),
        "ratio": round(ratio, 4),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "episodes": rb["episodes"],
        "mean_steps_per_episode": round(rb["steps"] / rb["episodes"], 3) if rb["episodes"]
        else None,
        "python": platform.python_version(),
        "seconds": seconds,
        "skipped_seeds": rb["skipped"],  # episode seeds whose incidents never breach
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="envs/checkout.yaml",
                    help="scenario YAML (default: envs/checkout.yaml)")
    ap.add_argument("--all", action="store_true", help="benchmark every envs/*.yaml")
    ap.add_argument("--seconds", type=float, default=5.0,
                    help="wall time per environment (default: 5)")
    args = ap.parse_args(argv)

    cpu = pin_one_core()
    _log(f"pinned to cpu {cpu}" if cpu is not None else "could not pin to one core")
    if args.all:
        scenarios = [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
                     for p in sorted((ROOT / "envs").glob("*.yaml"))]
    else:
        scenarios = [args.scenario]
    for sc in scenarios:
        if not Path(sc).exists() and (ROOT / sc).exists():
            os.chdir(ROOT)  # relative to the repo, wherever we were started from
            break

    _log(f"CartPole-v1 for {args.seconds:g}s ...")
    cp = bench_cartpole(args.seconds)
    cartpole_sps = cp["steps"] / cp["elapsed"]
    _log(f"  {cartpole_sps:,.0f} steps/s")

    results = [measure(sc, args.seconds, cartpole_sps) for sc in scenarios]
    if args.all:
        out: dict[str, Any] = {
            "scenarios": results,
            "cartpole_steps_per_s": round(cartpole_sps, 1),
            "target_ratio": TARGET_RATIO,
            "meets_target": all(r["meets_target"] for r in results),
            "python": platform.python_version(),
            "seconds": args.seconds,
        }
    else:
        out = results[0]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

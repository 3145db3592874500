"""How far a plan chooser gets on what the breach shows: a bound on imitation of the oracle.

    python benchmarks/plan_library.py envs/search.yaml [--library-incidents 30]
        [--train 1000] [--test 1000] [--policy rl/policy.zip] [--json FILE]

RL's gap to the oracle (``rl_over_oracle`` in ``optimizer_quality.py``) mixes two things:
what the breach tells a policy about the incident, and how well PPO learns to read it. This
benchmark separates them without PPO:

1. **library**: the oracle's optimal plans on ``--library-incidents`` training incidents
   (seeds from ``LIBRARY_SEED``), each distinct action sequence once;
2. **cost matrix**: every library plan played from the breach of ``--train`` training and
   ``--test`` test incidents (the env snapshotted at the breach and restored per plan);
3. **choosers**, fitted on the training rows, each picking one plan per test incident from
   its breach observation alone: ``knn`` (the plan with the least mean cost over the ``k``
   nearest training breaches, standardised features: the labels of ``warm_start:``) and
   ``mlp`` (a softmax over the plans trained to minimise the expected cost).

The library, cost matrix and knn chooser are :mod:`shadowrl.rl.warm_start`'s.

Reported against ``hindsight`` (each test incident's best library plan, a stand-in for the
oracle: equal to it within 0.1 % on search's held-out incidents) and ``best_single`` (one
plan for every incident). With ``--policy`` (or, without it, the shipped agent trained here)
the RL policy is played on the same test incidents, so ``rl / hindsight`` and
``chooser / hindsight`` are comparable ratios from one run. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shadowrl.core.spec import load_scenario  # noqa: E402
from shadowrl.rl.env import RollbackEnv  # noqa: E402
from shadowrl.rl.warm_start import (  # noqa: E402
    cost_matrix,
    knn_choice,
    oracle_library,
    standardised,
)

LIBRARY_SEED = 0
TRAIN_SEED = 100_000
TEST_SEED = 20_000


def mlp_choice(x_train: np.ndarray, c_train: np.ndarray, x_test: np.ndarray,
               seed: int = 0, iterations: int = 4000) -> np.ndarray:
    """A softmax over the plans that minimises the expected cost on the training rows."""
    import torch

    torch.manual_seed(seed)
    x_train, x_test = standardised(x_train, x_test)
    a = torch.tensor(x_train, dtype=torch.float32)
    b = torch.tensor(x_test, dtype=torch.float32)
    c = torch.tensor(c_train, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(a.shape[1], 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, c.shape[1]))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(iterations):
        loss = (torch.softmax(net(a), 1) * c).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return net(b).argmax(1).numpy()


def rl_costs(scenario_path: str, policy: str | None, seeds: range) -> tuple[np.ndarray, str]:
    """The RL policy's cost on ``seeds``: ``policy``, or the shipped agent trained now."""
    from shadowrl.rl.agents import load_agent_config, load_policy, train
    from shadowrl.rl.evaluate import evaluate
    from shadowrl.rl.optimizer import default_agent_path

    scenario = load_scenario(scenario_path)
    if policy is None:
        out = Path(tempfile.mkdtemp(prefix="plan-library-rl-"))
        trained = train(scenario, load_agent_config(default_agent_path()), out, seed=0,
                        progress=False)
        policy = str(trained.model_path)
    env = RollbackEnv(scenario)
    episodes = evaluate(env, load_policy(policy, name="rl"), len(seeds), seeds.start)
    return np.array([e.cost for e in episodes]), policy


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario")
    ap.add_argument("--library-incidents", type=int, default=30)
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--k", type=int, default=20, help="neighbours of the knn chooser")
    ap.add_argument("--policy", help="an RL policy.zip (default: train the shipped agent)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)

    env = RollbackEnv(load_scenario(args.scenario))
    timings: dict[str, float] = {}
    t = time.perf_counter()
    plans = oracle_library(env, args.library_incidents, seed=LIBRARY_SEED)
    timings["library_s"] = time.perf_counter() - t
    t = time.perf_counter()
    x_train, c_train = cost_matrix(env, plans, range(TRAIN_SEED, TRAIN_SEED + args.train))
    x_test, c_test = cost_matrix(env, plans, range(TEST_SEED, TEST_SEED + args.test))
    timings["cost_matrix_s"] = time.perf_counter() - t

    hindsight = float(c_test.min(1).mean())
    rows = np.arange(len(x_test))

    def chosen(pick: np.ndarray) -> dict[str, float]:
        mean = float(c_test[rows, pick].mean())
        return {"mean_cost": round(mean, 4), "over_hindsight": round(mean / hindsight, 4)}

    t = time.perf_counter()
    choosers = {f"knn{args.k}": chosen(knn_choice(x_train, c_train, x_test, args.k)),
                "mlp": chosen(mlp_choice(x_train, c_train, x_test))}
    timings["choosers_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rl, policy = rl_costs(args.scenario, args.policy,
                          range(TEST_SEED, TEST_SEED + args.test))
    timings["rl_s"] = time.perf_counter() - t
    result = {
        "scenario": env.scenario.name,
        "library_plans": len(plans), "library_incidents": args.library_incidents,
        "train_incidents": args.train, "test_incidents": args.test,
        "hindsight": round(hindsight, 4),
        "best_single": chosen(np.full(len(x_test), int(c_train.mean(0).argmin()))),
        "choosers": choosers,
        "rl": {"policy": policy, "mean_cost": round(float(rl.mean()), 4),
               "over_hindsight": round(float(rl.mean()) / hindsight, 4)},
        "timing_s": {k: round(v, 1) for k, v in timings.items()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        from shadowrl.core.atomic import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    return result


if __name__ == "__main__":
    main()

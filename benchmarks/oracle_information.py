"""What the oracle knows that a policy cannot: the hidden noise, or the drawn incident.

    python benchmarks/oracle_information.py envs/search.yaml [--incidents 10]
        [--siblings 4] [--incident NAME] [--eval-seed 10000] [--json FILE]

The oracle is clairvoyant: it searches each held-out incident's future, the load noise and
the step durations included. A policy sees the breach (errors, latencies and load per
component); it never sees that noise. If the noise decided the best plan, no policy could
come near the oracle and ``rl_over_oracle`` would measure the noise, not the learning.

This benchmark asks how much the noise is worth. For each held-out incident it makes
``--siblings`` copies that share every drawn parameter (incident, magnitude, onset, load
level, time of day) and differ only in the shadow's noise seed. It solves each sibling with
the oracle, plays every sibling's optimal plan on every sibling, and compares

- ``oracle``: the mean of the per-sibling optima (knows the noise), with
- ``best_open_loop``: the best single plan for all siblings (knows every drawn parameter,
  not the noise, and never reacts).

``best_open_loop / oracle`` near 1 says the noise is worth little: what separates a policy
from the oracle is then what the drawn parameters are (the incident, its size, the load, the
hour), which the breach shows in part, and how well the policy learned to read them. Prints
JSON per incident (on stderr, as they finish) and in total.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shadowrl.core.injection import Injection  # noqa: E402
from shadowrl.rl.env import RollbackEnv  # noqa: E402
from shadowrl.rl.search import branch_and_bound, rollout, searching  # noqa: E402

SIBLING_SEED = 90_000_000  # sibling k of held-out incident i runs on noise seed this + 1000 i + k


class _FixedDraw:
    """The deviation simulator's draw, replaced by one fixed injection while it is set:
    the shadow then launches on the episode's seed (its noise) with that incident."""

    def __init__(self, env: RollbackEnv) -> None:
        self._draw = env.deviation.draw
        self.injection: Injection | None = None
        env.deviation.draw = self  # type: ignore[method-assign]

    def __call__(self, seed: int, incident: str | None = None, attempt: int = 0) -> Injection:
        if self.injection is not None:
            return self.injection
        return self._draw(seed, incident, attempt)


def sibling_gap(env: RollbackEnv, seed: int, siblings: int, fixed: _FixedDraw,
                incident: str | None = None) -> dict[str, Any] | None:
    """Oracle and best open-loop plan over ``siblings`` noise seeds of held-out ``seed``
    (the first sibling is the incident itself); None if it is not ``incident``."""
    fixed.injection = None
    env.reset(seed=seed)
    injection = env.injection
    assert injection is not None
    if incident is not None and injection.incident != incident:
        return None
    fixed.injection = injection
    seeds = [seed] + [SIBLING_SEED + 1000 * (seed % 100_000) + k for k in range(1, siblings)]
    optima, plans, exact = [], [], 0
    for s in seeds:
        env.reset(seed=s)
        found = branch_and_bound(env)
        optima.append(found.cost)
        plans.append(found.actions)
        exact += found.exact
    costs = np.zeros((len(plans), len(seeds)))
    for a, actions in enumerate(plans):
        for b, s in enumerate(seeds):
            env.reset(seed=s)
            with searching(env):
                costs[a, b] = rollout(env, actions)
    fixed.injection = None
    return {"seed": seed, "incident": injection.incident,
            "oracle": float(np.mean(optima)), "best_open_loop": float(costs.mean(axis=1).min()),
            "exact": exact, "siblings": len(seeds)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario")
    ap.add_argument("--incidents", type=int, default=10, help="held-out incidents to measure")
    ap.add_argument("--siblings", type=int, default=4, help="noise seeds per incident")
    ap.add_argument("--incident", default=None, help="only this incident (others skipped)")
    ap.add_argument("--eval-seed", type=int, default=10000, help="first held-out seed")
    ap.add_argument("--json", default=None, help="also write the JSON to this file")
    args = ap.parse_args(argv)
    if args.incidents < 1 or args.siblings < 2:
        ap.error("--incidents must be >= 1 and --siblings >= 2")
    env = RollbackEnv(args.scenario)
    fixed = _FixedDraw(env)
    rows = []
    seed = args.eval_seed
    while len(rows) < args.incidents and seed < args.eval_seed + 100 * args.incidents:
        row = sibling_gap(env, seed, args.siblings, fixed, args.incident)
        if row is not None:
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        seed += 1
    oracle = sum(r["oracle"] for r in rows)
    open_loop = sum(r["best_open_loop"] for r in rows)
    out = {"scenario": env.scenario.name, "incidents": len(rows), "siblings": args.siblings,
           "oracle_mean": oracle / max(len(rows), 1),
           "best_open_loop_mean": open_loop / max(len(rows), 1),
           "open_loop_over_oracle": open_loop / oracle if oracle > 0 else None,
           "rows": rows}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        from shadowrl.core.atomic import atomic_write_text

        atomic_write_text(Path(args.json), text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The main job of a fresh checkout (`make demo`): every stage of shadowrl on one scenario.

Runs the real commands one after another, printing each, with the embedded defaults: the
simulated shadow, a local Ray, and the sqlite MLflow store in the working directory.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path


def stages(scenario: str, out: Path, quick: bool) -> list[list[str]]:
    runs = "10" if quick else "50"
    episodes = "10" if quick else "50"
    timesteps = "4000" if quick else "40000"
    return [
        ["validate", scenario],
        ["simulate", scenario, "--seed", "1"],
        ["rehearse", scenario, "--runs", runs, "--out", str(out / "rehearsal")],
        ["optimize", scenario, "--method", "all", "--episodes", episodes, "--timesteps",
         timesteps, "--out", str(out / "optimize")],
        ["evaluate", scenario, "--policy", str(out / "optimize" / "policy.zip"), "--episodes",
         episodes],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", default="envs/checkout.yaml")
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--quick", action="store_true", help="small budgets (a smoke run)")
    args = parser.parse_args(argv)
    exe = [sys.executable, "-m", "shadowrl"]
    for stage in stages(args.scenario, args.out, args.quick):
        print(f"\n$ shadowrl {shlex.join(stage)}", flush=True)
        code = subprocess.call([*exe, *stage])
        if code != 0:
            print(f"stage failed with exit code {code}", file=sys.stderr)
            return code
    print(f"\nDone. Open {args.out / 'rehearsal' / 'report.html'} and read "
          f"{args.out / 'optimize' / 'comparison.md'}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

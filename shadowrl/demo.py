"""The main job of a fresh checkout (`make demo`): every stage of shadowrl on one scenario.

Runs the real commands one after another, printing each, with the embedded defaults: the
simulated shadow, a local Ray (2 shadow replicas for training), and the sqlite MLflow store
``./mlflow.db`` in the working directory. ``--quick`` shrinks the rehearsal and evaluation
budgets (training follows the experiment file).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path


def stages(scenario: str, experiment: str, out: Path, quick: bool) -> list[list[str]]:
    runs = "10" if quick else "50"
    episodes = "10" if quick else "50"
    model = _model_name(experiment)
    return [
        ["validate", scenario],
        ["simulate", scenario, "--seed", "1"],
        ["rehearse", scenario, "--runs", runs, "--out", str(out / "rehearsal")],
        ["optimize", scenario, "--method", "search", "--episodes", episodes, "--out",
         str(out / "optimize")],
        ["train", experiment, "--out", str(out / "train")],
        ["evaluate", scenario, "--policy", f"models:/{model}@champion", "--episodes", episodes],
        ["export", f"models:/{model}@champion", "--format", "argo", "--out",
         str(out / "rollback-workflow.yaml")],
    ]


def _model_name(experiment: str) -> str:
    from shadowrl.app.experiment import load_experiment

    return load_experiment(experiment).tracking.model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", default="envs/checkout.yaml")
    parser.add_argument("--experiment", default="experiments/checkout-maskable-ppo.yaml",
                        help="the experiment `train` runs (2 Ray replicas, ./mlflow.db)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: out/demo/SCENARIO-NAME)")
    parser.add_argument("--quick", action="store_true", help="small budgets (a smoke run)")
    args = parser.parse_args(argv)
    out = args.out or default_out(args.scenario)
    if out.exists() and any(out.iterdir()):
        print(f"replacing the previous demo's outputs in {out}", flush=True)
    exe = [sys.executable, "-m", "shadowrl"]
    for stage in stages(args.scenario, args.experiment, out, args.quick):
        print(f"\n$ shadowrl {shlex.join(stage)}", flush=True)
        code = subprocess.call([*exe, *stage])
        if code != 0:
            print(f"stage failed with exit code {code}", file=sys.stderr)
            return code
    print(f"\nDone. Open {out / 'rehearsal' / 'report.html'}; read "
          f"{out / 'optimize' / 'comparison.md'} (the search methods against the configured "
          f"procedure) and {out / 'train' / 'comparison.md'} (the trained policy against the "
          f"configured and best static procedures); browse the run with "
          f"`mlflow ui --backend-store-uri sqlite:///mlflow.db`.")
    return 0


def default_out(scenario: str) -> Path:
    """One folder per scenario, so a demo of another scenario keeps the previous one."""
    return Path("out/demo") / Path(scenario).stem


if __name__ == "__main__":
    raise SystemExit(main())

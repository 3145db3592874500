"""The main job of a fresh checkout (`make demo`): every stage of shadowrl on one scenario.

Runs the real commands one after another, printing each, with the embedded defaults: the
simulated shadow, a local Ray (2 shadow replicas for training), and the sqlite MLflow store
``./mlflow.db`` in the working directory. ``--quick`` shrinks the rehearsal and evaluation
budgets (training follows the experiment file).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path


def stages(scenario: str, experiment: str, out: Path, quick: bool) -> list[list[str]]:
    """The commands before and including training."""
    runs = "10" if quick else "50"
    episodes = "10" if quick else "50"
    return [
        ["validate", scenario],
        ["simulate", scenario, "--seed", "1"],
        ["rehearse", scenario, "--runs", runs, "--out", str(out / "rehearsal")],
        ["optimize", scenario, "--method", "search", "--episodes", episodes, "--out",
         str(out / "optimize")],
        ["train", experiment, "--out", str(out / "train"), "--json"],
    ]


def after_training(scenario: str, model_uri: str, out: Path, quick: bool) -> list[list[str]]:
    """The commands that use the trained policy: evaluate it and export its procedure."""
    episodes = "10" if quick else "50"
    return [
        ["evaluate", scenario, "--policy", model_uri, "--episodes", episodes],
        ["export", model_uri, "--format", "argo", "--out", str(out / "rollback-workflow.yaml")],
    ]


def trained_model_uri(train_json: str) -> str:
    """The champion when there is one, else the version this run registered: promotion
    needs evidence, so a short training may register a version that is not promoted."""
    result = json.loads(train_json)
    model = result["model"]
    if result["champion"]["champion_version"]:
        return f"models:/{model}@champion"
    return f"models:/{model}/{result['version']}"


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
    train_json = ""
    for stage in stages(args.scenario, args.experiment, out, args.quick):
        print(f"\n$ shadowrl {shlex.join(stage)}", flush=True)
        done = subprocess.run([*exe, *stage], stdout=subprocess.PIPE if "--json" in stage
                              else None, text=True, check=False)
        if done.returncode != 0:
            print(f"stage failed with exit code {done.returncode}", file=sys.stderr)
            return done.returncode
        if "--json" in stage:
            train_json = done.stdout
            print(train_json, end="", flush=True)
    model_uri = trained_model_uri(train_json)
    for stage in after_training(args.scenario, model_uri, out, args.quick):
        print(f"\n$ shadowrl {shlex.join(stage)}", flush=True)
        code = subprocess.call([*exe, *stage])
        if code != 0:
            print(f"stage failed with exit code {code}", file=sys.stderr)
            return code
    print(closing_message(out, model_uri))
    return 0


def closing_message(out: Path, model_uri: str) -> str:
    """Where the demo's outputs are and what each holds; the workflow is said to be the
    best static procedure, not the (adaptive) policy it was trained beside."""
    return (f"\nDone. Open {out / 'rehearsal' / 'report.html'}; read "
            f"{out / 'optimize' / 'comparison.md'} (the search methods against the configured "
            f"procedure) and {out / 'train' / 'comparison.md'} (the trained policy against the "
            f"configured and best static procedures). {out / 'rollback-workflow.yaml'} is the "
            f"best static procedure found while training {model_uri}, as an Argo Workflow: "
            f"the policy itself is adaptive and cannot be exported as a fixed procedure yet "
            f"(its header compares the two). Browse the run with "
            f"`mlflow ui --backend-store-uri sqlite:///mlflow.db`.")


def default_out(scenario: str) -> Path:
    """One folder per scenario, so a demo of another scenario keeps the previous one."""
    return Path("out/demo") / Path(scenario).stem


if __name__ == "__main__":
    raise SystemExit(main())

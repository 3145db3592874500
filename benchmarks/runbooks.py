"""How much of the RL policy's advantage the distilled runbook keeps, per shipped scenario.

For each scenario: `shadowrl optimize SCENARIO --method all` (or, with ``--reuse DIR``, the
policy, procedure.yaml and held-out costs an earlier run left in ``DIR/<scenario>``,
distilled again with the current code), then one JSON line per scenario and a summary:
mean held-out cost of the runbook, the RL policy, the best static procedure and the oracle;
RL's advantage over the best static procedure with its 95 % CI; the share of it the runbook
keeps; its depth, leaves and fidelity; or the fallback it took and why.

    python benchmarks/runbooks.py --out /tmp/runbooks            # full runs, ~5 min each
    python benchmarks/runbooks.py --reuse /tmp/runbooks          # re-distill only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("checkout", "payments", "search")


def optimize(scenario: str, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "shadowrl", "optimize",
                    str(ROOT / "envs" / f"{scenario}.yaml"), "--method", "all", "--out",
                    str(out), "--json"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def redistill(scenario: str, out: Path) -> dict[str, Any]:
    """The runbook of an earlier run's policy, distilled again (written to runbook.json)."""
    from shadowrl.core.atomic import atomic_write_json, atomic_write_text
    from shadowrl.core.spec import load_procedure, load_scenario
    from shadowrl.rl.agents import load_policy
    from shadowrl.rl.distill import runbook_of_run, runbook_yaml
    from shadowrl.rl.env import RollbackEnv
    from shadowrl.rl.evaluate import evaluate
    from shadowrl.rl.policy import actions_to_plan
    from shadowrl.rl.runbook_policy import procedure_plan

    sc = load_scenario(ROOT / "envs" / f"{scenario}.yaml")
    env = RollbackEnv(sc)
    episodes = json.loads((out / "episodes.json").read_text())
    costs = {k: v["cost"] for k, v in episodes["methods"].items()
             if k in ("rl", "best_static", "oracle", "configured")}
    seed, n = episodes["eval_seed"], episodes["episodes"]
    policy = load_policy(out / "policy.zip")
    plans = [actions_to_plan(env, e.actions) for e in evaluate(env, policy, n, seed)]
    best = complete(sc, procedure_plan(sc.procedure, load_procedure(out / "procedure.yaml",
                                                                     sc)))
    result = runbook_of_run(env, policy=policy, best_plan=best, eval_seed=seed, costs=costs,
                            policy_plans=plans)
    atomic_write_text(out / "runbook.yaml", runbook_yaml(result, sc, "benchmarks/runbooks.py"))
    report = result.report()
    atomic_write_json(out / "runbook.json", report)
    return report


def complete(sc: Any, plan: list[Any]) -> list[Any]:
    """procedure.yaml leaves out steps that changed nothing where they ran; put them back
    (their defaults, where the order allows) so the plan is one over the whole procedure."""
    from shadowrl.core.plan import validate_plan

    required = {s.name for s in sc.procedure.steps if not s.optional}
    missing = [(s.name, s.default_settings()) for s in sc.procedure.steps
               if any(n == s.name and st is None for n, st in plan) and s.name in required]
    plan = [(n, st) for n, st in plan if not (st is None and n in required)]
    for candidate in ([*plan, *missing], [*missing, *plan]):
        try:
            validate_plan(sc.procedure, candidate)
            return candidate
        except ValueError:
            continue
    raise ValueError(f"cannot complete the plan of {sc.name}: {missing}")


def row(scenario: str, report: dict[str, Any], wall_s: float | None) -> dict[str, Any]:
    h = report["heldout"]
    adv = h.get("rl_advantage") or {}
    return {"scenario": scenario, "incidents": h["incidents"], "cost": h["cost"],
            "rl_advantage": adv.get("mean"), "rl_advantage_ci95": adv.get("ci95"),
            "rl_beats_static": adv.get("significant"), "kept_share": h.get("kept_share"),
            "depth": report["depth"], "leaves": report["leaves"],
            "fidelity": h.get("fidelity"), "order_fidelity": h.get("order_fidelity"),
            "branches_taken": h.get("branches"), "fallback": report["fallback"],
            "optimize_wall_s": None if wall_s is None else round(wall_s, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/runbooks"))
    parser.add_argument("--reuse", type=Path, default=None,
                        help="distill again from the runs in this folder")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    args = parser.parse_args(argv)
    rows = []
    for scenario in args.scenarios:
        if args.reuse is not None:
            out, wall = args.reuse / scenario, None
            report = redistill(scenario, out)
        else:
            out = args.out / scenario
            wall = optimize(scenario, out)
            report = json.loads((out / "runbook.json").read_text())
        rows.append(row(scenario, report, wall))
        print(json.dumps(rows[-1]), flush=True)
    target = [r for r in rows if r["rl_beats_static"]]
    print(json.dumps({"benchmark": "runbooks", "scenarios": len(rows),
                      "rl_beats_static_on": [r["scenario"] for r in target],
                      "kept_share_min": min((r["kept_share"] for r in target), default=None),
                      "target": "kept_share >= 0.8 where RL beats the best static procedure",
                      "met": all((r["kept_share"] or 0) >= 0.8 for r in target)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Optimizer quality: every method on the same held-out seeds, per scenario, as JSON.

    python benchmarks/optimizer_quality.py [--scenario envs/checkout.yaml ...] [--episodes 100]

Targets (envs/checkout.yaml): RL mean downtime within 1.05x of the oracle's; best_static at
least 20 % below configured; RL below best_static; RL training under 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shadowrl.core.spec import load_scenario  # noqa: E402
from shadowrl.rl.optimizer import OptimizeOptions, optimize  # noqa: E402


def targets(methods: dict, timing: dict) -> dict:
    dt = {name: s["downtime_s"]["mean"] for name, s in methods.items()}
    out = {}
    if "rl" in dt and "oracle" in dt:
        ratio = dt["rl"] / max(dt["oracle"], 1e-9)
        out["rl_over_oracle"] = {"value": round(ratio, 3), "target": "<= 1.05",
                                 "met": ratio <= 1.05}
    if "best_static" in dt:
        gain = 1 - dt["best_static"] / max(dt["configured"], 1e-9)
        out["best_static_below_configured"] = {"value": round(gain, 3), "target": ">= 0.20",
                                               "met": gain >= 0.20}
    if "rl" in dt and "best_static" in dt:
        out["rl_below_best_static"] = {"value": round(dt["rl"] - dt["best_static"], 2),
                                       "target": "< 0", "met": dt["rl"] < dt["best_static"]}
    if "rl" in timing:
        out["rl_training_s"] = {"value": timing["rl"], "target": "< 600",
                                "met": timing["rl"] < 600}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", nargs="*", default=None)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--method", default="all")
    parser.add_argument("--timesteps", type=int, default=None)
    parser.add_argument("--trials", type=int, default=150)
    args = parser.parse_args()
    scenarios = args.scenario or sorted(str(p) for p in (ROOT / "envs").glob("*.yaml"))
    report = {"episodes": args.episodes, "eval_seed": 10000, "scenarios": []}
    for path in scenarios:
        sc = load_scenario(path)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            res = optimize(sc, Path(tmp), OptimizeOptions(
                method=args.method, episodes=args.episodes, timesteps=args.timesteps,
                search_trials=args.trials), "benchmarks/optimizer_quality.py",
                log=lambda m, name=sc.name: print(f"[{name}] {m}", file=sys.stderr)
            ).model_dump(mode="json")
        methods = {name: {"downtime_s": s["downtime_s"], "failed_requests_mean":
                          s["failed_requests"]["mean"], "outcomes": s["outcomes"],
                          "cost_mean": s["cost"]["mean"]}
                   for name, s in res["methods"].items()}
        report["scenarios"].append({
            "scenario": sc.name, "methods": methods, "timing_s": res["timing_s"],
            "oracle": res.get("oracle"), "search": res.get("search"), "rl": res.get("rl"),
            "targets": targets(res["methods"], res["timing_s"]),
            "wall_s": round(time.perf_counter() - start, 1)})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Calibration quality: the simulator against the real shadow on held-out rehearsals, before
and after `shadowrl calibrate`, beside the real shadow's own A/A noise, per shipped scenario.

For each scenario this runs (or resumes: the experiments are kept under --out-root) the
calibration and prints one JSON object on stdout: per measure (mean downtime, mean bad
requests) the real mean, the simulator's mean before and after calibration, both relative
errors, the A/A noise, and whether the calibrated simulator is within 15 % (or the noise,
where larger); the per-step mean absolute error before and after; and the wall time. The
baseline is the uncalibrated simulator, measured in the same run on the same rehearsals.
Progress goes to stderr. Needs Docker (a private daemon is started when none answers).

    python benchmarks/calibration.py                       # checkout and payments
    python benchmarks/calibration.py --scenario envs/checkout.yaml --fit-runs 4
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

from shadowrl.app.calibrate import CalibrateRequest, calibrate

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("envs/checkout.yaml", "envs/payments.yaml")  # search is too big for one machine


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def one(scenario: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    result = calibrate(
        CalibrateRequest(file=scenario, out=out, seed=args.seed, fit_runs=args.fit_runs,
                         heldout_runs=args.heldout_runs, aa_runs=args.aa_runs,
                         time_compression=args.time_compression,
                         command=f"python benchmarks/calibration.py --scenario {scenario}"),
        on_log=_log,
        on_progress=lambda done, total, label: _log(f"  [{done}/{total}] {label}"))
    return {"scenario": scenario.stem, "out": str(out), "measures": result.error["measures"],
            "step_mae_s": result.error["step_mae_s"], "heldout_runs": result.error["runs"],
            "verdict": result.verdict, "experiments": {"run": result.experiments_run,
                                                       "reused": result.experiments_reused},
            "wall_s": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", default=[],
                        help="a scenario to calibrate (repeatable; default: checkout, payments)")
    parser.add_argument("--out-root", default="out/benchmarks/calibration",
                        help="one calibration folder per scenario (kept: a rerun resumes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-runs", type=int, default=6)
    parser.add_argument("--heldout-runs", type=int, default=4)
    parser.add_argument("--aa-runs", type=int, default=2)
    parser.add_argument("--time-compression", type=float, default=None)
    args = parser.parse_args(argv)
    scenarios = [Path(s) for s in (args.scenario or [str(ROOT / s) for s in SCENARIOS])]
    started = time.monotonic()
    rows = []
    for scenario in scenarios:
        _log(f"calibrating {scenario}")
        rows.append(one(scenario, Path(args.out_root) / scenario.stem, args))
    print(json.dumps({
        "benchmark": "calibration", "rows": rows,
        "within": all(r["verdict"]["within"] for r in rows),
        "wall_s": round(time.monotonic() - started, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

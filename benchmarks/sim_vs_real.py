"""Sim vs real: the same procedure on the same incidents, on the simulator and on the Docker
shadow, side by side: the raw gap the calibration closes.

Each seed draws the same deviation on both backends (incident, magnitude, onset, load); the
two rehearsals differ only by the shadow. One JSON object goes to stdout: per (procedure,
seed) both backends' outcome, downtime, bad requests, budget burn, rollback time and step
durations, their gap (real minus sim), and over all rows the real/sim ratios of the means.
Progress goes to stderr. Needs Docker (a private daemon is started when none answers).

    python benchmarks/sim_vs_real.py                         # checkout, seeds 1-3, configured
    python benchmarks/sim_vs_real.py --seeds 1 2 --procedure out/optimize/procedure.yaml
    python benchmarks/sim_vs_real.py --time-compression 30   # faster, coarser
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

from shadowrl.calibration.compare import compare_backends, side_by_side
from shadowrl.core.spec import load_procedure, load_scenario

ROOT = Path(__file__).resolve().parent.parent


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """real mean / sim mean of each measure (None when the sim mean is 0)."""
    out: dict[str, float | None] = {}
    for measure in ("downtime_s", "bad_requests", "budget_burn", "rollback_s"):
        sim = sum(r["sim"][measure] for r in rows) / len(rows)
        real = sum(r["docker"][measure] for r in rows) / len(rows)
        out[measure] = round(real / sim, 3) if sim else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default=str(ROOT / "envs" / "checkout.yaml"))
    parser.add_argument("--procedure", action="append", default=[],
                        help="a procedure file to compare too (repeatable); the scenario's "
                             "own procedure is always compared as 'configured'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--time-compression", type=float, default=None,
                        help="override the scenario's shadow.time_compression")
    args = parser.parse_args(argv)
    sc = load_scenario(args.scenario)
    if args.time_compression:
        sc = sc.model_copy(update={"shadow": sc.shadow.model_copy(
            update={"time_compression": args.time_compression})})
    procedures = {"configured": sc.procedure}
    for path in args.procedure:
        procedures[Path(path).stem] = load_procedure(path, scenario=sc)
    started = time.monotonic()
    rows = compare_backends(sc, procedures, args.seeds, on_log=_log)
    _log(side_by_side(rows))
    result = {
        "benchmark": "sim_vs_real",
        "scenario": sc.name,
        "time_compression": sc.shadow.time_compression,
        "sample_fraction": sc.shadow.sample_fraction,
        "seeds": args.seeds,
        "rows": rows,
        "real_over_sim": ratios(rows),
        "same_outcome": sum(r["gap"]["same_outcome"] for r in rows),
        "runs": len(rows),
        "wall_s": round(time.monotonic() - started, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

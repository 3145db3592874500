"""Peak memory of ``shadowrl rehearse``: with ``--out`` (profiles streamed to disk) against
the same runs without it.

Each configuration runs the real command in a child process and reads that child's peak
resident set size (``ru_maxrss`` of ``RUSAGE_CHILDREN``, measured from a fresh parent so
nothing else counts). With ``--out``, every finished run's profile is appended to
``profiles.parquet`` and dropped, and memory keeps a compact record per run (about 9 KB), so
the peak should stay near the no-``--out`` baseline however many runs there are; the target
is under 500 MB for 20,000 runs of envs/checkout.yaml. ``ratio_out_vs_baseline`` is the peak
with ``--out`` over the peak without it, per run count; ``growth_per_1000_runs_mb`` is the
slope between the smallest and the largest run count. One JSON object goes to stdout;
progress goes to stderr.

    python benchmarks/rehearse_memory.py                       # 2000 runs, the default
    python benchmarks/rehearse_memory.py --runs 2000 20000     # the 20,000-run target
    python benchmarks/rehearse_memory.py --runs 100 400 --scenario envs/payments.yaml
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET_MB = 500.0
TARGET_RUNS = 20_000

_MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
      time.perf_counter() - start)
"""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak(scenario: Path, runs: int, out: Path | None) -> dict[str, Any]:
    """Peak RSS (MB) and wall time of one ``shadowrl rehearse`` run."""
    command = [sys.executable, "-m", "shadowrl", "rehearse", str(scenario), "--runs",
               str(runs), "--json"]
    if out is not None:
        command += ["--out", str(out)]
    done = subprocess.run([sys.executable, "-c", _MEASURE, *command], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    code, kb, seconds = done.stdout.split()
    if int(code) != 0:
        raise RuntimeError(f"{' '.join(command)} exited {code}: {done.stderr[-2000:]}")
    return {"peak_rss_mb": round(int(kb) / 1024, 1), "seconds": round(float(seconds), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", type=Path, default=ROOT / "envs" / "checkout.yaml")
    parser.add_argument("--runs", type=int, nargs="+", default=[2000],
                        help="run counts to measure (each with and without --out)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the runs without --out")
    args = parser.parse_args()

    results: dict[str, Any] = {"scenario": str(args.scenario), "with_out": {},
                               "without_out": {}, "ratio_out_vs_baseline": {}}
    with tempfile.TemporaryDirectory(prefix="shadowrl-memory-") as tmp:
        for runs in sorted(args.runs):
            _log(f"{runs} runs with --out ...")
            got = peak(args.scenario, runs, Path(tmp) / f"out{runs}")
            results["with_out"][str(runs)] = got
            _log(f"  {got}")
            if not args.no_baseline:
                _log(f"{runs} runs without --out ...")
                base = peak(args.scenario, runs, None)
                results["without_out"][str(runs)] = base
                results["ratio_out_vs_baseline"][str(runs)] = round(
                    got["peak_rss_mb"] / base["peak_rss_mb"], 2)
                _log(f"  {base}")
    counts = sorted(args.runs)
    if len(counts) > 1:
        lo, hi = results["with_out"][str(counts[0])], results["with_out"][str(counts[-1])]
        results["growth_per_1000_runs_mb"] = round(
            (hi["peak_rss_mb"] - lo["peak_rss_mb"]) / (counts[-1] - counts[0]) * 1000, 2)
    if str(TARGET_RUNS) in results["with_out"]:
        mb = results["with_out"][str(TARGET_RUNS)]["peak_rss_mb"]
        results["target"] = {"runs": TARGET_RUNS, "limit_mb": TARGET_MB, "peak_mb": mb,
                             "met": mb < TARGET_MB}
    results["machine"] = {"python": platform.python_version(), "platform": platform.platform(),
                          "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Performance Profiler: per-second series, step spans and downtime attribution.

The simulator records one row per second per component (plus the ``edge`` view) when a
rehearsal asks for a profile; this module tags the rows with run, incident and step, writes
them as Parquet, and attributes downtime, failed requests and error-budget burn to the steps
that caused them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shadowrl.core.atomic import atomic_write_with
from shadowrl.rehearsal.runner import Rehearsal

PROFILE_SCHEMA = pa.schema([
    ("run", pa.int32()), ("seed", pa.int64()), ("scenario", pa.string()),
    ("incident", pa.string()), ("t", pa.float64()), ("since_breach_s", pa.float64()),
    ("component", pa.string()), ("rps", pa.float64()), ("error_rate", pa.float64()),
    ("latency_p50_ms", pa.float64()), ("latency_p99_ms", pa.float64()), ("cpu", pa.float64()),
    ("memory", pa.float64()), ("replicas", pa.float64()), ("step", pa.string()),
    ("phase", pa.string()),
])


def profile_table(runs: Sequence[Rehearsal]) -> pa.Table:
    """All runs' per-second rows as one Arrow table (runs without a profile are left out)."""
    batches = []
    for k, r in enumerate(runs):
        p = r.profile
        if not p or not p["t"]:
            continue
        n = len(p["t"])
        cols: dict[str, Any] = {
            "run": pa.array([k] * n, pa.int32()),
            "seed": pa.array([r.seed] * n, pa.int64()),
            "scenario": pa.array([r.scenario] * n, pa.string()),
            "incident": pa.array([r.incident] * n, pa.string()),
            "t": pa.array(p["t"], pa.float64()),
            "since_breach_s": pa.array([t - r.breach.at_s for t in p["t"]], pa.float64()),
        }
        for name in ("component", "rps", "error_rate", "latency_p50_ms", "latency_p99_ms",
                     "cpu", "memory", "replicas", "step", "phase"):
            # a backend that does not count running replicas leaves the column empty
            cols[name] = pa.array(p.get(name, [None] * n), PROFILE_SCHEMA.field(name).type)
        batches.append(pa.table(cols, schema=PROFILE_SCHEMA))
    if not batches:
        return PROFILE_SCHEMA.empty_table()
    return pa.concat_tables(batches)


def write_profiles(path: str | Path, runs: Sequence[Rehearsal]) -> Path:
    table = profile_table(runs)
    return atomic_write_with(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def attribution(r: Rehearsal) -> list[dict[str, Any]]:
    """Each step's share of the run's downtime and failed requests, and their sources.

    Verification time after the last step is attributed to ``verify``: downtime there means
    the procedure left the SLO failing.
    """
    rows = []
    steps_down = 0.0
    steps_failed = 0.0
    steps_bad = 0.0
    for s in r.steps:
        if s.status == "skipped":
            continue
        steps_down += s.span.downtime_s
        steps_failed += s.span.failed_requests
        steps_bad += s.span.bad
        rows.append({"step": s.name, "action": s.action, "status": s.status,
                     "duration_s": s.end_s - s.start_s, "downtime_s": s.span.downtime_s,
                     "failed_requests": s.span.failed_requests,
                     "bad_requests": s.span.bad,
                     "errors_by_source": dict(s.span.errors_by_source)})
    last_end = max((s.end_s for s in r.steps), default=r.breach.at_s)
    rows.append({"step": "verify", "action": "verify", "status": r.outcome,
                 "duration_s": r.verify_end_s - last_end,
                 "downtime_s": max(0.0, r.downtime_s - steps_down),
                 "failed_requests": max(0.0, r.failed_requests - steps_failed),
                 "bad_requests": max(0.0, r.bad_requests - steps_bad),
                 "errors_by_source": {}})
    for row in rows:
        row["downtime_share"] = row["downtime_s"] / r.downtime_s if r.downtime_s > 0 else 0.0
        row["failed_share"] = (row["failed_requests"] / r.failed_requests
                               if r.failed_requests > 0 else 0.0)
        # the step's share of the run's error-budget burn (bad requests are what it counts)
        row["budget_share"] = (row["bad_requests"] / r.bad_requests
                               if r.bad_requests > 0 else 0.0)
        row["budget_burn"] = row["budget_share"] * r.budget_burn
    return rows

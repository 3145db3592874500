"""Performance Profiler: per-second series, step spans and downtime attribution.

The simulator records one row per second per component (plus the ``edge`` view) when a
rehearsal asks for a profile; this module tags the rows with run, incident and step, writes
them as Parquet, and attributes downtime, failed requests and error-budget burn to the steps
that caused them.

A campaign of thousands of runs cannot hold every profile in memory: :class:`ProfileWriter`
appends each run's rows as it finishes (row groups of about :data:`GROUP_ROWS` rows, so the
file's footer stays small) and :func:`read_profiles` reads back the few runs a report draws.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shadowrl.core.atomic import PendingFile
from shadowrl.rehearsal.runner import Rehearsal
from shadowrl.shadow.base import PROFILE_COLUMNS

PROFILE_SCHEMA = pa.schema([
    ("run", pa.int32()), ("seed", pa.int64()), ("scenario", pa.string()),
    ("incident", pa.string()), ("backend", pa.string()), ("t", pa.float64()),
    ("since_breach_s", pa.float64()), ("component", pa.string()), ("rps", pa.float64()),
    ("error_rate", pa.float64()),
    ("latency_p50_ms", pa.float64()), ("latency_p99_ms", pa.float64()), ("cpu", pa.float64()),
    ("memory", pa.float64()), ("replicas", pa.float64()), ("step", pa.string()),
    ("phase", pa.string()),
])
# PROFILE_COLUMNS (shadow.base) are a rehearsal's own profile (``Rehearsal.profile``); the
# schema's other columns tag the run
# Arrow's default allocator (mimalloc) keeps what is freed for reuse; a campaign converts,
# writes and reads profiles a run at a time for hours, and the system allocator, which gives
# memory back, keeps its peak lower (tens of MB on envs/checkout.yaml; see system_allocator)
POOL = pa.system_memory_pool()
GROUP_ROWS = 2**16  # rows buffered before a row group is written (about 10 MB of Arrow data)


def run_table(run: int, r: Rehearsal) -> pa.Table | None:
    """One run's per-second rows (``run`` is its index in the campaign); None without a
    profile."""
    p = r.profile
    if not p or not p["t"]:
        return None
    n = len(p["t"])
    cols: dict[str, Any] = {
        "run": pa.array([run] * n, pa.int32(), memory_pool=POOL),
        "seed": pa.array([r.seed] * n, pa.int64(), memory_pool=POOL),
        "scenario": pa.array([r.scenario] * n, pa.string(), memory_pool=POOL),
        "incident": pa.array([r.incident] * n, pa.string(), memory_pool=POOL),
        "backend": pa.array([r.backend] * n, pa.string(), memory_pool=POOL),
        "t": pa.array(p["t"], pa.float64(), memory_pool=POOL),
        "since_breach_s": pa.array([t - r.breach.at_s for t in p["t"]], pa.float64(),
                                   memory_pool=POOL),
    }
    for name in PROFILE_COLUMNS[1:]:
        # a backend that does not count running replicas leaves the column empty
        cols[name] = pa.array(p.get(name, [None] * n), PROFILE_SCHEMA.field(name).type,
                              memory_pool=POOL)
    return pa.table(cols, schema=PROFILE_SCHEMA)


def profile_table(runs: Sequence[Rehearsal]) -> pa.Table:
    """All runs' per-second rows as one Arrow table (runs without a profile are left out)."""
    tables = [t for k, r in enumerate(runs) if (t := run_table(k, r)) is not None]
    if not tables:
        return PROFILE_SCHEMA.empty_table()
    return pa.concat_tables(tables)


class ProfileWriter:
    """``profiles.parquet`` filled run by run under a temporary name; :meth:`close` renames
    it into place, :meth:`discard` removes it.

    Rows are buffered until about ``group_rows`` are waiting, then written as one row
    group, so memory holds at most one group besides the run being added. Write errors
    (a full disk) are ``OSError``; the caller decides whether to :meth:`discard`.
    """

    def __init__(self, path: str | Path, *, group_rows: int = GROUP_ROWS) -> None:
        self._pending = PendingFile(path)
        try:
            self._writer = pq.ParquetWriter(self._pending.tmp, PROFILE_SCHEMA,
                                            compression="zstd", memory_pool=POOL)
        except BaseException:
            self._pending.discard()
            raise
        self.group_rows = group_rows
        self._batch: list[pa.Table] = []
        self._batch_rows = 0
        self.runs = 0  # runs whose rows were added
        self.rows = 0

    @property
    def path(self) -> Path:
        return self._pending.target

    def add(self, run: int, r: Rehearsal) -> bool:
        """Add run ``run``'s rows; False when it has no profile."""
        table = run_table(run, r)
        if table is None:
            return False
        self._batch.append(table)
        self._batch_rows += table.num_rows
        self.runs += 1
        self.rows += table.num_rows
        if self._batch_rows >= self.group_rows:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the buffered rows as one row group."""
        if not self._batch:
            return
        table = pa.concat_tables(self._batch)
        self._batch, self._batch_rows = [], 0
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))

    def close(self) -> Path:
        """Write what is buffered and the footer, then rename the file into place."""
        try:
            self.flush()
            self._writer.close()
        except BaseException:
            self.discard()
            raise
        return self._pending.commit()

    def discard(self) -> None:
        """Drop the temporary file (idempotent)."""
        self._batch, self._batch_rows = [], 0
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - the file is being thrown away anyway
            pass
        self._pending.discard()


def write_profiles(path: str | Path, runs: Sequence[Rehearsal]) -> Path:
    """Every run's rows (run index = position in ``runs``), written atomically."""
    writer = ProfileWriter(path)
    try:
        for k, r in enumerate(runs):
            writer.add(k, r)
    except BaseException:
        writer.discard()
        raise
    return writer.close()


def read_profiles(path: str | Path, runs: Collection[int]) -> dict[int, dict[str, list[Any]]]:
    """The profiles (``Rehearsal.profile`` dicts) of the chosen runs, read back from a
    profiles file; only the row groups whose ``run`` statistics may hold them are read,
    one at a time. Runs without rows are absent from the result."""
    wanted = sorted(set(runs))
    if not wanted:
        return {}
    with system_allocator():  # the reader allocates from the default pool
        source = pq.ParquetFile(path)
        column = source.schema_arrow.get_field_index("run")
        keep = pa.array(wanted, pa.int32(), memory_pool=POOL)
        found: list[pa.Table] = []
        for g in range(source.num_row_groups):
            stats = source.metadata.row_group(g).column(column).statistics
            if stats is not None and stats.has_min_max and not any(
                    stats.min <= k <= stats.max for k in wanted):
                continue
            table = source.read_row_group(g, columns=["run", *PROFILE_COLUMNS])
            found.append(table.filter(pc.is_in(table["run"], value_set=keep,
                                               memory_pool=POOL)))
        if not found:
            return {}
        rows = pa.concat_tables(found)
        out: dict[int, dict[str, list[Any]]] = {}
        for k in wanted:
            run = rows.filter(pc.equal(rows["run"], pa.scalar(k, pa.int32()),
                                       memory_pool=POOL))
            if run.num_rows:
                out[k] = {name: run[name].to_pylist() for name in PROFILE_COLUMNS}
    return out


@contextmanager
def system_allocator() -> Iterator[None]:
    """Make the system allocator (:data:`POOL`) Arrow's default for the block, then put the
    previous one back. Buffers remember the pool that made them, so switching is safe;
    a long campaign's output folder holds it for its lifetime."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(POOL)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


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

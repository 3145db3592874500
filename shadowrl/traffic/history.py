"""Historical metric series for the deviation simulator (the scenario's
``deviations.history``: docs/scenario-format.md, ``history``).

A history file (a Prometheus ``query_range`` response or a ``timestamp,value`` CSV) gives
the simulator three things: the load *pattern* (a robust seasonal baseline, normalised to
mean 1), the *shapes* of past excursions from that baseline (replayed, scaled, as incident
effects), and a *forecast* of the next period, so rehearsals can be placed at the
predicted peak. Only numpy and the standard library are used, to keep the import light.

Loading is bounded (docs/inputs.md): file size, line length, samples, series, dates, span and
values; samples too dense or too many are averaged onto a bounded grid. A file outside the
bounds is a ``HistoryError`` naming the file and the line (JSON: the sample's position), never
a traceback, a hang or gigabytes of memory.

Conventions: times are float seconds since the Unix epoch (UTC; naive timestamps are read
as UTC); "period" is the seasonal period, one day unless told otherwise; phases are
measured from the UTC midnight (more generally, the multiple of the period) before the
first sample, so day-of-week effects line up with calendar days.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "Backtest",
    "Excursion",
    "HistoryError",
    "SeasonalForecast",
    "Series",
    "find_excursions",
    "load_pattern",
    "load_series",
    "parse_timestamp",
    "robust_baseline",
    "robust_scale",
]

DAY_S = 86400.0
MIN_POINTS = 10
MAD_TO_SIGMA = 1.4826
_MISSING = {"", "nan", "na", "n/a", "null", "none"}


class HistoryError(ValueError):
    """A history file that cannot be used; the message names the file (and line)."""


# --------------------------------------------------------------------------- series


@dataclass
class Series:
    """A metric over time: ``t`` sorted unique epoch seconds, ``v`` the values.

    The constructor sorts and averages duplicate timestamps, so every ``Series`` holds
    the invariant the analysis functions rely on.
    """

    t: np.ndarray
    v: np.ndarray
    name: str = "series"

    def __post_init__(self) -> None:
        t = np.asarray(self.t, dtype=float).ravel()
        v = np.asarray(self.v, dtype=float).ravel()
        if t.shape != v.shape:
            raise ValueError(f"{self.name}: t and v differ in length ({t.size} != {v.size})")
        if t.size < 2:
            raise ValueError(f"{self.name}: need at least 2 points, got {t.size}")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(v))):
            raise ValueError(f"{self.name}: t and v must be finite")
        if np.any(np.diff(t) <= 0):
            t, v = _average_duplicates(t, v)
        self.t, self.v = t, v

    @property
    def step_s(self) -> float:
        """Median sample spacing: robust to the odd gap or jittered scrape."""
        return float(np.median(np.diff(self.t)))

    @property
    def span_s(self) -> float:
        """Covered time, counting the last sample as one step long."""
        return float(self.t[-1] - self.t[0] + self.step_s)

    def __len__(self) -> int:
        return int(self.t.size)


def _average_duplicates(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, inverse = np.unique(t, return_inverse=True)
    sums = np.bincount(inverse, weights=v, minlength=uniq.size)
    counts = np.bincount(inverse, minlength=uniq.size)
    return uniq, sums / counts


# --------------------------------------------------------------------------- loading

# Bounds on what a history file may hold (docs/inputs.md). A real export is far inside
# them; a file outside them is a mistake (wrong unit, wrong file) or a hostile input, and
# is refused with a message instead of exhausting memory or time.
MAX_HISTORY_BYTES = 16 * 2**20  # a year at 1-minute steps as CSV is ~14 MB
MAX_LINE_CHARS = 4096  # one CSV line
MAX_POINTS = 1_000_000  # timestamp/value pairs read, all series together
MAX_SERIES = 200  # series in one Prometheus response (they are summed)
MAX_ABS_VALUE = 1e15  # |value|: a million times any real request rate; sums cannot overflow
MIN_TIMESTAMP = 0.0  # 1970-01-01T00:00:00Z
MAX_TIMESTAMP = 7_258_118_400.0  # 2200-01-01T00:00:00Z
MAX_SPAN_S = 732 * DAY_S  # two years, leap days included
MIN_STEP_S = 10.0  # denser samples are averaged onto a grid of at least this step
MAX_GRID_POINTS = 250_000  # longer histories are averaged onto a coarser grid
_NICE_STEPS_S = (10, 15, 20, 30, 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 3600, 7200,
                 10800, 14400, 21600, 43200, 86400)


def load_series(path: str | Path, fmt: str | None = None, column: str = "value") -> Series:
    """Read a history file; ``fmt`` is ``prometheus`` or ``csv`` (None: from the extension).

    Raises ``HistoryError`` naming the file (and, for CSV, the line; for JSON the
    ``data.result[i].values[j]`` path) on bad input, so a scenario's ``deviations.history``
    mistake is reported like any validation error. Within the bounds above the result has
    at most ``MAX_GRID_POINTS + 1`` points, a median step of at least ``MIN_STEP_S`` and
    ``span / step <= MAX_GRID_POINTS + 1``: samples too dense or too many are averaged onto
    a regular grid, so every analysis downstream runs in bounded memory and time.
    """
    p = Path(path)
    kind = (fmt or "").strip().lower()
    if not kind:
        suffix = p.suffix.lower()
        kind = {".json": "prometheus", ".csv": "csv"}.get(suffix, "")
        if not kind:
            raise HistoryError(
                f"{p}: cannot tell the format from extension {suffix or '(none)'!r}; "
                "use .json (Prometheus) or .csv, or give the format"
            )
    if kind not in ("prometheus", "prom", "json", "csv"):
        raise HistoryError(f"{p}: unknown history format {fmt!r} (use prometheus or csv)")
    text = _read_text(p)
    if kind == "csv":
        points = _parse_csv(text, p, column)
        name = p.stem
    else:
        points, name = _parse_prometheus(text, p)
    t, v = points.t, points.v
    if t.size < MIN_POINTS:
        raise HistoryError(f"{p}: only {t.size} usable point(s); need at least {MIN_POINTS}")
    _check_span(points, p)
    t, v = _average_duplicates(t, v) if np.any(np.diff(t) <= 0) else (t, v)
    t, v, grid = _bounded_grid(t, v)
    if t.size < MIN_POINTS:
        raise HistoryError(
            f"{p}: only {t.size} point(s) after averaging samples onto a {grid:g} s grid; "
            f"need at least {MIN_POINTS} (samples closer than {MIN_STEP_S:g} s are averaged)"
        )
    return Series(t, v, name=name)


def _read_text(path: Path) -> str:
    """The file as text, read no further than the size limit; NUL bytes and non-UTF-8
    bytes are refused naming their line (a binary file, or a Latin-1 export)."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_HISTORY_BYTES + 1)
    except OSError as exc:
        raise HistoryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_HISTORY_BYTES:
        raise HistoryError(f"{path}: file too large (more than {MAX_HISTORY_BYTES} bytes; "
                           "export a shorter range or a coarser step)")
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise HistoryError(f"{path}:{line}: not a text file (NUL byte)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise HistoryError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                           f"column {col}); save the file as UTF-8") from None


@dataclass
class _Points:
    """Parsed samples and where each came from (a CSV line, or a JSON path), so span and
    range errors can point at the offending sample."""

    t: np.ndarray
    v: np.ndarray
    where: Callable[[int], str]


def _check_point(ts: float, val: float, where: str, raw_t: object, field: str) -> None:
    """Timestamp in 1970..2200 and |value| <= MAX_ABS_VALUE, else a HistoryError there."""
    if not MIN_TIMESTAMP <= ts < MAX_TIMESTAMP:
        raise HistoryError(f"{where}: timestamp: {_short(raw_t)} is outside 1970-01-01.."
                           "2200-01-01 (a wrong unit, or a wrong date?)")
    if abs(val) > MAX_ABS_VALUE:
        raise HistoryError(f"{where}: {field}: {val:g} is out of range (|{field}| <= "
                           f"{MAX_ABS_VALUE:g})")


def _check_span(points: _Points, path: Path) -> None:
    """The history covers at most MAX_SPAN_S: a stray year-1 or year-9999 timestamp, or
    a switch of unit part-way, shows up here, named by its first and last samples."""
    lo, hi = int(np.argmin(points.t)), int(np.argmax(points.t))
    span = float(points.t[hi] - points.t[lo])
    if span > MAX_SPAN_S:
        raise HistoryError(
            f"{path}: timestamps span {span / DAY_S:,.0f} days, from {_iso(points.t[lo])} "
            f"({points.where(lo)}) to {_iso(points.t[hi])} ({points.where(hi)}); the limit is "
            f"{MAX_SPAN_S / DAY_S:.0f} days (a timestamp out of place or in another unit?)"
        )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(float(ts), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _nice_step(step: float) -> float:
    """The smallest step of a day's divisors (10 s .. 1 day) at least ``step``; beyond a
    day, whole days. Grid bins then line up with the daily season."""
    for nice in _NICE_STEPS_S:
        if nice >= step:
            return float(nice)
    return math.ceil(step / DAY_S) * DAY_S


def _bounded_grid(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(t, v)`` unchanged when the sampling is within bounds; otherwise the averages of
    the samples in each bin of a regular grid (bins without samples stay gaps). Returns the
    grid step too (0 when unchanged)."""
    step = float(np.median(np.diff(t))) if t.size > 1 else 0.0
    span = float(t[-1] - t[0])
    if step >= MIN_STEP_S and span <= step * MAX_GRID_POINTS and t.size <= MAX_GRID_POINTS + 1:
        return t, v, 0.0
    grid = _nice_step(max(MIN_STEP_S, span / MAX_GRID_POINTS))
    bins, inverse = np.unique(np.floor(t / grid), return_inverse=True)
    sums = np.bincount(inverse, weights=v, minlength=bins.size)
    counts = np.bincount(inverse, minlength=bins.size)
    return bins * grid, sums / counts, grid


_FRACTION = re.compile(r"(\d{2}:\d{2}:\d{2})\.(\d+)")


def parse_timestamp(raw: str) -> float:
    """Epoch seconds from unix seconds (or milliseconds) or ISO-8601; ValueError if neither.

    Naive ISO times are taken as UTC: monitoring exports are almost always UTC, and
    guessing the local zone would make results depend on the machine.
    """
    s = raw.strip()
    try:
        x = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(x):
            raise ValueError(raw)
        return x / 1000.0 if abs(x) >= 1e11 else x  # 1e11 s is year 5138: must be ms
    if s[-1:] in ("Z", "z"):
        s = s[:-1] + "+00:00"
    # Python 3.10's fromisoformat wants exactly 3 or 6 fraction digits.
    s = _FRACTION.sub(lambda m: f"{m.group(1)}.{(m.group(2) + '000000')[:6]}", s)
    try:
        dt = datetime.fromisoformat(s)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    except OverflowError:  # year 1 or 9999 shifted by its offset past datetime's range
        raise ValueError(raw) from None


def _csv_rows(text: str, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line, cells) of each CSV record; an over-long line or a CSV syntax error is a
    HistoryError at its line."""
    lines = io.StringIO(text, newline="")
    for n, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_CHARS:
            raise HistoryError(f"{path}:{n}: line too long ({len(line)} characters; the "
                               f"limit is {MAX_LINE_CHARS})")
    lines.seek(0)
    reader = csv.reader(lines)
    end = 0  # the line the previous record ended on
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise HistoryError(f"{path}:{start}: CSV error: {exc}") from None
        end = reader.line_num
        if end > start:  # no timestamp or number holds a line break
            raise HistoryError(f"{path}:{start}: a quoted field runs on to line {end} (an "
                               "unmatched '\"'?)")
        yield start, row


def _csv_header(row: list[str], path: Path, line: int, column: str) -> tuple[int, int]:
    header = [cell.strip() for cell in row]
    lowered = [h.lower() for h in header]
    found = ", ".join(header)[:200]
    if "timestamp" not in lowered:
        raise HistoryError(f"{path}:{line}: header: no 'timestamp' column (found: {found})")
    if column.lower() not in lowered:
        raise HistoryError(f"{path}:{line}: header: no {column!r} column (found: {found})")
    return lowered.index("timestamp"), lowered.index(column.lower())


def _parse_csv(text: str, path: Path, column: str) -> _Points:
    header: tuple[int, int] | None = None
    width = 0
    times: list[float] = []
    values: list[float] = []
    where: list[int] = []
    for line, row in _csv_rows(text, path):
        if not row or all(not cell.strip() for cell in row):
            continue
        if header is None:
            header, width = _csv_header(row, path, line, column), len(row)
            continue
        ts_col, val_col = header
        if len(row) <= max(ts_col, val_col):
            raise HistoryError(f"{path}:{line}: expected {width} fields, got {len(row)}")
        raw_t, raw_v = row[ts_col], row[val_col].strip()
        if raw_v.lower() in _MISSING:
            continue
        try:
            ts = parse_timestamp(raw_t)
        except ValueError:
            raise HistoryError(f"{path}:{line}: timestamp: cannot parse {raw_t[:80]!r}") from None
        try:
            val = float(raw_v)
        except ValueError:
            raise HistoryError(f"{path}:{line}: {column}: cannot parse {raw_v[:80]!r}") from None
        if not math.isfinite(val):
            continue
        _check_point(ts, val, f"{path}:{line}", raw_t.strip(), column)
        if len(times) >= MAX_POINTS:
            raise HistoryError(f"{path}:{line}: more than {MAX_POINTS} data rows (export a "
                               "shorter range or a coarser step)")
        times.append(ts)
        values.append(val)
        where.append(line)
    if header is None:
        raise HistoryError(f"{path}: empty file (expected a header with timestamp,{column})")
    return _Points(np.asarray(times, dtype=float), np.asarray(values, dtype=float),
                   lambda i: f"line {where[i]}")


def _parse_prometheus(text: str, path: Path) -> tuple[_Points, str]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HistoryError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise HistoryError(f"{path}: invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal of more than 4300 digits
        raise HistoryError(f"{path}: invalid JSON: {str(exc).split(':')[0][:120]}") from None
    if not isinstance(doc, dict):
        raise HistoryError(f"{path}: expected a Prometheus query_range response object")
    status = doc.get("status", "success")
    if status != "success":
        detail = str(doc.get("error", "no error text"))[:200]
        raise HistoryError(f"{path}: status is {str(status)[:40]!r}: {detail}")
    data = doc.get("data", doc)  # accept the bare ``data`` object too
    if not isinstance(data, dict) or data.get("resultType") != "matrix":
        got = data.get("resultType") if isinstance(data, dict) else type(data).__name__
        raise HistoryError(
            f"{path}: data.resultType: expected 'matrix' (query_range), got {str(got)[:40]!r}"
        )
    result = data.get("result")
    if not isinstance(result, list) or not result:
        raise HistoryError(f"{path}: data.result: no series")
    if len(result) > MAX_SERIES:
        raise HistoryError(f"{path}: data.result: {len(result)} series; the limit is "
                           f"{MAX_SERIES} (aggregate them in the query, e.g. sum(...))")
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    names: set[str] = set()
    budget = [MAX_POINTS]
    for i, item in enumerate(result):
        where = f"data.result[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("values"), list):
            raise HistoryError(f"{path}: {where}.values: missing or not a list")
        metric = item.get("metric") or {}
        if isinstance(metric, dict) and "__name__" in metric:
            names.add(str(metric["__name__"])[:200])
        part = _prometheus_values(item["values"], f"{path}: {where}", i, budget)
        if part is not None:
            parts.append(part)
    name = names.pop() if len(names) == 1 else path.stem
    if not parts:
        return _Points(np.empty(0), np.empty(0), lambda i: "data.result"), name
    t, v = _sum_on_common_grid([(pt, pv) for pt, pv, _ in parts])
    origin = np.concatenate([w for _, _, w in parts])
    t_all = np.concatenate([pt for pt, _, _ in parts])

    def located(i: int) -> str:  # the sample (in any series) at the grid time t[i]
        k = int(np.flatnonzero(t_all == t[i])[0])
        return f"data.result[{origin[k] >> 32}].values[{origin[k] & 0xFFFFFFFF}]"

    return _Points(t, v, located), name


def _prometheus_values(values: list[object], where: str, series: int, budget: list[int]
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """One series' ``[timestamp, value]`` pairs (finite ones, duplicates averaged) with each
    pair's origin (``series << 32 | index``), or None when none is finite; a malformed or
    out-of-range pair is a HistoryError at ``where``. ``budget`` counts down MAX_POINTS."""
    if len(values) > budget[0]:
        raise HistoryError(f"{where}.values: more than {MAX_POINTS} points in all (export a "
                           "shorter range or a coarser step)")
    budget[0] -= len(values)
    ts_list: list[float] = []
    val_list: list[float] = []
    origin: list[int] = []
    for j, pair in enumerate(values):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise HistoryError(f"{where}.values[{j}]: expected [timestamp, value]")
        ts = _json_number(pair[0], f"{where}.values[{j}]: timestamp")
        val = _json_number(pair[1], f"{where}.values[{j}]: value")
        if math.isfinite(ts) and math.isfinite(val):
            _check_point(ts, val, f"{where}.values[{j}]", pair[0], "value")
            ts_list.append(round(ts, 3))
            val_list.append(val)
            origin.append(series << 32 | j)
    if not ts_list:
        return None
    t = np.asarray(ts_list)
    v = np.asarray(val_list)
    o = np.asarray(origin, dtype=np.int64)
    if np.any(np.diff(t) <= 0):
        order = np.argsort(t, kind="stable")
        t, v, o = t[order], v[order], o[order]
        keep = np.concatenate([[True], np.diff(t) > 0])
        t_u, v_u = _average_duplicates(t, v)
        return t_u, v_u, o[keep]
    return t, v, o


def _json_number(raw: object, where: str) -> float:
    """A Prometheus sample field as a float: a number or a numeric string (not a bool)."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise HistoryError(f"{where}: cannot parse {_short(raw)}")
    try:
        return float(raw)
    except (ValueError, OverflowError):
        raise HistoryError(f"{where}: cannot parse {_short(raw)}") from None


def _short(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."


def _sum_on_common_grid(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Sum series on the union of their timestamps.

    Inside a series' own time range a missing sample is interpolated (a lost scrape, not a
    zero); outside it the series contributes nothing (the pod did not exist yet, or any
    more), which is what summing per-instance rates should mean.
    """
    grid = np.unique(np.concatenate([t for t, _ in parts]))
    total = np.zeros(grid.size)
    for t, v in parts:  # each series touches only its own slice of the grid
        lo, hi = np.searchsorted(grid, [t[0], t[-1]], side="left")
        total[lo:hi + 1] += np.interp(grid[lo:hi + 1], t, v)
    return grid, total


# --------------------------------------------------------------------------- baseline


def _require(series: Series, what: str) -> None:
    if len(series) < MIN_POINTS:
        raise HistoryError(f"{series.name}: {what} needs at least {MIN_POINTS} points")


def _grid(series: Series, period_s: float) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Phase bin and period index of each sample, the bin count and the period origin."""
    step = series.step_s
    nbins = max(1, int(round(period_s / step)))
    origin = math.floor(series.t[0] / period_s) * period_s
    pos = (series.t - origin) / step
    idx = np.floor(pos + 0.5).astype(np.int64)
    phase = idx % nbins
    chunk = np.floor((series.t - origin) / period_s).astype(np.int64)
    return phase, chunk, nbins, origin


def _binned_median(values: np.ndarray, bins: np.ndarray, nbins: int) -> np.ndarray:
    """Median of ``values`` per bin; NaN for empty bins."""
    out = np.full(nbins, np.nan)
    order = np.argsort(bins, kind="stable")
    sb, sv = bins[order], values[order]
    cuts = np.flatnonzero(np.diff(sb)) + 1
    for group_bins, group_vals in zip(np.split(sb, cuts), np.split(sv, cuts), strict=True):
        out[group_bins[0]] = np.median(group_vals)
    return out


def _fill_circular(profile: np.ndarray) -> np.ndarray:
    """Fill NaN bins by linear interpolation around the circle (gaps in the history)."""
    ok = np.isfinite(profile)
    if ok.all():
        return profile
    n = profile.size
    x = np.flatnonzero(ok)
    xp = np.concatenate([x - n, x, x + n])
    fp = np.tile(profile[ok], 3)
    return np.interp(np.arange(n), xp, fp)


def _smooth_circular(profile: np.ndarray, width: int) -> np.ndarray:
    """Circular moving average: a per-phase median over few periods is still noisy."""
    if width <= 1 or profile.size < 3:
        return profile
    width = min(width, profile.size) | 1
    half = width // 2
    padded = np.concatenate([profile[-half:], profile, profile[:half]])
    kernel = np.ones(width) / width
    return np.convolve(padded, kernel, mode="valid")


def _smooth_width(nbins: int) -> int:
    return max(3, nbins // 64) | 1  # ~25 minutes of a day at 5-minute bins


MAX_ROLLING_WIDTH = 2049  # a day at 10-s steps needs 1081; wider only for odd periods
_ROLLING_BLOCK = 2**21  # window elements whose median is taken at once (16 MB)


def _rolling_median(v: np.ndarray, width: int) -> np.ndarray:
    """Centred rolling median, computed a block of windows at a time so memory stays
    bounded whatever the series' length."""
    width = max(1, min(width, v.size, MAX_ROLLING_WIDTH)) | 1
    if width == 1:
        return v.copy()
    half = width // 2
    padded = np.pad(v, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    rows = max(1, _ROLLING_BLOCK // width)
    return np.concatenate([np.median(windows[i:i + rows], axis=1)
                           for i in range(0, windows.shape[0], rows)])


def _auto_weekly(series: Series, period_s: float, weekly: bool | None) -> bool:
    """Weekly season only for daily periods, and only with two of each weekday to compare."""
    if weekly is not None:
        return weekly
    return period_s == DAY_S and series.span_s >= 14 * DAY_S - 1e-6


def _weekly_factors(v: np.ndarray, phase: np.ndarray, chunk: np.ndarray, nbins: int) -> np.ndarray:
    """Level of each period-of-the-week (mean 1), from robust per-period levels."""
    prof = _smooth_circular(_fill_circular(_binned_median(v, phase, nbins)), _smooth_width(nbins))
    nchunks = int(chunk.max()) + 1
    return _week_from_levels(_chunk_level(v / _safe(prof[phase]), chunk, nchunks))


def _week_from_levels(level_c: np.ndarray) -> np.ndarray:
    """Day-of-week factors (mean 1) from per-period levels.

    Each weekday's factor is the median of its levels plus one neutral vote (the overall
    median level): with two weeks, a weekday effect must show in both weeks to count, so
    a one-off level shift or outage day is not mistaken for a weekly season.
    """
    overall = float(np.median(level_c))
    week = np.array([np.median(np.append(level_c[k::7], overall)) for k in range(7)])
    if not np.all(week > 0):  # signed or zero-level data: no multiplicative season
        return np.ones(7)
    return week / float(np.mean(week))


def robust_baseline(
    series: Series, period_s: float = DAY_S, weekly: bool | None = None
) -> np.ndarray:
    """Expected value at each sample: per-phase median across periods, smoothed.

    Medians ignore the excursions we are trying to find, provided an excursion does not
    recur at the same phase in most periods. With two weeks of daily history (or
    ``weekly=True``) values are first divided by a day-of-week level, so a quiet Sunday is
    season, not an excursion. With less than two periods there is nothing to take a
    median across, so a rolling median (an eighth of a period wide) is used.
    """
    _require(series, "a baseline")
    phase, chunk, nbins, _ = _grid(series, period_s)
    if series.span_s < 2 * period_s or nbins < 4:
        return _rolling_median(series.v, max(5, nbins // 8))
    w = np.ones(series.v.size)
    if _auto_weekly(series, period_s, weekly):
        w = _weekly_factors(series.v, phase, chunk, nbins)[chunk % 7]
    profile = _fill_circular(_binned_median(series.v / w, phase, nbins))
    return _smooth_circular(profile, _smooth_width(nbins))[phase] * w


def robust_scale(series: Series, baseline: np.ndarray) -> float:
    """Noise level of the residuals: 1.4826 * MAD (a standard deviation for normal noise).

    Falls back to the mean absolute deviation, then to a tiny epsilon, so integer-valued
    or mostly-flat series (MAD of 0) do not make every wiggle an excursion.
    """
    r = series.v - np.asarray(baseline, dtype=float)
    dev = np.abs(r - np.median(r))
    scale = MAD_TO_SIGMA * float(np.median(dev))
    if scale <= 0:
        scale = 1.2533 * float(np.mean(dev))
    eps = 1e-9 * max(1.0, float(np.median(np.abs(series.v))))
    return max(scale, eps)


def _relative(series: Series, baseline: np.ndarray) -> np.ndarray:
    """Residual / baseline, with the baseline floored so near-zero troughs do not explode."""
    floor = max(1e-9, 0.05 * float(np.median(np.abs(baseline))))
    return (series.v - baseline) / np.maximum(np.abs(baseline), floor)


# --------------------------------------------------------------------------- excursions


@dataclass
class Excursion:
    """A past deviation from the baseline, kept as a relative shape for replay.

    ``shape[i]`` is residual / baseline ``i`` steps after ``start_s`` (seconds after the
    series start); replaying ``1 + k * shape`` as a load or latency factor reproduces the
    excursion scaled by ``k`` whatever the scenario's absolute numbers.
    """

    start_s: float
    duration_s: float
    peak: float
    shape: np.ndarray
    step_s: float
    direction: int
    peak_s: float = 0.0  # offset of the peak from the series start
    z_peak: float = 0.0  # residual / scale at the peak: how unusual it was

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def at(self, offset_s: float) -> float:
        """Relative deviation ``offset_s`` seconds into the excursion (0 outside it)."""
        if offset_s < 0 or offset_s >= self.duration_s:
            return 0.0
        i = offset_s / self.step_s
        return float(np.interp(i, np.arange(self.shape.size), self.shape))


def find_excursions(
    series: Series,
    z: float = 4.0,
    min_duration_s: float | None = None,
    merge_gap_s: float | None = None,
    period_s: float = DAY_S,
    weekly: bool | None = None,
) -> list[Excursion]:
    """Contiguous runs where |residual| > z * scale, merged across short gaps.

    Runs of the same direction separated by at most ``merge_gap_s`` (default 3 steps) are
    one excursion: noise makes a slow ramp cross the threshold several times. Runs shorter
    than ``min_duration_s`` are dropped; the default, two steps, drops lone samples, which
    in real data are mostly scrape artefacts or bursts too short to rehearse against (pass
    ``min_duration_s=0`` to keep them). Sorted by |peak| descending, so the first is the
    most severe relative deviation.
    """
    _require(series, "excursion search")
    step = series.step_s
    merge_gap = 3 * step if merge_gap_s is None else float(merge_gap_s)
    min_dur = 2 * step if min_duration_s is None else float(min_duration_s)
    baseline = robust_baseline(series, period_s, weekly)
    scale = robust_scale(series, baseline)
    resid = series.v - baseline
    rel = _relative(series, baseline)
    flagged = np.abs(resid) > z * scale
    sign = np.sign(resid).astype(int)

    runs: list[list[int]] = []  # [first index, last index, direction]
    for i in np.flatnonzero(flagged):
        d = int(sign[i])
        if runs and runs[-1][2] == d:
            last = runs[-1][1]
            if i == last + 1 or series.t[i] - series.t[last] - step <= merge_gap + 1e-9:
                runs[-1][1] = int(i)
                continue
        runs.append([int(i), int(i), d])

    t0 = float(series.t[0])
    found: list[Excursion] = []
    for first, last, d in runs:
        start = float(series.t[first]) - t0
        duration = float(series.t[last] - series.t[first]) + step
        if duration + 1e-9 < min_dur:
            continue
        seg = slice(first, last + 1)
        k = first + int(np.argmax(np.abs(resid[seg]) * (sign[seg] == d)))
        n = max(1, int(round(duration / step)))
        grid = series.t[first] + step * np.arange(n)
        shape = np.interp(grid, series.t[seg], rel[seg])
        found.append(
            Excursion(
                start_s=start,
                duration_s=duration,
                peak=float(rel[k]),
                shape=shape,
                step_s=step,
                direction=d,
                peak_s=float(series.t[k]) - t0,
                z_peak=float(resid[k] / scale),
            )
        )
    found.sort(key=lambda e: abs(e.peak), reverse=True)
    return found


# --------------------------------------------------------------------------- pattern


def load_pattern(
    series: Series, period_s: float = DAY_S, weekly: bool | None = None
) -> Callable[[float], float]:
    """Traffic pattern for the simulator: the baseline, mean 1.0, by seconds from start.

    Past the end of the history the pattern continues periodically, shifted back by whole
    periods (whole weeks when the baseline has a weekly season) so the time of day and the
    weekday are kept; before the start likewise. With less than one period of history it
    wraps around the history itself.
    """
    baseline = robust_baseline(series, period_s, weekly)
    mean = float(np.mean(baseline))
    norm = baseline / mean if mean > 0 else np.ones_like(baseline)
    x = series.t - series.t[0]
    span = float(x[-1])
    wrap = period_s
    if series.span_s >= 2 * period_s and _auto_weekly(series, period_s, weekly):
        wrap = 7 * period_s
    if series.span_s < wrap:
        wrap = series.span_s

    def pattern(t_s: float) -> float:
        t = np.asarray(t_s, dtype=float)
        shifted = np.where(t > span, t - wrap * np.ceil((t - span) / wrap), t)
        shifted = np.where(shifted < 0, shifted + wrap * np.ceil(-shifted / wrap), shifted)
        out = np.interp(shifted, x, norm)
        return float(out) if out.ndim == 0 else out  # type: ignore[return-value]

    return pattern


# --------------------------------------------------------------------------- forecast


class Backtest(NamedTuple):
    """MAPE of predicting the last period: the seasonal model and "repeat the last period"."""

    model: float
    naive: float


def _mape(actual: np.ndarray, predicted: np.ndarray) -> float:
    ok = np.abs(actual) > 1e-9
    if not ok.any():
        return float("nan")
    return float(np.mean(np.abs(actual[ok] - predicted[ok]) / np.abs(actual[ok])))


@dataclass
class SeasonalForecast:
    """Seasonal-naive with level: value = level x weekly factor x daily profile.

    The profile (mean 1 per period) is the per-phase median of values divided by their
    period's level, so a trend or a level shift does not smear it; the level is the robust
    level of the last period, so the forecast follows recent growth. The band is a
    quantile range of the relative errors of forecasting each period from the one before.
    """

    period_s: float
    step_s: float
    origin: float
    t_end: float
    profile: np.ndarray
    level: float
    weekly: np.ndarray | None = None
    q_lo: float = 0.0
    q_hi: float = 0.0
    coverage: float = 0.9
    nonnegative: bool = True

    @classmethod
    def fit(
        cls,
        series: Series,
        period_s: float = DAY_S,
        weekly: bool | None = None,
        coverage: float = 0.9,
    ) -> SeasonalForecast:
        """Fit on ``series``; ``weekly`` defaults to on with at least 14 days of history."""
        _require(series, "a forecast")
        weekly = _auto_weekly(series, period_s, weekly)
        phase, chunk, nbins, origin = _grid(series, period_s)
        v = series.v
        nchunks = int(chunk.max()) + 1
        width = _smooth_width(nbins)

        level_c = _chunk_level(v, chunk, nchunks)
        for _ in range(2):  # profile and per-period levels, each given the other
            prof = _binned_median(v / level_c[chunk], phase, nbins)
            prof = _smooth_circular(_fill_circular(prof), width)
            prof = prof / np.mean(prof) if np.mean(prof) > 0 else np.ones(nbins)
            level_c = _chunk_level(v / _safe(prof[phase]), chunk, nchunks)

        week = _week_from_levels(level_c) if weekly else None
        wk = week if week is not None else np.ones(7)
        factor = prof[phase] * wk[chunk % 7]
        last = series.t > series.t[-1] - period_s
        level = float(np.median(v[last] / _safe(factor[last])))

        # Honest errors: each period forecast from the previous period's level.
        deseason = level_c / wk[np.arange(nchunks) % 7]
        prev = np.concatenate([[np.nan], deseason[:-1]])[chunk]
        ok = np.isfinite(prev)
        if ok.sum() < MIN_POINTS:  # under two periods: in-sample errors are all we have
            prev, ok = deseason[chunk], np.isfinite(deseason[chunk])
        pred = prev[ok] * factor[ok]
        rel = v[ok] / _safe(pred) - 1.0
        alpha = (1.0 - coverage) / 2.0
        q_lo, q_hi = np.quantile(rel, [alpha, 1 - alpha]) if rel.size else (0.0, 0.0)
        return cls(
            period_s=float(period_s),
            step_s=series.step_s,
            origin=origin,
            t_end=float(series.t[-1]),
            profile=prof,
            level=level,
            weekly=week,
            q_lo=float(min(q_lo, 0.0)),
            q_hi=float(max(q_hi, 0.0)),
            coverage=coverage,
            nonnegative=bool(np.all(v >= 0)),
        )

    def predict_at(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, lo, hi) at absolute epoch seconds ``t``."""
        t = np.asarray(t, dtype=float)
        nbins = self.profile.size
        pos = ((t - self.origin) / self.step_s) % nbins
        ext = np.concatenate([self.profile, self.profile[:1]])
        mean = np.interp(pos, np.arange(nbins + 1), ext) * self.level
        if self.weekly is not None:
            day = np.floor((t - self.origin) / self.period_s).astype(np.int64) % 7
            mean = mean * self.weekly[day]
        lo = mean * (1.0 + self.q_lo)
        hi = mean * (1.0 + self.q_hi)
        if self.nonnegative:
            mean, lo = np.maximum(mean, 0.0), np.maximum(lo, 0.0)
        return mean, lo, hi

    def predict(
        self, horizon_s: float | None = None, step_s: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(t, mean, lo, hi) for ``horizon_s`` (default one period) after the last sample."""
        horizon = self.period_s if horizon_s is None else float(horizon_s)
        step = self.step_s if step_s is None else float(step_s)
        if horizon <= 0 or step <= 0:
            raise ValueError("horizon_s and step_s must be positive")
        n = max(1, int(math.floor(horizon / step + 1e-9)))
        t = self.t_end + step * np.arange(1, n + 1)
        return (t, *self.predict_at(t))

    def peak_offset_s(self, horizon_s: float = DAY_S) -> float:
        """Seconds after the end of the history at which the predicted load is highest.

        Where rehearsals are riskiest: the least headroom when the rollback runs.
        """
        t, mean, _, _ = self.predict(horizon_s, step_s=min(self.step_s, 60.0))
        return float(t[int(np.argmax(mean))] - self.t_end)

    @classmethod
    def backtest(
        cls, series: Series, period_s: float = DAY_S, weekly: bool | None = None
    ) -> Backtest:
        """MAPE of forecasting the last period from the rest, and of repeating the last one.

        The naive baseline is what a seasonal model has to beat to be worth having.
        """
        cut = series.t[-1] - period_s
        train_mask = series.t <= cut
        test_t, test_v = series.t[~train_mask], series.v[~train_mask]
        if train_mask.sum() < MIN_POINTS or series.span_s < 2 * period_s:
            raise HistoryError(f"{series.name}: backtest needs at least two periods of history")
        train = Series(series.t[train_mask], series.v[train_mask], name=series.name)
        model = cls.fit(train, period_s=period_s, weekly=weekly)
        mean, _, _ = model.predict_at(test_t)
        lagged = test_t - period_s
        ok = lagged >= train.t[0]
        naive = np.interp(lagged[ok], train.t, train.v)
        return Backtest(model=_mape(test_v, mean), naive=_mape(test_v[ok], naive))


def _safe(x: np.ndarray) -> np.ndarray:
    """Avoid division by (near) zero without changing the sign convention of the data."""
    tiny = 1e-12 + 1e-9 * float(np.max(np.abs(x))) if np.size(x) else 1e-12
    return np.where(np.abs(x) < tiny, tiny, x)


def _chunk_level(v: np.ndarray, chunk: np.ndarray, nchunks: int) -> np.ndarray:
    """Median per period; empty periods take the overall median so lookups never fail."""
    level = _binned_median(v, chunk - chunk.min(), nchunks)
    fallback = float(np.median(v))
    level = np.where(np.isfinite(level), level, fallback)
    return np.where(np.abs(level) < 1e-12, fallback if abs(fallback) > 1e-12 else 1.0, level)

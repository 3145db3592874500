"""Historical metric series for the deviation simulator (the scenario's
``deviations.history``: docs/scenario-format.md, ``history``).

A history file (a Prometheus ``query_range`` response or a ``timestamp,value`` CSV) gives
the simulator three things: the load *pattern* (a robust seasonal baseline, normalised to
mean 1), the *shapes* of past excursions from that baseline (replayed, scaled, as incident
effects), and a *forecast* of the next period, so rehearsals can be placed at the
predicted peak. Only numpy and the standard library are used, to keep the import light.

Conventions: times are float seconds since the Unix epoch (UTC; naive timestamps are read
as UTC); "period" is the seasonal period, one day unless told otherwise; phases are
measured from the UTC midnight (more generally, the multiple of the period) before the
first sample, so day-of-week effects line up with calendar days.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
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


def load_series(path: str | Path, fmt: str | None = None, column: str = "value") -> Series:
    """Read a history file; ``fmt`` is ``prometheus`` or ``csv`` (None: from the extension).

    Raises ``HistoryError`` naming the file (and, for CSV, the line) on bad input, so a
    scenario's ``deviations.history`` mistake is reported like any validation error.
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
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise HistoryError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    if kind in ("prometheus", "prom", "json"):
        t, v, name = _parse_prometheus(text, p)
    elif kind == "csv":
        t, v = _parse_csv(text, p, column)
        name = p.stem
    else:
        raise HistoryError(f"{p}: unknown history format {fmt!r} (use prometheus or csv)")
    if t.size < MIN_POINTS:
        raise HistoryError(f"{p}: only {t.size} usable point(s); need at least {MIN_POINTS}")
    return Series(t, v, name=name)


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
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _parse_csv(text: str, path: Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    reader = csv.reader(text.splitlines())
    header: list[str] | None = None
    ts_col = val_col = -1
    times: list[float] = []
    values: list[float] = []
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            lowered = [h.lower() for h in header]
            if "timestamp" not in lowered:
                raise HistoryError(
                    f"{path}:{line}: header: no 'timestamp' column (found: {', '.join(header)})"
                )
            if column.lower() not in lowered:
                raise HistoryError(
                    f"{path}:{line}: header: no {column!r} column (found: {', '.join(header)})"
                )
            ts_col, val_col = lowered.index("timestamp"), lowered.index(column.lower())
            continue
        if len(row) <= max(ts_col, val_col):
            raise HistoryError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
        raw_t, raw_v = row[ts_col], row[val_col].strip()
        if raw_v.lower() in _MISSING:
            continue
        try:
            ts = parse_timestamp(raw_t)
        except ValueError:
            raise HistoryError(f"{path}:{line}: timestamp: cannot parse {raw_t!r}") from None
        try:
            val = float(raw_v)
        except ValueError:
            raise HistoryError(f"{path}:{line}: {column}: cannot parse {raw_v!r}") from None
        if math.isfinite(val):
            times.append(ts)
            values.append(val)
    if header is None:
        raise HistoryError(f"{path}: empty file (expected a header with timestamp,{column})")
    return np.asarray(times, dtype=float), np.asarray(values, dtype=float)


def _parse_prometheus(text: str, path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HistoryError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise HistoryError(f"{path}: expected a Prometheus query_range response object")
    status = doc.get("status", "success")
    if status != "success":
        raise HistoryError(f"{path}: status is {status!r}: {doc.get('error', 'no error text')}")
    data = doc.get("data", doc)  # accept the bare ``data`` object too
    if not isinstance(data, dict) or data.get("resultType") != "matrix":
        got = data.get("resultType") if isinstance(data, dict) else type(data).__name__
        raise HistoryError(f"{path}: data.resultType: expected 'matrix' (query_range), got {got!r}")
    result = data.get("result")
    if not isinstance(result, list) or not result:
        raise HistoryError(f"{path}: data.result: no series")
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    names: set[str] = set()
    for i, item in enumerate(result):
        where = f"data.result[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("values"), list):
            raise HistoryError(f"{path}: {where}.values: missing or not a list")
        metric = item.get("metric") or {}
        if isinstance(metric, dict) and "__name__" in metric:
            names.add(str(metric["__name__"]))
        part = _prometheus_values(item["values"], f"{path}: {where}")
        if part is not None:
            parts.append(part)
    if not parts:
        return np.empty(0), np.empty(0), path.stem
    t, v = _sum_on_common_grid(parts)
    name = names.pop() if len(names) == 1 else path.stem
    return t, v, name


def _prometheus_values(values: list[object], where: str
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """One series' ``[timestamp, value]`` pairs (finite ones, duplicates averaged), or None
    when none is finite; a malformed pair is a HistoryError at ``where``."""
    ts_list: list[float] = []
    val_list: list[float] = []
    for j, pair in enumerate(values):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise HistoryError(f"{where}.values[{j}]: expected [timestamp, value]")
        try:
            ts = float(pair[0])
        except (TypeError, ValueError):
            raise HistoryError(
                f"{where}.values[{j}]: timestamp: cannot parse {pair[0]!r}"
            ) from None
        try:
            val = float(pair[1])
        except (TypeError, ValueError):
            raise HistoryError(f"{where}.values[{j}]: value: cannot parse {pair[1]!r}") from None
        if math.isfinite(ts) and math.isfinite(val):
            ts_list.append(round(ts, 3))
            val_list.append(val)
    if not ts_list:
        return None
    return _average_duplicates(np.asarray(ts_list), np.asarray(val_list))


def _sum_on_common_grid(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Sum series on the union of their timestamps.

    Inside a series' own time range a missing sample is interpolated (a lost scrape, not a
    zero); outside it the series contributes nothing (the pod did not exist yet, or any
    more), which is what summing per-instance rates should mean.
    """
    grid = np.unique(np.concatenate([t for t, _ in parts]))
    total = np.zeros(grid.size)
    for t, v in parts:
        inside = (grid >= t[0]) & (grid <= t[-1])
        total[inside] += np.interp(grid[inside], t, v)
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


def _rolling_median(v: np.ndarray, width: int) -> np.ndarray:
    width = max(1, min(width, v.size)) | 1
    if width == 1:
        return v.copy()
    half = width // 2
    padded = np.pad(v, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    return np.median(windows, axis=1)


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

"""Tests for shadowrl.traffic.history: loading, baselines, excursions, pattern and forecast."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from shadowrl.traffic import history
from shadowrl.traffic.history import (
    Excursion,
    HistoryError,
    SeasonalForecast,
    Series,
    find_excursions,
    load_pattern,
    load_series,
    parse_timestamp,
    robust_baseline,
    robust_scale,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "envs" / "history" / "checkout_rps.csv"
NAB = Path(__file__).resolve().parents[3] / "shared" / "data" / "nab"
DAY = 86400.0


def _load_generator() -> ModuleType:
    name = "shadowrl_make_history"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "make_history.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while it executes
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


@pytest.fixture(scope="module")
def shipped() -> Series:
    return load_series(SHIPPED)


def _circular_gap_s(a: float, b: float, period: float = DAY) -> float:
    return abs((a - b + period / 2) % period - period / 2)


# --------------------------------------------------------------------------- generator


def test_shipped_file_is_what_the_generator_writes():
    t, v = gen.generate()
    assert SHIPPED.read_text(encoding="utf-8") == gen.to_csv_text(t, v)
    assert len(v) == 14 * 288


# --------------------------------------------------------------------------- loading


def test_csv_round_trip_with_mixed_timestamp_styles(tmp_path: Path):
    t, v = gen.generate(seed=7, days=2)
    styles = [
        lambda d: d.strftime("%Y-%m-%d %H:%M:%S"),
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"),
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.250000+00:00").replace(".250000", ".0"),
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        lambda d: f"{d.timestamp():.0f}",
    ]
    lines = ["timestamp,value,other"]
    for i, (ts, val) in enumerate(zip(t, v, strict=True)):
        stamp = styles[i % len(styles)](datetime.fromtimestamp(ts, timezone.utc))
        lines.append(f"{stamp},{val},x")
    path = tmp_path / "rps.csv"
    path.write_text("\n".join(lines) + "\n")
    s = load_series(path)
    assert s.name == "rps"
    np.testing.assert_allclose(s.t, t)
    np.testing.assert_allclose(s.v, v)
    assert s.step_s == 300.0


def test_csv_skips_missing_values_and_averages_duplicates(tmp_path: Path):
    rows = ["timestamp,value"]
    rows += [f"2024-01-01T00:{m:02d}:00Z,{m}" for m in range(0, 60, 5)]
    rows += ["2024-01-01T00:00:00Z,10", "2024-01-01T01:00:00Z,", "2024-01-01T01:05:00Z,NaN", ""]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows) + "\n")
    s = load_series(path)
    assert len(s) == 12
    assert s.v[0] == pytest.approx(5.0)  # (0 + 10) / 2
    assert np.all(np.diff(s.t) > 0)


def test_csv_other_column(tmp_path: Path):
    path = tmp_path / "m.csv"
    rows = ["Timestamp,cpu,value"] + [f"{1_700_000_000 + 60 * i},{i},{-i}" for i in range(12)]
    path.write_text("\n".join(rows))
    assert load_series(path, column="cpu").v[-1] == 11.0
    assert load_series(path, fmt="csv").v[-1] == -11.0


def _csv_with_line(tmp_path: Path, bad_line: int, row: str) -> Path:
    rows = ["timestamp,value"] + [f"2024-01-01T{h:02d}:00:00,{h}" for h in range(24)]
    rows[bad_line - 1] = row
    path = tmp_path / "x.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_bad_timestamp_names_file_and_line(tmp_path: Path):
    path = _csv_with_line(tmp_path, 17, "abc,3")
    with pytest.raises(HistoryError) as err:
        load_series(path)
    assert str(err.value) == f"{path}:17: timestamp: cannot parse 'abc'"


def test_csv_bad_value_names_file_line_and_column(tmp_path: Path):
    path = _csv_with_line(tmp_path, 5, "2024-01-01T03:00:00,oops")
    with pytest.raises(HistoryError, match=r"x\.csv:5: value: cannot parse 'oops'"):
        load_series(path)


def test_csv_missing_column_and_short_row_and_empty(tmp_path: Path):
    path = tmp_path / "h.csv"
    path.write_text("time,value\n1,2\n")
    with pytest.raises(HistoryError, match=r"h\.csv:1: header: no 'timestamp' column"):
        load_series(path)
    path.write_text("timestamp,value\n1,2\n3\n")
    with pytest.raises(HistoryError, match=r"h\.csv:3: expected 2 fields, got 1"):
        load_series(path)
    path.write_text("")
    with pytest.raises(HistoryError, match=r"h\.csv: empty file"):
        load_series(path)


def test_too_few_points(tmp_path: Path):
    path = tmp_path / "few.csv"
    path.write_text("timestamp,value\n" + "".join(f"{i},{i}\n" for i in range(9)))
    with pytest.raises(HistoryError, match=r"few\.csv: only 9 usable point\(s\); need at least 10"):
        load_series(path)


def test_unknown_extension_and_missing_file(tmp_path: Path):
    with pytest.raises(HistoryError, match=r"h\.txt: cannot tell the format"):
        load_series(tmp_path / "h.txt")
    with pytest.raises(HistoryError, match=r"nope\.csv: cannot read"):
        load_series(tmp_path / "nope.csv")


def _prometheus(result: list[dict]) -> str:
    return json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}})


def test_prometheus_round_trip_sums_series(tmp_path: Path):
    t, v = gen.generate(seed=3, days=2)
    pods = []
    for pod, share in (("a", 0.6), ("b", 0.4)):
        values = [[float(ts), repr(float(val) * share)] for ts, val in zip(t, v, strict=True)]
        pods.append({"metric": {"__name__": "http_rps", "pod": pod}, "values": values})
    pods[1]["values"][10][1] = "NaN"  # a lost scrape inside b's range: interpolated
    path = tmp_path / "rps.json"
    path.write_text(_prometheus(pods))
    s = load_series(path)
    assert s.name == "http_rps"
    np.testing.assert_allclose(s.t, t)
    expected = v.copy()
    expected[10] = 0.6 * v[10] + 0.4 * (v[9] + v[11]) / 2
    np.testing.assert_allclose(s.v, expected, rtol=1e-9)


def test_prometheus_series_outside_its_range_contributes_nothing(tmp_path: Path):
    base = 1_700_000_000
    a = [[base + 60 * i, "1"] for i in range(20)]
    b = [[base + 60 * i, "2"] for i in range(10, 20)]  # a pod that started late
    path = tmp_path / "p.json"
    path.write_text(_prometheus([{"metric": {}, "values": a}, {"metric": {}, "values": b}]))
    s = load_series(path)
    assert s.name == "p"
    assert list(s.v[:10]) == [1.0] * 10 and list(s.v[10:]) == [3.0] * 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{\n"status": ', r"bad\.json:2: invalid JSON"),
        (json.dumps({"status": "error", "error": "boom"}), r"bad\.json: status is 'error': boom"),
        (
            json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}),
            r"bad\.json: data\.resultType: expected 'matrix'",
        ),
        (_prometheus([]), r"bad\.json: data\.result: no series"),
        (
            _prometheus([{"metric": {}, "values": [[1, "x"]]}]),
            r"bad\.json: data\.result\[0\]\.values\[0\]: value: cannot parse 'x'",
        ),
    ],
)
def test_prometheus_errors_name_the_file(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(HistoryError, match=message):
        load_series(path)


def test_parse_timestamp_forms():
    want = datetime(2014, 3, 7, 3, 41, tzinfo=timezone.utc).timestamp()
    for raw in (
        "2014-03-07 03:41:00",
        "2014-03-07T03:41:00Z",
        "2014-03-07T03:41:00.000000",
        "2014-03-07T04:41:00+01:00",
        str(int(want)),
        str(int(want * 1000)),
    ):
        assert parse_timestamp(raw) == pytest.approx(want), raw
    assert parse_timestamp("2014-03-07T03:41:00.5Z") == pytest.approx(want + 0.5)
    with pytest.raises(ValueError):
        parse_timestamp("abc")


def test_series_sorts_and_dedupes():
    s = Series(np.array([3.0, 1.0, 2.0, 1.0]), np.array([30.0, 10.0, 20.0, 20.0]), "s")
    assert list(s.t) == [1.0, 2.0, 3.0] and list(s.v) == [15.0, 20.0, 30.0]
    assert s.step_s == 1.0


# --------------------------------------------------------------------------- baseline


def test_baseline_follows_the_daily_and_weekly_season(shipped: Series):
    base = robust_baseline(shipped)
    tod = (shipped.t - shipped.t[0]) % DAY
    day = ((shipped.t - shipped.t[0]) // DAY).astype(int)
    weekday = np.asarray(gen.WEEKDAY_FACTOR)[(gen.START.weekday() + day) % 7]
    truth = gen.daily_shape(tod) * weekday
    assert np.corrcoef(base, truth)[0, 1] > 0.97
    weekend = base[(day % 7) >= 5].mean() / base[(day % 7) < 5].mean()
    assert 0.8 < weekend < 0.93  # injected: Sat 0.90, Sun 0.85 of a ~1.02 week
    scale = robust_scale(shipped, base)
    assert 0 < scale < 0.1 * shipped.v.mean()


def test_short_history_falls_back_to_rolling_median():
    t, v = gen.generate(seed=5, days=1)
    s = Series(t, v, "short")
    base = robust_baseline(s)
    assert base.shape == v.shape
    assert np.median(np.abs(base - v) / v) < 0.1


def test_robust_scale_of_flat_series_is_tiny_but_positive():
    s = Series(np.arange(20.0), np.ones(20), "flat")
    assert 0 < robust_scale(s, np.ones(20)) < 1e-6


# --------------------------------------------------------------------------- excursions


def test_excursions_found_at_the_injected_places(shipped: Series):
    found = find_excursions(shipped)
    top = found[:3]
    assert [abs(e.peak) for e in top] == sorted((abs(e.peak) for e in top), reverse=True)
    for injected in gen.EXCURSIONS:
        lo, hi = injected.start_s, injected.start_s + injected.duration_s
        match = [e for e in top if e.start_s < hi and e.end_s > lo]
        assert len(match) == 1, injected
        e = match[0]
        assert e.direction == int(math.copysign(1, injected.magnitude))
        assert lo <= e.peak_s < hi
        assert e.shape.size == round(e.duration_s / e.step_s)
        assert e.shape[int(round((e.peak_s - e.start_s) / e.step_s))] == pytest.approx(e.peak)
    by_kind = {
        inj.kind: next(
            e for e in top if e.start_s < inj.start_s + inj.duration_s and e.end_s > inj.start_s
        )
        for inj in gen.EXCURSIONS
    }
    assert by_kind["spike"].peak == pytest.approx(1.5, abs=0.3)
    assert by_kind["dip"].peak == pytest.approx(-0.55, abs=0.12)
    assert by_kind["ramp"].peak == pytest.approx(0.6, abs=0.15)
    assert by_kind["ramp"].duration_s >= 3 * 3600  # the slow ramp is one merged excursion
    # Nothing else comes close: the rest are noise-sized.
    assert all(abs(e.peak) < 0.3 for e in found[3:])
    # The weekly baseline keeps quiet weekends from looking like dips.
    assert not any(e.duration_s >= 3600 and abs(e.peak) < 0.3 for e in found)


def test_excursion_at_interpolates_and_is_zero_outside():
    e = Excursion(
        start_s=0,
        duration_s=900,
        peak=1.0,
        shape=np.array([0.0, 1.0, 0.5]),
        step_s=300,
        direction=1,
    )
    assert e.at(-1) == 0.0 and e.at(900) == 0.0
    assert e.at(150) == pytest.approx(0.5) and e.at(300) == pytest.approx(1.0)


# --------------------------------------------------------------------------- pattern


def test_load_pattern_is_mean_one_and_periodic(shipped: Series):
    pattern = load_pattern(shipped)
    x = np.arange(0.0, 14 * DAY, 300.0)
    values = pattern(x)
    assert np.mean(values) == pytest.approx(1.0, abs=0.01)
    peak_tod = x[np.argmax(values[:288])] % DAY
    assert _circular_gap_s(peak_tod, gen.true_daily_peak_s()) <= 3600
    assert pattern(4 * 3600.0) < 0.85 < 1.0 < 1.3 < pattern(20.5 * 3600.0)
    # Past the end it repeats whole weeks, keeping time of day and weekday.
    for offset in (14 * DAY + 3 * 3600.0, 20 * DAY + 20.5 * 3600.0, 100 * DAY + 123.0):
        back = offset - 7 * DAY * math.ceil((offset - (14 * DAY - 300)) / (7 * DAY))
        assert pattern(offset) == pytest.approx(pattern(back))
    assert isinstance(pattern(5.0), float)
    daily = load_pattern(shipped, weekly=False)
    assert daily(15 * DAY + 3600.0) == pytest.approx(daily(13 * DAY + 3600.0))


# --------------------------------------------------------------------------- forecast


def test_forecast_peak_within_an_hour_of_the_true_daily_peak(shipped: Series):
    model = SeasonalForecast.fit(shipped)
    assert model.weekly is not None  # 14 days of history: weekly factor on
    offset = model.peak_offset_s()
    assert 0 < offset <= DAY
    peak_tod = (model.t_end + offset) % DAY
    assert _circular_gap_s(peak_tod, gen.true_daily_peak_s()) <= 3600

    t, mean, lo, hi = model.predict(DAY)
    assert t.size == 288 and t[0] == pytest.approx(model.t_end + 300)
    assert np.all(lo <= mean) and np.all(mean <= hi)
    # The day after the history is a Monday: forecast near the true weekday level.
    truth = (
        gen.MEAN_RPS
        * 1.028
        * gen.daily_shape(t % DAY)
        / gen.daily_shape(np.arange(0.0, DAY, 300.0)).mean()
    )
    assert np.mean(np.abs(mean - truth) / truth) < 0.06
    inside = np.mean((truth >= lo) & (truth <= hi))
    assert inside > 0.8


def test_backtest_seasonal_beats_naive_on_noisy_data(shipped: Series):
    bt = SeasonalForecast.backtest(shipped)
    assert bt.model <= bt.naive
    # A Monday after a Sunday: repeating the last day is badly off, the weekly model is not.
    t, v = gen.generate(seed=11, days=15)
    bt15 = SeasonalForecast.backtest(Series(t, v, "g15"))
    assert bt15.model < 0.5 * bt15.naive
    for seed in (1, 2):
        t, v = gen.generate(seed=seed)
        model, naive = SeasonalForecast.backtest(Series(t, v, f"g{seed}"))
        assert model <= naive


def test_backtest_needs_two_periods():
    t, v = gen.generate(seed=1, days=1)
    with pytest.raises(HistoryError, match="two periods"):
        SeasonalForecast.backtest(Series(t, v, "short"))


# --------------------------------------------------------------------------- NAB (real data)


def _nab() -> tuple[Path, dict[str, list[tuple[float, float]]]]:
    if not (NAB / "anomaly_windows.json").is_file():
        pytest.skip(f"NAB data not found at {NAB}")
    raw = json.loads((NAB / "anomaly_windows.json").read_text())
    windows = {
        Path(key).name: [(parse_timestamp(a), parse_timestamp(b)) for a, b in spans]
        for key, spans in raw.items()
    }
    return NAB, windows


def _windows_hit(series: Series, e: Excursion, windows: list[tuple[float, float]]) -> list[int]:
    a, b = series.t[0] + e.start_s, series.t[0] + e.end_s
    return [i for i, (lo, hi) in enumerate(windows) if a < hi and b > lo]


@pytest.mark.nab
@pytest.mark.parametrize(
    ("name", "window"),
    [
        ("ec2_request_latency_system_failure.csv", 1),  # the 99 ms spike on 03-18 22:41
        ("elb_request_count_8c0756.csv", 1),  # the 656 request burst on 04-22 19:34
        ("rds_cpu_utilization_cc0c53.csv", 0),  # the level shift from 6% to 14% CPU
    ],
)
def test_nab_largest_excursion_overlaps_a_labelled_window(name: str, window: int):
    folder, windows = _nab()
    s = load_series(folder / name)
    found = find_excursions(s)
    assert found, name
    assert window in _windows_hit(s, found[0], windows[name])


@pytest.mark.nab
def test_nab_every_ec2_window_holds_an_excursion_when_lone_samples_count():
    folder, windows = _nab()
    name = "ec2_request_latency_system_failure.csv"
    s = load_series(folder / name)
    lone = find_excursions(s, min_duration_s=0)
    hit = {i for e in lone for i in _windows_hit(s, e, windows[name])}
    assert hit == {0, 1, 2}
    # With the default (>= 2 steps) the 03-14 window only has a lone 5-minute dip.
    default = {i for e in find_excursions(s) for i in _windows_hit(s, e, windows[name])}
    assert default == {1, 2}


@pytest.mark.nab
def test_nab_elb_lone_bursts_outrank_the_labelled_one_without_min_duration():
    """Documents why min_duration defaults to two steps on bursty request counts."""
    folder, windows = _nab()
    name = "elb_request_count_8c0756.csv"
    s = load_series(folder / name)
    lone = find_excursions(s, min_duration_s=0)
    assert _windows_hit(s, lone[0], windows[name]) == []
    assert lone[0].duration_s == s.step_s
    top_z = max(lone, key=lambda e: abs(e.z_peak))
    assert _windows_hit(s, top_z, windows[name]) == [1]


@pytest.mark.nab
def test_nab_forecast_backtest_not_worse_than_naive():
    folder, _ = _nab()
    for name in ("ec2_request_latency_system_failure.csv", "elb_request_count_8c0756.csv"):
        bt = SeasonalForecast.backtest(load_series(folder / name))
        assert bt.model <= bt.naive, name


# --------------------------------------------------------------------------- bounds


def _rows(n: int = 40, step: float = 300.0, start: float = 1_700_000_000.0) -> list[str]:
    return [f"{start + i * step:.3f},{100 + i % 7}" for i in range(n)]


def _write_csv(tmp_path: Path, rows: list[str], name: str = "h.csv") -> Path:
    path = tmp_path / name
    path.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    return path


def test_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    path = _write_csv(tmp_path, _rows())
    monkeypatch.setattr(history, "MAX_HISTORY_BYTES", 100)
    with pytest.raises(HistoryError, match=r"h\.csv: file too large \(more than 100 bytes"):
        load_series(path)


def test_binary_and_latin1_bytes_name_their_line(tmp_path: Path):
    path = tmp_path / "b.csv"
    path.write_bytes(b"timestamp,value\n1700000000,1\n1700000300,\x00\x01\n")
    with pytest.raises(HistoryError, match=r"^.*b\.csv:3: not a text file \(NUL byte\)$"):
        load_series(path)
    path.write_bytes(b"timestamp,value\n1700000000,1\n1700000300,caf\xe9\n")
    with pytest.raises(HistoryError) as err:
        load_series(path)
    assert str(err.value) == (f"{path}:3: not UTF-8 text (byte 0xe9 at column 15); save the "
                              "file as UTF-8")


def test_long_lines_and_csv_syntax_errors_name_their_line(tmp_path: Path):
    rows = _rows()
    rows[5] = rows[5] + "9" * 200_000
    with pytest.raises(HistoryError, match=r"h\.csv:7: line too long \(200\d+ characters"):
        load_series(_write_csv(tmp_path, rows))
    rows = _rows()
    rows[3] = '1700000900,"unterminated\r5'
    with pytest.raises(HistoryError, match=r"h\.csv:5: a quoted field runs on to line 42"):
        load_series(_write_csv(tmp_path, rows))


@pytest.mark.parametrize(("value", "shown"), [("1e308", "1e+308"), ("-1e16", "-1e+16")])
def test_values_out_of_range_name_the_line(tmp_path: Path, value: str, shown: str):
    rows = _rows()
    rows[10] = f"1700003000,{value}"
    with pytest.raises(HistoryError) as err:
        load_series(_write_csv(tmp_path, rows))
    assert str(err.value).endswith(f"h.csv:12: value: {shown} is out of range (|value| <= 1e+15)")


def test_infinite_and_nan_values_are_missing_samples(tmp_path: Path):
    rows = _rows()
    rows[10], rows[11] = "1700003000,inf", "1700003300,1e999"
    assert len(load_series(_write_csv(tmp_path, rows))) == 38


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                                   "0001-01-01T00:00:00+01:00", "-5", "1e18"])
def test_timestamps_outside_1970_to_2200_name_the_line_and_the_text(tmp_path: Path, stamp: str):
    rows = _rows()
    rows[0] = f"{stamp},1"
    with pytest.raises(HistoryError) as err:
        load_series(_write_csv(tmp_path, rows))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'h.csv'}:2: timestamp: ")
    assert "outside 1970-01-01..2200-01-01" in message or "cannot parse" in message


def test_a_span_beyond_two_years_names_both_ends(tmp_path: Path):
    rows = _rows()
    rows.append("2000-01-01T00:00:00Z,5")  # a stray sample 24 years before the rest
    with pytest.raises(HistoryError) as err:
        load_series(_write_csv(tmp_path, rows))
    message = str(err.value)
    assert "timestamps span 8,719 days" in message and "the limit is 732 days" in message
    assert "2000-01-01T00:00:00Z (line 42)" in message and "(line 41)" in message


def test_a_unit_change_part_way_is_refused(tmp_path: Path):
    rows = _rows(40)
    rows[20:] = [f"{(1_700_000_000 + i * 300) * 1_000_000},{i}" for i in range(20, 40)]  # us
    with pytest.raises(HistoryError, match=r"h\.csv:22: timestamp: '1700006000000000' is "
                                           r"outside"):
        load_series(_write_csv(tmp_path, rows))
    rows = _rows(40)
    rows[20:] = [f"{(1_700_000_000 + i * 300) * 1000},{i}" for i in range(20, 40)]  # ms: fine
    assert len(load_series(_write_csv(tmp_path, rows))) == 40


def test_millisecond_steps_are_averaged_onto_a_ten_second_grid(tmp_path: Path):
    rows = [f"{1_700_000_000 + i * 0.001:.3f},{i % 2}" for i in range(200_000)]  # 200 s
    s = load_series(_write_csv(tmp_path, rows))
    assert s.step_s == history.MIN_STEP_S and 20 <= len(s) <= 21
    assert np.allclose(s.v, 0.5, atol=0.01)
    few = [f"{1_700_000_000 + i * 0.001:.3f},1" for i in range(5000)]  # 5 s of samples
    with pytest.raises(HistoryError, match=r"only 1 point\(s\) after averaging samples onto a "
                                           r"10 s grid"):
        load_series(_write_csv(tmp_path, few))


def test_long_dense_histories_are_averaged_onto_a_bounded_grid(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(history, "MAX_GRID_POINTS", 1000)
    rows = _rows(5000, step=60.0)  # 5000 minutes: 300,000 s / 1000 -> a 300 s grid
    s = load_series(_write_csv(tmp_path, rows))
    assert s.step_s == 300.0 and len(s) <= 1001
    assert s.t[-1] - s.t[0] <= 1000 * s.step_s
    # a regular series inside the bounds is kept sample for sample
    assert len(load_series(_write_csv(tmp_path, _rows(900, step=60.0)))) == 900


def test_rows_are_limited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(history, "MAX_POINTS", 30)
    with pytest.raises(HistoryError, match=r"h\.csv:32: more than 30 data rows"):
        load_series(_write_csv(tmp_path, _rows(40)))


def _prom_values(values: list[list[object]], extra_series: int = 0) -> str:
    result = [{"metric": {}, "values": values}]
    result += [{"metric": {}, "values": values[:2]} for _ in range(extra_series)]
    return _prometheus(result)


def test_prometheus_bounds_name_the_sample(tmp_path: Path):
    good = [[1_700_000_000 + 60 * i, "1"] for i in range(20)]
    path = tmp_path / "p.json"
    cases = [
        ([*good[:5], [1_700_000_300, "1e308"], *good[6:]],
         r"p\.json: data\.result\[0\]\.values\[5\]: value: 1e\+308 is out of range"),
        ([*good[:5], [-62135596800, "1"], *good[6:]],
         r"p\.json: data\.result\[0\]\.values\[5\]: timestamp: -62135596800 is outside"),
        ([*good[:5], [10**30, "1"], *good[6:]], r"values\[5\]: timestamp: 10{30} is outside"),
        ([*good[:5], [1_000_000, "1"], *good[6:]],
         r"timestamps span 19,66\d days, from 1970-01-12T13:46:40Z \(data\.result\[0\]\."
         r"values\[5\]\) to .* \(data\.result\[0\]\.values\[19\]\)"),
        ([*good[:5], [True, "1"], *good[6:]], r"values\[5\]: timestamp: cannot parse True"),
    ]
    for values, message in cases:
        path.write_text(_prom_values(values))
        with pytest.raises(HistoryError, match=message):
            load_series(path)
    path.write_text(_prom_values(good, extra_series=history.MAX_SERIES))
    with pytest.raises(HistoryError, match=r"p\.json: data\.result: 201 series; the limit is 200"):
        load_series(path)


@pytest.mark.parametrize(("text", "message"), [
    ('{"data": ' + "[" * 100_000 + "]" * 100_000 + "}", r"invalid JSON: nested too deeply"),
    ('{"data": {"resultType": "matrix", "result": [{"values": [[' + "9" * 5000 + ', "1"]]}]}}',
     r"invalid JSON: Exceeds the limit \(4300 digits\)"),
    ('{"data": {"resultType": "matrix", "result": [{"values": [[' + "9" * 400 + ', "1"]]}]}}',
     r"values\[0\]: timestamp: cannot parse 9{77}\.\.\.$"),
])
def test_hostile_json_is_refused_without_a_traceback(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(HistoryError, match=message):
        load_series(path)


def test_rolling_median_by_blocks_equals_the_direct_median(monkeypatch: pytest.MonkeyPatch):
    v = np.random.default_rng(0).normal(size=500)
    direct = history._rolling_median(v, 31)
    monkeypatch.setattr(history, "_ROLLING_BLOCK", 64)  # two windows a block
    assert np.array_equal(history._rolling_median(v, 31), direct)
    padded = np.pad(v, 15, mode="edge")
    assert direct[100] == np.median(padded[100:131])

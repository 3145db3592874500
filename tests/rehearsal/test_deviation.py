"""Metric Deviation Simulator: random, historical and forecast modes (the scenario's
``deviations``: docs/scenario-format.md)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shadowrl.core.spec import Scenario, load_scenario
from shadowrl.rehearsal.deviation import (
    DAY_S,
    PEAK_LEAD_S,
    DeviationSimulator,
    HistoryModel,
    load_history,
)
from shadowrl.rehearsal.runner import rehearse

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
HISTORY = ROOT / "envs" / "history" / "checkout_rps.csv"
NAB = Path(__file__).resolve().parents[3] / "shared" / "data" / "nab"
NAB_FILES = ["ec2_request_latency_system_failure.csv", "elb_request_count_8c0756.csv",
             "rds_cpu_utilization_cc0c53.csv"]

N_DRAWS = 2000
CHI2_DF3_P001 = 16.27  # chi-square critical value, 3 degrees of freedom, p = 0.001



@pytest.fixture(scope="module")
def history() -> HistoryModel:
    return load_history(HISTORY)


def variant(tmp_path: Path, *replacements: tuple[str, str]) -> Scenario:
    """checkout.yaml with some text replaced (each replacement must apply exactly once)."""
    text = CHECKOUT.read_text()
    for old, new in replacements:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "checkout.yaml"
    path.write_text(text)
    return load_scenario(path)


def in_range(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] - 1e-9 <= value <= bounds[1] + 1e-9


# --------------------------------------------------------------------------- random mode


def test_draws_are_deterministic_per_seed_and_attempt(checkout: Scenario) -> None:
    a, b = DeviationSimulator(checkout), DeviationSimulator(checkout)
    for seed in (0, 1, 17, 2**31 + 5):
        for attempt in (0, 1, 4):
            assert a.draw(seed, attempt=attempt) == b.draw(seed, attempt=attempt)
            assert a.draw(seed, attempt=attempt) == a.draw(seed, attempt=attempt)
    # another attempt (the redraw of a too-weak deviation) is another draw
    firsts = [a.draw(s) for s in range(20)]
    seconds = [a.draw(s, attempt=1) for s in range(20)]
    assert sum(x.magnitude != y.magnitude for x, y in zip(firsts, seconds)) >= 19
    # and other seeds give other draws
    assert len({round(d.magnitude, 12) for d in firsts}) == 20
    assert all(d.seed == s for s, d in enumerate(firsts))


def test_incidents_follow_the_weights(checkout: Scenario) -> None:
    sim = DeviationSimulator(checkout)
    counts = Counter(sim.draw(seed).incident for seed in range(N_DRAWS))
    weights = {i.name: i.weight for i in checkout.incidents}
    total = sum(weights.values())
    assert set(counts) == set(weights)
    chi2 = 0.0
    for name, w in weights.items():
        expected = N_DRAWS * w / total
        chi2 += (counts[name] - expected) ** 2 / expected
        assert abs(counts[name] - expected) < 0.25 * expected + 10, (name, counts, expected)
    assert chi2 < CHI2_DF3_P001, (chi2, counts)
    # attempts are independent draws too: the redraw distribution is the same
    counts1 = Counter(sim.draw(seed, attempt=1).incident for seed in range(N_DRAWS))
    chi2 = sum((counts1[n] - N_DRAWS * w / total) ** 2 / (N_DRAWS * w / total)
               for n, w in weights.items())
    assert chi2 < CHI2_DF3_P001, (chi2, counts1)


def test_magnitude_onset_and_load_fall_in_the_ranges(checkout: Scenario) -> None:
    dev = checkout.deviations
    sim = DeviationSimulator(checkout)
    draws = [sim.draw(seed, attempt=a) for seed in range(300) for a in (0, 2)]
    for d in draws:
        assert in_range(d.magnitude, dev.magnitude)
        assert in_range(d.onset_s, dev.onset)
        assert in_range(d.load_multiplier, dev.load)
        assert 0.0 <= d.start_offset_s < DAY_S
    # uniform, not stuck at one end: both halves of each range are used
    for values, (lo, hi) in ((
            [d.magnitude for d in draws], dev.magnitude), ([d.onset_s for d in draws], dev.onset),
            ([d.load_multiplier for d in draws], dev.load)):
        mid = (lo + hi) / 2
        below = sum(v < mid for v in values) / len(values)
        assert 0.4 < below < 0.6, (lo, hi, below)


def test_a_named_incident_is_always_that_incident(checkout: Scenario) -> None:
    sim = DeviationSimulator(checkout)
    for incident in checkout.incidents:
        for seed in range(40):
            d = sim.draw(seed, incident=incident.name)
            assert d.incident == incident.name
            assert d.cause_kind == incident.cause.kind
            assert d.cause_target == incident.cause.target
            assert len(d.effects) == len(incident.effects)


def test_a_named_incident_keeps_the_rest_of_the_draw(checkout: Scenario) -> None:
    """Naming the incident changes only the incident: magnitude, onset, load and start are
    those of the by-weight draw of the same (seed, attempt)."""
    sim = DeviationSimulator(checkout)
    for seed in range(30):
        free = sim.draw(seed, attempt=1)
        named = sim.draw(seed, incident="payment-provider-outage", attempt=1)
        assert (named.magnitude, named.onset_s, named.load_multiplier, named.start_offset_s) \
            == (free.magnitude, free.onset_s, free.load_multiplier, free.start_offset_s)


def test_effects_are_scaled_by_the_magnitude(checkout: Scenario) -> None:
    sim = DeviationSimulator(checkout)
    for incident in checkout.incidents:
        for seed in range(10):
            d = sim.draw(seed, incident=incident.name)
            m = d.magnitude
            for spec, eff in zip(incident.effects, d.effects):
                assert (eff.metric, eff.target, eff.ramp_s) == (spec.metric, spec.target,
                                                               spec.ramp)
                expected_add = (spec.add or 0.0) * m
                if spec.metric == "error_rate":
                    expected_add = min(1.0, expected_add)
                assert eff.add == pytest.approx(expected_add, abs=1e-12)
                assert eff.factor == pytest.approx(1.0 + ((spec.factor or 1.0) - 1.0) * m,
                                                   abs=1e-12)
                assert eff.shape is None  # random mode: no replayed shape


def test_error_add_is_capped_at_one_but_other_adds_are_not(tmp_path: Path) -> None:
    sc = variant(tmp_path, ("magnitude: [0.5, 2.0]", "magnitude: [3.0, 4.0]"),
                 ("{metric: error_rate, target: web, add: 0.06, ramp: 1m}",
                  "{metric: error_rate, target: web, add: 0.6, ramp: 1m}"))
    sim = DeviationSimulator(sc)
    d = sim.draw(5, incident="bad-web-release")
    assert d.magnitude >= 3.0
    err = next(e for e in d.effects if e.metric == "error_rate")
    assert err.add == 1.0  # 0.6 x >= 3 would be >= 1.8
    lat = next(e for e in d.effects if e.metric == "latency")
    assert lat.factor == pytest.approx(1.0 + 0.5 * d.magnitude)  # factor 1.5: 2.5..3.0
    d = sim.draw(5, incident="bad-orders-release")
    cpu = next(e for e in d.effects if e.metric == "cpu")
    assert cpu.add == pytest.approx(0.3 * d.magnitude) and cpu.add > 0.9


# --------------------------------------------------------------------------- historical


def test_history_shapes_and_pattern(history: HistoryModel) -> None:
    assert history.shapes, "the shipped history has excursions to replay"
    assert history.shape_step_s == 5.0
    for shape in history.shapes:
        arr = np.asarray(shape)
        assert len(arr) >= 4
        assert np.all(np.isfinite(arr)) and arr.min() >= 0.0
        assert arr.max() == pytest.approx(1.0)  # peak normalised to 1
        top = int(np.argmax(arr >= 1.0 - 1e-12))
        assert np.all(arr[top:] >= 1.0 - 1e-12)  # held after the peak: incidents persist
    grid = np.arange(0.0, history.span_s, 300.0)
    values = np.array([history.pattern(float(x)) for x in grid])
    assert np.all(values > 0) and np.all(np.isfinite(values))
    assert float(np.percentile(values, 99)) == pytest.approx(1.0, abs=0.02)
    assert values.max() < 1.3 and values.min() < 0.8  # a real daily swing, busy level ~1


def test_historical_draws(checkout: Scenario, history: HistoryModel) -> None:
    sim = DeviationSimulator(checkout, history=history)
    assert sim.mode == "historical"
    assert sim.load_pattern() is history.pattern
    draws = [sim.draw(seed) for seed in range(400)]
    starts = np.array([d.start_offset_s for d in draws])
    assert np.all(starts >= 0.0) and np.all(starts < history.span_s)
    assert starts.max() > DAY_S  # spread over the whole history, not one day of it
    assert all(d.load_multiplier == 1.0 for d in draws)
    for d in draws:
        assert in_range(d.magnitude, checkout.deviations.magnitude)
        assert in_range(d.onset_s, checkout.deviations.onset)
        for eff in d.effects:
            assert eff.shape in history.shapes
            assert eff.shape_step_s == history.shape_step_s
    used = {d.effects[0].shape for d in draws}
    assert len(used) == len(history.shapes)  # every excursion gets replayed
    assert sim.draw(3) == DeviationSimulator(checkout, history=history).draw(3)


def test_at_peak_places_the_onset_at_the_forecast_peak(checkout: Scenario,
                                                       history: HistoryModel) -> None:
    assert history.span_s <= history.peak_offset_s <= history.span_s + DAY_S
    sim = DeviationSimulator(checkout, history=history, at="peak")
    for seed in range(50):
        for attempt in (0, 3):
            d = sim.draw(seed, attempt=attempt)
            assert d.start_offset_s + d.onset_s == pytest.approx(history.peak_offset_s,
                                                                 abs=1e-6)
            assert 0.0 <= d.onset_s <= PEAK_LEAD_S
            assert d.load_multiplier == 1.0
    # the forecast peak is the busiest time of the day it forecasts
    day = np.arange(history.span_s, history.span_s + DAY_S, 60.0)
    busiest = max(history.pattern(float(x)) for x in day)
    assert history.pattern(history.peak_offset_s) >= 0.97 * busiest


def test_at_peak_caps_a_long_onset(tmp_path: Path, history: HistoryModel) -> None:
    sc = variant(tmp_path, ("onset: [1m, 10m]", "onset: [15m, 30m]"))
    sim = DeviationSimulator(sc, history=history, at="peak")
    for seed in range(20):
        d = sim.draw(seed)
        assert d.onset_s == PEAK_LEAD_S
        assert d.start_offset_s + d.onset_s == pytest.approx(history.peak_offset_s, abs=1e-6)
    now = DeviationSimulator(sc, history=history, at="now").draw(0)
    assert in_range(now.onset_s, (900.0, 1800.0))


def test_builtin_diurnal_peak_is_at_20h(tmp_path: Path) -> None:
    sc = variant(tmp_path, ("pattern: constant", "pattern: diurnal"),
                 ("load: [0.8, 1.2]", "load: [0.8, 0.85]"))
    sim = DeviationSimulator(sc, at="peak")
    for seed in range(50):
        d = sim.draw(seed)
        assert (d.start_offset_s + d.onset_s) % DAY_S == pytest.approx(72000.0, abs=1e-6)
        assert 0.0 <= d.onset_s <= PEAK_LEAD_S
        assert 0.0 <= d.start_offset_s < DAY_S
    # the shadow really runs at the diurnal peak (+35 %) when the incident starts
    r = rehearse(sc, 1, deviation=sim, record_profile=True)
    p = r.profile
    assert p is not None
    rows = [(t, rps) for t, c, rps in zip(p["t"], p["component"], p["rps"])
            if c == "edge" and abs(t - r.injection.onset_s) <= 30]
    expected = sc.deployment.traffic.rps * r.injection.load_multiplier * 1.35
    for _, rps in rows:
        assert rps == pytest.approx(expected, rel=0.12)


# --------------------------------------------------------------------------- NAB


def nab_file(name: str) -> Path:
    path = NAB / name
    if not path.is_file():
        pytest.skip(f"NAB data not available at {NAB}")
    return path


@pytest.mark.nab
@pytest.mark.parametrize("name", NAB_FILES)
def test_nab_series_load_as_histories(name: str) -> None:
    model = load_history(nab_file(name))
    assert model.source.endswith(name)
    assert model.span_s > 10 * DAY_S  # about two weeks of 5-minute samples
    assert model.shapes
    for shape in model.shapes:
        assert min(shape) >= 0.0 and max(shape) == pytest.approx(1.0)
    grid = np.arange(0.0, model.span_s, 300.0)
    values = np.array([model.pattern(float(x)) for x in grid])
    assert np.all(np.isfinite(values)) and np.all(values > 0)
    assert float(np.percentile(values, 99)) == pytest.approx(1.0, abs=0.02)
    assert model.span_s <= model.peak_offset_s <= model.span_s + DAY_S


@pytest.mark.nab
def test_rehearsal_driven_by_a_nab_series_follows_its_load(checkout: Scenario) -> None:
    model = load_history(nab_file("elb_request_count_8c0756.csv"))
    sim = DeviationSimulator(checkout, history=model)
    rps = checkout.deployment.traffic.rps
    observed, expected = [], []
    for seed in range(8):
        r = rehearse(checkout, seed, deviation=sim, record_profile=True)
        assert r.outcome in ("recovered", "rollback_failed", "rollback_ineffective")
        p = r.profile
        assert p is not None
        t = np.asarray(p["t"])
        edge = np.asarray(p["component"]) == "edge"
        got = np.asarray(p["rps"])[edge]
        # load is constant over 60 s blocks: rps x pattern(start + block middle) x noise
        want = np.array([rps * model.pattern(r.injection.start_offset_s + (x // 60) * 60 + 30)
                         for x in t[edge]])
        ratio = got / want
        assert np.all((ratio > 0.85) & (ratio < 1.15)), (seed, ratio.min(), ratio.max())
        assert float(np.median(ratio)) == pytest.approx(1.0, abs=0.03)
        observed.append(got.mean())
        expected.append(want.mean())
    # across runs placed at different times of the history, the load tracks its shape
    assert max(expected) / min(expected) > 1.5
    assert float(np.corrcoef(observed, expected)[0, 1]) > 0.95

"""shadowrl.core.slo: the SLO state machines, the rule evaluation and the two driver paths.

The watchers are checked on hand-made observations; the drivers on the shipped scenarios,
where the sampled path (what a backend without fast-forward gets) must agree with the
simulator's exact segment path, and on the simulator played in real time (a wall clock).
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowrl.core.errors import NoBreachError
from shadowrl.core.injection import ActiveEffect, Injection
from shadowrl.core.plan import configured_plan
from shadowrl.core.results import Breach, ComponentMetrics, Metrics, Span
from shadowrl.core.slo import (
    EPS,
    BreachWatcher,
    HoldWatcher,
    Observer,
    run_until_breach,
    verify,
    violated,
)
from shadowrl.core.spec import Rule, Scenario, load_scenario
from shadowrl.rehearsal.deviation import DeviationSimulator
from shadowrl.rehearsal.runner import BREACH_SEARCH_S, start_incident
from shadowrl.shadow.sim.engine import SimShadow

ROOT = Path(__file__).resolve().parents[2]
ENVS = ["checkout", "payments", "search"]
SEEDS = range(15)
PERIOD_S = 1.0  # the forced sampling period; every shipped interval is a multiple of it


def rule(name: str = "r", for_: float = 30.0, **kw: object) -> Rule:
    return Rule.model_validate({"name": name, "metric": "error_rate", "above": 0.01,
                                "for": for_, **kw})


def feed(w: BreachWatcher | HoldWatcher, pieces: list[tuple[float, float, bool]]) -> float | None:
    """Observations of one rule, in order, until the watcher stops; its stop time."""
    for t0, t1, bad in pieces:
        cut = w.observe(t0, t1, (bad,))
        if cut is not None:
            return cut
    return None


def seconds(t0: float, t1: float, bad: bool) -> list[tuple[float, float, bool]]:
    """``[t0, t1)`` cut into 1 s observations, as a sampler would feed it."""
    return [(float(t), float(t) + 1.0, bad) for t in range(int(t0), int(t1))]


# --------------------------------------------------------------------------- BreachWatcher


@pytest.mark.parametrize("for_,fires", [(0.0, 70.0), (10.0, 80.0), (25.0, 100.0),
                                        (30.0, 100.0), (60.0, 130.0)])
def test_a_rule_fires_at_the_first_tick_for_after_its_first_violated_tick(
        for_: float, fires: float) -> None:
    # violated from 63 s: pending from tick 70, firing at the first tick >= 70 + for
    w = BreachWatcher([rule(for_=for_)], 10.0)
    assert feed(w, [(0.0, 63.0, False), (63.0, 1000.0, True)]) == fires
    assert w.fired == (fires, ("r",))


def test_one_long_observation_and_one_second_pieces_fire_at_the_same_tick() -> None:
    whole = BreachWatcher([rule()], 10.0)
    pieces = BreachWatcher([rule()], 10.0)
    at = feed(whole, [(0.0, 63.0, False), (63.0, 500.0, True)])
    assert at == feed(pieces, seconds(0, 63, False) + seconds(63, 500, True)) == 100.0


def test_a_clean_tick_resets_the_for_clock() -> None:
    # violated 63-83 (ticks 70, 80), clean 83-93 (tick 90), violated again from 93 (tick 100)
    w = BreachWatcher([rule()], 10.0)
    assert feed(w, [(0.0, 63.0, False), (63.0, 83.0, True), (83.0, 93.0, False),
                    (93.0, 1000.0, True)]) == 130.0


def test_a_violation_shorter_than_for_never_fires() -> None:
    w = BreachWatcher([rule()], 10.0)
    assert feed(w, [(0.0, 63.0, False), (63.0, 88.0, True), (88.0, 1000.0, False)]) is None
    assert w.fired is None


def test_a_clean_stretch_between_two_ticks_is_not_seen() -> None:
    # Prometheus evaluates only at ticks: clean over 81-89 (no tick) keeps the rule pending
    w = BreachWatcher([rule()], 10.0)
    assert feed(w, [(0.0, 63.0, False), (63.0, 81.0, True), (81.0, 89.0, False),
                    (89.0, 1000.0, True)]) == 100.0


def test_rules_firing_at_one_tick_are_all_named_and_the_earliest_tick_wins() -> None:
    rules = [rule("slow", for_=60.0), rule("a", for_=20.0), rule("b", for_=15.0)]
    w = BreachWatcher(rules, 10.0)
    assert w.observe(0.0, 63.0, (False, False, False)) is None
    assert w.observe(63.0, 1000.0, (True, True, True)) == 90.0
    assert w.fired == (90.0, ("a", "b"))


# --------------------------------------------------------------------------- HoldWatcher


def test_hold_completes_hold_after_the_violation_ends() -> None:
    w = HoldWatcher(120.0)
    assert feed(w, [(0.0, 10.0, True), (10.0, 500.0, False)]) == 130.0
    assert w.done


def test_a_violation_restarts_the_hold() -> None:
    w = HoldWatcher(120.0)
    assert feed(w, [(0.0, 10.0, True), (10.0, 50.0, False), (50.0, 60.0, True),
                    (60.0, 500.0, False)]) == 180.0


def test_hold_never_completes_while_violated_and_zero_hold_completes_when_clean() -> None:
    w = HoldWatcher(120.0)
    assert feed(w, seconds(0, 300, True) + seconds(300, 400, False)) is None
    assert not w.done
    zero = HoldWatcher(0.0)
    assert feed(zero, [(0.0, 5.0, True), (5.0, 9.0, False)]) == 5.0 and zero.done


# --------------------------------------------------------------------------- rule evaluation


def comp(rps: float = 100.0, err: float = 0.0, p99: float = 100.0) -> ComponentMetrics:
    return ComponentMetrics(rps, err, p99 / 3, p99, 0.5, 0.5)


def test_rules_read_the_edge_or_their_component_above_or_below() -> None:
    m = Metrics(0.0, comp(err=0.02, p99=300.0), {"db": comp(p99=900.0), "web": comp(rps=5.0)},
                ())
    rules = [rule("edge-err"), rule("db-err", scope="db"),
             Rule.model_validate({"name": "db-p99", "metric": "latency_p99_ms", "scope": "db",
                                  "above": 800}),
             Rule.model_validate({"name": "edge-p99", "metric": "latency_p99_ms",
                                  "above": 800}),
             Rule.model_validate({"name": "web-traffic", "metric": "rps", "scope": "web",
                                  "below": 10})]
    assert violated(rules, m) == (True, False, True, False, True)


def test_core_evaluation_agrees_with_the_simulator_on_every_segment() -> None:
    """Fed each segment of a run, the flags the simulator computed itself equal the core's
    evaluation of a sample taken at the segment's start."""
    for name in ENVS:
        sc = load_scenario(ROOT / "envs" / f"{name}.yaml")
        for seed, injection, breach in itertools.islice(breaching_seeds(sc), 3):
            sh = SimShadow(sc)
            sh.launch(seed)
            sh.inject(injection)
            seen: list[bool] = []

            def check(t0: float, t1: float, flags: tuple[bool, ...],
                      sh: SimShadow = sh, sc: Scenario = sc, seen: list[bool] = seen) -> None:
                m = sh.sample()
                assert m.at_s == t0
                assert violated(sc.slo.rules, m) == flags
                assert m.failing_rules == tuple(
                    r.name for r, bad in zip(sc.slo.rules, flags) if bad)
                seen.append(any(flags))

            sh.advance_until(breach.at_s + 300.0, check)
            assert len(seen) > 10 and any(seen) and not all(seen), (name, seed)


# --------------------------------------------------------------------------- drivers


class Replay:
    """A recorded run of the simulator's fast path, played back: at any time, the metrics of
    the segment the fast path was integrating then (a segment ``[t0, t1)`` owns the times
    from ``t0 - EPS``, the watchers' convention). A sampler of it sees exactly the flags the
    fast path's observer saw, so the two drivers can differ only in how they observe."""

    clock = "simulated"
    name = "replay"

    def __init__(self, scenario: Scenario, segments: list[tuple[float, float, Metrics]]) -> None:
        self.scenario = scenario
        self.segments = segments
        self._starts = [t0 - EPS for t0, _, _ in segments]
        self.t = segments[0][0]

    def now(self) -> float:
        return self.t

    def sample(self) -> Metrics:
        return self.segments[bisect.bisect_right(self._starts, self.t) - 1][2]

    def advance(self, seconds: float) -> Span:
        start, self.t = self.t, self.t + seconds
        return Span(start, self.t)

    def advance_until(self, seconds: float, observe: Observer) -> Span:
        start, end = self.t, self.t + seconds
        for t0, t1, m in self.segments:
            lo, hi = max(t0, self.t), min(t1, end)
            if hi <= lo:
                continue
            cut = observe(lo, hi, violated(self.scenario.slo.rules, m))
            self.t = hi if cut is None else max(lo, min(hi, cut))
            if cut is not None:
                break
        return Span(start, self.t)


def record(sh: SimShadow, until_s: float) -> list[tuple[float, float, Metrics]]:
    """The fast path's segments from now to ``until_s``, each with the sample taken at its
    start (which is what it integrated over it); the shadow ends at ``until_s``."""
    segments: list[tuple[float, float, Metrics]] = []
    sh.advance_until(until_s - sh.now(), lambda t0, t1, flags: segments.append(
        (t0, t1, sh.sample())))
    return segments


def breaching_seeds(sc: Scenario) -> Iterator[tuple[int, Injection, Breach]]:
    """Each seed's breaching draw (the runner's redraws), from a fresh shadow."""
    deviation = DeviationSimulator(sc)
    for seed in SEEDS:
        try:
            injection, breach = start_incident(SimShadow(sc), deviation, seed)
        except NoBreachError:
            continue  # no draw of this seed breaches: nothing to compare
        yield seed, injection, breach


def verification_points(sc: Scenario, seed: int, injection: Injection) -> Iterator[SimShadow]:
    """The shadow after the breach and after each step of the configured procedure: some
    verifications then start while rules are still violated, some clean."""
    sh = SimShadow(sc)
    sh.launch(seed)
    sh.inject(injection)
    run_until_breach(sh, injection.onset_s + BREACH_SEARCH_S)
    yield sh
    for name, settings in configured_plan(sc.procedure):
        if settings is not None:
            sh.run_step(sc.procedure.step(name), settings)
            yield sh


@pytest.mark.parametrize("name", ENVS)
def test_the_sampled_driver_agrees_with_the_fast_path(name: str) -> None:
    """On the fast path's own timeline (:class:`Replay`), sampling every second gives:

    - the same breach tick and rules, exactly: rules are evaluated only at ticks, every
      shipped interval is a whole number of seconds and the samples fall on whole seconds
      from launch, so each tick is judged on the sample taken at that very tick;
    - the same verification verdict, ending within one period after the exact end: a
      sample stands for the time until the next one, so the sampler learns that a clean
      stretch began only at the first sample inside it, up to one period late, and the
      hold ends that much later.
    """
    sc = load_scenario(ROOT / "envs" / f"{name}.yaml")
    hold, timeout = sc.procedure.verify.hold, sc.procedure.verify.timeout
    breaches = violated_at_start = 0
    for seed, injection, breach in breaching_seeds(sc):
        sh = SimShadow(sc)
        sh.launch(seed)
        sh.inject(injection)
        max_s = injection.onset_s + BREACH_SEARCH_S
        sampled = run_until_breach(Replay(sc, record(sh, max_s)), max_s, period_s=PERIOD_S)
        assert sampled is not None, seed
        assert (sampled.at_s, sampled.rules) == (breach.at_s, breach.rules), seed
        breaches += 1

        deadline = breach.at_s + timeout
        for point in verification_points(sc, seed, injection):
            if point.now() >= deadline:
                continue  # nothing to sample: see the overrun test below
            snap = point.snapshot()
            exact = verify(point, hold, deadline)
            point.restore(snap)
            violated_at_start += bool(point.sample().failing_rules)
            replay = Replay(sc, record(point, deadline))
            point.restore(snap)
            approx = verify(replay, hold, deadline, period_s=PERIOD_S)
            assert approx.healthy == exact.healthy, seed
            assert exact.end_s - 1e-6 <= approx.end_s <= exact.end_s + PERIOD_S + 1e-6, (
                seed, exact.end_s, approx.end_s)
    assert breaches >= 10, f"only {breaches} of {len(SEEDS)} seeds breach"
    assert violated_at_start > 0


@pytest.mark.parametrize("name", ENVS)
def test_sampling_the_simulator_itself_agrees_exactly(name: str) -> None:
    """The simulator moved one second at a time and sampled, against its fast path.

    The physics is the same whatever the segments: rates are a function of time and state
    only (effect quanta, load blocks and cache warm-up steps are indexed with a tolerance,
    so a segment that starts at a boundary is in the step it starts, and a cache's warmth is
    a closed-form function of the time since its warming last changed). So the sampled
    driver sees at every rule tick (a whole second) exactly the flags the fast path holds
    there: the same rules fire at the same tick, and a verification reaches the same
    verdict, ending no earlier than the exact end and at most one period later (a sample
    stands for the time until the next one, so a clean stretch is seen to begin only at the
    first sample inside it).
    """
    sc = load_scenario(ROOT / "envs" / f"{name}.yaml")
    hold, timeout = sc.procedure.verify.hold, sc.procedure.verify.timeout
    for seed, injection, breach in breaching_seeds(sc):
        sh = SimShadow(sc)
        sh.launch(seed)
        sh.inject(injection)
        sampled = run_until_breach(sh, injection.onset_s + BREACH_SEARCH_S, period_s=PERIOD_S)
        assert sampled is not None, seed
        assert (sampled.at_s, sampled.rules) == (breach.at_s, breach.rules), seed
        # the run-up span: samples see an error rate the exact path saw (a peak between two
        # samples can be missed, never invented), and the last violated sample ends at the
        # breach like the exact span
        run_up, exact_up = sampled.before, breach.before
        assert run_up is not None and exact_up is not None
        assert run_up.peak_error <= exact_up.peak_error + 1e-12, seed
        assert (run_up.peak_error > 0) == (exact_up.failed_requests > 0), seed
        assert run_up.downtime_s > 0 and run_up.violated_until_s == pytest.approx(
            exact_up.violated_until_s), seed
        deadline = breach.at_s + timeout
        for point in verification_points(sc, seed, injection):
            snap = point.snapshot()
            exact = verify(point, hold, deadline)
            point.restore(snap)
            approx = verify(point, hold, deadline, period_s=PERIOD_S)
            point.restore(snap)
            assert approx.healthy == exact.healthy, seed
            assert exact.end_s - 1e-6 <= approx.end_s <= exact.end_s + PERIOD_S + 1e-6, (
                seed, exact.end_s, approx.end_s)


def test_verification_after_the_deadline_judges_the_instant_the_steps_ended() -> None:
    sc = load_scenario(ROOT / "envs" / "checkout.yaml")
    sh = SimShadow(sc)
    start_incident(sh, DeviationSimulator(sc), 1)
    t = sh.now()
    late = verify(sh, 120.0, t - 1.0)  # still violated, deadline passed
    assert (late.healthy, late.end_s, late.span) == (False, t, Span(t, t))
    assert sh.now() == t  # no time passed

    sh.launch(1)  # healthy, no incident
    assert verify(sh, 0.0, -1.0).healthy
    assert not verify(sh, 30.0, -1.0).healthy  # a hold cannot be met after the deadline


# --------------------------------------------------------------------------- wall clock

WALL_YAML = """\
apiVersion: shadowrl/v1
kind: Scenario
metadata: {name: wall}
deployment:
  traffic: {rps: 100}
  services:
    - {name: app, replicas: 2, capacity_rps: 100}
slo:
  interval: 200ms
  rules:
    - {name: errors, metric: error_rate, above: 0.01}
incidents:
  - name: outage
    cause: {kind: external}
    effects: [{metric: error_rate, target: app, add: 0.2}]
procedure:
  name: wall
  steps:
    - {name: pause, action: wait, settings: {duration: 1s}}
"""


class RealTimeSim:
    """The simulator played in real time: its clock is the wall clock, so time passes by
    itself and whoever waits must sleep, as with a container shadow."""

    clock = "wall"
    name = "sim-realtime"

    def __init__(self, sim: SimShadow) -> None:
        self.sim = sim
        self.scenario = sim.scenario
        self._start = time.monotonic() - sim.now()

    def _catch_up(self) -> None:
        behind = time.monotonic() - self._start - self.sim.now()
        if behind > 0:
            self.sim.advance(behind)

    def now(self) -> float:
        self._catch_up()
        return self.sim.now()

    def sample(self) -> Metrics:
        self._catch_up()
        return self.sim.sample()


def test_a_wall_clock_backend_is_sampled_in_real_time(tmp_path: Path) -> None:
    path = tmp_path / "wall.yaml"
    path.write_text(WALL_YAML)
    sc = load_scenario(path)
    sim = SimShadow(sc)
    sim.launch(0)
    healthy = verify(RealTimeSim(sim), 0.2, 2.0, period_s=0.05)
    assert healthy.healthy and 0.2 <= healthy.end_s < 2.0

    sim.launch(0)
    sim.inject(Injection("outage", "external", None, None,
                         (ActiveEffect("error_rate", "app", add=0.2),), onset_s=0.3))
    backend = RealTimeSim(sim)
    breach = run_until_breach(backend, 3.0, period_s=0.05)
    assert breach is not None and breach.rules == ("errors",)
    # the first tick (every 200 ms) at or after the onset, or a later one on a busy machine
    ticks = breach.at_s / 0.2
    assert ticks == pytest.approx(round(ticks), abs=1e-9) and 0.4 - 1e-9 <= breach.at_s < 3.0
    assert backend.now() >= breach.at_s

    start = backend.now()
    sick = verify(backend, 0.2, start + 0.4, period_s=0.05)
    assert not sick.healthy and sick.end_s >= start + 0.4
    # every sample was violated: the whole span is downtime, at the edge's rate
    span = sick.span
    assert span.downtime_s == pytest.approx(span.end_s - span.start_s)
    rps, err = sim.sample().edge.rps, sim.sample().edge.error_rate
    assert span.requests == pytest.approx(rps * span.downtime_s)
    assert span.failed_requests == pytest.approx(rps * err * span.downtime_s)
    assert math.isclose(span.start_s, start, abs_tol=0.05)


class FrozenClock:
    """A simulated clock nobody can move: no FastForward."""

    clock = "simulated"
    name = "frozen"

    def __init__(self, sim: SimShadow) -> None:
        self.sim = sim
        self.scenario = sim.scenario

    def now(self) -> float:
        return self.sim.now()

    def sample(self) -> Metrics:
        return self.sim.sample()


def test_a_simulated_clock_without_fast_forward_is_refused() -> None:
    sc = load_scenario(ROOT / "tests" / "scenarios" / "minimal.yaml")
    sim = SimShadow(sc)
    sim.launch(0)
    with pytest.raises(TypeError, match="cannot advance"):
        verify(FrozenClock(sim), 10.0, 60.0)

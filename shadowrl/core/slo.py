"""SLO evaluation for every backend: breaches and verification from a stream of observations.

An observation is ``(t0, t1, violated)``: the rules' violated flags, constant over
``[t0, t1)``. Two pure state machines turn observations into results:

- :class:`BreachWatcher`: Prometheus semantics. Rules are evaluated at ticks every
  ``slo.interval``; a rule is pending from the first tick that sees it violated and fires at
  the first tick at least ``for`` later; a clean tick resets it.
- :class:`HoldWatcher`: healthy once no rule is violated for ``hold`` in a row.

The drivers :func:`run_until_breach` and :func:`verify` feed them from a backend: through its
exact segment path when it is :class:`FastForward`, otherwise (or when ``period_s`` is given)
by sampling it every ``period_s`` (on a wall clock, sleeping in between) and holding each
sample until the next. Sampling sees the state only at sample times, so it knows when a clean
stretch began only to within one period; at rule ticks that fall on sample times it is exact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

from shadowrl.core.results import FULL_OUTAGE_ERROR, Breach, Metrics, Span, VerifyResult
from shadowrl.core.spec import Rule, Scenario

EPS = 1e-9
SAMPLE_PERIOD_S = 1.0  # how often a backend without fast-forward is sampled

Clock = Literal["simulated", "wall"]

# (t0, t1, violated) -> a time at which to stop, or None; the rules' violated flags are
# constant over [t0, t1).
Observer = Callable[[float, float, tuple[bool, ...]], float | None]


class Observable(Protocol):
    """What the drivers need of a backend; every ``shadow.base.ShadowBackend`` is one.

    ``clock`` says how time passes: a ``simulated`` clock moves only when told to (the
    backend must then be :class:`FastForward`); a ``wall`` clock moves by itself, and the
    drivers sleep on it.
    """

    name: str
    scenario: Scenario
    clock: Clock

    def sample(self) -> Metrics:
        """The metrics of every component and of the edge, now."""

    def now(self) -> float:
        """Seconds since the shadow launched."""


@runtime_checkable
class FastForward(Protocol):
    """A simulated clock the caller moves, integrating exactly between events (a backend
    capability, re-exported by ``shadow.base``)."""

    def advance(self, seconds: float) -> Span:
        """Let ``seconds`` of shadow time pass."""

    def advance_until(self, seconds: float, observe: Observer) -> Span:
        """Let up to ``seconds`` pass, feeding ``observe`` each segment ``(t0, t1, violated)``
        over which the SLO rules' violated flags are constant; when it returns a time, stop
        there (clamped to the segment) and return the span up to it."""


def violated(rules: Sequence[Rule], m: Metrics) -> tuple[bool, ...]:
    """Each rule's condition on one sample: the edge view or one component's metric."""
    return tuple(rule.violated((m.edge if rule.scope == "edge" else m.components[rule.scope])
                               .get(rule.metric)) for rule in rules)


class BreachWatcher:
    """Prometheus ``for``/``interval`` firing over observations; :attr:`fired` is the first
    ``(tick, rules firing at it)``."""

    def __init__(self, rules: Sequence[Rule], interval: float) -> None:
        self.rules = list(rules)
        self.interval = interval
        self.active: list[float | None] = [None] * len(self.rules)  # pending since this tick
        self.fired: tuple[float, tuple[str, ...]] | None = None

    def observe(self, t0: float, t1: float, violated: tuple[bool, ...]) -> float | None:
        """The tick in ``[t0, t1)`` at which a rule fires, or None."""
        interval = self.interval
        first_tick = math.ceil((t0 - EPS) / interval) * interval
        if first_tick >= t1 - EPS:
            return None  # no tick in this observation: nothing is evaluated
        active = self.active
        best: float | None = None
        names: list[str] = []
        for k, rule in enumerate(self.rules):
            if not violated[k]:
                active[k] = None
                continue
            since = active[k]
            if since is None:
                since = active[k] = first_tick
            due = max(first_tick, math.ceil((since + rule.for_ - EPS) / interval) * interval)
            if due < t1 - EPS:
                if best is None or due < best - EPS:
                    best, names = due, [rule.name]
                elif abs(due - best) <= EPS:
                    names.append(rule.name)
        if best is not None:
            if self.fired is None:
                self.fired = (best, tuple(names))
            return best
        return None


class HoldWatcher:
    """Healthy once no rule is violated for ``hold_s`` in a row; :attr:`done` says whether
    that happened."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.clean_since: float | None = None
        self.done = False

    def observe(self, t0: float, t1: float, violated: tuple[bool, ...]) -> float | None:
        """The time the hold completes, when it does by ``t1``; otherwise None."""
        if any(violated):
            self.clean_since = None
            return None
        if self.clean_since is None:
            self.clean_since = t0
        due = self.clean_since + self.hold_s
        if due <= t1 + EPS:
            self.done = True
            return due
        return None


def run_until_breach(backend: Observable, max_s: float, *,
                     period_s: float | None = None) -> Breach | None:
    """Let time pass until an SLO rule fires or ``max_s``; ``Breach.before`` is the span from
    the call to the breach. ``period_s`` forces sampling at that period."""
    slo = backend.scenario.slo
    watcher = BreachWatcher(slo.rules, slo.interval)
    span = _watch(backend, max_s, watcher.observe, period_s)
    if watcher.fired is None:
        return None
    at_s, rules = watcher.fired
    return Breach(at_s, rules, span)


def verify(backend: Observable, hold_s: float, deadline_s: float, *,
           period_s: float | None = None) -> VerifyResult:
    """Let time pass until every rule holds for ``hold_s`` or ``deadline_s`` passes;
    ``period_s`` forces sampling at that period.

    When the steps overran the deadline, the instant they ended is judged: healthy only if no
    rule is violated then and no hold is asked for.
    """
    t = backend.now()
    if t >= deadline_s:
        clean = not any(violated(backend.scenario.slo.rules, backend.sample()))
        return VerifyResult(clean and hold_s <= 0, t, Span(t, t))
    watcher = HoldWatcher(hold_s)
    span = _watch(backend, deadline_s, watcher.observe, period_s)
    return VerifyResult(watcher.done, backend.now(), span)


def _watch(backend: Observable, end_s: float, observe: Observer,
           period_s: float | None) -> Span:
    """Feed ``observe`` until it returns a stop time or ``end_s``; the span integrated."""
    if period_s is None and isinstance(backend, FastForward):
        return backend.advance_until(max(0.0, end_s - backend.now()), observe)
    # a backend may say how often sampling it is worth it (a compressed wall clock measures
    # a window of requests, not an instant)
    default = float(getattr(backend, "sample_period_s", SAMPLE_PERIOD_S))
    return _sampled(backend, end_s, observe, period_s or default)


def _sampled(backend: Observable, end_s: float, observe: Observer, period_s: float) -> Span:
    """Sample every ``period_s``, each sample standing for the time until the next one: its
    flags are what ``observe`` sees, its edge rps and error rate give requests and failed
    requests, a violated rule downtime (and the end of the last violated sample), an edge
    error rate at full-outage level outage seconds (no error sources: a sample does not
    split errors by source). A wall clock that overshoots a planned sample time has the
    sample held until the time it actually reached, so consecutive observations tile time
    and no rule tick falls between them."""
    wait = _waiter(backend)
    rules = backend.scenario.slo.rules
    t = backend.now()
    span = Span(t, t)
    while t < end_s - EPS:
        m = backend.sample()
        flags = violated(rules, m)
        t1 = min(t + period_s, end_s)
        cut = observe(t, t1, flags)
        if cut is not None:
            t1 = max(t, min(t1, cut))
        wait(t1)
        now = backend.now()
        if cut is None and t1 < end_s and now > t1 + EPS:
            cut = observe(t1, min(now, end_s), flags)
        dt = now - t
        if dt > 0:
            error = m.edge.error_rate
            if True in flags:
                span.downtime_s += dt
                span.violated_until_s = now
            span.requests += m.edge.rps * dt
            span.failed_requests += m.edge.rps * error * dt
            span.peak_error = max(span.peak_error, error)
            if error >= FULL_OUTAGE_ERROR:
                span.outage_s += dt
        t = now
        if cut is not None:
            break
    span.end_s = t
    return span


def _waiter(backend: Observable) -> Callable[[float], None]:
    """How to get ``backend`` to a time: sleep on a wall clock, move a simulated one."""
    if backend.clock == "wall":
        # a compressed wall clock (the real shadow's) passes this many shadow seconds per
        # wall second
        rate = float(getattr(backend, "time_compression", 1.0))

        def sleep_until(t: float) -> None:
            while (left := t - backend.now()) > 0:
                time.sleep(left / rate)
        return sleep_until
    if not isinstance(backend, FastForward):
        raise TypeError(f"backend '{backend.name}' has a simulated clock but cannot advance it "
                        f"(no FastForward): time would never pass")
    ff = backend

    def advance_to(t: float) -> None:
        left = t - backend.now()
        if left > 0:
            ff.advance(left)
    return advance_to

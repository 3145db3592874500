"""The shadow backend protocol: what the tester, the env and the optimizer drive.

A backend is one shadow of the deployment. The mandatory interface is small, like an httpx
transport or a CompilerGym session: launch, inject, run a step, sample the metrics, tell the
time, close. Everything a simulator can do and a real deployment (containers, wall-clock time,
steps that hang) cannot is an optional capability, a separate runtime-checkable protocol that
callers test with ``isinstance`` instead of assuming it:

- :class:`Snapshotting`: copy and restore the whole shadow (greedy lookahead, the oracle);
- :class:`CostCapping`: stop simulating once a branch has cost more than a search can use;
- :class:`CostFloor`: a lower bound of what the rest of an episode costs, whatever runs;
- :class:`FastForward`: move a simulated clock, exactly and segment by segment;
- :class:`ErrorAttribution`: spans split failed requests by error source;
- :class:`ProfileRecording`: a per-second profile of every component.

SLO semantics (Prometheus ``for``/``interval``, verification holds) are not a backend's job:
:mod:`shadowrl.core.slo` evaluates them for every backend, from the fast path when the backend
has one and from periodic samples otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from shadowrl.core.injection import Injection
from shadowrl.core.results import Span, StepResult
from shadowrl.core.slo import Clock, FastForward, Observable, Observer
from shadowrl.core.spec import Step

__all__ = ["PROFILE_COLUMNS", "CancelToken", "Clock", "CostCapReached", "CostCapping",
           "CostFloor", "CostWeights", "ErrorAttribution", "FastForward", "Observer", "Phase",
           "ProfileRecording", "ShadowBackend", "Snapshotting"]

Phase = Literal["normal", "incident", "rollback", "verify"]
# the columns of a ProfileRecording backend's ``profile``, one row per component per second
PROFILE_COLUMNS = ("t", "component", "rps", "error_rate", "latency_p50_ms", "latency_p99_ms",
                   "cpu", "memory", "replicas", "step", "phase")


class CancelToken:
    """Asks a running step to stop, from any thread (a cancellation token).

    A backend polls :attr:`cancelled` between the parts of a step and, once it is set, ends
    the step where it stands with status ``cancelled``. Setting it is final.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@runtime_checkable
class ShadowBackend(Observable, Protocol):
    """One shadow of a deployment. Times are seconds since the shadow launched.

    From :class:`~shadowrl.core.slo.Observable`, what the SLO drivers read: ``name``,
    ``scenario``, ``clock`` (``simulated``: time moves only when told to, through
    :class:`FastForward`; ``wall``: it moves by itself and waiting means sleeping),
    ``sample()`` and ``now()``. Every call reports what actually happened; a backend not
    launched or closed raises :class:`~shadowrl.core.errors.BackendUnavailable`.
    """

    def launch(self, seed: int) -> None:
        """Start a healthy shadow of the live deployment (again, when already running)."""

    def close(self) -> None:
        """Release the shadow for good; closing twice is allowed."""

    def __enter__(self) -> ShadowBackend: ...

    def __exit__(self, *exc_info: object) -> None:
        """Close on leaving a ``with`` block, whatever happened in it."""

    def inject(self, injection: Injection) -> None:
        """Schedule the deviation; it starts at ``injection.onset_s``."""

    def run_step(self, step: Step, settings: dict[str, Any], *, timeout_s: float | None = None,
                 cancel: CancelToken | None = None) -> StepResult:
        """Run one procedure step and report what it cost.

        Past ``timeout_s`` (shadow seconds from the step's start) the step is stopped where it
        stands and reported ``timed_out``; once ``cancel`` is set it is stopped and reported
        ``cancelled``. Either way the shadow keeps the part-done state.
        """


@runtime_checkable
class Snapshotting(Protocol):
    """Copy and restore the whole shadow: branches that replay from the same state."""

    def snapshot(self) -> Any:
        """An independent copy of the state; later calls never change it."""

    def restore(self, snapshot: Any) -> None:
        """Return to a snapshot (it can be restored again)."""

    def state_key(self) -> Hashable:
        """The discrete state, floats rounded and time left out: equal keys mean the same
        future, shifted in time (the oracle prunes transpositions with it)."""


@dataclass(frozen=True)
class CostWeights:
    """A cost linear in what a span counts: what a second of downtime, a failed request, a
    bad request (:attr:`Span.bad <shadowrl.core.results.Span.bad>`: failed or slow) and a
    second of full outage each cost. The env's objectives are all of this form."""

    downtime_s: float = 0.0
    failed_requests: float = 0.0
    bad_requests: float = 0.0
    outage_s: float = 0.0

    def of(self, span: Span) -> float:
        return (self.downtime_s * span.downtime_s + self.failed_requests * span.failed_requests
                + self.bad_requests * span.bad + self.outage_s * span.outage_s)


class CostCapReached(Exception):
    """Simulating stopped inside a :meth:`CostCapping.cost_cap` block: what was simulated
    since the block began already costs more than its limit. The shadow is left part-way
    through whatever it was doing; restore a snapshot before using it again."""

    def __init__(self, spent: float, limit: float) -> None:
        super().__init__(f"cost {spent:.6g} passed the cap {limit:.6g}")
        self.spent = spent
        self.limit = limit


@runtime_checkable
class CostCapping(Protocol):
    """Stop simulating a branch once it costs more than a bound.

    A search that prunes every branch costing at least its best complete one only needs to
    know that a step passed the bound, not by how much; a long step (a one-at-a-time
    rollback) usually passes it early. Costs only accumulate, so stopping there prunes
    exactly the branches the search would have pruned after simulating them whole.
    """

    def cost_cap(self, weights: CostWeights,
                 limit: float) -> AbstractContextManager[None]:
        """Inside the block, raise :class:`CostCapReached` as soon as the cost (under
        ``weights``) of everything simulated since entering it exceeds ``limit``; the cost
        of a span split in parts is never overstated (bad requests count as the larger of
        the summed bad and summed failed requests)."""


@runtime_checkable
class CostFloor(Protocol):
    """A lower bound of the cost still to come, whichever steps run and however they go.

    A search that knows part of the cost is unavoidable (an incident no step can fix keeps
    failing requests until verification's deadline) ranks a partial sequence by its cost so
    far plus that floor, and prunes it once the sum reaches its best complete sequence: an
    admissible bound (A*), so what it proves optimal stays optimal.
    """

    def cost_floor(self, weights: CostWeights, steps: Sequence[Step],
                   end_s: float) -> Callable[[float], float]:
        """``floor(t)``: at most the cost (under ``weights``) of everything simulated from
        shadow time ``t`` on, when the episode's steps are among ``steps`` and its
        verification ends by ``end_s`` (its deadline) unless the SLO holds before then.
        Non-increasing in ``t``; 0 where nothing is provably unavoidable."""


@runtime_checkable
class ErrorAttribution(Protocol):
    """Spans split failed requests by source in ``errors_by_source``."""

    error_sources: tuple[str, ...]  # the sources this backend tells apart


@runtime_checkable
class ProfileRecording(Protocol):
    """A per-second profile (``t``, ``component``, metrics, ``step``, ``phase`` columns)."""

    record_profile: bool
    profile: dict[str, list[Any]]

    def mark_phase(self, phase: Phase) -> None:
        """Label the profile rows that follow (steps label themselves ``rollback``)."""

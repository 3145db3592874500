"""The shadow backend protocol: what the tester, the env and the optimizer drive.

A backend is one shadow of the deployment. The mandatory interface is small, like an httpx
transport or a CompilerGym session: launch, inject, run a step, sample the metrics, tell the
time, close. Everything a simulator can do and a real deployment (containers, wall-clock time,
steps that hang) cannot is an optional capability, a separate runtime-checkable protocol that
callers test with ``isinstance`` instead of assuming it:

- :class:`Snapshotting`: copy and restore the whole shadow (greedy lookahead, the oracle);
- :class:`FastForward`: move a simulated clock, exactly and segment by segment;
- :class:`ErrorAttribution`: spans split failed requests by error source;
- :class:`ProfileRecording`: a per-second profile of every component.

SLO semantics (Prometheus ``for``/``interval``, verification holds) are not a backend's job:
:mod:`shadowrl.core.slo` evaluates them for every backend, from the fast path when the backend
has one and from periodic samples otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any, Literal, Protocol, runtime_checkable

from shadowrl.core.injection import Injection
from shadowrl.core.results import StepResult
from shadowrl.core.slo import Clock, FastForward, Observable, Observer
from shadowrl.core.spec import Step

__all__ = ["PROFILE_COLUMNS", "CancelToken", "Clock", "ErrorAttribution", "FastForward",
           "Observer", "Phase", "ProfileRecording", "ShadowBackend", "Snapshotting"]

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

"""The errors a shadow backend or a rehearsal raises, as one small hierarchy.

Callers catch :class:`ShadowError` for anything a shadow did wrong, or one subclass for the
case they can handle: a backend that cannot start, a step that ran past its timeout, a search
that needs snapshots from a backend without them, an incident that never breaches.
"""

from __future__ import annotations

from shadowrl.core.results import Span


class ShadowError(RuntimeError):
    """Base class of every error a shadow backend or a rehearsal raises."""


class NoBreachError(ShadowError):
    """The scenario's incidents never breach its SLO rules: nothing to rehearse."""


class BackendUnavailable(ShadowError):
    """The backend cannot serve the call: not launched yet, or already closed."""


class StepTimeout(ShadowError):
    """A step ran past its timeout.

    A backend's deadline guard raises it from deep inside a step to stop the step where the
    deadline falls; ``span`` is what the interrupted part cost. ``run_step`` catches it at the
    step boundary and reports status ``timed_out``, so protocol callers get a result, and the
    rehearsal judges the procedure ``rollback_failed``.
    """

    def __init__(self, message: str, span: Span) -> None:
        super().__init__(message)
        self.span = span


class SnapshotUnsupported(ShadowError):
    """A method needs snapshot/restore from a backend that does not offer them."""


def naming(source: str, exc: BaseException | str) -> str:
    """``exc``'s message prefixed with ``source``, unless it already names it (MLflow's
    errors often do: the prefix would say the model URI twice)."""
    message = str(exc)
    return message if source in message else f"{source}: {message}"

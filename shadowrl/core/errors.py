"""The errors a shadow backend or a rehearsal raises, as one small hierarchy.

Callers catch :class:`ShadowError` for anything a shadow did wrong, or one subclass for the
case they can handle: a backend that cannot start, a step that ran past its timeout, a search
that needs snapshots from a backend without them, an incident that never breaches.
"""

from __future__ import annotations


class ShadowError(RuntimeError):
    """Base class of every error a shadow backend or a rehearsal raises."""


class NoBreachError(ShadowError):
    """The scenario's incidents never breach its SLO rules: nothing to rehearse."""

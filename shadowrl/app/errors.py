"""The errors a use case raises for bad input, besides ``shadowrl.core.spec.SpecError``
(a file with problems, each naming file, line and field)."""

from __future__ import annotations


class UsageError(Exception):
    """A request that cannot run as given (an unknown name, a value out of range, a file that
    cannot be read or written): one line for the user, the command exits 2 with it."""

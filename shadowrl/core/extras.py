"""Optional dependencies: the base install runs the simulator, the validator, rehearsals and
reports; RL, Ray, MLflow and the real (Docker) shadow come as the ``rl``, ``ray``, ``mlflow``
and ``docker`` extras (``all`` is the four). A module that needs an extra says which one when
it is missing.
"""

from __future__ import annotations


class MissingExtraError(ImportError):
    """A module of an extra was imported without the extra installed."""


def missing_extra(extra: str, cause: ImportError) -> MissingExtraError:
    """The error to raise (``from cause``) when ``extra``'s packages cannot be imported."""
    return MissingExtraError(f"the {extra} extra is needed: pip install 'shadowrl[{extra}]' "
                             f"({cause})")

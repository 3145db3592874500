"""Shadow Deployment Engine: one backend protocol, optional capabilities, several backends."""

from typing import Any

from shadowrl.core.spec import Scenario
from shadowrl.shadow.base import (
    CancelToken,
    ErrorAttribution,
    FastForward,
    ProfileRecording,
    ShadowBackend,
    Snapshotting,
)
from shadowrl.shadow.sim.engine import SimShadow

__all__ = ["CancelToken", "ErrorAttribution", "FastForward", "ProfileRecording",
           "ShadowBackend", "SimShadow", "Snapshotting", "make_backend"]


def make_backend(kind: str, scenario: Scenario, **kwargs: Any) -> ShadowBackend:
    """Build a backend by name; ``sim`` is the embedded default."""
    if kind == "sim":
        return SimShadow(scenario, **kwargs)
    raise ValueError(f"unknown shadow backend {kind!r} (available: sim)")

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

__all__ = ["BACKENDS", "CancelToken", "ErrorAttribution", "FastForward", "ProfileRecording",
           "ShadowBackend", "SimShadow", "Snapshotting", "make_backend"]


BACKENDS = ("sim", "docker")


def make_backend(kind: str, scenario: Scenario, **kwargs: Any) -> ShadowBackend:
    """Build a backend by name; ``sim`` is the embedded default, ``docker`` the real shadow
    (imported only when asked for: it needs the Docker SDK)."""
    if kind == "sim":
        return SimShadow(scenario, **kwargs)
    if kind == "docker":
        from shadowrl.shadow.docker.backend import DockerShadow
        return DockerShadow(scenario, **kwargs)
    raise ValueError(f"unknown shadow backend {kind!r} (available: {', '.join(BACKENDS)})")

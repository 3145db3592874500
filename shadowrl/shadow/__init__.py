"""Shadow Deployment Engine: one backend protocol, several backends."""

from shadowrl.shadow.base import ShadowBackend
from shadowrl.shadow.sim.engine import SimShadow

__all__ = ["ShadowBackend", "SimShadow", "make_backend"]


def make_backend(kind: str, scenario, **kwargs) -> ShadowBackend:  # type: ignore[no-untyped-def]
    """Build a backend by name; ``sim`` is the embedded default."""
    if kind == "sim":
        return SimShadow(scenario, **kwargs)
    raise ValueError(f"unknown shadow backend {kind!r} (available: sim)")

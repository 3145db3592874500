"""The simulated shadow: the embedded default backend, fast and deterministic."""

from shadowrl.shadow.sim.engine import SimShadow

__all__ = ["SimShadow"]

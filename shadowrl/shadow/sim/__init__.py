"""The simulated shadow: the embedded default backend, fast and deterministic."""

from shadowrl.shadow.sim.engine import SimShadow
from shadowrl.shadow.sim.params import SimParams

__all__ = ["SimParams", "SimShadow"]

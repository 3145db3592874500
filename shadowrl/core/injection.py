"""A drawn deviation, as injected into a shadow: which incident, how strong, when, what load.

The deviation simulator produces these; every backend consumes them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActiveEffect:
    """One incident effect as injected: already scaled, possibly with a replayed shape."""

    metric: str  # error_rate | latency | cpu | memory
    target: str
    add: float = 0.0
    factor: float = 1.0
    ramp_s: float = 0.0
    shape: tuple[float, ...] | None = None  # multiplier per `shape_step_s`, from history
    shape_step_s: float = 5.0


@dataclass(frozen=True)
class Injection:
    """A drawn deviation: which incident, how strong, when, and under what load."""

    incident: str
    cause_kind: str
    cause_target: str | None
    cause_flag: str | None
    effects: tuple[ActiveEffect, ...]
    onset_s: float
    magnitude: float = 1.0
    load_multiplier: float = 1.0
    start_offset_s: float = 0.0  # time of day (s) at which the shadow starts, for patterns
    seed: int = 0

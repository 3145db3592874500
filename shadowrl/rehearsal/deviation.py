"""Metric Deviation Simulator: which incident, how strong, when and under what load.

Three modes share one output, an :class:`~shadowrl.shadow.base.Injection`:

- ``random``: incident by weight; magnitude, onset and load uniform in ``deviations`` ranges;
- ``historical``: the history's shape gives the load pattern, and past excursions (deviations
  from a robust seasonal baseline) are replayed, scaled, as the incident's effects;
- ``forecast``: a seasonal model of the history predicts the next day's load, and rehearsals
  are placed at its predicted peak (``at="peak"``).

Draws depend only on ``(seed, attempt)``, so episode ``i`` of every policy faces the same
incident.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from shadowrl.core.injection import ActiveEffect, Injection
from shadowrl.core.spec import Incident, Scenario
from shadowrl.shadow.sim.params import SimParams

DAY_S = 86400.0
PEAK_LEAD_S = 600.0  # with at="peak", the incident starts at most this long after launch
Mode = Literal["random", "historical"]
At = Literal["now", "peak"]


@dataclass
class HistoryModel:
    """What the history tells the simulator: a load pattern, excursion shapes, a peak."""

    pattern: Callable[[float], float]
    shapes: list[tuple[float, ...]]  # relative deviation per step, strongest first
    shape_step_s: float
    peak_offset_s: float  # forecast peak, in seconds from the history's first sample
    span_s: float  # length of the history; the pattern repeats its seasons beyond it
    source: str


def load_history(path: str | Path, fmt: str | None = None, column: str = "value",
                 quantum_s: float = 5.0) -> HistoryModel:
    """Fit the history once; excursions are resampled to the simulator's time quantum."""
    from shadowrl.traffic.history import (
        SeasonalForecast,
        find_excursions,
        load_pattern,
        load_series,
    )

    series = load_series(path, fmt, column=column)
    excursions = find_excursions(series)
    shapes: list[tuple[float, ...]] = []
    for exc in excursions[:16]:
        rel = np.abs(np.asarray(exc.shape, dtype=float))
        peak = float(rel.max()) if rel.size else 0.0
        if peak <= 0:
            continue
        # Compress a historical excursion (often hours long at 5-minute resolution) into an
        # incident-scale envelope of the same shape: 1 sample per quantum, peak normalised to 1.
        n = max(4, min(len(rel) * 3, 120))
        xs = np.linspace(0, len(rel) - 1, n)
        env = np.interp(xs, np.arange(len(rel)), rel) / peak
        # Hold the peak after the excursion's rise: a real incident persists until fixed.
        top = int(np.argmax(env))
        env[top:] = np.maximum(env[top:], 1.0)
        shapes.append(tuple(float(v) for v in env))
    forecast = SeasonalForecast.fit(series)
    span = float(series.t[-1] - series.t[0])
    # The scenario's `rps` is the level the deployment is sized for; with a history that is its
    # busy level (99th percentile of the pattern), so quieter hours run below it.
    shape = load_pattern(series)
    grid = np.arange(0.0, span, max(series.step_s, 60.0))
    busy = float(np.percentile([shape(float(x)) for x in grid], 99)) or 1.0
    peak = span + float(forecast.peak_offset_s(DAY_S))
    return HistoryModel(lambda t: shape(t) / busy, shapes, quantum_s, peak, span, str(path))


class DeviationSimulator:
    """Draws injections for a scenario."""

    def __init__(self, scenario: Scenario, *, history: HistoryModel | None = None,
                 at: At = "now", params: SimParams | None = None) -> None:
        self.scenario = scenario
        # where the diurnal pattern peaks: the same parameter the shadow's load follows
        self.diurnal_peak_s = (params or SimParams()).diurnal_peak_s
        self.history = history
        self.at = at
        self.mode: Mode = "historical" if history is not None else "random"
        weights = np.array([i.weight for i in scenario.incidents], dtype=float)
        self._weights = weights / weights.sum()

    def draw(self, seed: int, incident: str | None = None, attempt: int = 0) -> Injection:
        dev = self.scenario.deviations
        rng = np.random.default_rng([seed & 0xFFFFFFFF, attempt, 7919])
        if incident is None:
            chosen = self.scenario.incidents[int(rng.choice(len(self._weights),
                                                            p=self._weights))]
        else:
            chosen = self.scenario.incident(incident)
            rng.random()  # keep the rest of the draw aligned with the by-weight path
        magnitude = float(rng.uniform(*dev.magnitude))
        onset = float(rng.uniform(*dev.onset))
        load = float(rng.uniform(*dev.load))
        start = float(rng.uniform(0.0, DAY_S))
        shape_pick = int(rng.integers(0, 1 << 30))
        if self.history is not None:
            # Pattern time is seconds from the history's start: replay a random point of it,
            # or place the incident's onset at the forecast peak of the day after it.
            start = start / DAY_S * self.history.span_s
            load = 1.0  # the history's own shape carries the load variation
            if self.at == "peak":
                onset = min(onset, PEAK_LEAD_S)  # start the shadow shortly before the peak
                start = self.history.peak_offset_s - onset
        elif self.scenario.deployment.traffic.replay is not None:
            start = 0.0  # a replay plays its recording from its first request (docs/replay.md)
        elif self.at == "peak" and self.scenario.deployment.traffic.pattern == "diurnal":
            onset = min(onset, PEAK_LEAD_S)
            start = (self.diurnal_peak_s - onset) % DAY_S
        effects = self._effects(chosen, magnitude, shape_pick)
        cause = chosen.cause
        return Injection(chosen.name, cause.kind, cause.target, cause.flag, effects, onset,
                         magnitude, load, start, seed)

    def _effects(self, incident: Incident, magnitude: float,
                 shape_pick: int) -> tuple[ActiveEffect, ...]:
        shape = None
        step = 5.0
        if self.history is not None and self.history.shapes:
            shape = self.history.shapes[shape_pick % len(self.history.shapes)]
            step = self.history.shape_step_s
        out = []
        for eff in incident.effects:
            add = (eff.add or 0.0) * magnitude
            if eff.metric == "error_rate":
                add = min(1.0, add)
            factor = 1.0 + ((eff.factor or 1.0) - 1.0) * magnitude
            out.append(ActiveEffect(eff.metric, eff.target, add, factor, eff.ramp,
                                    shape, step))
        return tuple(out)

    def load_pattern(self) -> Callable[[float], float] | None:
        """The history's load shape for the shadow, or None for the scenario's own pattern."""
        return self.history.pattern if self.history is not None else None

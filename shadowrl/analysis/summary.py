"""Summaries of many rehearsals: the ``rehearse --json`` / ``evaluate --json`` contract, as
typed models (an HTTP API can serve them as response models)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from shadowrl.rehearsal.runner import Rehearsal

OUTCOMES = ("recovered", "rollback_failed", "rollback_ineffective")


class ResultModel(BaseModel):
    """A result whose JSON is a public contract: fields serialise in declaration order, and
    the fields named in ``omit_when_empty`` are left out while None, False or empty (the
    commands have always printed those keys only when they say something)."""

    model_config = ConfigDict(extra="forbid")
    omit_when_empty: ClassVar[frozenset[str]] = frozenset()

    # No return annotation: pydantic then keeps the fields' schema for serialisation.
    @model_serializer(mode="wrap")
    def _omit_empty(self, handler: SerializerFunctionWrapHandler):
        data: dict[str, Any] = handler(self)
        if not self.omit_when_empty:
            return data
        return {k: v for k, v in data.items() if k not in self.omit_when_empty or not _empty(v)}


def _empty(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (list, dict)) and not value)


class Stats(ResultModel):
    """mean/p50/p95/max of one quantity over the runs, rounded (3 decimals; shares of the
    error budget 8, error rates 6)."""

    mean: float
    p50: float
    p95: float
    max: float


class Outcomes(ResultModel):
    """How many runs ended each way (every outcome listed, in a fixed order)."""

    recovered: int = 0
    rollback_failed: int = 0
    rollback_ineffective: int = 0


class AlertGroup(ResultModel):
    """The alerts of one kind at one step, across the runs.

    ``count`` counts alerts, not runs: a run raises one alert per error source, so a group
    can hold more alerts than there are runs. ``runs`` (the runs that raised at least one)
    and ``example`` (the first alert's message) are for renderers; they are left out of the
    JSON, whose keys the ``--json`` goldens freeze (``message`` already says both)."""

    kind: str
    step: str | None
    count: int
    message: str
    runs: int = Field(default=0, exclude=True)  # 0 when read back from JSON
    example: str = Field(default="", exclude=True)


class StepStats(ResultModel):
    """One step's duration and share of the downtime, over the runs that executed it."""

    name: str
    mean_s: float
    p95_s: float
    downtime_share: float
    runs: int


class RehearsalSummary(ResultModel):
    """Many rehearsals of one policy: what ``summarize`` returns."""

    scenario: str
    policy: str
    backend: str  # the shadow the runs used: sim | docker
    runs: int
    outcomes: Outcomes
    downtime_s: Stats
    failed_requests: Stats
    bad_requests: Stats  # failed or slower than the objective's latency threshold
    budget_burn: Stats  # share of the objective's window error budget (1.0: all of it)
    outage_s: Stats  # seconds with the edge error rate at a full outage's level
    peak_error_rate: Stats  # each run's highest edge error rate after the breach
    alerts: list[AlertGroup]
    steps: list[StepStats]


class Cost(ResultModel):
    mean: float  # the optimisation objective (RollbackEnv), rounded to 4 decimals


class EvaluationSummary(RehearsalSummary):
    """A policy measured on fixed incidents: the rehearsal summary plus its mean cost."""

    cost: Cost


def stats(values: Sequence[float], digits: int = 3) -> Stats:
    """mean/p50/p95/max, rounded to ``digits`` for JSON; zeros for an empty list."""
    if not values:
        return Stats(mean=0.0, p50=0.0, p95=0.0, max=0.0)
    arr = np.asarray(values, dtype=float)
    return Stats(mean=round(float(arr.mean()), digits),
                 p50=round(float(np.percentile(arr, 50)), digits),
                 p95=round(float(np.percentile(arr, 95)), digits),
                 max=round(float(arr.max()), digits))


def with_cost(summary: RehearsalSummary, mean_cost: float) -> EvaluationSummary:
    """``summary`` with the policy's mean cost (already rounded by the caller)."""
    return EvaluationSummary(**dict(summary), cost=Cost(mean=mean_cost))


def _alert_groups(runs: Sequence[Rehearsal]) -> list[AlertGroup]:
    groups: dict[tuple[str, str | None], list[tuple[int, str]]] = {}
    for k, r in enumerate(runs):
        for a in r.alerts:
            groups.setdefault((a.kind, a.step), []).append((k, a.message))
    out = []
    for (kind, step), found in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        where = f" at step '{step}'" if step else ""
        affected = len({k for k, _ in found})
        out.append(AlertGroup(kind=kind, step=step, count=len(found),
                              message=f"{kind}{where} in {affected} of {len(runs)} runs; "
                                      f"e.g. {found[0][1]}",
                              runs=affected, example=found[0][1]))
    return out


def _step_stats(runs: Sequence[Rehearsal]) -> list[StepStats]:
    total_downtime = sum(r.downtime_s for r in runs)
    per_step: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        for s in r.steps:
            if s.status == "skipped":
                continue
            entry = per_step.setdefault(s.name, {"dur": [], "down": []})
            entry["dur"].append(s.end_s - s.start_s)
            entry["down"].append(s.span.downtime_s)
    return [StepStats(name=name, mean_s=round(float(np.mean(v["dur"])), 3),
                      p95_s=round(float(np.percentile(v["dur"], 95)), 3),
                      downtime_share=round(sum(v["down"]) / total_downtime, 4)
                      if total_downtime > 0 else 0.0, runs=len(v["dur"]))
            for name, v in per_step.items()]


def summarize(scenario: str, policy: str, runs: Sequence[Rehearsal]) -> RehearsalSummary:
    outcomes = Counter(r.outcome for r in runs)
    return RehearsalSummary(
        scenario=scenario,
        policy=policy,
        backend=runs[0].backend if runs else "sim",
        runs=len(runs),
        outcomes=Outcomes(**{k: outcomes.get(k, 0) for k in OUTCOMES}),
        downtime_s=stats([r.downtime_s for r in runs]),
        failed_requests=stats([r.failed_requests for r in runs]),
        bad_requests=stats([r.bad_requests for r in runs]),
        budget_burn=stats([r.budget_burn for r in runs], 8),
        outage_s=stats([r.outage_s for r in runs]),
        peak_error_rate=stats([r.peak_error_rate for r in runs], 6),
        alerts=_alert_groups(runs),
        steps=_step_stats(runs),
    )

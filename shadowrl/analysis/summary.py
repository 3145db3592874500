"""Summaries of many rehearsals: the ``rehearse --json`` / ``evaluate --json`` contract."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from shadowrl.rehearsal.runner import Rehearsal

OUTCOMES = ("recovered", "rollback_failed", "rollback_ineffective")


def stats(values: Sequence[float]) -> dict[str, float]:
    """mean/p50/p95/max, rounded for JSON; zeros for an empty list."""
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    arr = np.asarray(values, dtype=float)
    return {"mean": round(float(arr.mean()), 3), "p50": round(float(np.percentile(arr, 50)), 3),
            "p95": round(float(np.percentile(arr, 95)), 3), "max": round(float(arr.max()), 3)}


def summarize(scenario: str, policy: str, runs: Sequence[Rehearsal]) -> dict[str, Any]:
    outcomes = Counter(r.outcome for r in runs)
    alert_groups: dict[tuple[str, str | None], list[tuple[int, str]]] = {}
    for k, r in enumerate(runs):
        for a in r.alerts:
            alert_groups.setdefault((a.kind, a.step), []).append((k, a.message))
    alerts = []
    for (kind, step), found in sorted(alert_groups.items(), key=lambda kv: -len(kv[1])):
        where = f" at step '{step}'" if step else ""
        affected = len({k for k, _ in found})
        alerts.append({"kind": kind, "step": step, "count": len(found),
                       "message": f"{kind}{where} in {affected} of {len(runs)} runs; "
                                  f"e.g. {found[0][1]}"})
    total_downtime = sum(r.downtime_s for r in runs)
    per_step: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        for s in r.steps:
            if s.status == "skipped":
                continue
            entry = per_step.setdefault(s.name, {"dur": [], "down": []})
            entry["dur"].append(s.end_s - s.start_s)
            entry["down"].append(s.span.downtime_s)
    steps = [{"name": name, "mean_s": round(float(np.mean(v["dur"])), 3),
              "p95_s": round(float(np.percentile(v["dur"], 95)), 3),
              "downtime_share": round(sum(v["down"]) / total_downtime, 4)
              if total_downtime > 0 else 0.0, "runs": len(v["dur"])}
             for name, v in per_step.items()]
    return {
        "scenario": scenario,
        "policy": policy,
        "runs": len(runs),
        "outcomes": {k: outcomes.get(k, 0) for k in OUTCOMES},
        "downtime_s": stats([r.downtime_s for r in runs]),
        "failed_requests": stats([r.failed_requests for r in runs]),
        "alerts": alerts,
        "steps": steps,
    }

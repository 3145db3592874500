"""The same procedure on the same incidents, on the simulator and on the real shadow.

A seed draws the same deviation on every backend (incident, magnitude, onset, load), so the
two rehearsals differ only by the shadow's physics. :func:`compare_backends` runs each
(procedure, seed) on each backend and :func:`side_by_side` lines the results up: outcome,
downtime, bad requests, budget burn, rollback time and per-step durations, with the gap
(real minus simulated). This is the raw sim-vs-real gap the calibration closes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from shadowrl.core.spec import Procedure, Scenario
from shadowrl.rehearsal.runner import Rehearsal, rehearse

MEASURES = ("downtime_s", "bad_requests", "budget_burn", "rollback_s", "failed_requests")


def run_facts(r: Rehearsal) -> dict[str, Any]:
    """What one rehearsal is compared by."""
    return {
        "incident": r.incident,
        "magnitude": round(r.injection.magnitude, 4),
        "outcome": r.outcome,
        "breach_at_s": round(r.breach.at_s, 1),
        "downtime_s": round(r.downtime_s, 1),
        "bad_requests": round(r.bad_requests, 1),
        "failed_requests": round(r.failed_requests, 1),
        "budget_burn": round(r.budget_burn, 6),
        "rollback_s": round(r.rollback_s, 1),
        "steps": {s.name: round(s.end_s - s.start_s, 1) for s in r.steps
                  if s.status != "skipped"},
        "alerts": sorted({a.kind for a in r.alerts}),
    }


def compare_backends(scenario: Scenario, procedures: dict[str, Procedure],
                     seeds: Sequence[int], *, backends: Sequence[str] = ("sim", "docker"),
                     on_log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per (procedure, seed): each backend's facts and the gaps between the first
    two backends (second minus first)."""
    log = on_log or (lambda message: None)
    rows = []
    for name, procedure in procedures.items():
        for seed in seeds:
            row: dict[str, Any] = {"procedure": name, "seed": seed}
            for backend in backends:
                log(f"{name}, seed {seed}: rehearsing on {backend}")
                row[backend] = run_facts(rehearse(scenario, seed, procedure=procedure,
                                                  backend=backend))
            if len(backends) >= 2:
                row["gap"] = gap(row[backends[0]], row[backends[1]])
            rows.append(row)
    return rows


def gap(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``other`` minus ``base`` for every measure and every step both ran."""
    out: dict[str, Any] = {m: round(other[m] - base[m], 6 if m == "budget_burn" else 1)
                           for m in MEASURES}
    out["steps"] = {step: round(other["steps"][step] - base["steps"][step], 1)
                    for step in base["steps"] if step in other["steps"]}
    out["same_outcome"] = base["outcome"] == other["outcome"]
    out["same_incident"] = base["incident"] == other["incident"]
    return out


def side_by_side(rows: Sequence[dict[str, Any]], backends: Sequence[str] = ("sim", "docker")
                 ) -> str:
    """A plain-text table of the rows, one line per (procedure, seed, backend)."""
    head = (f"{'procedure':<12} {'seed':>4} {'backend':<7} {'incident':<22} {'outcome':<21} "
            f"{'downtime':>9} {'bad req':>10} {'burn':>9} {'rollback':>9}")
    lines = [head, "-" * len(head)]
    for row in rows:
        for backend in backends:
            f = row[backend]
            lines.append(f"{row['procedure']:<12} {row['seed']:>4} {backend:<7} "
                         f"{f['incident']:<22} {f['outcome']:<21} {f['downtime_s']:>8.0f}s "
                         f"{f['bad_requests']:>10.0f} {f['budget_burn']:>9.2%} "
                         f"{f['rollback_s']:>8.0f}s")
    return "\n".join(lines)

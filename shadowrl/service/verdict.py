"""A deployment's verdict: would its rollback work, judged from a finished rehearsal campaign.

The verdict is computed once, when the campaign ends, and stored; the API only ever reads
it back (Argo Rollouts' web metric provider and Flagger's webhooks poll it, and a rehearsal
takes minutes). Its fields are flat enough for a ``jsonPath`` (``{$.healthy}``).
"""

from __future__ import annotations

from typing import Any

from shadowrl.service.config import Healthy


def judge(summary: dict[str, Any], healthy: Healthy) -> tuple[bool, list[str]]:
    """Healthy or not, and the reasons it is not (empty when healthy)."""
    runs = int(summary.get("runs", 0))
    outcomes = summary.get("outcomes", {})
    recovered = int(outcomes.get("recovered", 0))
    reasons: list[str] = []
    if runs == 0:
        return False, ["no rehearsal run finished"]
    share = recovered / runs
    if share < healthy.min_recovered_share:
        failed = {k: v for k, v in outcomes.items() if k != "recovered" and v}
        detail = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in failed.items())
        reasons.append(f"{recovered} of {runs} runs recovered ({detail}); at least "
                       f"{healthy.min_recovered_share:.0%} must")
    burn = float(summary.get("budget_burn", {}).get("mean", 0.0))
    if healthy.max_budget_burn is not None and burn > healthy.max_budget_burn:
        reasons.append(f"mean error budget burn {burn:.1%} is over {healthy.max_budget_burn:.1%}")
    downtime = float(summary.get("downtime_s", {}).get("mean", 0.0))
    if healthy.max_downtime_s is not None and downtime > healthy.max_downtime_s:
        reasons.append(f"mean downtime {downtime:.0f} s is over {healthy.max_downtime_s:.0f} s")
    critical = alert_counts(summary)["critical"]
    if healthy.no_critical_alerts and critical:
        reasons.append(f"{critical} critical alerts")
    return not reasons, reasons


CRITICAL_KINDS = ("rollback_failed", "rollback_ineffective")  # the runner's critical alerts


def alert_counts(summary: dict[str, Any]) -> dict[str, int]:
    """Alerts by severity, as the rehearsal raised them: a failed or ineffective rollback is
    critical; ``too_slow`` and ``new_errors`` warn."""
    counts = {"critical": 0, "warning": 0}
    for group in summary.get("alerts", []):
        key = "critical" if group.get("kind") in CRITICAL_KINDS else "warning"
        counts[key] += int(group.get("count", 0))
    return counts


def verdict(deployment: str, job_id: int, summary: dict[str, Any], healthy: Healthy, *,
            at: str, forecast: dict[str, Any] | None, rehearsed_at: float) -> dict[str, Any]:
    """The stored verdict (``age_s`` is added when served)."""
    ok, reasons = judge(summary, healthy)
    runs = int(summary.get("runs", 0))
    recovered = int(summary.get("outcomes", {}).get("recovered", 0))
    return {
        "deployment": deployment,
        "healthy": ok,
        "status": "healthy" if ok else "unhealthy",
        "reasons": reasons,
        "job": job_id,
        "rehearsed_at": rehearsed_at,
        "backend": summary.get("backend", "sim"),
        "at": at,
        "forecast": forecast,
        "runs": runs,
        "recovered": recovered,
        "recovered_share": round(recovered / runs, 4) if runs else 0.0,
        "downtime_s": summary.get("downtime_s", {}),
        "budget_burn": summary.get("budget_burn", {}),
        "alerts": alert_counts(summary),
    }

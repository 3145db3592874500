"""The verdict: each threshold of ``healthy`` gives its own reason, and alerts are counted
by severity."""

from __future__ import annotations

from typing import Any

import pytest

from shadowrl.service.config import Healthy
from shadowrl.service.verdict import alert_counts, judge, verdict


def summary(runs: int = 10, recovered: int = 10, burn: float = 0.1, downtime: float = 30.0,
            alerts: list[dict[str, Any]] | None = None, **outcomes: int) -> dict[str, Any]:
    return {"runs": runs, "backend": "sim",
            "outcomes": {"recovered": recovered, **outcomes},
            "budget_burn": {"mean": burn, "p50": burn, "p95": burn, "max": burn},
            "downtime_s": {"mean": downtime, "p50": downtime, "p95": downtime,
                           "max": downtime},
            "alerts": alerts or []}


def test_a_clean_campaign_is_healthy() -> None:
    assert judge(summary(), Healthy()) == (True, [])


def test_no_finished_run_is_unhealthy() -> None:
    assert judge(summary(runs=0, recovered=0), Healthy()) == (
        False, ["no rehearsal run finished"])
    assert judge({}, Healthy()) == (False, ["no rehearsal run finished"])


def test_recovered_share_names_the_failed_outcomes() -> None:
    ok, reasons = judge(summary(recovered=7, rollback_failed=2, rollback_ineffective=1),
                        Healthy())
    assert not ok
    assert reasons == ["7 of 10 runs recovered (2 rollback failed, 1 rollback ineffective); "
                       "at least 100% must"]
    # a lower bar lets the same campaign pass; just under it fails
    assert judge(summary(recovered=7, rollback_failed=3), Healthy(min_recovered_share=0.7))[0]
    assert not judge(summary(recovered=6, rollback_failed=4),
                     Healthy(min_recovered_share=0.7))[0]


@pytest.mark.parametrize(("healthy", "campaign", "reason"), [
    (Healthy(max_budget_burn=0.5), summary(burn=0.625),
     "mean error budget burn 62.5% is over 50.0%"),
    (Healthy(max_downtime_s=60), summary(downtime=90.4), "mean downtime 90 s is over 60 s"),
    (Healthy(no_critical_alerts=True),
     summary(alerts=[{"kind": "rollback_failed", "count": 2}, {"kind": "too_slow", "count": 5},
                     {"kind": "new_errors", "count": 3}]),
     "2 critical alerts"),
])
def test_each_threshold_gives_its_reason(healthy: Healthy, campaign: dict[str, Any],
                                         reason: str) -> None:
    assert judge(campaign, healthy) == (False, [reason])


def test_thresholds_are_inclusive_or_off() -> None:
    at_limit = summary(burn=0.5, downtime=60.0,
                       alerts=[{"kind": "rollback_failed", "count": 1}])
    assert judge(at_limit, Healthy(max_budget_burn=0.5, max_downtime_s=60)) == (True, [])
    # None switches a threshold off; critical alerts only count when asked
    assert judge(summary(burn=5.0, downtime=10_000.0,
                         alerts=[{"kind": "rollback_failed", "count": 3}]),
                 Healthy(max_budget_burn=None, max_downtime_s=None)) == (True, [])


def test_every_failed_threshold_is_listed() -> None:
    ok, reasons = judge(summary(recovered=9, rollback_failed=1, burn=0.9, downtime=200,
                                alerts=[{"kind": "rollback_ineffective", "count": 1}]),
                        Healthy(max_downtime_s=100, no_critical_alerts=True))
    assert not ok and len(reasons) == 4
    assert [r.split()[0] for r in reasons] == ["9", "mean", "mean", "1"]


def test_alert_counts_by_severity() -> None:
    assert alert_counts({}) == {"critical": 0, "warning": 0}
    counts = alert_counts({"alerts": [
        {"kind": "rollback_failed", "count": 2},  # critical: the rollback did not work
        {"kind": "rollback_ineffective", "count": 1},
        {"kind": "new_errors", "count": 4},  # warnings: it worked, with new errors or slowly
        {"kind": "too_slow", "count": 3},
        {"kind": "something_new", "count": 1},  # an unknown kind only warns
        {"kind": "too_slow"},  # no count: none
    ]})
    assert counts == {"critical": 3, "warning": 8}


def test_verdict_record() -> None:
    record = verdict("checkout", 7, summary(recovered=8, rollback_failed=2),
                     Healthy(), at="peak", forecast={"peak_at": 1.0e9, "load": 1.4},
                     rehearsed_at=1.7e9)
    assert record["deployment"] == "checkout" and record["job"] == 7
    assert record["healthy"] is False and record["status"] == "unhealthy"
    assert record["runs"] == 10 and record["recovered"] == 8
    assert record["recovered_share"] == 0.8 and record["at"] == "peak"
    assert record["forecast"] == {"peak_at": 1.0e9, "load": 1.4}
    assert record["alerts"] == {"critical": 0, "warning": 0}
    assert len(record["reasons"]) == 1 and record["reasons"][0].startswith("8 of 10")
    empty = verdict("checkout", 8, {}, Healthy(), at="now", forecast=None, rehearsed_at=0.0)
    assert empty["recovered_share"] == 0.0 and empty["status"] == "unhealthy"

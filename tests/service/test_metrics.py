"""``/metrics`` parsed by the Prometheus client's own parser agrees with the API."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import Service


def samples(svc: Service, **kw: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = svc.get("/metrics", **kw)
    assert isinstance(text, str)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_parse_and_agree_with_the_api(service: Service) -> None:
    before = samples(service)
    assert before[("shadowrl_rehearsals_total", (("deployment", "checkout"),
                                                ("outcome", "healthy")))] == 0
    assert before[("shadowrl_jobs_queued", ())] + before[("shadowrl_jobs_running", ())] == 1
    job = service.wait_job(service.get("/api/v1/jobs")[0]["id"])
    assert job["status"] == "succeeded"
    verdict = service.get("/api/v1/deployments/checkout/verdict")
    after = samples(service)
    dep = (("deployment", "checkout"),)
    outcome = "healthy" if verdict["healthy"] else "unhealthy"
    assert after[("shadowrl_rehearsals_total", (*dep, ("outcome", outcome)))] == 1
    assert after[("shadowrl_verdict_healthy", dep)] == float(verdict["healthy"])
    assert after[("shadowrl_rehearsal_downtime_seconds", dep)] == \
        verdict["downtime_s"]["mean"]
    assert after[("shadowrl_rehearsal_budget_burn_ratio", dep)] == \
        verdict["budget_burn"]["mean"]
    assert after[("shadowrl_rehearsal_recovered_ratio", dep)] == verdict["recovered_share"]
    assert 0 <= after[("shadowrl_verdict_age_seconds", dep)] < 600
    assert after[("shadowrl_jobs_total", (*dep, ("kind", "rehearse"),
                                          ("status", "succeeded")))] == 1
    assert after[("shadowrl_jobs_queued", ())] == after[("shadowrl_jobs_running", ())] == 0
    # never synced: no drift sample rather than a made-up 0
    assert not [k for k in after if k[0] == "shadowrl_sync_drift"]


def test_public_metrics_need_no_token(service_factory: Any) -> None:
    svc = service_factory(extra="  public_metrics: true\n")  # under auth:
    status, text, _ = svc.request("GET", "/metrics", token=None)
    assert status == 200 and "shadowrl_jobs_queued" in text
    assert svc.request("GET", "/api/v1/deployments", token=None)[0] == 401

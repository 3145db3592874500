"""The real service over HTTP: auth, triggers, verdicts, the Flagger gate, procedures,
limits and cancellation (uvicorn on a free port, a real SQLite file)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.service.conftest import READ_TOKEN, WRITE_TOKEN, Service


def first_verdict(svc: Service) -> dict[str, Any]:
    jobs = svc.get("/api/v1/jobs")
    assert [j["reason"] for j in jobs] == ["start-up"]
    svc.wait_job(jobs[0]["id"])
    return svc.get("/api/v1/deployments/checkout/verdict")


def test_auth_scopes_and_errors(service: Service) -> None:
    # no token, a wrong token, a malformed header: 401 with the Bearer challenge
    for headers, token in (({}, None), ({}, "nope"), ({"Authorization": "Basic abc"}, None)):
        status, body, hdrs = service.request("GET", "/api/v1/deployments", token=token,
                                             headers=headers)
        assert status == 401, body
        assert hdrs.get("www-authenticate", hdrs.get("WWW-Authenticate")) == "Bearer"
    # a read token cannot trigger or cancel; a write token can read
    status, body, _ = service.request("POST", "/api/v1/deployments/checkout/rehearsals",
                                      token=READ_TOKEN, body={})
    assert status == 403 and "may only read" in body["detail"]
    status, _, _ = service.request("POST", "/api/v1/jobs/1/cancel", token=READ_TOKEN)
    assert status == 403
    assert service.get("/api/v1/deployments", token=WRITE_TOKEN)[0]["name"] == "checkout"
    # health needs no token; metrics does (auth.public_metrics is off)
    assert service.request("GET", "/healthz", token=None)[0] == 200
    assert service.request("GET", "/metrics", token=None)[0] == 401
    # tokens never reach the log
    log = "".join(service.log)
    assert READ_TOKEN not in log and WRITE_TOKEN not in log and "nope" not in log


def test_bad_input_is_a_clear_4xx(service: Service) -> None:
    url = "/api/v1/deployments/checkout/rehearsals"
    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", url, {"runs": 0}, 422, "greater than or equal to 1"),
        ("POST", url, {"runs": 10**6}, 422, "less than or equal to 1000"),
        ("POST", url, {"command": "rm -rf /"}, 422, "Extra inputs are not permitted"),
        ("POST", url, {"procedure": "/etc/passwd"}, 422, "Extra inputs are not permitted"),
        ("POST", url, {"at": "tomorrow"}, 422, "'now' or 'peak'"),
        ("POST", "/api/v1/deployments/nope/rehearsals", {}, 404, "no deployment 'nope'"),
        ("POST", "/api/v1/deployments/../etc/rehearsals", {}, 404, ""),
        ("GET", "/api/v1/jobs/99999", None, 404, "no job 99999"),
        ("GET", "/api/v1/deployments/checkout/procedure?format=exe", None, 422, ""),
    ]
    for method, path, body, code, text in cases:
        status, answer, _ = service.request(method, path, token=WRITE_TOKEN, body=body)
        assert status == code, (path, body, status, answer)
        assert text in json.dumps(answer), (path, body, answer)
    # a body over limits.max_request_bytes is refused before it is read
    status, answer, _ = service.request("POST", url, token=WRITE_TOKEN,
                                        raw=b'{"runs": 1' + b" " * 70_000 + b"}")
    assert status == 413 and "over 65536 bytes" in answer["detail"]
    # not JSON
    status, _, _ = service.request("POST", url, token=WRITE_TOKEN, raw=b"{runs")
    assert status == 422
    # nothing above queued a job
    assert len(service.get("/api/v1/jobs")) == 1


def test_triggered_rehearsal_completes_and_its_verdict_is_served(service: Service) -> None:
    verdict = first_verdict(service)
    status, job, _ = service.request("POST", "/api/v1/deployments/checkout/rehearsals",
                                     token=WRITE_TOKEN, body={"runs": 2, "seed": 7})
    assert status == 202 and job["status"] == "queued" and job["reason"] == "trigger"
    assert job["params"] == {"runs": 2, "seed": 7, "at": "now"}
    done = service.wait_job(job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"done": 2, "total": 2}
    summary = done["result"]
    assert summary["runs"] == 2 and summary["backend"] == "sim"
    served = service.get("/api/v1/deployments/checkout/verdict")
    assert served["job"] == job["id"] != verdict["job"]
    # the verdict is the stored judgement of that campaign, not a new rehearsal
    assert served["runs"] == 2
    assert served["recovered"] == summary["outcomes"]["recovered"]
    assert served["downtime_s"] == summary["downtime_s"]
    assert served["budget_burn"] == summary["budget_burn"]
    assert served["healthy"] == (served["recovered"] == 2
                                 and summary["budget_burn"]["mean"] <= 0.5)
    history = service.get("/api/v1/deployments/checkout/verdicts")
    assert [v["job"] for v in history] == [job["id"], verdict["job"]]
    # the report and profiles are on disk, and the timeline reads them
    timeline = service.get(f"/api/v1/jobs/{job['id']}/timeline")
    assert {r["run"] for r in timeline["runs"]} == {0, 1}
    worst = max(timeline["runs"], key=lambda r: r["failed"])
    assert timeline["run"] == worst["run"]
    assert len(timeline["series"]["t"]) == len(timeline["series"]["error_rate"]) > 100
    other = service.get(f"/api/v1/jobs/{job['id']}/timeline?run={1 - worst['run']}")
    assert other["run"] == 1 - worst["run"] and other["series"] != timeline["series"]


def test_flagger_gate_and_argo_fields(service: Service) -> None:
    status, body, _ = service.request("POST", "/api/v1/deployments/checkout/gate",
                                      body={"name": "checkout", "namespace": "shop",
                                            "phase": "Progressing"})
    assert status == 412 and "no verdict yet" in body["detail"]  # nothing rehearsed yet
    verdict = first_verdict(service)
    status, body, _ = service.request("POST", "/api/v1/deployments/checkout/gate",
                                      body={"name": "checkout", "namespace": "shop",
                                            "phase": "Progressing", "metadata": {"a": "b"}})
    assert status == (200 if verdict["healthy"] else 412)
    # Argo Rollouts' web metric reads {$.healthy} and numbers at the top level
    assert isinstance(verdict["healthy"], bool) and verdict["status"] in ("healthy",
                                                                          "unhealthy")
    assert verdict["age_s"] >= 0 and verdict["rehearsed_at"].endswith("Z")


def test_unhealthy_verdict_closes_the_gate(service_factory: Any) -> None:
    svc = service_factory(deployment_extra="    healthy: {max_downtime_s: 1s}\n")
    verdict = first_verdict(svc)
    assert verdict["healthy"] is False
    assert any("mean downtime" in r for r in verdict["reasons"])
    status, body, _ = svc.request("POST", "/api/v1/deployments/checkout/gate", body={})
    assert status == 412 and "not healthy" in body["detail"]
    assert body["verdict"]["job"] == verdict["job"]


def test_procedure_in_every_export_format(service: Service) -> None:
    text = service.get("/api/v1/deployments/checkout/procedure?format=yaml")
    doc = yaml.safe_load(text)
    assert [s["name"] for s in doc["procedure"]["steps"]] == \
        service.get("/api/v1/deployments/checkout")["scenario_summary"]["steps"]
    argo = yaml.safe_load(service.get("/api/v1/deployments/checkout/procedure?format=argo"))
    assert argo["kind"] == "Workflow"
    chaos = service.get("/api/v1/deployments/checkout/procedure?format=chaostoolkit")
    assert isinstance(chaos, dict) and chaos["title"]
    shell = service.get("/api/v1/deployments/checkout/procedure?format=shell")
    assert shell.startswith("#!")


def test_cancel_a_running_job_keeps_it_cancelled(service: Service) -> None:
    first_verdict(service)
    status, job, _ = service.request("POST", "/api/v1/deployments/checkout/rehearsals",
                                     token=WRITE_TOKEN, body={"runs": 200})
    assert status == 202
    service.wait_job(job["id"], ("running",), timeout_s=60)
    status, after, _ = service.request("POST", f"/api/v1/jobs/{job['id']}/cancel",
                                       token=WRITE_TOKEN)
    assert status == 202 and after["status"] in ("running", "cancelled")
    done = service.wait_job(job["id"], timeout_s=60)
    assert done["status"] == "cancelled", done
    assert done["progress"]["done"] < 200
    # no verdict from a cut-short campaign
    assert service.get("/api/v1/deployments/checkout/verdict")["job"] != job["id"]
    # a queued job is cancelled at once
    ids = []
    for _ in range(2):
        status, queued, _ = service.request("POST", "/api/v1/deployments/checkout/rehearsals",
                                            token=WRITE_TOKEN, body={"runs": 50})
        ids.append(queued["id"])
    status, second, _ = service.request("POST", f"/api/v1/jobs/{ids[1]}/cancel",
                                        token=WRITE_TOKEN)
    assert second["status"] == "cancelled" and second["started_at"] is None


def test_trigger_rate_limit(service_factory: Any) -> None:
    svc = service_factory(extra="limits: {triggers_per_minute: 1, trigger_burst: 2}\n")
    codes = []
    for _ in range(3):
        status, body, headers = svc.request("POST", "/api/v1/deployments/checkout/rehearsals",
                                            token=WRITE_TOKEN, body={"runs": 1})
        codes.append(status)
    assert codes == [202, 202, 429]
    assert "too many triggers" in body["detail"] and int(headers["retry-after"]) >= 1


@pytest.mark.parametrize("wait", [0, 2])
def test_long_poll_returns_at_a_new_revision_or_the_timeout(service: Service,
                                                            wait: int) -> None:
    job = service.get("/api/v1/jobs")[0]
    done = service.wait_job(job["id"])
    again = service.get(f"/api/v1/jobs/{job['id']}?since={done['revision']}&wait={wait}")
    assert again["revision"] == done["revision"]  # a finished job answers at once
    status, _, _ = service.request("GET", f"/api/v1/jobs/{job['id']}?wait=31")
    assert status == 422

"""A SIGKILL at any moment loses no finished result; a restart resumes the schedules and
marks the jobs it interrupted (the real service on the same SQLite file)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tests.service.conftest import WRITE_TOKEN, Service, service_config


def test_sigkill_and_restart_lose_nothing(tmp_path: Path) -> None:
    config = service_config(tmp_path, runs=2, every="1h")
    first = Service(config).start()
    try:
        startup = first.wait_job(first.get("/api/v1/jobs")[0]["id"])
        assert startup["status"] == "succeeded"
        verdict = first.get("/api/v1/deployments/checkout/verdict")
        schedule = first.get("/api/v1/deployments/checkout")["schedules"]["rehearse"]
        status, job, _ = first.request("POST", "/api/v1/deployments/checkout/rehearsals",
                                       token=WRITE_TOKEN, body={"runs": 300})
        assert status == 202
        running = first.wait_job(job["id"], ("running",), timeout_s=60)
        worker_pid = _pid_of(first, running["id"])
        first.kill()  # SIGKILL: no shutdown code runs
    finally:
        first.stop()
    # the worker dies with the service (it is sent SIGINT), so nothing writes afterwards
    deadline = time.monotonic() + 30
    while _alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(worker_pid)

    second = Service(config).start()
    try:
        jobs = {j["id"]: j for j in second.get("/api/v1/jobs")}
        assert second.get("/api/v1/deployments/checkout/verdict")["job"] == verdict["job"], \
            (jobs, (tmp_path / "data" / "jobs" / f"{job['id']}.log").read_text()[-3000:])
        assert second.get("/api/v1/deployments/checkout/verdict")["downtime_s"] == \
            verdict["downtime_s"]
        jobs = {j["id"]: j for j in second.get("/api/v1/jobs")}
        assert jobs[startup["id"]]["status"] == "succeeded"
        assert jobs[startup["id"]]["result"] == startup["result"]
        cut = jobs[job["id"]]
        assert cut["status"] == "interrupted", cut
        assert cut["finished_at"] is not None and "interrupted" in (cut["error"] or "")
        # the schedule resumed where it was: no second start-up rehearsal, same next time
        again = second.get("/api/v1/deployments/checkout")["schedules"]["rehearse"]
        assert again == schedule
        assert not [j for j in jobs.values() if j["reason"] == "start-up"
                    and j["id"] != startup["id"]]
        # and the service works on: a new trigger runs to the end
        status, more, _ = second.request("POST", "/api/v1/deployments/checkout/rehearsals",
                                         token=WRITE_TOKEN, body={"runs": 1})
        assert second.wait_job(more["id"])["status"] == "succeeded"
    finally:
        second.stop()


def _pid_of(svc: Service, job_id: int) -> int:
    from shadowrl.service.store import Store

    store = Store(f"sqlite:///{svc.config.parent / 'data' / 'shadowrl.db'}")
    try:
        row: Any = store.job(job_id)
        return int(row.pid)
    finally:
        store.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"

"""What the API serves, as plain data: the service's use cases over the store and the
scheduler. The HTTP layer (``api.py``) only maps these to routes, status codes and scopes.

Everything here reads stored state; nothing runs a rehearsal inline. Triggers only queue a
job for a configured deployment with bounded numbers.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shadowrl.service.config import DeploymentConfig, ServiceConfig, has_history
from shadowrl.service.scheduler import Scheduler
from shadowrl.service.store import FINAL, JobRow, Store, loads

MAX_WAIT_S = 30.0


class NotFound(LookupError):
    """A deployment, job or output that does not exist (404)."""


class Conflict(RuntimeError):
    """A request that cannot be served in the current state (409)."""


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def job_json(row: JobRow) -> dict[str, Any]:
    return {"id": row.id, "deployment": row.deployment, "kind": row.kind,
            "reason": row.reason, "status": row.status, "params": loads(row.params) or {},
            "progress": {"done": row.done, "total": row.total},
            "created_at": iso(row.created_at), "started_at": iso(row.started_at),
            "finished_at": iso(row.finished_at), "error": row.error,
            "result": loads(row.result), "revision": row.revision}


def verdict_json(stored: dict[str, Any]) -> dict[str, Any]:
    out = dict(stored)
    rehearsed = float(stored["rehearsed_at"])
    out["rehearsed_at"] = iso(rehearsed)
    out["age_s"] = round(max(0.0, time.time() - rehearsed), 1)
    if stored.get("forecast"):
        out["forecast"] = {**stored["forecast"], "peak_at": iso(stored["forecast"]["peak_at"])}
    return out


class ServiceState:
    def __init__(self, cfg: ServiceConfig, store: Store, scheduler: Scheduler) -> None:
        self.cfg, self.store, self.scheduler = cfg, store, scheduler
        self.exports: dict[tuple[str, float, str], str] = {}
        self.export_lock = threading.Lock()

    def _dep(self, name: str) -> DeploymentConfig:
        dep = self.cfg.deployment(name)
        if dep is None:
            raise NotFound(f"no deployment {name!r}")
        return dep

    def check_deployment(self, name: str) -> None:
        self._dep(name)

    def check_rehearsal(self, name: str, at: str | None) -> None:
        """What makes a rehearsal trigger fail, checked before it counts against the rate
        limit: an unknown deployment (404), a full queue or a peak without history (409)."""
        dep = self._dep(name)
        self._room()
        if at == "peak" and not has_history(self.cfg, dep):
            raise Conflict(f"{name!r} has no history to forecast a peak from")

    def check_optimization(self, name: str) -> None:
        self._dep(name)
        self._room()

    # ------------------------------------------------------------------ deployments

    def deployments(self) -> list[dict[str, Any]]:
        return [self.deployment(d.name) for d in self.cfg.deployments]

    def deployment(self, name: str) -> dict[str, Any]:
        dep = self._dep(name)
        row = self.store.deployment(name)
        stored = self.store.latest_verdict(name)
        schedules: dict[str, Any] = {}
        for kind, every in (("rehearse", dep.rehearse.every), ("optimize", dep.optimize.every),
                            ("sync", dep.sync.every if dep.sync else None)):
            if kind == "sync" and dep.sync is None:
                continue
            next_at = self.store.next_at(name, kind)
            schedules[kind] = {"every_s": every,
                               "next_at": iso(next_at) if next_at and next_at > 0 else None}
        return {
            "name": name, "scenario": dep.scenario, "backend": dep.backend,
            "synced_at": iso(row.synced_at) if row else None,
            "drift": row.drift if row else 0,
            "verdict": verdict_json(stored) if stored else None,
            "procedure": {"source": row.procedure_source if row else "configured",
                          "job": row.procedure_job if row else None,
                          "published_at": iso(row.published_at) if row else None},
            "schedules": schedules,
        }

    def describe(self, name: str) -> dict[str, Any]:
        from shadowrl.core.spec import load_scenario

        out = self.deployment(name)
        dep = self._dep(name)
        sc = load_scenario(self.cfg.path_of(dep.scenario))
        row = self.store.deployment(name)
        out["scenario_summary"] = {
            "name": sc.name,
            "services": [s.name for s in sc.deployment.services],
            "incidents": [i.name for i in sc.incidents],
            "steps": [s.name for s in sc.procedure.steps],
        }
        out["drift_changes"] = loads(row.drift_changes) if row and row.drift_changes else []
        out["healthy_when"] = dep.healthy.model_dump(mode="json")
        return out

    def verdict(self, name: str) -> dict[str, Any]:
        self._dep(name)
        stored = self.store.latest_verdict(name)
        if stored is None:
            raise NotFound(f"no verdict yet for {name!r}: its first rehearsal has not finished")
        return verdict_json(stored)

    def verdicts(self, name: str, limit: int) -> list[dict[str, Any]]:
        self._dep(name)
        return [verdict_json(v) for v in self.store.verdicts(name, limit)]

    def procedure(self, name: str, fmt: str) -> str:
        """The procedure a rollback would use now (the published one, else the configured
        one) in an export format; rendered once per file version and format."""
        from shadowrl.app.export import ExportRequest, export

        dep = self._dep(name)
        row = self.store.deployment(name)
        scenario = self.cfg.path_of(dep.scenario)
        source = Path(row.procedure_path) if row and row.procedure_path else scenario
        try:
            key = (str(source), source.stat().st_mtime, fmt)
        except OSError:
            raise NotFound(f"the procedure file of {name!r} is gone: {source}") from None
        with self.export_lock:
            if key not in self.exports:
                report = export(ExportRequest(
                    source=str(source), format=fmt,
                    scenario=None if source == scenario else scenario))
                self.exports[key] = report.text
            return self.exports[key]

    # ------------------------------------------------------------------ jobs

    def jobs(self, deployment: str | None, status: str | None, limit: int
             ) -> list[dict[str, Any]]:
        if deployment is not None:
            self._dep(deployment)
        return [job_json(r) for r in self.store.jobs(deployment, status, limit)]

    def job(self, job_id: int) -> dict[str, Any]:
        row = self.store.job(job_id)
        if row is None:
            raise NotFound(f"no job {job_id}")
        return job_json(row)

    async def wait_job(self, job_id: int, *, since: int | None = None, wait_s: float = 0.0
                       ) -> dict[str, Any]:
        """A job; with ``since``, waits up to ``wait_s`` for a revision after it."""
        import asyncio

        from anyio import to_thread

        deadline = time.monotonic() + min(wait_s, MAX_WAIT_S)
        while True:
            row = await to_thread.run_sync(self.store.job, job_id)
            if row is None:
                raise NotFound(f"no job {job_id}")
            if (since is None or row.revision > since or row.status in FINAL
                    or time.monotonic() >= deadline):
                return job_json(row)
            await asyncio.sleep(0.25)

    def trigger_rehearsal(self, name: str, runs: int | None, seed: int | None,
                          at: str | None) -> dict[str, Any]:
        self.check_rehearsal(name, at)
        dep = self._dep(name)
        with self.scheduler.lock:
            job_id = self.scheduler.queue_rehearsal(dep, "trigger", runs=runs, seed=seed,
                                                    at=at, force=True)
        assert job_id is not None
        return self.job(job_id)

    def trigger_optimization(self, name: str, method: str | None, episodes: int | None
                             ) -> dict[str, Any]:
        self.check_optimization(name)
        dep = self._dep(name)
        with self.scheduler.lock:
            job_id = self.scheduler.queue_optimization(dep, "trigger", method=method,
                                                       episodes=episodes, force=True)
        assert job_id is not None
        return self.job(job_id)

    def cancel(self, job_id: int) -> dict[str, Any]:
        with self.scheduler.lock:
            if self.scheduler.cancel(job_id) is None:
                raise NotFound(f"no job {job_id}")
        return self.job(job_id)

    def _room(self) -> None:
        queued = self.store.count_by_status().get("queued", 0)
        if queued >= self.cfg.limits.max_queued_jobs:
            raise Conflict(f"{queued} jobs are queued already (limits.max_queued_jobs)")

    # ------------------------------------------------------------------ timeline

    def timeline(self, job_id: int, run: int | None) -> dict[str, Any]:
        """One run's edge series from a rehearsal's profiles (default: the run with the most
        failed requests)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        row = self.store.job(job_id)
        if row is None:
            raise NotFound(f"no job {job_id}")
        if row.kind != "rehearse" or not row.out_dir:
            raise NotFound(f"job {job_id} is not a rehearsal with outputs")
        path = Path(row.out_dir) / "profiles.parquet"
        if not path.is_file():
            raise NotFound(f"job {job_id} has no profiles yet ({row.status})")
        table = pq.read_table(path, columns=["run", "incident", "component", "since_breach_s",
                                             "rps", "error_rate", "latency_p99_ms", "step",
                                             "phase"])
        edge = table.filter(pc.equal(table["component"], "edge"))
        runs: dict[int, dict[str, Any]] = {}
        cols = edge.to_pydict()
        for k, inc, rps, err in zip(cols["run"], cols["incident"], cols["rps"],
                                    cols["error_rate"]):
            entry = runs.setdefault(k, {"run": k, "incident": inc, "failed": 0.0})
            entry["failed"] += (rps or 0.0) * (err or 0.0)
        if not runs:
            raise NotFound(f"job {job_id} recorded no timeline")
        chosen = max(runs.values(), key=lambda e: e["failed"])["run"] if run is None else run
        if chosen not in runs:
            raise NotFound(f"job {job_id} has no run {chosen} (runs: {sorted(runs)})")
        idx = [i for i, k in enumerate(cols["run"]) if k == chosen]
        series = {name: [cols[name][i] for i in idx] for name in
                  ("since_breach_s", "error_rate", "latency_p99_ms", "rps", "step", "phase")}
        series["t"] = series.pop("since_breach_s")
        for entry in runs.values():
            entry["failed"] = round(entry["failed"], 1)
        return {"job": job_id, "run": chosen, "incident": runs[chosen]["incident"],
                "runs": [runs[k] for k in sorted(runs)], "series": series}

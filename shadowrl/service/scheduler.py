"""The service's loop: schedules, live changes, and the job processes.

One thread ticks twice a second. Each tick it notices a changed scenario file (by content
hash), runs the syncs that are due, queues the rehearsals and optimizations that are due
or that a change asks for, starts queued jobs up to ``limits.max_running_jobs``, signals
the jobs asked to stop, and reaps the finished ones. Schedules are rows in the database, so
a restart resumes them where they were; jobs left running by a dead service are marked
``interrupted`` at start-up.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shadowrl.service.config import DeploymentConfig, ServiceConfig
from shadowrl.service.store import Store

TICK_S = 0.5
HASH_EVERY_S = 2.0
CANCEL_GRACE_S = 30.0
LogFn = Callable[[str], None]


@dataclass
class Running:
    """A job process this service started (``proc``) or found alive at start-up (``pid``)."""

    job_id: int
    pid: int
    proc: subprocess.Popen[bytes] | None = None
    signalled_at: float | None = None
    log: object = field(default=None, repr=False)

    def exit_code(self) -> int | None:
        if self.proc is not None:
            return self.proc.poll()
        return None if pid_is_worker(self.pid, self.job_id) else -1


def pid_is_worker(pid: int, job_id: int) -> bool:
    """Whether ``pid`` is alive and is the worker of ``job_id`` (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"shadowrl.service.worker" in cmdline and str(job_id).encode() in cmdline


def scenario_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


class Scheduler:
    def __init__(self, cfg: ServiceConfig, config_path: Path, store: Store, *,
                 ray_address: str | None = None, log: LogFn | None = None) -> None:
        self.cfg, self.config_path, self.store = cfg, config_path, store
        self.ray_address = ray_address
        self.log = log or (lambda _m: None)
        self.running: dict[int, Running] = {}
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.started = threading.Event()
        self.last_hash_check = 0.0
        self.last_tick = 0.0
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Register the deployments, settle what a previous process left, start ticking."""
        for dep in self.cfg.deployments:
            self.store.upsert_deployment(dep.name, dep.scenario, dep.backend)
        self.recover()
        self.thread = threading.Thread(target=self._loop, name="shadowrl-scheduler",
                                       daemon=True)
        self.thread.start()

    def recover(self) -> None:
        """Jobs marked running by an earlier process: adopted while their worker lives,
        marked interrupted otherwise."""
        dead = []
        for job in self.store.running():
            if job.pid is not None and pid_is_worker(job.pid, job.id):
                self.running[job.id] = Running(job.id, job.pid)
                self.log(f"job {job.id}: still running (pid {job.pid}), followed")
            else:
                dead.append(job.id)
        if dead:
            self.store.mark_interrupted(dead, "interrupted: the service stopped while it ran")
            self.log(f"jobs {', '.join(map(str, dead))}: marked interrupted")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop ticking and interrupt the running jobs (they keep their finished runs)."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout_s)
        deadline = time.monotonic() + timeout_s
        for run in list(self.running.values()):
            self._signal(run, signal.SIGINT)
        for run in list(self.running.values()):
            if run.proc is not None:
                try:
                    run.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    run.proc.kill()
                    run.proc.wait()
        self._reap()

    @property
    def alive(self) -> bool:
        return (self.thread is not None and self.thread.is_alive()
                and time.monotonic() - self.last_tick < 30.0)

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.tick()
            except Exception as exc:  # a bad tick is logged; the loop goes on
                self.log(f"scheduler: {type(exc).__name__}: {exc}")
            self.last_tick = time.monotonic()
            self.started.set()
            self.stop_event.wait(TICK_S)

    # ------------------------------------------------------------------ one tick

    def tick(self) -> None:
        now = time.time()
        with self.lock:
            if time.monotonic() - self.last_hash_check >= HASH_EVERY_S:
                self.last_hash_check = time.monotonic()
                for dep in self.cfg.deployments:
                    self._check_scenario(dep)
            for dep in self.cfg.deployments:
                self._due(dep, now)
            self._reap()
            self._cancel()
            self._start_queued()

    def _check_scenario(self, dep: DeploymentConfig) -> None:
        digest = scenario_digest(self.cfg.path_of(dep.scenario))
        before = self.store.set_scenario_hash(dep.name, digest)
        if before is None or before == digest:
            return
        self.log(f"{dep.name}: the scenario changed")
        if self.store.deployment(dep.name).procedure_source == "optimized":  # type: ignore
            self.store.unpublish(dep.name)  # it was optimized for the old deployment
        if dep.rehearse.on_change:
            self.queue_rehearsal(dep, "scenario changed")
        if dep.optimize.on_change:
            self.queue_optimization(dep, "scenario changed")

    def _due(self, dep: DeploymentConfig, now: float) -> None:
        plans: list[tuple[str, float | None]] = [("rehearse", dep.rehearse.every),
                                                 ("optimize", dep.optimize.every)]
        if dep.sync is not None:
            plans.append(("sync", dep.sync.every))
        for kind, every in plans:
            next_at = self.store.next_at(dep.name, kind)
            reason = "schedule"
            if next_at is None:  # first start: rehearse and sync now, optimize on schedule
                reason = "start-up"
                first = now if kind in ("rehearse", "sync") else (
                    now + every if every is not None else None)
                if kind == "rehearse" and self.store.latest_verdict(dep.name) is not None:
                    first = now + every if every is not None else None
                self.store.set_next_at(dep.name, kind, first if first is not None else -1.0)
                next_at = first
            if next_at is None or next_at < 0 or next_at > now:
                continue
            self.store.set_next_at(dep.name, kind, now + every if every is not None else -1.0)
            if kind == "sync":
                self._sync(dep)
            elif kind == "rehearse":
                self.queue_rehearsal(dep, reason)
            else:
                self.queue_optimization(dep, reason)

    def _sync(self, dep: DeploymentConfig) -> None:
        """Bring the scenario to the live deployment; a change it writes is noticed as a
        scenario change at the next hash check (and rehearsed and re-optimized then)."""
        from shadowrl.app.sync import SyncRequest, sync

        assert dep.sync is not None
        spec = dep.sync
        try:
            result = sync(SyncRequest(
                source=spec.source, scenario=self.cfg.path_of(dep.scenario),
                kubeconfig=self.cfg.path_of(spec.kubeconfig) if spec.kubeconfig else None,
                context=spec.context, namespace=spec.namespace))
        except Exception as exc:  # the live side may be down; say so and go on
            self.log(f"{dep.name}: sync from {spec.source} failed: {exc}")
            return
        changes = [c.model_dump(mode="json") for c in result.changes]
        self.store.record_sync(dep.name, changes if result.status != "created" else [])
        if result.written:
            self.log(f"{dep.name}: synced from {spec.source}: {result.status}, "
                     f"{len(changes)} changes")
            self.last_hash_check = 0.0  # look at the file at once

    # ------------------------------------------------------------------ queueing

    def queue_rehearsal(self, dep: DeploymentConfig, reason: str, *, runs: int | None = None,
                        seed: int | None = None, at: str | None = None,
                        force: bool = False) -> int | None:
        """Queue a rehearsal; a schedule or change does not queue a second while one is
        queued or running (a trigger, ``force``, always does)."""
        if not force and self.store.has_active(dep.name, "rehearse"):
            return None
        runs = runs or dep.rehearse.runs
        job = self.store.add_job(dep.name, "rehearse", reason,
                                 {"runs": runs, "seed": dep.seed if seed is None else seed,
                                  "at": at or dep.rehearse.at}, total=runs)
        self.log(f"{dep.name}: rehearsal queued (job {job.id}, {reason})")
        return job.id

    def queue_optimization(self, dep: DeploymentConfig, reason: str, *,
                           method: str | None = None, episodes: int | None = None,
                           force: bool = False) -> int | None:
        if not force and self.store.has_active(dep.name, "optimize"):
            return None
        job = self.store.add_job(dep.name, "optimize", reason,
                                 {"method": method or dep.optimize.method,
                                  "episodes": episodes or dep.optimize.episodes})
        self.log(f"{dep.name}: optimization queued (job {job.id}, {reason})")
        return job.id

    # ------------------------------------------------------------------ processes

    def _start_queued(self) -> None:
        free = self.cfg.limits.max_running_jobs - len(self.running)
        for job in self.store.queued()[:max(0, free)]:
            jobs_dir = self.cfg.data_dir / "jobs"
            jobs_dir.mkdir(parents=True, exist_ok=True)
            out_dir = (jobs_dir / str(job.id)).resolve()
            if not self.store.start_job(job.id, os.getpid(), str(out_dir)):
                continue
            argv = [sys.executable, "-m", "shadowrl.service.worker", "--config",
                    str(self.config_path), "--job", str(job.id), "--parent", str(os.getpid())]
            if self.ray_address:
                argv += ["--ray-address", self.ray_address]
            log = open(jobs_dir / f"{job.id}.log", "ab")  # noqa: SIM115 (closed when reaped)
            try:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
            except OSError as exc:
                log.close()
                self.store.finish_job(job.id, "failed", error=f"cannot start: {exc}")
                continue
            self.store.update_job(job.id, pid=proc.pid)
            self.running[job.id] = Running(job.id, proc.pid, proc, log=log)
            self.log(f"job {job.id}: started ({job.kind} of {job.deployment}, pid {proc.pid})")

    def _reap(self) -> None:
        for job_id, run in list(self.running.items()):
            code = run.exit_code()
            if code is None:
                continue
            del self.running[job_id]
            if run.log is not None:
                run.log.close()  # type: ignore[attr-defined]
            job = self.store.job(job_id)
            if job is not None and job.status == "running":  # died before writing its end
                status = "cancelled" if job.cancel_requested else "failed"
                self.store.finish_job(job_id, status,
                                      error=f"the job's process exited with code {code}")
            self.log(f"job {job_id}: finished ({job.status if job else '?'})")

    def _cancel(self) -> None:
        for job_id, run in self.running.items():
            job = self.store.job(job_id)
            if job is None or not job.cancel_requested:
                continue
            if run.signalled_at is None:
                self._signal(run, signal.SIGINT)
            elif time.monotonic() - run.signalled_at > CANCEL_GRACE_S:
                self._signal(run, signal.SIGKILL)

    def _signal(self, run: Running, sig: int) -> None:
        if run.signalled_at is None or sig == signal.SIGKILL:
            run.signalled_at = time.monotonic()
            try:
                os.kill(run.pid, sig)
            except ProcessLookupError:
                pass

    def cancel(self, job_id: int) -> str | None:
        """Cancel a job: at once when queued; by signal when running. Returns its status
        after the request, None for a job that does not exist."""
        job = self.store.job(job_id)
        if job is None:
            return None
        if job.status == "queued" and self.store.cancel_queued(job_id):
            return "cancelled"
        if job.status == "running":
            self.store.request_cancel(job_id)
            return "running"
        return job.status

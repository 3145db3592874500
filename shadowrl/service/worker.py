"""One job of the service, run in its own process: ``python -m shadowrl.service.worker``.

A process per job lets the service cancel a job (SIGINT: the rehearsal keeps its finished
runs; SIGKILL after a grace period), keeps a crashed job from taking the API down, and lets
a job die with the service (the kernel sends it SIGINT when its parent dies), so a restart
finds no orphan still writing. The job's end and its verdict are committed in one
transaction: a SIGKILL at any moment loses no finished result.

The worker runs the application layer's use cases (``rehearse``, ``optimize``) with what
the operator's config says; the job row adds only bounded numbers (runs, seed, at, method,
episodes), never a path or a command.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: a job must take its signals before anything slow
    from shadowrl.service.config import DeploymentConfig, ServiceConfig
    from shadowrl.service.store import Store

PR_SET_PDEATHSIG = 1
PROGRESS_EVERY_S = 0.5


def die_with_parent(sig: int = signal.SIGINT) -> None:
    """Ask Linux to send ``sig`` when the service dies (elsewhere this does nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Progress:
    """Writes a job's progress at most every PROGRESS_EVERY_S (and always the last unit)."""

    def __init__(self, store: Store, job_id: int) -> None:
        self.store, self.job_id, self.last = store, job_id, 0.0

    def __call__(self, done: int, total: int, _label: str) -> None:
        now = time.monotonic()
        if done >= total or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self.store.update_job(self.job_id, done=done, total=total)


def history_for_job(cfg: ServiceConfig, dep: DeploymentConfig, out_dir: Path) -> Path | None:
    """The history file this rehearsal reads: the configured file, or a fresh Prometheus
    ``query_range`` saved beside the job's outputs; None: the scenario's own, if any."""
    from shadowrl.service.forecast import fetch_prometheus

    if dep.history is None:
        return None
    if dep.history.file is not None:
        return cfg.path_of(dep.history.file)
    assert dep.history.prometheus is not None and dep.history.query is not None
    return fetch_prometheus(dep.history.prometheus, dep.history.query, dep.history.range,
                            dep.history.step, out_dir.with_name(f"{out_dir.name}-history.json"))


def scenario_history(cfg: ServiceConfig, dep: DeploymentConfig) -> tuple[Path, str | None,
                                                                         str] | None:
    from shadowrl.core.spec import load_scenario

    sc = load_scenario(cfg.path_of(dep.scenario))
    spec = sc.deviations.history
    if spec is None:
        return None
    return cfg.path_of(dep.scenario).parent / spec.file, spec.format, spec.column


def run_rehearse(cfg: ServiceConfig, store: Store, job: Any, out_dir: Path,
                 ray_address: str | None) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    from shadowrl.app.rehearse import RehearseRequest, rehearse
    from shadowrl.service.forecast import forecast_peak
    from shadowrl.service.store import loads
    from shadowrl.service.verdict import verdict

    dep = cfg.deployment(job.deployment)
    assert dep is not None
    params = loads(job.params)
    hist = history_for_job(cfg, dep, out_dir)
    forecast = None
    if params["at"] == "peak":
        if hist is not None:
            fmt = "prometheus" if hist.suffix.lower() == ".json" else "csv"
            forecast = forecast_peak(hist, fmt)
        elif (own := scenario_history(cfg, dep)) is not None:
            forecast = forecast_peak(*own)
    row = store.deployment(dep.name)
    procedure = Path(row.procedure_path) if row and row.procedure_path else None
    request = RehearseRequest(file=cfg.path_of(dep.scenario), runs=params["runs"],
                              seed=params["seed"], at=params["at"], history=hist,
                              procedure=procedure, out=out_dir,
                              alert_webhook=dep.alert_webhook, replicas=dep.replicas,
                              ray_address=ray_address, backend=dep.backend,
                              command=f"shadowrl serve: job {job.id} ({job.reason})")
    summary = rehearse(request, on_progress=Progress(store, job.id)).model_dump(mode="json")
    summary["procedure_source"] = "optimized" if procedure is not None else "configured"
    if summary.get("interrupted"):
        return "interrupted", summary, None
    return "succeeded", summary, verdict(dep.name, job.id, summary, dep.healthy,
                                         at=params["at"], forecast=forecast,
                                         rehearsed_at=time.time())


def run_optimize(cfg: ServiceConfig, store: Store, job: Any, out_dir: Path,
                 ray_address: str | None) -> tuple[str, dict[str, Any], None]:
    """Optimize, then publish procedure.yaml only when it beat the configured procedure on
    the held-out incidents and passed the real-shadow verification when one is asked; a
    rehearsal of the published procedure follows, so the verdict is about it."""
    from shadowrl.app.optimize import OptimizeRequest, optimize
    from shadowrl.service.store import loads

    dep = cfg.deployment(job.deployment)
    assert dep is not None
    params = loads(job.params)
    request = OptimizeRequest(file=cfg.path_of(dep.scenario), method=params["method"],
                              episodes=params["episodes"], trials=dep.optimize.trials,
                              seed=dep.seed, out=out_dir, verify=dep.optimize.verify,
                              verify_runs=min(dep.optimize.verify_runs, params["episodes"]),
                              replicas=dep.replicas, ray_address=ray_address,
                              command=f"shadowrl serve: job {job.id} ({job.reason})")
    result = optimize(request, on_progress=Progress(store, job.id)).model_dump(mode="json")
    costs = {name: s["cost"]["mean"] for name, s in result["methods"].items()}
    best, configured = costs.get("best_static"), costs.get("configured")
    verification = result.get("verification")
    if best is None or configured is None:
        why = "no searched procedure (method without the search)"
    elif best >= configured:
        why = (f"the searched procedure ({best:g}) is not better than the configured "
               f"({configured:g})")
    elif verification is not None and not verification.get("passed"):
        why = ("the real-shadow verification failed: "
               + "; ".join(verification.get("reasons", [])))
    else:
        why = ""
    result["published"] = not why
    result["publish_reason"] = why or (f"cost {best:g} against the configured {configured:g}"
                                       + (" and verified on a real shadow" if verification
                                          else " on the held-out incidents"))
    if not why:
        store.publish(dep.name, job.id, result["procedure"])
        store.add_job(dep.name, "rehearse", "procedure published",
                      {"runs": dep.rehearse.runs, "seed": dep.seed, "at": dep.rehearse.at},
                      total=dep.rehearse.runs)
    return "succeeded", result, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one job of `shadowrl serve`.")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--job", type=int, required=True)
    parser.add_argument("--parent", type=int, default=None, help="the service's pid")
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args(argv)
    # First of all, before anything slow: Ctrl-C semantics even when the service was started
    # with SIGINT ignored, and SIGINT when the service dies (or at once if it already has).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    die_with_parent()
    try:
        if args.parent is not None and os.getppid() != args.parent:
            raise KeyboardInterrupt
        return run_job(args.config, args.job, args.ray_address)
    except KeyboardInterrupt:  # before the job could record anything of its own
        return interrupted_early(args.config, args.job)


def run_job(config: Path, job_id: int, ray_address: str | None) -> int:
    from shadowrl.service.config import load_service_config
    from shadowrl.service.store import Store

    cfg = load_service_config(config)
    store = Store(cfg.database_url)
    job = store.job(job_id)
    if job is None or job.status != "running" or job.out_dir is None:
        print(f"job {job_id} is not running", file=sys.stderr)
        return 2
    out_dir = Path(job.out_dir)
    runner = {"rehearse": run_rehearse, "optimize": run_optimize}[job.kind]
    try:
        status, result, found = runner(cfg, store, job, out_dir, ray_address)
    except KeyboardInterrupt:
        status, result, found = "interrupted", None, None
    except Exception as exc:  # the job fails; the service and other jobs go on
        message = str(exc).strip() or type(exc).__name__
        store.finish_job(job.id, "failed", error=message[:4000])
        traceback.print_exc()
        return 1
    if status == "interrupted" and store.job(job.id).cancel_requested:  # type: ignore[union-attr]
        status = "cancelled"
    error = {"interrupted": "interrupted (the service stopped)",
             "cancelled": "cancelled"}.get(status)
    store.finish_job(job.id, status, result=result, error=error, verdict=found)
    return 0


def interrupted_early(config: Path, job_id: int) -> int:
    """SIGINT before the job ran: record it (cancelled when asked), unless it has an end."""
    from shadowrl.service.config import load_service_config
    from shadowrl.service.store import Store

    cfg = load_service_config(config)
    store = Store(cfg.database_url)
    job = store.job(job_id)
    if job is not None and job.status == "running":
        status = "cancelled" if job.cancel_requested else "interrupted"
        store.finish_job(job_id, status, error=f"{status} before it started running")
    return 130


if __name__ == "__main__":
    sys.exit(main())

"""Use case ``train``: run an experiment file end to end.

A run trains the agent on Ray shadow replicas, logs params/metrics/artifacts to MLflow,
measures the policy against the configured and best static procedures on held-out seeds,
logs the policy as a pyfunc model, registers it, and moves the ``champion`` alias only when
it recovers at least as many held-out incidents as the champion and the configured and best
static procedures and burns less error budget than the champion by a paired test (p < 0.05).
An experiment that names a real backend (``verify: {backend: docker}``) also has the policy
verified there against the configured procedure (``rehearsal.verification``), and only a
passed verification may be promoted. Ray and MLflow are imported when it runs.

A run can be stopped and rerun (docs/training.md):

- Its output folder keeps ``train_run.json`` (experiment, configuration fingerprint,
  status, pid and host, MLflow run) and the agent's checkpoints (``rl/checkpoints``).
  Rerunning the same experiment into the same folder (``--out DIR``, or without ``--out``
  the newest unfinished ``runs/NAME/*``) resumes from the latest checkpoint, in a new
  MLflow run tagged ``shadowrl.resumed_from_run`` / ``shadowrl.resumed_from_timesteps``;
  ``fresh=True`` (``--fresh``) starts over.
- SIGTERM is handled like Ctrl-C: the MLflow run is ended KILLED (FAILED on an error), the
  status file says so, and :class:`TrainInterrupted` is raised.
- At start, runs of the same MLflow experiment still RUNNING whose process (on this host)
  is gone are ended FAILED (``integrations.mlflow.fail_stale_runs``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from shadowrl.app.common import LogFn, ProgressFn, check_backend_ready
from shadowrl.app.errors import UsageError
from shadowrl.app.experiment import Experiment, load_experiment, run_sweep
from shadowrl.app.models import Promotion, RayInfo, SweepResult, TrainResult
from shadowrl.core.atomic import atomic_write_json
from shadowrl.core.spec import Scenario, load_scenario
from shadowrl.rehearsal.verification import Verification
from shadowrl.rl.results import OptimizeResult

if TYPE_CHECKING:
    from shadowrl.rl.agents import AgentConfig

STATE_FILE = "train_run.json"  # in the output folder: what a rerun needs to resume
VERIFICATION_FILE = "verification.json"  # with the experiment's verify: the policy's
_CHECKPOINT = re.compile(r"^rl_model_(\d+)_steps\.zip$")  # rl.agents' checkpoint files


class TrainRequest(BaseModel):
    experiment: Path  # experiments/*.yaml
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    ray_address: str | None = None  # default: RAY_ADDRESS, else a local Ray
    out: Path | None = None  # default: the newest unfinished runs/NAME/*, else a new one
    fresh: bool = False  # start over instead of resuming from the folder's checkpoint


class TrainInterrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT or SIGTERM: its MLflow run is ended KILLED and its
    checkpoints are kept, so the same command resumes it. ``exit_code`` is the shell's
    convention for the signal (130, 143)."""

    def __init__(self, signal_name: str, out: Path | None = None) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.out = out

    @property
    def exit_code(self) -> int:
        return 128 + (signal.SIGTERM if self.signal_name == "SIGTERM" else signal.SIGINT)

    def __str__(self) -> str:
        kept = f"the checkpoints in {self.out} are kept; " if self.out is not None else ""
        return (f"interrupted by {self.signal_name}: {kept}rerun the same command to resume "
                f"from the last checkpoint (--fresh starts over)")


def train(request: TrainRequest, *, on_progress: ProgressFn | None = None,
          on_log: LogFn | None = None) -> TrainResult:
    """Raises SpecError for a bad experiment (or its scenario or agent file), UsageError when
    the run cannot start or go on (e.g. an unreachable Ray address or tracking server), and
    TrainInterrupted when SIGINT or SIGTERM stops it."""
    exp = load_experiment(request.experiment)
    log = on_log or (lambda _m: None)
    if exp.verify is not None:  # before minutes of training
        check_backend_ready(exp.verify.backend, load_scenario(exp.path_of(exp.scenario)), log)
    try:
        with _sigterm_interrupts():
            return _run(exp, request, on_progress, log)
    except TrainInterrupted as exc:
        log(str(exc))
        raise
    except (ConnectionError, ValueError, TimeoutError) as exc:
        raise UsageError(str(exc)) from None


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises like Ctrl-C does, so the run is ended and recorded rather than the
    process vanishing mid-write; a second SIGTERM acts at once (the previous handler is back
    by then). Only the main thread may set signal handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, previous)
        raise TrainInterrupted("SIGTERM")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- the output folder


@dataclass
class _Workdir:
    """Where the run writes, and what it resumes from (nothing: ``resume_from`` None)."""

    out: Path
    resume_from: int | None  # timesteps of the checkpoint it continues
    previous_run: str | None  # the MLflow run that wrote that checkpoint
    fingerprint: dict[str, Any]


def _fingerprint(exp: Experiment, config: AgentConfig, scenario_path: Path) -> dict[str, Any]:
    """What a checkpoint must have been trained with to be continued: everything but the
    number of timesteps (a rerun may train longer)."""
    from shadowrl.integrations.mlflow import scenario_hash

    agent = {k: v for k, v in config.model_dump(mode="json").items() if k != "timesteps"}
    return {"experiment": exp.metadata.name, "scenario_hash": scenario_hash(scenario_path),
            "agent": hashlib.sha256(json.dumps(agent, sort_keys=True).encode()).hexdigest()[:16],
            "seed": exp.seed, "replicas": exp.replicas}


def _read_state(out: Path) -> dict[str, Any]:
    try:
        data = json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _resume_point(rl_dir: Path) -> int | None:
    """Timesteps of the latest checkpoint (or finished policy) in ``rl_dir``."""
    steps = []
    folder = rl_dir / "checkpoints"
    if folder.is_dir():
        steps += [int(m.group(1)) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))]
    try:
        done = json.loads((rl_dir / "train_state.json").read_text()).get("timesteps")
    except (OSError, ValueError, AttributeError):
        done = None
    if isinstance(done, int) and (rl_dir / "policy.zip").is_file():
        steps.append(done)
    return max(steps) if steps else None


def _busy(state: dict[str, Any]) -> bool:
    """Is another live process on this host training into the folder right now?"""
    from shadowrl.integrations.mlflow import process_alive

    pid = state.get("pid")
    return (state.get("status") == "running" and state.get("host") == socket.gethostname()
            and isinstance(pid, int) and pid != os.getpid()
            and process_alive(pid, str(state.get("process_start") or "")))


def _workdir(exp: Experiment, request: TrainRequest, fingerprint: dict[str, Any],
             log: LogFn) -> _Workdir:
    """The output folder and what to resume: ``--out`` (refusing another experiment's
    folder or one in use), else the newest unfinished ``runs/NAME/*`` of this configuration,
    else a new ``runs/NAME/TIMESTAMP``."""
    if request.out is not None:
        out = request.out.resolve()
        state = _read_state(out)
        if state and _busy(state):
            raise UsageError(f"{out} is in use by another shadowrl train (pid {state['pid']} "
                             f"on {state['host']}); wait for it or choose another --out")
        if request.fresh or not state:
            return _Workdir(out, None, None, fingerprint)
        if state.get("fingerprint") != fingerprint:
            old = state.get("fingerprint") or {}
            differs = ", ".join(k for k in fingerprint if old.get(k) != fingerprint[k])
            raise UsageError(f"{out} holds a training of another configuration ({differs} "
                             f"differ); rerun with --fresh to start over there, or choose "
                             f"another --out")
        return _Workdir(out, _resume_point(out / "rl"), state.get("mlflow_run_id"),
                        fingerprint)
    base = (Path("runs") / exp.metadata.name).resolve()
    if not request.fresh and base.is_dir():
        for folder in sorted((p for p in base.iterdir() if p.is_dir()), reverse=True):
            state = _read_state(folder)
            if (state.get("status") in ("running", "interrupted", "failed")
                    and state.get("fingerprint") == fingerprint and not _busy(state)):
                point = _resume_point(folder / "rl")
                if point is not None:
                    log(f"resuming the unfinished run in {folder} (pass --fresh to start "
                        f"over)")
                    return _Workdir(folder, point, state.get("mlflow_run_id"), fingerprint)
    out = base / time.strftime("%Y%m%d-%H%M%S")
    k = 1
    while out.exists():
        k += 1
        out = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{k}"
    return _Workdir(out, None, None, fingerprint)


def _write_state(work: _Workdir, **fields: Any) -> None:
    from shadowrl.integrations.mlflow import process_tags

    tags = process_tags()
    state = {**_read_state(work.out), "fingerprint": work.fingerprint,
             "experiment": work.fingerprint["experiment"], "pid": os.getpid(),
             "host": tags["shadowrl.host"], "process_start": tags["shadowrl.process_start"],
             "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
    atomic_write_json(work.out / STATE_FILE, state)


# --------------------------------------------------------------------------- the run


def _run(exp: Experiment, request: TrainRequest, progress: ProgressFn | None,
         log: LogFn) -> TrainResult:
    """Open the store, fail the stale runs, pick the folder, and record how the run ends in
    its ``train_run.json``."""
    from shadowrl.integrations import mlflow as tracking
    from shadowrl.rl.agents import load_agent_config

    scenario_path = exp.path_of(exp.scenario)
    scenario = load_scenario(scenario_path)
    config = load_agent_config(exp.path_of(exp.agent))
    if exp.timesteps:
        config.timesteps = exp.timesteps
    config.n_envs = exp.replicas
    objective = exp.objective_env(config.env)
    config.env = {**config.env, **objective}
    uri = tracking.configure(tracking.tracking_uri(request.tracking_uri))
    experiment_id = tracking.use_experiment(exp.tracking.experiment)
    stale = tracking.fail_stale_runs(experiment_id)
    for run_id in stale:
        log(f"MLflow run {run_id} was left RUNNING by a process that is gone: marked FAILED")
    work = _workdir(exp, request, _fingerprint(exp, config, scenario_path), log)
    work.out.mkdir(parents=True, exist_ok=True)
    if work.resume_from is not None and exp.sweep is None:
        log(f"resuming from the checkpoint at {work.resume_from} timesteps in {work.out}")
    _write_state(work, status="running", experiment_file=str(request.experiment),
                 tracking_uri=uri, mlflow_run_id=None)
    try:
        result = _tracked(exp, request, work, scenario, scenario_path, config, objective,
                          experiment_id, uri, progress, log)
    except KeyboardInterrupt as exc:
        stop = exc if isinstance(exc, TrainInterrupted) else TrainInterrupted("SIGINT")
        stop.out = work.out
        _write_state(work, status="interrupted", error=f"stopped by {stop.signal_name}")
        raise stop from None
    except BaseException as exc:
        _write_state(work, status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    _write_state(work, status="finished", error=None)
    return result.model_copy(update={"stale_runs": stale})


def _tracked(exp: Experiment, request: TrainRequest, work: _Workdir, scenario: Scenario,
             scenario_path: Path, config: AgentConfig, objective: dict[str, Any],
             experiment_id: str, uri: str, progress: ProgressFn | None,
             log: LogFn) -> TrainResult:
    """The Ray session and the MLflow run: trained, compared, logged, registered, decided."""
    import mlflow

    from shadowrl.integrations import mlflow as tracking
    from shadowrl.integrations.ray import ray_session

    out_dir = work.out
    # ray.init installs its own SIGTERM handler (SystemExit): ours goes back on top of it
    with ray_session(request.ray_address) as session, _sigterm_interrupts():
        ray = RayInfo(address=getattr(session, "address", None), replicas=exp.replicas)
        sweep = None
        if exp.sweep is not None:
            sweep = run_sweep(exp, out_dir, log)
            config.hyperparameters = {**config.hyperparameters, **sweep.params}
        resumed = work.resume_from if exp.sweep is None else None
        run = mlflow.start_run(experiment_id=experiment_id,
                               run_name=_run_name(exp, resumed),
                               description=_description(exp, request, config, scenario,
                                                        out_dir, work, resumed),
                               tags=_run_tags(exp, request, work, resumed))
        try:
            _write_state(work, mlflow_run_id=run.info.run_id)
            mlflow.log_params(tracking.flatten({
                "agent": config.model_dump(mode="json"), "scenario": scenario.name,
                "scenario_hash": tracking.scenario_hash(scenario_path), "seed": exp.seed,
                "git_commit": tracking.git_commit(), "replicas": exp.replicas,
                "experiment_file": str(request.experiment),
                "search_trials": exp.search_trials,
                **tracking.holdout_params(exp.evaluation.seed, exp.evaluation.episodes)}))
            policy_zip = _train_policy(exp, config, scenario_path, out_dir, sweep,
                                       resumed is not None, log, progress)
            log("measuring configured, best_static and rl on the held-out seeds")
            compared, per_seed = _compare(exp, scenario, out_dir, policy_zip,
                                          request.experiment, objective, log, progress)
            _rehearse_policy(exp, scenario, config.env, out_dir, request.experiment)
            verification = _verify_policy(exp, scenario, out_dir, objective, log, progress)
            verified = tracking.log_verification(verification)
            _log_artifacts(out_dir)
            info = tracking.log_policy_model(out_dir / "policy.zip", scenario_path,
                                             procedure_path=out_dir / "procedure.yaml",
                                             runbook_path=out_dir / "runbook.yaml",
                                             registered_model_name=exp.tracking.model)
            version = str(info.registered_model_version)
        except KeyboardInterrupt as exc:
            name = exc.signal_name if isinstance(exc, TrainInterrupted) else "SIGINT"
            tracking.end_run("KILLED", f"stopped by {name} in process {os.getpid()}")
            raise
        except SystemExit as exc:
            if exc.code != signal.SIGTERM:  # Ray's own SIGTERM handler exits with 15
                tracking.end_run("FAILED", f"exited with {exc.code}")
                raise
            tracking.end_run("KILLED", f"stopped by SIGTERM in process {os.getpid()}")
            raise TrainInterrupted("SIGTERM") from None
        except BaseException as exc:
            tracking.end_run("FAILED", f"{type(exc).__name__}: {exc}")
            raise
        tracking.end_run("FINISHED")
    log("deciding the champion on the held-out seeds")
    promoted = tracking.promote_if_better(
        exp.tracking.model, version, scenario=scenario, eval_seed=exp.evaluation.seed,
        episodes=exp.evaluation.episodes,
        baselines={k: v for k, v in per_seed.items() if k != "rl"},
        require_verification=exp.verify is not None)
    log(f"champion: {promoted['reason']}")
    return TrainResult(experiment=exp.metadata.name, tracking_uri=uri, out=str(out_dir), ray=ray,
                       sweep=sweep, run_id=run.info.run_id, model=exp.tracking.model,
                       version=version, champion=Promotion.model_validate(promoted),
                       methods={k: v.downtime_s for k, v in compared.methods.items()},
                       budget_burn={k: v.budget_burn for k, v in compared.methods.items()},
                       objective=objective["objective"], comparison=compared.comparison,
                       resumed_from=resumed, verified=verified, verification=verification)


def _verify_policy(exp: Experiment, scenario: Scenario, out_dir: Path,
                   objective: dict[str, Any], log: LogFn,
                   progress: ProgressFn | None) -> Verification | None:
    """With the experiment's ``verify:``, the trained policy against the configured
    procedure on the first ``verify.runs`` held-out seeds on the real backend (and the
    simulator): the policy rolled out per incident, as it would act, not a fixed plan.
    Written to ``verification.json``; None without ``verify:``."""
    if exp.verify is None:
        return None
    from shadowrl.rehearsal.verification import seeds_text, summary_line, verify_procedures
    from shadowrl.rl.agents import load_policy
    from shadowrl.rl.evaluate import policy_runner

    seeds = range(exp.evaluation.seed, exp.evaluation.seed + exp.verify.runs)
    log(f"verifying the policy against the configured procedure on {exp.verify.backend}: "
        f"{seeds_text(seeds)} (held out), each a real rehearsal of minutes")
    policy = load_policy(out_dir / "policy.zip", name="rl")
    verification = verify_procedures(
        scenario, policy_runner(scenario, policy, **objective), scenario.procedure, seeds,
        backend=exp.verify.backend, objective=objective["objective"], winner_name="the policy",
        on_log=log, on_progress=progress)
    atomic_write_json(out_dir / VERIFICATION_FILE, verification.model_dump(mode="json"))
    log(f"verification: {summary_line(verification)}")
    return verification


def _run_name(exp: Experiment, resumed: int | None) -> str:
    """Readable and distinct: the experiment, when, and whether it continues a checkpoint."""
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"{exp.metadata.name} {when}" + (f" (resumed at {resumed})" if resumed else "")


def _description(exp: Experiment, request: TrainRequest, config: AgentConfig,
                 scenario: Scenario, out_dir: Path, work: _Workdir,
                 resumed: int | None) -> str:
    """The run's description (MLflow's ``mlflow.note.content``, shown on the run's page)."""
    e = exp.evaluation
    text = (f"`shadowrl train {request.experiment}`: {config.algorithm} on scenario "
            f"**{scenario.name}** for {config.timesteps} timesteps on {exp.replicas} Ray "
            f"replica{'s' if exp.replicas != 1 else ''}, seed {exp.seed}, objective "
            f"{config.env.get('objective', 'budget')}. The policy is compared with the "
            f"configured and best static procedures on held-out seeds {e.seed}.."
            f"{e.seed + e.episodes - 1} and registered as `{exp.tracking.model}`; it becomes "
            f"`champion` only with evidence (see the `shadowrl.promotion` tags). Outputs: "
            f"`{out_dir}`.")
    if exp.metadata.description:
        text = exp.metadata.description.strip() + "\n\n" + text
    if resumed is not None:
        text += (f" Resumed from the checkpoint at {resumed} timesteps"
                 + (f" of run `{work.previous_run}`." if work.previous_run else "."))
    return text


def _run_tags(exp: Experiment, request: TrainRequest, work: _Workdir,
              resumed: int | None) -> dict[str, str]:
    """Who runs the run (pid, host: what marks it FAILED if the process dies), where its
    outputs are, what it resumes, and a source name people can read (MLflow would show
    ``__main__.py``)."""
    from shadowrl.integrations import mlflow as tracking

    tags = {**tracking.process_tags(),
            "mlflow.source.name": f"shadowrl train {request.experiment}",
            "mlflow.source.type": "LOCAL",
            "shadowrl.command": f"shadowrl train {request.experiment}",
            "shadowrl.experiment": exp.metadata.name,
            "shadowrl.out": str(work.out)}
    commit = tracking.git_commit()
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    if resumed is not None:
        tags["shadowrl.resumed_from_timesteps"] = str(resumed)
        if work.previous_run:
            tags["shadowrl.resumed_from_run"] = work.previous_run
    return tags


def _train_policy(exp: Experiment, config: AgentConfig, scenario_path: Path, out_dir: Path,
                  sweep: SweepResult | None, resume: bool, log: LogFn,
                  progress: ProgressFn | None) -> Path:
    """The policy to register: the sweep's best trial's, else one trained now on Ray
    replicas (continuing the folder's checkpoint when ``resume``) with its metrics tracked;
    logs the training wall time."""
    import mlflow

    from shadowrl.integrations import mlflow as tracking
    from shadowrl.integrations.ray import RayVecEnv
    from shadowrl.rl.agents import train

    if sweep is not None:
        mlflow.log_dict({"trials": [t.model_dump(mode="json") for t in sweep.trials]},
                        "sweep.json")
        policy_zip, train_s = Path(sweep.policy), 0.0
    else:
        log(f"training {config.algorithm} on {exp.replicas} Ray replicas for "
            f"{config.timesteps} timesteps")
        trained = train(scenario_path, config, out_dir / "rl", seed=exp.seed, resume=resume,
                        progress=progress is not None, vec_env_factory=RayVecEnv,
                        callbacks=[tracking.MlflowMetricsCallback()])
        tracking.log_eval_history(trained.eval_history)
        policy_zip, train_s = Path(trained.model_path), trained.wall_s
    mlflow.log_metric("train_wall_s", train_s)
    return policy_zip


TRAIN_NOTE = ("This run registers the `rl` policy; procedure.yaml, bottlenecks.json and the "
              "sections above describe the best static procedure, measured beside it.")


def _compare(exp: Experiment, scenario: Scenario, out_dir: Path, policy_zip: Path,
             experiment_file: Path, objective: dict[str, Any], log: LogFn,
             progress: ProgressFn | None) -> tuple[OptimizeResult, dict[str, Any]]:
    """configured, best_static and the policy on the held-out seeds, logged as metrics; the
    policy's per-seed results are logged as ``eval_holdout.json`` (what promotion pairs).
    Returns the comparison and every method's per-seed record."""
    import mlflow

    from shadowrl.integrations import mlflow as tracking
    from shadowrl.rl.optimizer import OptimizeOptions, optimize

    compared = optimize(scenario, out_dir, OptimizeOptions(
        method="search_rl", episodes=exp.evaluation.episodes, eval_seed=exp.evaluation.seed,
        seed=exp.seed, policy=policy_zip, search_trials=exp.search_trials,
        notes=(TRAIN_NOTE,), **objective),
        f"shadowrl train {experiment_file}", log=log, progress=progress)
    rl = compared.methods["rl"]
    metrics: dict[str, float] = {}
    for name, summary in compared.methods.items():
        metrics[f"holdout_{name}_downtime_mean"] = summary.downtime_s.mean
        metrics[f"holdout_{name}_budget_burn_mean"] = summary.budget_burn.mean
        metrics[f"holdout_{name}_recovered_rate"] = summary.outcomes.recovered / summary.runs
    p = tracking.HOLDOUT_PREFIX
    metrics.update({
        f"{p}downtime_mean": rl.downtime_s.mean,
        f"{p}downtime_p95": rl.downtime_s.p95,
        f"{p}failed_requests_mean": rl.failed_requests.mean,
        f"{p}cost_mean": rl.cost.mean,
        f"{p}recovered_rate": rl.outcomes.recovered / rl.runs})
    for key in ("bad_requests", "budget_burn"):
        stats = getattr(rl, key)
        metrics.update({f"{p}{key}_{q}": getattr(stats, q) for q in ("mean", "p50", "p95",
                                                                      "max")})
    mlflow.log_metrics(metrics)
    per_seed = json.loads(Path(compared.episodes_file).read_text())["methods"]
    tracking.log_per_seed(per_seed["rl"])
    return compared, per_seed


def _rehearse_policy(exp: Experiment, scenario: Scenario, env_kwargs: dict[str, Any],
                     out_dir: Path, experiment_file: Path) -> None:
    """The learned policy rehearsed with per-second profiles: report.html, parquet."""
    from shadowrl.analysis.summary import summarize
    from shadowrl.rehearsal.campaign import write_outputs
    from shadowrl.rl.agents import load_policy
    from shadowrl.rl.env import RollbackEnv
    from shadowrl.rl.evaluate import evaluate

    env = RollbackEnv(scenario, record_profile=True, **env_kwargs)
    episodes = evaluate(env, load_policy(out_dir / "policy.zip"),
                        min(20, exp.evaluation.episodes), exp.evaluation.seed)
    runs = [e.rehearsal for e in episodes]
    write_outputs(out_dir / "rehearsal", scenario, summarize(scenario.name, "rl", runs), runs,
                  f"shadowrl train {experiment_file}")


def _log_artifacts(out_dir: Path) -> None:
    """The run's outputs; the scenario is logged once, as ``scenario/`` (by
    ``log_policy_model``), where export reads it."""
    import mlflow

    for artifact in (out_dir / "bottlenecks.json", out_dir / "comparison.md",
                     out_dir / "procedure.yaml", out_dir / "runbook.yaml",
                     out_dir / "runbook.json", out_dir / "summary.json",
                     out_dir / "episodes.json",
                     out_dir / "rehearsal" / "report.html",
                     out_dir / "rehearsal" / "profiles.parquet"):
        mlflow.log_artifact(str(artifact))

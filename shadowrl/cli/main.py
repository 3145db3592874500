"""The ``shadowrl`` command line (docs/architecture.md, The layers: a public contract).

Each command parses its flags into a request, calls its use case in ``shadowrl.app`` and
renders the typed result (``shadowrl.cli.render``). ``--json`` prints exactly one JSON object
on stdout; progress and logs go to stderr. Bad input exits 2 with ``file:line: field:
message`` lines (or ``error: message``) and no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from shadowrl.cli.calibrate import CALIBRATE_HELP, calibrate_cmd
from shadowrl.cli.commands import JSON_HELP, Command, Group
from shadowrl.cli.docker import docker_app
from shadowrl.cli.mirror import MIRROR_HELP, mirror_cmd
from shadowrl.cli.render import (
    bad_input_exits_2,
    emit_json,
    err,
    fail,
    out,
    print_export,
    print_rehearsal,
    print_summary,
    print_train,
    print_validation,
    progress_bars,
)
from shadowrl.cli.serve import SERVE_HELP, serve_cmd
from shadowrl.cli.sync import SYNC_HELP, sync_cmd
from shadowrl.rehearsal.verification import MAX_VERIFY_RUNS
from shadowrl.rl.results import ORACLE_NODES

app = typer.Typer(cls=Group, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Rehearse rollbacks in a shadow deployment before they are needed.")
app.add_typer(docker_app, name="docker", cls=Group)
app.command("calibrate", cls=Command, help=CALIBRATE_HELP)(calibrate_cmd)
app.command("sync", cls=Command, help=SYNC_HELP)(sync_cmd)
app.command("mirror", cls=Command, help=MIRROR_HELP)(mirror_cmd)
app.command("serve", cls=Command, help=SERVE_HELP)(serve_cmd)

OBJECTIVE_HELP = ("budget | downtime: minimise the SLO objective's error budget burned, or "
                  "downtime plus weighted failed requests.")
PENALTY_HELP = "Extra cost per second with the edge error rate >= 99 % (a full outage)."
PARAMS_HELP = ("Simulator parameters (YAML/JSON, e.g. calibrated/params.yaml from `shadowrl "
               "calibrate`); override the scenario's simulator.params. The real shadow "
               "ignores them.")
VERIFY_HELP = ("docker | none: before writing procedure.yaml, rehearse it and the configured "
               "procedure on the same held-out incidents on the real shadow (and the "
               "simulator); a failed verification is recorded and exits 1.")
VERIFY_RUNS_HELP = ("Incidents of the verification: the first N held-out seeds (at most "
                    "--episodes); each is a real rehearsal of minutes.")
BACKEND_HELP = ("sim | docker: the simulated shadow, or the deployment as real containers "
                "(docs/docker-shadow.md).")


def _backend(value: str) -> str:
    """``--backend``, checked before any work."""
    if value not in ("sim", "docker"):
        fail(f"--backend: must be sim or docker, got {value!r}")
    return value


def _command_line() -> str:
    """This invocation, recorded in the outputs it writes."""
    return " ".join(["shadowrl", *sys.argv[1:]])


def _log(message: str) -> None:
    """A use case's log line on stderr (above a live progress bar), printed as plain text."""
    err.print(message, markup=False)


VALIDATE_HELP = (
    "Check scenario files: prints `ok: FILE`, or `FILE:LINE: field: message` and exits 2."
    "\n\n"
    "With --json, one object: `valid`, and per file its `path`, `problems`, `scenario` name "
    "and `valid`; problems also go to stderr, and a bad file still exits 2.")


@app.command(cls=Command, help=VALIDATE_HELP)
def validate(
    files: list[Path] = typer.Argument(..., metavar="FILE", help="Scenario files to check."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Check scenario files (VALIDATE_HELP)."""
    from shadowrl.app.validate import ValidateRequest
    from shadowrl.app.validate import validate as run

    result = run(ValidateRequest(files=files))
    print_validation(result, json_out=json_out)
    if json_out:
        emit_json(result)
    if not result.ok:
        raise typer.Exit(2)


@app.command(cls=Command)
def simulate(
    file: Path = typer.Argument(..., metavar="FILE", help="Scenario YAML."),
    incident: str | None = typer.Option(None, help="Incident name (default: drawn by weight)."),
    seed: int = typer.Option(0, help="Seed: same seed, same incident and same timings."),
    procedure: Path | None = typer.Option(None, help="YAML file with a `procedure:` block."),
    backend: str = typer.Option("sim", help=BACKEND_HELP),
    params: Path | None = typer.Option(None, help=PARAMS_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Rehearse one incident in the shadow and report the rollback."""
    from shadowrl.app.simulate import SimulateRequest
    from shadowrl.app.simulate import simulate as run

    with bad_input_exits_2():
        result = run(SimulateRequest(file=file, incident=incident, seed=seed,
                                     procedure=procedure, backend=_backend(backend),
                                     params=params))
    if json_out:
        emit_json(result)
    else:
        print_rehearsal(result)


@app.command("rehearse", cls=Command)
def rehearse_cmd(
    file: Path = typer.Argument(..., metavar="FILE", help="Scenario YAML."),
    runs: int = typer.Option(20, min=1, help="Number of rehearsals (run i uses seed+i)."),
    seed: int = typer.Option(0, help="First seed."),
    procedure: Path | None = typer.Option(None, help="YAML file with a `procedure:` block."),
    out_dir: Path | None = typer.Option(None, "--out", help="Folder for report.html, "
                                        "profiles.parquet, alerts.json and summary.json."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
    history: Path | None = typer.Option(None, help="Prometheus .json or .csv history; "
                                                   "overrides deviations.history."),
    at: str = typer.Option("now", help="now | peak: place incidents at the forecast peak."),
    alert_webhook: str | None = typer.Option(
        None, help="Alertmanager-style webhook URL (or SHADOWRL_ALERT_WEBHOOK)."),
    replicas: int = typer.Option(1, min=1, help="Parallel shadow replicas (Ray)."),
    backend: str = typer.Option("sim", help=BACKEND_HELP),
    params: Path | None = typer.Option(None, help=PARAMS_HELP),
) -> None:
    """Rehearse many incidents with the procedure; profile, report and alert."""
    from shadowrl.app.rehearse import RehearseRequest
    from shadowrl.app.rehearse import rehearse as run

    request = RehearseRequest(file=file, runs=runs, seed=seed, procedure=procedure,
                              out=out_dir, history=history, at=at,
                              alert_webhook=alert_webhook, replicas=replicas,
                              command=_command_line(), backend=_backend(backend),
                              params=params)
    with bad_input_exits_2(), progress_bars() as on_progress:
        summary = run(request, on_progress=on_progress)
    if json_out:
        emit_json(summary)
    else:
        print_summary(summary, summary.outputs.model_dump() if summary.outputs else None)
    if summary.interrupted:
        err.print(f"interrupted: kept {summary.runs} finished runs")
        raise typer.Exit(130)


@app.command("optimize", cls=Command)
def optimize_cmd(
    file: Path = typer.Argument(..., metavar="FILE", help="Scenario YAML."),
    method: str = typer.Option("all", help="search | rl | all"),
    agent: Path | None = typer.Option(None, help="Agent config YAML (default: the one the "
                                                 "scenario's optimizer.agent names, else "
                                                 "agents/maskable_ppo.yaml)."),
    timesteps: int | None = typer.Option(None, min=1, max=10_000_000,
                                          help="RL training timesteps."),
    replicas: int = typer.Option(1, min=1, help="Parallel shadow replicas (Ray)."),
    seed: int = typer.Option(0, help="Seed for search and training."),
    out_dir: Path = typer.Option(Path("out/optimize"), "--out", help="Output folder."),
    episodes: int = typer.Option(100, min=1, help="Held-out incidents per method."),
    eval_seed: int = typer.Option(10000, help="First held-out seed."),
    trials: int = typer.Option(150, min=1, max=10_000,
                               help="Plans best-static search may cost (local search included)."),
    oracle_nodes: int = typer.Option(
        ORACLE_NODES, min=1, help="Oracle node budget per incident (a cap: a search stops once "
        "it has proven its optimum)."),
    params: Path | None = typer.Option(None, help=PARAMS_HELP),
    objective: str = typer.Option("budget", help=OBJECTIVE_HELP),
    full_outage_penalty: float = typer.Option(0.0, min=0.0, help=PENALTY_HELP),
    verify: str = typer.Option("none", help=VERIFY_HELP),
    verify_runs: int = typer.Option(3, min=1, max=MAX_VERIFY_RUNS, help=VERIFY_RUNS_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Find better rollback procedures and compare every method on held-out incidents.

    With --verify docker, procedure.yaml is first rehearsed on the real shadow beside the
    configured procedure; a failed verification is written down and exits 1."""
    from shadowrl.app.optimize import OptimizeRequest
    from shadowrl.app.optimize import optimize as run

    request = OptimizeRequest(file=file, method=method, agent=agent, timesteps=timesteps,
                              replicas=replicas, seed=seed, out=out_dir, episodes=episodes,
                              eval_seed=eval_seed, trials=trials, oracle_nodes=oracle_nodes,
                              objective=objective, full_outage_penalty=full_outage_penalty,
                              command=_command_line(), verify=verify, verify_runs=verify_runs,
                              params=params)
    with bad_input_exits_2(), progress_bars() as on_progress:
        result = run(request, on_progress=on_progress, on_log=_log)
    if json_out:
        emit_json(result)
    else:
        sys.stdout.write(Path(result.comparison).read_text())
        for key in ("procedure", "policy", "bottlenecks", "comparison", "verification_file"):
            value = getattr(result, key)
            if value:
                out.print(f"{key.removesuffix('_file')}: {value}", markup=False)
    verification = result.verification
    if verification is not None and not verification.passed:
        err.print(f"verification FAILED on {verification.backend}: "
                  f"{'; '.join(verification.reasons)}. {result.procedure} says so in its "
                  f"header and `shadowrl export` refuses it.", markup=False)
        raise typer.Exit(1)


@app.command("evaluate", cls=Command)
def evaluate_cmd(
    file: Path = typer.Argument(..., metavar="FILE", help="Scenario YAML."),
    policy: str = typer.Option(..., help="configured, random, greedy, oracle, PROC.yaml, "
                                         "POLICY.zip or models:/NAME@ALIAS"),
    episodes: int = typer.Option(100, min=1, help="Incidents (episode i uses seed+i)."),
    seed: int = typer.Option(10000, help="First seed."),
    replicas: int = typer.Option(1, min=1, help="Parallel shadow replicas (Ray)."),
    objective: str = typer.Option("budget", help="budget | downtime: what the reported cost "
                                                 "measures."),
    full_outage_penalty: float = typer.Option(0.0, min=0.0, help=PENALTY_HELP),
    backend: str = typer.Option("sim", help=BACKEND_HELP),
    params: Path | None = typer.Option(None, help=PARAMS_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Measure a policy on fixed incidents: the same seeds give every policy the same ones."""
    from shadowrl.app.evaluate import EvaluateRequest
    from shadowrl.app.evaluate import evaluate as run

    request = EvaluateRequest(file=file, policy=policy, episodes=episodes, seed=seed,
                              replicas=replicas, objective=objective,
                              full_outage_penalty=full_outage_penalty,
                              backend=_backend(backend), params=params)
    with bad_input_exits_2(), progress_bars() as on_progress:
        summary = run(request, on_progress=on_progress)
    if json_out:
        emit_json(summary)
    else:
        print_summary(summary)


@app.command("train", cls=Command)
def train_cmd(
    experiment: Path = typer.Argument(..., metavar="EXPERIMENT",
                                      help="Experiment YAML (experiments/*.yaml)."),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
    ray_address: str | None = typer.Option(
        None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)."),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Output folder (default: the newest unfinished runs/NAME/*, else "
                            "a new runs/NAME/TIMESTAMP)."),
    fresh: bool = typer.Option(
        False, "--fresh", help="Start over instead of resuming the checkpoint of an "
                               "unfinished run (in --out, or the newest unfinished "
                               "runs/NAME/*)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Train, evaluate, track and register a policy as an experiment file describes.

    Rerunning the same command resumes from the last checkpoint; Ctrl-C or SIGTERM ends the
    MLflow run as KILLED (exit 130 or 143)."""
    from shadowrl.app.train import TrainInterrupted, TrainRequest
    from shadowrl.app.train import train as run

    request = TrainRequest(experiment=experiment, tracking_uri=tracking_uri,
                           ray_address=ray_address, out=out_dir, fresh=fresh)
    try:
        with bad_input_exits_2(), progress_bars() as on_progress:
            result = run(request, on_progress=on_progress, on_log=_log)
    except TrainInterrupted as exc:  # the message went out through on_log
        raise typer.Exit(exc.exit_code) from None
    if json_out:
        emit_json(result)
    else:
        print_train(result)


EXPORT_HELP = (
    "Export a procedure as shadowrl YAML, an Argo Workflow, Chaos Toolkit or a script."
    "\n\n"
    "Steps without a Kubernetes command become flagged, failing placeholders. A registered "
    "model (or a training run) is an adaptive policy, which cannot be exported as a fixed "
    "procedure yet: the procedure logged with it (the best static one found while training) "
    "is exported instead, and the output says so, with both evaluations.")


@app.command("export", cls=Command, help=EXPORT_HELP)
def export(
    source: str = typer.Argument(..., metavar="SOURCE",
                                 help="procedure.yaml, scenario YAML, MLflow run id or "
                                 "models:/NAME@ALIAS."),
    fmt: str = typer.Option(..., "--format", help="yaml | argo | chaostoolkit | shell"),
    out_file: Path | None = typer.Option(None, "--out", help="Write here (atomically) "
                                                             "instead of stdout."),
    scenario: Path | None = typer.Option(None, help="Scenario YAML to check a procedure "
                                                    "file against."),
    image: str | None = typer.Option(None, help="Container image of the Argo steps "
                                                "(default bitnami/kubectl:latest)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP + " Without --out the "
                                                   "exported text is its `text`."),
) -> None:
    """Export a procedure (EXPORT_HELP)."""
    from shadowrl.app.export import ExportRequest
    from shadowrl.app.export import export as run

    request = ExportRequest(source=source, format=fmt, out=out_file, scenario=scenario,
                            image=image)
    with bad_input_exits_2():
        result = run(request, on_warning=lambda w: sys.stderr.write(f"warning: {w}\n"))
    if json_out:
        emit_json(result)
    else:
        print_export(result)


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    app()

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

from shadowrl.cli.render import (
    bad_input_exits_2,
    emit_json,
    err,
    out,
    print_rehearsal,
    print_summary,
    print_train,
    print_validation,
    progress_bars,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Rehearse rollbacks in a shadow deployment before they are needed.")


OBJECTIVE_HELP = ("budget | downtime: minimise the SLO objective's error budget burned, or "
                  "downtime plus weighted failed requests.")
PENALTY_HELP = "Extra cost per second with the edge error rate >= 99 % (a full outage)."


def _command_line() -> str:
    """This invocation, recorded in the outputs it writes."""
    return " ".join(["shadowrl", *sys.argv[1:]])


def _log(message: str) -> None:
    err.print(message)


@app.command()
def validate(files: list[Path] = typer.Argument(..., help="Scenario files to check.")) -> None:
    """Check scenario files: prints `ok: FILE`, or `FILE:LINE: field: message` and exits 2."""
    from shadowrl.app.validate import ValidateRequest
    from shadowrl.app.validate import validate as run

    result = run(ValidateRequest(files=files))
    print_validation(result)
    if not result.ok:
        raise typer.Exit(2)


@app.command()
def simulate(
    file: Path = typer.Argument(..., help="Scenario YAML."),
    incident: str | None = typer.Option(None, help="Incident name (default: drawn by weight)."),
    seed: int = typer.Option(0, help="Seed: same seed, same incident and same timings."),
    procedure: Path | None = typer.Option(None, help="YAML file with a `procedure:` block."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Rehearse one incident in the simulated shadow and report the rollback."""
    from shadowrl.app.simulate import SimulateRequest
    from shadowrl.app.simulate import simulate as run

    with bad_input_exits_2():
        result = run(SimulateRequest(file=file, incident=incident, seed=seed,
                                     procedure=procedure))
    if json_out:
        emit_json(result)
    else:
        print_rehearsal(result)


@app.command("rehearse")
def rehearse_cmd(
    file: Path = typer.Argument(..., help="Scenario YAML."),
    runs: int = typer.Option(20, min=1, help="Number of rehearsals (run i uses seed+i)."),
    seed: int = typer.Option(0, help="First seed."),
    procedure: Path | None = typer.Option(None, help="YAML file with a `procedure:` block."),
    out_dir: Path | None = typer.Option(None, "--out", help="Folder for report.html, "
                                        "profiles.parquet, alerts.json and summary.json."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    history: Path | None = typer.Option(None, help="Prometheus .json or .csv history; "
                                                   "overrides deviations.history."),
    at: str = typer.Option("now", help="now | peak: place incidents at the forecast peak."),
    alert_webhook: str | None = typer.Option(
        None, help="Alertmanager-style webhook URL (or SHADOWRL_ALERT_WEBHOOK)."),
    replicas: int = typer.Option(1, min=1, help="Parallel shadow replicas (Ray)."),
) -> None:
    """Rehearse many incidents with the procedure; profile, report and alert."""
    from shadowrl.app.rehearse import RehearseRequest
    from shadowrl.app.rehearse import rehearse as run

    request = RehearseRequest(file=file, runs=runs, seed=seed, procedure=procedure,
                              out=out_dir, history=history, at=at,
                              alert_webhook=alert_webhook, replicas=replicas,
                              command=_command_line())
    with bad_input_exits_2(), progress_bars() as on_progress:
        summary = run(request, on_progress=on_progress)
    if json_out:
        emit_json(summary)
    else:
        print_summary(summary, summary.outputs.model_dump() if summary.outputs else None)
    if summary.interrupted:
        err.print(f"interrupted: kept {summary.runs} finished runs")
        raise typer.Exit(130)


@app.command("optimize")
def optimize_cmd(
    file: Path = typer.Argument(..., help="Scenario YAML."),
    method: str = typer.Option("all", help="search | rl | all"),
    agent: Path | None = typer.Option(None, help="Agent config YAML (default: "
                                                 "agents/maskable_ppo.yaml)."),
    timesteps: int | None = typer.Option(None, min=1, help="RL training timesteps."),
    replicas: int = typer.Option(1, min=1, help="Parallel shadow replicas (Ray)."),
    seed: int = typer.Option(0, help="Seed for search and training."),
    out_dir: Path = typer.Option(Path("out/optimize"), "--out", help="Output folder."),
    episodes: int = typer.Option(100, min=1, help="Held-out incidents per method."),
    eval_seed: int = typer.Option(10000, help="First held-out seed."),
    trials: int = typer.Option(150, min=1, help="Best-static search trials."),
    oracle_nodes: int = typer.Option(5000, min=1, help="Oracle node budget per incident."),
    objective: str = typer.Option("budget", help=OBJECTIVE_HELP),
    full_outage_penalty: float = typer.Option(0.0, min=0.0, help=PENALTY_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Find better rollback procedures and compare every method on held-out incidents."""
    from shadowrl.app.optimize import OptimizeRequest
    from shadowrl.app.optimize import optimize as run

    request = OptimizeRequest(file=file, method=method, agent=agent, timesteps=timesteps,
                              replicas=replicas, seed=seed, out=out_dir, episodes=episodes,
                              eval_seed=eval_seed, trials=trials, oracle_nodes=oracle_nodes,
                              objective=objective, full_outage_penalty=full_outage_penalty,
                              command=_command_line())
    with bad_input_exits_2(), progress_bars() as on_progress:
        result = run(request, on_progress=on_progress, on_log=_log)
    if json_out:
        emit_json(result)
        return
    sys.stdout.write(Path(result.comparison).read_text())
    for key in ("procedure", "policy", "bottlenecks", "comparison"):
        value = getattr(result, key)
        if value:
            out.print(f"{key}: {value}")


@app.command("evaluate")
def evaluate_cmd(
    file: Path = typer.Argument(..., help="Scenario YAML."),
    policy: str = typer.Option(..., help="configured, random, greedy, oracle, PROC.yaml, "
                                         "POLICY.zip or models:/NAME@ALIAS"),
    episodes: int = typer.Option(100, min=1, help="Incidents (episode i uses seed+i)."),
    seed: int = typer.Option(10000, help="First seed."),
    replicas: int = typer.Option(1, min=1, help="Parallel shadow replicas (Ray)."),
    objective: str = typer.Option("budget", help="budget | downtime: what the reported cost "
                                                 "measures."),
    full_outage_penalty: float = typer.Option(0.0, min=0.0, help=PENALTY_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Measure a policy on fixed incidents: the same seeds give every policy the same ones."""
    from shadowrl.app.evaluate import EvaluateRequest
    from shadowrl.app.evaluate import evaluate as run

    request = EvaluateRequest(file=file, policy=policy, episodes=episodes, seed=seed,
                              replicas=replicas, objective=objective,
                              full_outage_penalty=full_outage_penalty)
    with bad_input_exits_2(), progress_bars() as on_progress:
        summary = run(request, on_progress=on_progress)
    if json_out:
        emit_json(summary)
    else:
        print_summary(summary)


@app.command("train")
def train_cmd(
    experiment: Path = typer.Argument(..., help="Experiment YAML (experiments/*.yaml)."),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
    ray_address: str | None = typer.Option(
        None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output folder (default: "
                                                            "runs/NAME/TIMESTAMP)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Train, evaluate, track and register a policy as an experiment file describes."""
    from shadowrl.app.train import TrainRequest
    from shadowrl.app.train import train as run

    request = TrainRequest(experiment=experiment, tracking_uri=tracking_uri,
                           ray_address=ray_address, out=out_dir)
    with bad_input_exits_2(), progress_bars() as on_progress:
        result = run(request, on_progress=on_progress, on_log=_log)
    if json_out:
        emit_json(result)
    else:
        print_train(result)


@app.command("export")
def export(
    source: str = typer.Argument(..., help="procedure.yaml, scenario YAML, MLflow run id or "
                                           "models:/NAME@ALIAS."),
    fmt: str = typer.Option(..., "--format", help="yaml | argo | chaostoolkit | shell"),
    out_file: Path | None = typer.Option(None, "--out", help="Write here (atomically) "
                                                             "instead of stdout."),
    scenario: Path | None = typer.Option(None, help="Scenario YAML to check a procedure "
                                                    "file against."),
    image: str | None = typer.Option(None, help="Container image of the Argo steps "
                                                "(default bitnami/kubectl:latest)."),
) -> None:
    """Export a procedure as shadowrl YAML, an Argo Workflow, a Chaos Toolkit experiment or a
    shell script; steps without a Kubernetes command become flagged, failing placeholders."""
    from shadowrl.app.export import ExportRequest
    from shadowrl.app.export import export as run

    request = ExportRequest(source=source, format=fmt, out=out_file, scenario=scenario,
                            image=image)
    with bad_input_exits_2():
        result = run(request, on_warning=lambda w: sys.stderr.write(f"warning: {w}\n"))
    if result.written is None:
        sys.stdout.write(result.text)
        sys.stdout.flush()
    else:
        sys.stderr.write(f"wrote {result.written}\n")


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    app()

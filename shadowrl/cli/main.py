"""The ``shadowrl`` command line (DESIGN.md section 5: a public contract).

``--json`` prints exactly one JSON object on stdout; progress and logs go to stderr. Bad input
exits 2 with ``file:line: field: message`` lines and no traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from shadowrl.core.spec import (
    Problem,
    Procedure,
    Scenario,
    SpecError,
    load_procedure,
    load_scenario,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Rehearse rollbacks in a shadow deployment before they are needed.")
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)


class UsageProblem(Exception):
    """A user error that is not a file problem: printed as one line, exit 2."""


def fail(problems: list[Problem] | str) -> NoReturn:
    if isinstance(problems, str):
        sys.stderr.write(f"error: {problems}\n")
    else:
        for p in problems:
            sys.stderr.write(f"{p}\n")
    raise typer.Exit(2)


def load_or_exit(path: Path) -> Scenario:
    try:
        return load_scenario(path)
    except SpecError as exc:
        fail(exc.problems)


def procedure_or_exit(path: Path | None, scenario: Scenario) -> Procedure:
    if path is None:
        return scenario.procedure
    try:
        return load_procedure(path, scenario)
    except SpecError as exc:
        fail(exc.problems)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


@app.command()
def validate(files: list[Path] = typer.Argument(..., help="Scenario files to check.")) -> None:
    """Check scenario files: prints `ok: FILE`, or `FILE:LINE: field: message` and exits 2."""
    bad = False
    for path in files:
        try:
            load_scenario(path)
        except SpecError as exc:
            bad = True
            for p in exc.problems:
                sys.stderr.write(f"{p}\n")
            continue
        out.print(f"ok: {path}", markup=False)
    if bad:
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
    from shadowrl.core.errors import NoBreachError
    from shadowrl.rehearsal.runner import rehearse

    sc = load_or_exit(file)
    proc = procedure_or_exit(procedure, sc)
    if incident is not None and incident not in {i.name for i in sc.incidents}:
        fail(f"{file}: unknown incident '{incident}' (known: "
             f"{', '.join(i.name for i in sc.incidents)})")
    try:
        result = rehearse(sc, seed, incident=incident, procedure=proc)
    except NoBreachError as exc:
        fail(f"{file}: {exc}")
    data = result.to_json()
    if json_out:
        emit_json(data)
        return
    print_rehearsal(data)


def history_or_exit(path: Path | None, scenario: Scenario) -> Any:
    """``--history`` overrides ``deviations.history``; the format comes from the extension."""
    from shadowrl.rehearsal.deviation import load_history
    from shadowrl.traffic.history import HistoryError

    spec = scenario.deviations.history
    if path is None and spec is None:
        return None
    if path is not None:
        fmt = {".json": "prometheus", ".csv": "csv"}.get(path.suffix.lower())
        if fmt is None:
            fail(f"{path}: --history needs a .json (Prometheus) or .csv file")
        source, column = path, "value"
    else:
        assert spec is not None
        base = getattr(scenario, "_source", Path(".")).parent
        source, fmt, column = base / spec.file, spec.format, spec.column
    try:
        return load_history(source, fmt, column=column)
    except FileNotFoundError:
        fail(f"{source}: no such history file")
    except HistoryError as exc:
        fail(str(exc))


@app.command("rehearse")
def rehearse_cmd(
    file: Path = typer.Argument(..., help="Scenario YAML."),
    runs: int = typer.Option(20, min=1, help="Number of rehearsals (run i uses seed+i)."),
    seed: int = typer.Option(0, help="First seed."),
    procedure: Path | None = typer.Option(None, help="YAML file with a `procedure:` block."),
    out: Path | None = typer.Option(None, help="Folder for report.html, profiles.parquet, "
                                               "alerts.json and summary.json."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    history: Path | None = typer.Option(None, help="Prometheus .json or .csv history; "
                                                   "overrides deviations.history."),
    at: str = typer.Option("now", help="now | peak: place incidents at the forecast peak."),
    alert_webhook: str | None = typer.Option(
        None, help="Alertmanager-style webhook URL (or SHADOWRL_ALERT_WEBHOOK)."),
    replicas: int = typer.Option(1, min=1, help="Parallel shadow replicas (Ray)."),
) -> None:
    """Rehearse many incidents with the procedure; profile, report and alert."""
    from shadowrl.core.errors import NoBreachError
    from shadowrl.rehearsal.campaign import (
        all_alerts,
        run_campaign,
        send_alerts,
        summarize_campaign,
        write_outputs,
    )

    if at not in ("now", "peak"):
        fail(f"--at must be 'now' or 'peak', not {at!r}")
    sc = load_or_exit(file)
    proc = procedure_or_exit(procedure, sc)
    hist = history_or_exit(history, sc)
    try:
        with _maybe_ray(replicas):
            extra: dict[str, Any] = {}
            if replicas > 1:
                from shadowrl.integrations.ray import RayRehearseFn

                extra["rehearse_fn"] = RayRehearseFn(replicas, window=max(runs, 1))
            campaign = run_campaign(sc, runs, seed, procedure=proc, history=hist, at=at,
                                    record_profile=out is not None, **extra)
    except NoBreachError as exc:
        fail(f"{file}: {exc}")
    summary = summarize_campaign(sc, "configured" if procedure is None else str(procedure),
                                 campaign)
    if hist is not None:
        summary["history"] = hist.source
    alerts = all_alerts(campaign.runs)
    if out is not None:
        summary["outputs"] = write_outputs(out, sc, summary, campaign.runs,
                                           " ".join(["shadowrl", *sys.argv[1:]]))
    errors = send_alerts(alerts, out, alert_webhook)
    if errors:
        summary["alert_errors"] = errors
    if json_out:
        emit_json(summary)
    else:
        print_summary(summary)
    if campaign.interrupted:
        err.print(f"interrupted: kept {len(campaign.runs)} finished runs")
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
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Find better rollback procedures and compare every method on held-out incidents."""
    from shadowrl.rl.optimizer import OptimizeOptions, methods_for, optimize

    sc = load_or_exit(file)
    try:
        methods_for(method)
    except ValueError as exc:
        fail(str(exc))
    if agent is not None:
        agent_or_exit(agent)
    opts = OptimizeOptions(method=method, agent=agent, timesteps=timesteps, replicas=replicas,
                           seed=seed, episodes=episodes, eval_seed=eval_seed,
                           search_trials=trials, oracle_nodes=oracle_nodes)
    command = " ".join(["shadowrl", *sys.argv[1:]])
    with _progress() as bar:
        progress = _named_tasks(bar)
        with _maybe_ray(replicas):
            result = optimize(sc, out_dir, opts, command, log=lambda m: err.print(m),
                              progress=progress)
    if json_out:
        emit_json(result)
        return
    sys.stdout.write((out_dir / "comparison.md").read_text())
    for key in ("procedure", "policy", "bottlenecks", "comparison"):
        if result.get(key):
            out.print(f"{key}: {result[key]}")


def _maybe_ray(replicas: int) -> Any:
    """A Ray session (local, or RAY_ADDRESS) when work fans out over several replicas."""
    import contextlib

    if replicas <= 1:
        return contextlib.nullcontext()
    from shadowrl.integrations.ray import ray_session

    return ray_session()


def _named_tasks(bar: Any) -> Any:
    """A ``progress(name, done, total)`` callback showing one bar per named task."""
    tasks: dict[str, Any] = {}

    def progress(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=total)
        bar.update(tasks[name], completed=done, total=total)

    return progress


def _progress() -> Any:
    from shadowrl.rehearsal.campaign import progress_bar

    return progress_bar(console=err)


def agent_or_exit(path: Path) -> Any:
    from shadowrl.rl.agents import load_agent_config

    try:
        return load_agent_config(path)
    except SpecError as exc:
        fail(exc.problems)


def resolve_policy(spec: str, scenario: Scenario) -> Any:
    """configured | random | greedy | oracle | PROCEDURE.yaml | POLICY.zip | models:/NAME@ALIAS"""
    from shadowrl.core.plan import configured_plan
    from shadowrl.rl.policy import StaticPolicy
    from shadowrl.rl.search import BUILTIN_POLICIES, builtin_policy

    if spec in BUILTIN_POLICIES:
        return builtin_policy(spec, scenario.procedure)
    if spec.startswith("models:/"):
        from shadowrl.integrations.mlflow import load_registered_policy

        try:
            return load_registered_policy(spec)
        except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; all are bad input
            fail(f"{spec}: {exc}")
    path = Path(spec)
    if not path.exists():
        fail(f"{spec}: no such policy (use configured, random, greedy, oracle, a procedure "
             f".yaml, a policy .zip or models:/NAME@ALIAS)")
    if path.suffix == ".zip":
        from shadowrl.rl.agents import load_policy

        try:
            return load_policy(path, name=path.name)
        except Exception as exc:  # noqa: BLE001 - any load failure is a bad input file
            fail(f"{path}: cannot load policy: {exc}")
    proc = procedure_or_exit(path, scenario)
    return StaticPolicy(configured_plan(proc), name=str(path)), proc


@app.command("evaluate")
def evaluate_cmd(
    file: Path = typer.Argument(..., help="Scenario YAML."),
    policy: str = typer.Option(..., help="configured, random, greedy, oracle, PROC.yaml, "
                                         "POLICY.zip or models:/NAME@ALIAS"),
    episodes: int = typer.Option(100, min=1, help="Incidents (episode i uses seed+i)."),
    seed: int = typer.Option(10000, help="First seed."),
    replicas: int = typer.Option(1, min=1, help="Parallel shadow replicas (Ray)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Measure a policy on fixed incidents: the same seeds give every policy the same ones."""
    from shadowrl.analysis.summary import summarize
    from shadowrl.rl.env import RollbackEnv
    from shadowrl.rl.evaluate import evaluate

    sc = load_or_exit(file)
    resolved = resolve_policy(policy, sc)
    proc = None
    if isinstance(resolved, tuple):
        resolved, proc = resolved
    env = RollbackEnv(sc, procedure=proc)
    try:
        with _progress() as bar, _maybe_ray(replicas):
            task = bar.add_task(f"evaluating {resolved.name}", total=episodes)
            if replicas > 1:
                from shadowrl.integrations.ray import parallel_evaluate
                from shadowrl.rl.search import BUILTIN_POLICIES

                shipped = policy if (policy in BUILTIN_POLICIES
                                     or policy.endswith(".zip")) else resolved
                eps = parallel_evaluate(sc, shipped, episodes, seed, replicas,
                                        env_kwargs={"procedure": proc} if proc else None,
                                        on_episode=lambda i: bar.advance(task))
            else:
                eps = evaluate(env, resolved, episodes, seed, lambda i: bar.advance(task))
    except (KeyError, ValueError) as exc:
        fail(f"{policy}: does not fit {file}: {exc}")
    summary = summarize(sc.name, policy, [e.rehearsal for e in eps])
    summary["cost"] = {"mean": round(sum(e.cost for e in eps) / len(eps), 4)}
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
    from shadowrl.app.experiment import load_experiment, run_experiment

    try:
        load_experiment(experiment)
    except SpecError as exc:
        fail(exc.problems)
    with _progress() as bar:
        progress = _named_tasks(bar)
        try:
            result = run_experiment(experiment, tracking_uri=tracking_uri,
                                    ray_address=ray_address, out_dir=out_dir,
                                    log=lambda m: err.print(m), progress=progress)
        except (ConnectionError, ValueError) as exc:  # e.g. an unreachable --ray-address
            fail(str(exc))
    if json_out:
        emit_json(result)
        return
    champion = result["champion"]
    out.print(f"run {result['run_id']} in {result['tracking_uri']}")
    out.print(f"registered {result['model']} version {result['version']}; champion: "
              f"version {champion.get('champion_version')} "
              f"({'promoted' if champion.get('promoted') else 'kept'})")
    for name, d in result["methods"].items():
        out.print(f"  {name:12s} downtime mean {d['mean']:.0f}s p95 {d['p95']:.0f}s")
    out.print(f"comparison: {result['comparison']}")


def print_summary(summary: dict[str, Any]) -> None:
    o = summary["outcomes"]
    d = summary["downtime_s"]
    out.print(f"[bold]{summary['scenario']}[/] policy [bold]{summary['policy']}[/]: "
              f"{summary['runs']} runs, [green]{o['recovered']} recovered[/], "
              f"[red]{o['rollback_failed']} failed[/], "
              f"[red]{o['rollback_ineffective']} ineffective[/]")
    out.print(f"downtime mean {d['mean']:.0f}s  p50 {d['p50']:.0f}s  p95 {d['p95']:.0f}s  "
              f"max {d['max']:.0f}s; failed requests mean "
              f"{summary['failed_requests']['mean']:.0f}")
    table = Table("step", "mean s", "p95 s", "downtime share")
    for s in summary["steps"]:
        table.add_row(s["name"], f"{s['mean_s']:.0f}", f"{s['p95_s']:.0f}",
                      f"{s['downtime_share']:.0%}")
    out.print(table)
    for a in summary["alerts"]:
        out.print(f"[yellow]{a['kind']}[/] x{a['count']}: {a['message']}", markup=True,
                  highlight=False)
    for key, path in summary.get("outputs", {}).items():
        out.print(f"{key}: {path}")


def print_rehearsal(data: dict[str, Any]) -> None:
    colour = {"recovered": "green", "rollback_failed": "red",
              "rollback_ineffective": "red"}[data["outcome"]]
    out.print(f"[bold]{data['scenario']}[/] incident [bold]{data['incident']}[/] "
              f"(seed {data['seed']}, backend {data['backend']}): "
              f"[{colour}]{data['outcome']}[/]")
    out.print(f"breach at {data['breach_at_s']:.0f}s, rollback took {data['rollback_s']:.0f}s, "
              f"downtime {data['downtime_s']:.0f}s, failed requests "
              f"{data['failed_requests']:.0f}")
    table = Table("step", "status", "settings", "start s", "end s", "downtime s", "failed req")
    for s in data["steps"]:
        settings = ", ".join(f"{k}={v}" for k, v in s["settings"].items())
        table.add_row(s["name"], s["status"], settings, f"{s['start_s']:.0f}",
                      f"{s['end_s']:.0f}", f"{s['downtime_s']:.0f}",
                      f"{s['failed_requests']:.0f}")
    out.print(table)
    for a in data["alerts"]:
        style = "red" if a["severity"] == "critical" else "yellow"
        out.print(f"[{style}]{a['severity']}[/] {a['kind']}: {a['message']}", highlight=False)


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
    import os
    import shlex

    from shadowrl.core.atomic import atomic_write_text
    from shadowrl.export.formats import (
        DEFAULT_IMAGE,
        FORMATS,
        SourceError,
        load_source,
        placeholders,
    )
    from shadowrl.export.formats import render as render_export

    if fmt not in FORMATS:
        fail(f"unknown format {fmt!r} (use {', '.join(FORMATS)})")
    try:
        src = load_source(source, scenario)
    except SpecError as exc:
        fail(exc.problems)
    except SourceError as exc:
        fail(str(exc))
    argv = ["shadowrl", "export", source, "--format", fmt]
    if scenario is not None:
        argv += ["--scenario", str(scenario)]
    if image is not None:
        argv += ["--image", image]
    if out_file is not None:
        argv += ["--out", str(out_file)]
    text = render_export(src, fmt, command=shlex.join(argv), image=image or DEFAULT_IMAGE)
    for warning in src.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    if fmt != "yaml":
        for item in placeholders(src):
            sys.stderr.write(f"warning: {item}\n")
    if out_file is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        atomic_write_text(out_file, text)
        if fmt == "shell":
            os.chmod(out_file, 0o755)
    except OSError as exc:
        fail(f"{out_file}: cannot write: {exc.strerror or exc}")
    sys.stderr.write(f"wrote {out_file}\n")


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    app()

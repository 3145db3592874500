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

from shadowrl.spec import Problem, Procedure, Scenario, SpecError, load_procedure, load_scenario

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
    from shadowrl.rehearsal import NoBreachError, rehearse

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
    from shadowrl.deviation import load_history
    from shadowrl.history import HistoryError

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
) -> None:
    """Rehearse many incidents with the procedure; profile, report and alert."""
    from shadowrl.campaign import (
        all_alerts,
        run_campaign,
        send_alerts,
        summarize_campaign,
        write_outputs,
    )
    from shadowrl.rehearsal import NoBreachError

    if at not in ("now", "peak"):
        fail(f"--at must be 'now' or 'peak', not {at!r}")
    sc = load_or_exit(file)
    proc = procedure_or_exit(procedure, sc)
    hist = history_or_exit(history, sc)
    try:
        campaign = run_campaign(sc, runs, seed, procedure=proc, history=hist, at=at,
                                record_profile=out is not None)
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


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    app()

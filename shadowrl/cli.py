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

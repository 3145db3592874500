"""``shadowrl sync``: write a live deployment into a scenario, report drift (docs/sync.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from shadowrl.cli.commands import JSON_HELP
from shadowrl.cli.render import bad_input_exits_2, emit_json, err, out, table

if TYPE_CHECKING:
    from shadowrl.app.sync import SyncResult

SYNC_HELP = (
    "Read a live deployment (SOURCE: docker:PROJECT, compose:FILE, k8s:FILE_OR_DIR or "
    "k8s-cluster:) and write it into the scenario's deployment: services, replicas, "
    "versions, config identity, flags and calls, keeping everything written by hand. A new "
    "scenario file also gets a starter SLO, incidents and procedure. Prints the drift (what "
    "changed since the last sync). Exit 0 when in sync or written, 1 on drift with "
    "--check (nothing is written), 2 on bad input. --watch follows the live deployment; "
    "with --shadow a Docker shadow of the scenario follows it too (a real rolling update).")


def sync_cmd(
    source: str = typer.Argument(..., metavar="SOURCE",
                                 help="docker:PROJECT, compose:FILE, k8s:FILE_OR_DIR or "
                                      "k8s-cluster:"),
    scenario: Path = typer.Option(..., "--scenario", help="The scenario file to write or "
                                                          "update."),
    check: bool = typer.Option(False, "--check", help="Compare only; exit 1 on drift (CI)."),
    watch: bool = typer.Option(False, "--watch", help="Follow the live deployment until "
                                                      "Ctrl-C."),
    interval: float | None = typer.Option(None, "--interval", min=0.05,
                                          help="Seconds between polls "
                                          "with --watch (default 5)."),
    shadow: bool = typer.Option(False, "--shadow", help="With --watch: keep a Docker shadow "
                                "running and roll it to each new live version/config."),
    batch: int = typer.Option(1, "--batch", min=1, help="Replicas the shadow rolls at a "
                              "time with --shadow."),
    kubeconfig: Path | None = typer.Option(None, "--kubeconfig", help="k8s-cluster: the "
                                           "kubeconfig (default ~/.kube/config)."),
    context: str | None = typer.Option(None, "--context", help="k8s-cluster: the context."),
    namespace: str | None = typer.Option(None, "--namespace", help="k8s, k8s-cluster: the "
                                         "namespace."),
    name: str | None = typer.Option(None, "--name", help="metadata.name of a new scenario "
                                    "(default: the file's name)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Sync a scenario's deployment from a live one (SYNC_HELP)."""
    from shadowrl.app.sync import SyncRequest, sync
    from shadowrl.app.sync import watch as watch_live

    request = SyncRequest(source=source, scenario=scenario, check=check, watch=watch,
                          interval=interval, shadow=shadow, batch=batch,
                          kubeconfig=kubeconfig, context=context, namespace=namespace,
                          name=name)
    result: SyncResult
    try:
        with bad_input_exits_2():
            if watch:
                result = watch_live(request, on_log=lambda m: err.print(m, markup=False))
            else:
                result = sync(request)
    except KeyboardInterrupt:
        err.print("stopped", markup=False)
        raise typer.Exit(130) from None
    if watch:
        return
    if json_out:
        emit_json(result)
    else:
        print_sync(result)
    if check and result.changes:
        raise typer.Exit(1)


def print_sync(result: SyncResult) -> None:
    """The drift table and what was done, warnings on stderr."""
    for warning in result.warnings:
        err.print(f"warning: {warning}", markup=False)
    if result.changes and result.status != "created":
        rows = table("component", "field", "scenario", "live", "note")
        for c in result.changes:
            rows.add_row(escape(c.component), escape(c.field), escape(_shown(c.scenario)),
                         escape(_shown(c.live)), escape(c.note))
        out.print(rows)
    verdict = {"in_sync": "in sync", "drift": f"drift: {len(result.changes)} change(s)",
               "updated": f"updated: {len(result.changes)} change(s) written",
               "created": f"created from {len(result.changes)} live component(s)"}
    out.print(f"{result.scenario}: {verdict[result.status]} (source {result.source})",
              markup=False)


def _shown(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "[]"
    return str(value)

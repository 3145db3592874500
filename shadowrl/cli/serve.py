"""``shadowrl serve``: the continuous service (docs/service.md)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from shadowrl.cli.commands import JSON_HELP
from shadowrl.cli.render import bad_input_exits_2, emit_json, err, out

SERVE_HELP = (
    "Run the service of CONFIG (kind: Service): keep each deployment's scenario in sync with "
    "its live side, rehearse on schedules and on every change (ahead of the forecast peak "
    "with rehearse.at: peak), re-optimize and publish verified procedures, alert, and serve "
    "the HTTP API (verdicts for Argo Rollouts and Flagger, jobs, procedures, /metrics) and "
    "the dashboard at /dashboard/. State lives in a database (SQLite by default). Ctrl-C or "
    "SIGTERM stops it (with --json, printing what the session did); a restart resumes the "
    "schedules.")


def serve_cmd(
    config: Path = typer.Argument(..., metavar="CONFIG", help="The service config (YAML)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every "
                             "interface)."),
    port: int = typer.Option(8080, min=0, max=65535, help="Port to listen on (0: any free)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="A Ray cluster for "
                                           "the jobs' shadow replicas (default: local)."),
    no_access_log: bool = typer.Option(False, "--no-access-log",
                                       help="Do not log each request (tokens never are)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Run the service (SERVE_HELP)."""
    from shadowrl.app.serve import ServeRequest, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    request = ServeRequest(config=config, host=host, port=port, ray_address=ray_address,
                           access_log=not no_access_log)
    try:
        with bad_input_exits_2():
            result = serve(request, on_log=lambda m: err.print(m, markup=False,
                                                               highlight=False))
    except KeyboardInterrupt:  # a second Ctrl-C during the shutdown
        raise typer.Exit(130) from None
    if json_out:
        emit_json(result)
        return
    jobs = ", ".join(f"{n} {status}" for status, n in sorted(result.jobs.items())) or "none"
    out.print(f"served {result.url} for {result.uptime_s:.0f} s; jobs this session: {jobs}",
              markup=False)

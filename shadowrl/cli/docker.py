"""``shadowrl docker ...``: the real shadow's daemon, images and leftovers."""

from __future__ import annotations

import json
import sys

import typer

from shadowrl.cli.commands import JSON_HELP, Command, Group
from shadowrl.cli.render import bad_input_exits_2, emit_json, out

docker_app = typer.Typer(cls=Group, no_args_is_help=True, add_completion=False,
                         help="The Docker daemon, images and leftovers of real shadows "
                              "(--backend docker).")


def _log(message: str) -> None:
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()


@docker_app.command("status", cls=Command)
def status_cmd(json_out: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Say which Docker daemon a real shadow uses (nothing is started)."""
    from shadowrl.app.docker import status

    info = status()
    if json_out:
        emit_json(info)
        return
    if info.running:
        out.print(f"docker: {info.where} daemon at {info.socket} (server "
                  f"{info.server_version})", markup=False)
    else:
        out.print(f"docker: no daemon answers; a real shadow would start a private one at "
                  f"{info.socket} (state in {info.private_dir})", markup=False)


@docker_app.command("build", cls=Command)
def build_cmd(
    rebuild: bool = typer.Option(False, "--rebuild", help="Remove the cached images first."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Build the shadow images now (otherwise the first real run builds them)."""
    from shadowrl.app.docker import build

    with bad_input_exits_2():
        result = build(rebuild=rebuild, on_log=_log)
    if json_out:
        emit_json(result)
    else:
        out.print(f"images: {result.base}, {result.app} ({result.seconds:.1f}s)", markup=False)


@docker_app.command("sweep", cls=Command)
def sweep_cmd(
    all_owners: bool = typer.Option(False, "--all", help="Remove every real shadow, also "
                                                         "those of running processes."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Remove the containers, networks and firewall rules of crashed real shadows."""
    from shadowrl.app.docker import sweep

    with bad_input_exits_2():
        result = sweep(all_owners=all_owners)
    if json_out:
        emit_json(result)
        return
    out.print(f"removed {result.containers} containers, {result.networks} networks, "
              f"{result.volumes} volumes, {result.rules} firewall rules", markup=False)
    for error in result.errors:
        sys.stderr.write(f"warning: {error}\n")


@docker_app.command("stop", cls=Command)
def stop_cmd(json_out: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Stop the private Docker daemon shadowrl started (its image cache stays)."""
    from shadowrl.app.docker import stop

    stopped = stop()
    if json_out:
        sys.stdout.write(json.dumps({"stopped": stopped}) + "\n")
        return
    out.print("stopped the private daemon" if stopped else "no private daemon was running",
              markup=False)

"""Use cases ``docker status|build|sweep|stop``: the machinery behind ``--backend docker``.

Each returns a typed result and prints nothing; image builds report their stages through
``on_log``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel


class DaemonInfo(BaseModel):
    where: str  # DOCKER_HOST | system | private | none
    socket: str
    running: bool
    server_version: str | None = None
    pid: int | None = None
    private_dir: str


class BuildResult(BaseModel):
    base: str
    app: str
    seconds: float


class SweepResult(BaseModel):
    containers: int
    networks: int
    volumes: int
    rules: int
    errors: list[str]


def status() -> DaemonInfo:
    """Which daemon a real shadow would use, without starting one."""
    from shadowrl.shadow.docker.daemon import status as daemon_status

    s = daemon_status()
    return DaemonInfo(where=s.where, socket=s.socket, running=s.running,
                      server_version=s.server_version, pid=s.pid,
                      private_dir=str(s.private_dir))


def build(*, rebuild: bool = False, on_log: Callable[[str], None] | None = None) -> BuildResult:
    """Build (or find cached) the shadow images, starting a private daemon when needed."""
    from shadowrl.shadow.docker.daemon import connect
    from shadowrl.shadow.docker.images import ensure_images, progress_lines, remove_images

    log = on_log or (lambda message: None)
    started = time.monotonic()
    client = connect(start=True, on_progress=log)
    if rebuild:
        remove_images(client)
    images = ensure_images(client, on_progress=progress_lines(log))
    return BuildResult(base=images.base, app=images.app,
                       seconds=round(time.monotonic() - started, 1))


def sweep(*, all_owners: bool = False) -> SweepResult:
    """Remove what real shadows of dead processes left (every shadow's with ``all_owners``)."""
    from shadowrl.shadow.docker.daemon import connect
    from shadowrl.shadow.docker.sweep import sweep as run_sweep

    report = run_sweep(connect(start=False), only_dead_owners=not all_owners)
    return SweepResult(containers=report.containers, networks=report.networks,
                       volumes=report.volumes, rules=report.rules, errors=list(report.errors))


def stop() -> bool:
    """Stop the private daemon, if one runs (its image cache stays)."""
    from shadowrl.shadow.docker.daemon import stop_private_daemon

    return stop_private_daemon()

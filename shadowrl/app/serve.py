"""Use case ``serve``: run the service of a config file (docs/service.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from shadowrl.analysis.summary import ResultModel
from shadowrl.app.common import LogFn
from shadowrl.app.errors import UsageError


class ServeRequest(BaseModel):
    config: Path
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    ray_address: str | None = None  # a Ray cluster for the jobs (default: local)
    access_log: bool = True


class ServeResult(ResultModel):
    """What a session of the service did (``serve --json``, printed when it stops)."""

    url: str
    database: str  # without its password
    deployments: list[str]
    uptime_s: float
    jobs: dict[str, int]  # jobs queued during the session, by status at the stop


def serve(request: ServeRequest, *, on_log: LogFn | None = None) -> ServeResult:
    """Serve until SIGINT or SIGTERM. Raises SpecError for a bad config (or a scenario it
    names), UsageError for an address that cannot be listened on; both before anything
    starts."""
    from shadowrl.service.config import load_service_config
    from shadowrl.service.server import PortError, bind, run

    cfg = load_service_config(request.config)
    try:
        sock = bind(request.host, request.port)
    except PortError as exc:
        raise UsageError(f"--host/--port: {exc}") from None
    return ServeResult(**run(cfg, request.config, sock, ray_address=request.ray_address,
                             on_log=on_log, access_log=request.access_log))

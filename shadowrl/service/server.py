"""The service's process: the database migrated, the scheduler ticking, uvicorn serving.

The listening socket is bound before anything starts, so a port in use is a clear error
rather than a half-started service. SIGINT and SIGTERM stop uvicorn, then the scheduler,
which interrupts running jobs (they keep their finished runs).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shadowrl.service.api import create_app
from shadowrl.service.config import ServiceConfig
from shadowrl.service.scheduler import Scheduler
from shadowrl.service.state import ServiceState
from shadowrl.service.store import Store, migrate

log = logging.getLogger("shadowrl.service")


class PortError(OSError):
    """The address cannot be listened on (in use, or not this machine's)."""


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only for a TCP
    # protocol number, and without it an answer on a kept-alive connection waits for the
    # client's delayed ACK (~40 ms; Argo Rollouts and Flagger keep connections alive)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(cfg: ServiceConfig, config_path: Path, sock: socket.socket, *,
        ray_address: str | None = None, on_log: Callable[[str], None] | None = None,
        access_log: bool = True) -> dict[str, Any]:
    """Serve until SIGINT or SIGTERM; returns what this session did (jobs by status)."""
    import uvicorn

    say = on_log or log.info
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(cfg.database_url)
    revision = migrate(store.engine)
    say(f"state: {safe_url(cfg.database_url)} (schema {revision}); outputs: {cfg.data_dir}")
    scheduler = Scheduler(cfg, config_path.resolve(), store, ray_address=ray_address,
                          log=say)
    state = ServiceState(cfg, store, scheduler)
    app = create_app(state, on_start=scheduler.start, on_stop=scheduler.stop)
    host, port = sock.getsockname()[:2]
    say(f"serving {len(cfg.deployments)} deployments on http://{host}:{port} "
        f"(dashboard: /dashboard/, API: /docs)")
    config = uvicorn.Config(app, log_level="info", access_log=access_log,
                            timeout_graceful_shutdown=5, lifespan="on")
    started, first_job = time.time(), store.next_job_id()
    try:
        with quiet_stop_signals():
            uvicorn.Server(config).run(sockets=[sock])
        jobs = store.count_by_status(since_id=first_job)
    finally:
        store.close()
    return {"url": f"http://{host}:{port}", "database": safe_url(cfg.database_url),
            "deployments": [d.name for d in cfg.deployments],
            "uptime_s": round(time.time() - started, 1), "jobs": jobs}


@contextmanager
def quiet_stop_signals() -> Iterator[None]:
    """uvicorn handles SIGINT and SIGTERM itself, then raises them again under the handlers
    it found; with these no-op handlers there, a stop ends the session normally (exit 0,
    the ``--json`` summary printed) instead of killing the process after the shutdown."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda _s, _f: None)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def safe_url(url: str) -> str:
    """A database URL without its password, for the log."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an odd URL is shown by its scheme only
        return url.split(":", 1)[0] + ":..."

"""Find the Docker daemon the real shadow talks to, or start a private one.

The order is ``DOCKER_HOST`` (when it answers), the system socket, then our private daemon.
Debian's ``docker.io`` starts no daemon without systemd, so as root we start ``dockerd``
ourselves, detached (its own session) so that it outlives the command and keeps its image
cache between runs, with all of its state under :func:`private_dir`. A file lock makes
parallel processes (pytest-xdist workers, Ray actors) share one daemon instead of racing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import DockerException
from requests.exceptions import RequestException

from shadowrl.core.errors import BackendUnavailable

SYSTEM_SOCKET = Path("/var/run/docker.sock")
DOCKERD_CANDIDATES = ("/usr/sbin/dockerd", "/usr/bin/dockerd")
DOCKERD_EXTRA_ARGS: tuple[str, ...] = ()  # tests add --bridge=none to run beside another daemon
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 3.0
CLIENT_TIMEOUT_S = 300  # per HTTP request: image imports and builds answer late
_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 108 bytes
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

HOW_TO_GET_DOCKER = (
    "To get Docker on Debian, as root: `apt-get install docker.io` (shadowrl then starts a "
    "private dockerd itself; no systemd needed; `make docker-deps` does this), or point "
    "DOCKER_HOST at a running daemon, e.g. DOCKER_HOST=unix:///path/to/docker.sock."
)

Progress = Callable[[str], None]

# The URL each client was made for: Ray actors and subprocesses are handed it.
_URLS: weakref.WeakKeyDictionary[docker.DockerClient, str] = weakref.WeakKeyDictionary()
_last_url: str | None = None


class DockerUnavailable(BackendUnavailable):
    """No Docker daemon answers and none could be started; the message says how to get one."""


@dataclass(frozen=True)
class DaemonStatus:
    """Which daemon :func:`connect` would use, and whether it runs.

    ``where`` is ``DOCKER_HOST``, ``system``, ``private`` or ``none`` (then ``socket`` is
    where the private daemon would listen).
    """

    where: str
    socket: str
    pid: int | None
    running: bool
    server_version: str | None
    private_dir: Path


@dataclass(frozen=True)
class _Paths:
    """Where the private daemon keeps its state."""

    root: Path

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def data_root(self) -> Path:
        return self.root / "root"

    @property
    def exec_root(self) -> Path:
        """``<dir>/exec`` when short, else a short path: containerd puts unix sockets there."""
        own = self.root / "exec"
        if len(str(own)) <= 40:
            return own
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:10]
        base = Path("/run") if Path("/run").is_dir() else Path("/tmp")
        return base / f"shadowrl-dx-{digest}"

    @property
    def pidfile(self) -> Path:
        return self.root / "dockerd.pid"

    @property
    def log(self) -> Path:
        return self.root / "dockerd.log"

    @property
    def lock(self) -> Path:
        return self.root / "start.lock"


def private_dir() -> Path:
    """Where the private daemon lives: ``$SHADOWRL_DOCKER_DIR``, else a per-user default."""
    env = os.environ.get("SHADOWRL_DOCKER_DIR")
    if env:
        return Path(env).expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/lib/shadowrl/docker")
    return Path.home() / ".cache" / "shadowrl" / "docker"


@contextlib.contextmanager
def file_lock(path: Path, *, timeout_s: float, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    ``flock`` locks belong to the open file, so threads of one process exclude each other
    too, and the kernel drops the lock when a holder dies.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"waited {timeout_s:.0f} s for the lock {path} ({what})"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _client(url: str | None) -> docker.DockerClient | None:
    """A client for ``url`` (``None``: from the environment, TLS included) if it answers."""
    if url is not None and url.startswith("unix://") and not Path(url[7:]).exists():
        return None
    try:
        if url is None:
            client = docker.from_env(timeout=int(PROBE_TIMEOUT_S))
        else:
            client = docker.DockerClient(base_url=url, timeout=int(PROBE_TIMEOUT_S))
        client.ping()
    except (DockerException, RequestException, OSError):
        return None
    client.api.timeout = CLIENT_TIMEOUT_S
    return client


def _remember(client: docker.DockerClient, url: str) -> docker.DockerClient:
    global _last_url
    _URLS[client] = url
    _last_url = url
    return client


def _cannot_start() -> str | None:
    """Why this process cannot start a private daemon, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "not root (dockerd needs root)"
    if _dockerd() is None:
        return "dockerd is not installed"
    return None


def _dockerd() -> str | None:
    found = shutil.which("dockerd", path=f"{os.environ.get('PATH', '')}:{_SBIN_PATH}")
    return found or next((p for p in DOCKERD_CANDIDATES if os.access(p, os.X_OK)), None)


def connect(*, start: bool = True, on_progress: Progress | None = None) -> docker.DockerClient:
    """A client of a working Docker daemon: ``DOCKER_HOST``, the system socket, the private
    daemon, else (``start``, root, dockerd installed) a private daemon started now.

    Raises :class:`DockerUnavailable` with what was tried and how to get Docker.
    """
    tried: list[str] = []
    env_host = os.environ.get("DOCKER_HOST")
    if env_host:
        client = _client(None)
        if client is not None:
            return _remember(client, env_host)
        tried.append(f"DOCKER_HOST={env_host} (no answer)")
    for url in (f"unix://{SYSTEM_SOCKET}", _Paths(private_dir()).url):
        client = _client(url)
        if client is not None:
            return _remember(client, url)
        tried.append(f"{url} ({'no answer' if Path(url[7:]).exists() else 'absent'})")
    reason = "not asked to start one" if not start else _cannot_start()
    if reason is None:
        paths = _Paths(private_dir())
        return _remember(_start_private(paths, on_progress or (lambda _msg: None)), paths.url)
    raise DockerUnavailable(
        f"no Docker daemon answers and none can be started here: {reason}. "
        f"Tried: {'; '.join(tried)}. {HOW_TO_GET_DOCKER}"
    )


def docker_host(client: docker.DockerClient | None = None) -> str:
    """The ``DOCKER_HOST`` URL of ``client`` (one :func:`connect` made; else of the last
    :func:`connect`, else of the daemon it finds now), for Ray actors and subprocesses."""
    if client is not None and client in _URLS:
        return _URLS[client]
    if client is None and _last_url is not None:
        return _last_url
    return _URLS[connect(start=False)]


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie, whatever it runs: the process we spawn is
    a shell until it execs dockerd, and on a busy machine that can take a while."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _is_dockerd(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) dockerd: pids are reused after a crash."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return cmdline[0].endswith(b"dockerd") and _is_alive(pid)


def _log_tail(log: Path, offset: int, lines: int = 15) -> str:
    try:
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def _start_private(paths: _Paths, progress: Progress) -> docker.DockerClient:
    """Start the private daemon under the start lock, unless another process just did."""
    if len(str(paths.socket)) >= _MAX_SOCKET_PATH:
        raise DockerUnavailable(
            f"the private daemon's socket path {paths.socket} is too long for a unix socket; "
            "set SHADOWRL_DOCKER_DIR to a shorter directory"
        )
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        lock = file_lock(paths.lock, timeout_s=START_TIMEOUT_S + 10, what="starting dockerd")
        with lock:
            client = _client(paths.url)
            if client is not None:
                return client
            pid = _read_pid(paths.pidfile)
            offset = paths.log.stat().st_size if paths.log.exists() else 0
            t0 = time.monotonic()
            if pid is None or not _is_dockerd(pid):  # else a dockerd is starting: wait for it
                paths.pidfile.unlink(missing_ok=True)
                progress(f"starting a private dockerd in {paths.root}")
                pid = _spawn(paths, offset)
            client = _wait_ready(paths, pid, offset)
    except TimeoutError as exc:
        raise DockerUnavailable(str(exc)) from exc
    progress(f"dockerd ready at {paths.url} in {time.monotonic() - t0:.2f} s (pid {pid})")
    return client


def _spawn(paths: _Paths, offset: int) -> int:
    """Start dockerd in its own session through a shell that exits at once, so dockerd is
    re-parented to init: no zombie and no child of ours to reap. Returns its pid."""
    dockerd = _dockerd()
    assert dockerd is not None
    cmd = [dockerd, "-H", paths.url, "--data-root", str(paths.data_root),
           "--exec-root", str(paths.exec_root), "--pidfile", str(paths.pidfile),
           *DOCKERD_EXTRA_ARGS]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["PATH"] = f"{env.get('PATH', '')}:{_SBIN_PATH}".lstrip(":")
    with paths.log.open("ab") as log:
        log.write(f"--- shadowrl: {' '.join(cmd)} ({time.ctime()})\n".encode())
    script = '"$@" </dev/null >>"$0" 2>&1 & echo $!'
    try:
        out = subprocess.run(["sh", "-c", script, str(paths.log), *cmd], env=env, check=True,
                             capture_output=True, text=True, timeout=10,
                             start_new_session=True)
        return int(out.stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise DockerUnavailable(f"could not start dockerd ({exc}); log {paths.log}:\n"
                                f"{_log_tail(paths.log, offset)}") from exc


def _wait_ready(paths: _Paths, pid: int, offset: int) -> docker.DockerClient:
    """Poll ``_ping`` until the daemon answers; fail early if it died, with its log's tail."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        client = _client(paths.url)
        if client is not None:
            return client
        if not _is_alive(pid):
            raise DockerUnavailable(
                f"dockerd (pid {pid}) exited while starting; the tail of {paths.log}:\n"
                f"{_log_tail(paths.log, offset)}"
            )
        time.sleep(0.05)
    raise DockerUnavailable(
        f"dockerd (pid {pid}) did not answer on {paths.url} within {START_TIMEOUT_S:.0f} s; "
        f"the tail of {paths.log}:\n{_log_tail(paths.log, offset)}"
    )


def stop_private_daemon(directory: Path | None = None) -> bool:
    """Stop the private daemon (SIGTERM, SIGKILL after a timeout); ``True`` if one ran.

    Its data-root (the image cache) stays; containers it ran are stopped with it.
    """
    paths = _Paths(directory or private_dir())
    if not paths.root.is_dir():
        return False
    with file_lock(paths.lock, timeout_s=START_TIMEOUT_S + 10, what="stopping dockerd"):
        pid = _read_pid(paths.pidfile)
        if pid is None or not _is_dockerd(pid):
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _is_dockerd(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_dockerd(pid):
            os.kill(pid, signal.SIGKILL)
            while _is_dockerd(pid):
                time.sleep(0.05)
        paths.pidfile.unlink(missing_ok=True)
        return True


def status() -> DaemonStatus:
    """What :func:`connect` would find now, without starting anything."""
    root = private_dir()
    paths = _Paths(root)
    env_host = os.environ.get("DOCKER_HOST")
    candidates: list[tuple[str, str | None, int | None]] = []
    if env_host:
        candidates.append(("DOCKER_HOST", None, None))
    candidates.append(("system", f"unix://{SYSTEM_SOCKET}", _read_pid(Path("/var/run/docker.pid"))))
    candidates.append(("private", paths.url, _read_pid(paths.pidfile)))
    for where, url, pid in candidates:
        client = _client(url)
        if client is None:
            continue
        try:
            version = str(client.version().get("Version"))
        finally:
            client.close()
        return DaemonStatus(where, url or env_host or "", pid, True, version, root)
    pid = _read_pid(paths.pidfile)
    return DaemonStatus("none", paths.url, pid if pid and _is_dockerd(pid) else None, False,
                        None, root)

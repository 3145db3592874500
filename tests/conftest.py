"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHECKOUT_YAML = Path(__file__).resolve().parents[1] / "envs" / "checkout.yaml"
REAL_SHADOW_NICE, OTHER_NICE = 0, 10


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Real-shadow tests measure latencies and SLO timings on the machine itself, while the
    other xdist worker runs CPU-heavy tests beside them: every other test (and what it
    starts) runs at nice 10, so the shadow's containers and load generator get the CPU they
    measure with. Set before any fixture (a session fixture may start dockerd, which its
    containers inherit the priority of). Where a priority cannot be raised back (not root),
    nothing changes."""
    docker = item.get_closest_marker("docker") is not None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, REAL_SHADOW_NICE if docker else OTHER_NICE)
    except (OSError, AttributeError):
        pass


@pytest.fixture
def dead_url() -> str:
    """A loopback URL whose port nothing listens on (bound, then closed)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = httpd.server_address[1]
    httpd.server_close()
    return f"http://127.0.0.1:{port}/hook"


@pytest.fixture(scope="module")
def checkout() -> Any:
    """The checkout scenario, loaded once per test module."""
    from shadowrl.core.spec import load_scenario

    return load_scenario(CHECKOUT_YAML)


@pytest.fixture(scope="module")
def env(checkout: Any) -> Any:
    """A RollbackEnv over the checkout scenario, one per test module."""
    from shadowrl.rl.env import RollbackEnv

    return RollbackEnv(checkout)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """A private local Ray for the test session: 2 CPUs, no dashboard,
    a 200 MB object store, worker logs kept out of the output.

    ``address="local"`` always starts a new instance, so each pytest-xdist worker (a separate
    process) gets its own Ray and never joins another worker's or a ``ray start`` cluster.
    Only this instance is shut down; never ``ray stop``.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():  # someone in this process already started one: share it
        yield ray
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             object_store_memory=200 * 2**20, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One migrated MLflow SQLite store per session (a fresh one costs
    seconds); tests copy it with ``mlflow_store``. Created with the working directory in its
    own folder, so the default experiment's artifact root is there, never in the repo."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow-template")
    db = folder / "mlflow.db"
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    finally:
        os.chdir(cwd)
    return db


@pytest.fixture
def mlflow_store(mlflow_template_db: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[Any]:
    """A private copy of the migrated store, set as the tracking URI (four slashes), with an
    experiment whose artifacts live in ``tmp_path/artifacts``. Yields a namespace with
    ``uri``, ``experiment_id``, ``client`` and ``path``."""
    import shutil
    import types

    import mlflow
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    shutil.copyfile(mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # recorded: restored after the test
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(
        "shadowrl-test", artifact_location=(tmp_path / "artifacts").as_uri())
    try:
        yield types.SimpleNamespace(uri=uri, experiment_id=experiment_id, client=client,
                                    path=db)
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


class _MlflowServer:
    """A real ``mlflow server`` on a free local port, in its own process group."""

    def __init__(self, folder: Any, template_db: Any) -> None:
        import shutil
        import socket
        import subprocess
        import sys

        self.folder = folder
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        db = folder / "srv.db"
        shutil.copyfile(template_db, db)  # already migrated: the server starts faster
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self.log = open(folder / "server.log", "wb")  # closed in stop()
        self.error: str | None = None
        try:
            self.proc: Any = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server",
                 "--backend-store-uri", f"sqlite:///{db}",
                 "--default-artifact-root", (folder / "artifacts").as_uri(),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                cwd=folder, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                start_new_session=True)
        except OSError as exc:
            self.proc = None
            self.error = f"cannot start mlflow server: {exc}"
        self.ready = False

    def wait(self, timeout: float = 60.0) -> bool:
        import time
        import urllib.request

        if self.ready or self.error:
            return self.ready
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.error = f"mlflow server exited with {self.proc.returncode}"
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        self.ready = True
                        return True
            except OSError:
                pass
            time.sleep(0.25)
        self.error = f"mlflow server not healthy within {timeout:.0f} s"
        return False

    def stop(self) -> None:
        import signal
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            pgid = os.getpgid(self.proc.pid)  # the session started for it: only its processes
            os.killpg(pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.log.close()


@pytest.fixture(scope="session")
def mlflow_server_process(tmp_path_factory: pytest.TempPathFactory,
                          mlflow_template_db: Any) -> Iterator[_MlflowServer]:
    """Starts ``mlflow server`` without waiting for it (request it early to overlap its boot
    with other tests); ``mlflow_server`` waits for it."""
    server = _MlflowServer(tmp_path_factory.mktemp("mlflow-server"), mlflow_template_db)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_process: _MlflowServer) -> str:
    """The URL of a healthy ``mlflow server``; skips when it cannot start within 60 s."""
    if not mlflow_server_process.wait(60.0):
        pytest.skip(mlflow_server_process.error or "mlflow server unavailable")
    return mlflow_server_process.url

"""A real ``shadowrl serve`` process for the service's tests: a config in a temporary
folder, a real SQLite file, uvicorn on a free port, tokens from the environment."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
READ_TOKEN = "read-token-0123456789"
WRITE_TOKEN = "write-token-9876543210"
SERVING = re.compile(r"serving \d+ deployments on (http://\S+)")


def service_config(folder: Path, *, runs: int = 3, every: str | None = "1h",
                   extra: str = "", deployment_extra: str = "") -> Path:
    """A config with one simulated deployment of envs/checkout.yaml."""
    path = folder / "service.yaml"
    every_line = f"every: {every}, " if every else "every: null, "
    path.write_text(f"""apiVersion: shadowrl/v1
kind: Service
data: data
auth:
  tokens:
    - {{name: reader, scope: read, env: SHADOWRL_TEST_READ}}
    - {{name: ops, scope: write, env: SHADOWRL_TEST_WRITE}}
{extra}deployments:
  - name: checkout
    scenario: {ROOT / 'envs' / 'checkout.yaml'}
    rehearse: {{{every_line}runs: {runs}}}
    optimize: {{on_change: false}}
{deployment_extra}""")
    return path


@dataclass
class Service:
    """A running ``shadowrl serve``; ``log`` collects its stderr."""

    config: Path
    args: tuple[str, ...] = ()  # more `shadowrl serve` flags
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    log: list[str] = field(default_factory=list)

    def start(self, timeout_s: float = 60.0) -> Service:
        env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
               "SHADOWRL_TEST_READ": READ_TOKEN, "SHADOWRL_TEST_WRITE": WRITE_TOKEN}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shadowrl", "serve", str(self.config), "--port", "0",
             *self.args],
            cwd=self.config.parent, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        found = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                match = SERVING.search(line)
                if match:
                    self.url = match.group(1)
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not found.is_set():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the service did not start:\n" + "".join(self.log))
            found.wait(0.1)
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/readyz", token=None)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the service never got ready:\n" + "".join(self.log))

    def request(self, method: str, path: str, *, token: str | None = READ_TOKEN,
                body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None,
                timeout_s: float = 40.0) -> tuple[int, Any, dict[str, str]]:
        """(status, JSON or text body, headers)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as response:
                status, text, hdrs = response.status, response.read(), response.headers
        except urllib.error.HTTPError as exc:
            status, text, hdrs = exc.code, exc.read(), exc.headers
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text.decode("utf-8", "replace")
        return status, parsed, dict(hdrs)

    def get(self, path: str, **kw: Any) -> Any:
        status, body, _ = self.request("GET", path, **kw)
        assert status == 200, (status, body)
        return body

    def wait_job(self, job_id: int, statuses: tuple[str, ...] = ("succeeded", "failed",
                                                                  "cancelled", "interrupted"),
                 timeout_s: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        job = self.get(f"/api/v1/jobs/{job_id}")
        while job["status"] not in statuses:
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']}:\n"
                                     + "".join(self.log[-30:]))
            job = self.get(f"/api/v1/jobs/{job_id}?since={job['revision']}&wait=5")
        return job

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Any]:
    """Start services (stopped at the end); ``factory(**service_config kwargs)``."""
    started: list[Service] = []

    def factory(**kwargs: Any) -> Service:
        config = service_config(tmp_path, **kwargs)
        svc = Service(config).start()
        started.append(svc)
        return svc

    yield factory
    for svc in started:
        svc.stop()


@pytest.fixture
def service(service_factory: Any) -> Service:
    """A service with one deployment whose start-up rehearsal (3 runs) is queued."""
    return service_factory()

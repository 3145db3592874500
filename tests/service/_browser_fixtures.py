"""What the dashboard's browser test runs: the real service (``shadowrl serve`` on a free port,
its own SQLite file and tokens, one simulated deployment) and a headless Chromium driven by
Selenium through Debian's chromedriver."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT_YAML = ROOT / "envs" / "checkout.yaml"
CHROMIUM = ("chromium", "/usr/bin/chromium")
CHROMEDRIVER = ("chromedriver", "/usr/bin/chromedriver")
NOT_YET = {404, 409, 503}  # no verdict yet, busy, not ready: worth asking again


@dataclass
class Served:
    url: str
    read_token: str
    write_token: str
    log: Path
    process: subprocess.Popen[bytes]

    def get(self, path: str, token: str | None = None) -> Any:
        """GET ``path`` (``/api/v1/...``) with the read token unless told; the JSON body."""
        return request(self.url + path, token or self.read_token)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return request(self.url + path, self.write_token, body)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def request(url: str, token: str | None, body: dict[str, Any] | None = None) -> Any:
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers,
                                 method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout_s: float,
             served: Served | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and the
    service's log) after ``timeout_s``. A check that raises counts as not yet."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        if served is not None and served.process.poll() is not None:
            pytest.fail(f"the service exited ({served.process.returncode}) while waiting for "
                        f"{what}:\n{served.log_tail()}")
        try:
            got = check()
        except urllib.error.HTTPError as exc:
            if exc.code not in NOT_YET:
                tail = f"\nservice log:\n{served.log_tail()}" if served is not None else ""
                pytest.fail(f"{what}: HTTP {exc.code}: {exc.read()[:500]!r}{tail}")
            got, last = None, exc
        except (OSError, ValueError) as exc:  # not listening yet, a cut connection
            got, last = None, exc
        if got:
            return got
        time.sleep(0.2)
    tail = f"\nservice log:\n{served.log_tail()}" if served is not None else ""
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what} (last error: {last}){tail}")


def write_config(folder: Path, runs: int) -> Path:
    """One simulated deployment, rehearsed at start-up (no verdict yet) with ``runs`` runs and
    then only hourly; no optimization; a read token and a write token from the environment."""
    config = folder / "service.yaml"
    config.write_text(f"""\
apiVersion: shadowrl/v1
kind: Service
metadata: {{name: dashboard-test}}
data: data
auth:
  tokens:
    - {{name: viewer, scope: read, env: SHADOWRL_TEST_READ_TOKEN}}
    - {{name: operator, scope: write, env: SHADOWRL_TEST_WRITE_TOKEN}}
deployments:
  - name: checkout
    scenario: {json.dumps(str(CHECKOUT_YAML))}
    backend: sim
    rehearse: {{every: 3600, runs: {runs}, on_change: false}}
    optimize: {{every: null, on_change: false}}
""", encoding="utf-8")
    return config


@contextmanager
def running_service(folder: Path, *, runs: int = 3) -> Iterator[Served]:
    """``python -m shadowrl serve`` on a free loopback port, until the block ends."""
    import secrets

    read_token, write_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    config = write_config(folder, runs)
    port = free_port()
    env = dict(os.environ, SHADOWRL_TEST_READ_TOKEN=read_token,
               SHADOWRL_TEST_WRITE_TOKEN=write_token, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                         os.environ.get("PYTHONPATH")])))
    log = folder / "service.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "shadowrl", "serve", str(config), "--host", "127.0.0.1",
             "--port", str(port)], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
    served = Served(f"http://127.0.0.1:{port}", read_token, write_token, log, process)
    try:
        wait_for("GET /healthz", lambda: request(served.url + "/healthz", None) is not None,
                 60, served)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # uvicorn's graceful stop; jobs die with it
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def browser_binaries() -> tuple[str, str]:
    """Chromium and chromedriver, installed from Debian's packages when missing and we may
    (root with apt-get, as ``make system-deps`` does); the test skips only when neither is
    possible."""
    chromium, driver = _which(CHROMIUM), _which(CHROMEDRIVER)
    if (chromium is None or driver is None) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
        if subprocess.run(cmd, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True,
                           timeout=900)
            subprocess.run(cmd, env=env, capture_output=True, timeout=900)
        chromium, driver = _which(CHROMIUM), _which(CHROMEDRIVER)
    if chromium is None or driver is None:
        pytest.skip("needs chromium and chromedriver (Debian: chromium chromium-driver; "
                    "`make system-deps` installs them)")
    return chromium, driver


@contextmanager
def headless_chromium(folder: Path) -> Iterator[Any]:
    """A Selenium WebDriver over headless Chromium, keeping the page's console log."""
    pytest.importorskip("selenium", reason="needs selenium (the dev extra)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1600",
                f"--user-data-dir={folder / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path, log_output=str(folder / "driver.log")),
                              options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()

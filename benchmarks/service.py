"""The service under load: the verdict endpoint's latency with 100 concurrent clients while
a rehearsal campaign runs, side by side with the same load on the idle service, and the
dashboard's load time in headless Chromium.

One ``shadowrl serve`` process, started as the tests start it (a config in a temporary
folder, a real SQLite file, ``--port 0``), with one simulated deployment of
envs/checkout.yaml. Its start-up rehearsal gives the deployment a verdict; then:

* idle: ``--clients`` aiohttp clients poll ``GET /api/v1/deployments/checkout/verdict`` for
  ``--seconds`` (each client's first request, which opens its connection, is not counted);
* campaign: a rehearsal of ``--runs`` runs is triggered, and the same load runs while its
  job is ``running`` (its progress before and after says it ran throughout);
* idle again after the campaign is cancelled, so a drift of the machine shows.

Each phase is measured twice: on kept-alive connections (how Argo Rollouts and Flagger poll)
and with a new connection per request. p50/p99 in ms, requests per second, and the
campaign/idle ratios. The clients, the service and its job worker share this machine's
cores, so the load generator is part of the load.

Dashboard: ``/dashboard/#token=...`` in headless Chromium (selenium, /usr/bin/chromedriver):
the Navigation Timing API's domContentLoaded and loadEventEnd, and the time from navigation
start until the first ``[data-testid="deployment-row"]`` appears (a MutationObserver
installed before the page's own scripts). The first load is cold (a new profile), the
others warm. One JSON object goes to stdout; progress to stderr.

    python benchmarks/service.py                      # 100 clients, 3 s per phase, 1000 runs
    python benchmarks/service.py --seconds 2 --dashboard-loads 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
READ_TOKEN = "bench-read-token-0123456789"
WRITE_TOKEN = "bench-write-token-9876543210"
SERVING = re.compile(r"serving \d+ deployments on (http://\S+)")
VERDICT = "/api/v1/deployments/checkout/verdict"
ROW = '[data-testid="deployment-row"]'


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the service


def write_config(folder: Path, runs: int) -> Path:
    path = folder / "service.yaml"
    path.write_text(f"""apiVersion: shadowrl/v1
kind: Service
data: data
auth:
  tokens:
    - {{name: reader, scope: read, env: SHADOWRL_BENCH_READ}}
    - {{name: ops, scope: write, env: SHADOWRL_BENCH_WRITE}}
limits: {{triggers_per_minute: 1000, trigger_burst: 100}}
deployments:
  - name: checkout
    scenario: {ROOT / 'envs' / 'checkout.yaml'}
    rehearse: {{every: null, runs: {runs}}}
    optimize: {{on_change: false}}
""")
    return path


class ServiceProcess:
    """``python -m shadowrl serve CONFIG --port 0``; its URL from the "serving" line."""

    def __init__(self, config: Path, timeout_s: float = 120.0) -> None:
        env = {**os.environ, "SHADOWRL_BENCH_READ": READ_TOKEN,
               "SHADOWRL_BENCH_WRITE": WRITE_TOKEN}
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shadowrl", "serve", str(config), "--port", "0"],
            cwd=config.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        self.url = ""
        found = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                match = SERVING.search(line)
                if match and not found.is_set():
                    self.url = match.group(1)
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not found.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the service did not start:\n" + "".join(self.log))
        while self.request("GET", "/readyz", token=None)[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the service never got ready:\n" + "".join(self.log))
            time.sleep(0.1)

    def request(self, method: str, path: str, *, token: str | None = READ_TOKEN,
                body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except OSError:
            return 0, None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    def job(self, job_id: int) -> dict[str, Any]:
        status, job = self.request("GET", f"/api/v1/jobs/{job_id}")
        assert status == 200, (status, job)
        return job

    def wait_job(self, job_id: int, statuses: tuple[str, ...], timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        job = self.job(job_id)
        while job["status"] not in statuses:
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still {job['status']} after {timeout_s} s")
            status, job = self.request(
                "GET", f"/api/v1/jobs/{job_id}?since={job['revision']}&wait=2")
            assert status == 200, (status, job)
        return job

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------- the load


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def _poll(url: str, clients: int, seconds: float, keep_alive: bool) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: list[str] = []
    headers = {"Authorization": f"Bearer {READ_TOKEN}"}
    connector = aiohttp.TCPConnector(limit=clients, force_close=not keep_alive)
    timeout = aiohttp.ClientTimeout(total=60)
    start = asyncio.Event()
    end_at = [0.0]

    async def client(session: aiohttp.ClientSession) -> None:
        async with session.get(url, headers=headers) as response:  # opens the connection
            await response.read()
        await start.wait()
        while time.perf_counter() < end_at[0]:
            t0 = time.perf_counter()
            try:
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    code = str(response.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors.append(type(exc).__name__)
                continue
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[code] = statuses.get(code, 0) + 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(clients)]
        await asyncio.sleep(0.5)  # every client has its first answer, or is waiting on it
        t0 = time.perf_counter()
        end_at[0] = t0 + seconds
        start.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    return {**summary(latencies, elapsed), "statuses": statuses, "errors": len(errors),
            "_latencies": latencies, "_elapsed": elapsed}


def summary(latencies: list[float], elapsed: float) -> dict[str, Any]:
    """Latency percentiles (ms) and requests per second."""
    return {
        "requests": len(latencies), "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
        "max_ms": round(max(latencies), 2) if latencies else None,
    }


def poll(url: str, clients: int, seconds: float) -> dict[str, Any]:
    """The verdict polled by ``clients`` clients, on kept-alive and on new connections."""
    return {mode: asyncio.run(_poll(url, clients, seconds, keep_alive=mode == "keep_alive"))
            for mode in ("keep_alive", "new_connections")}


def sequential(url: str, requests: int) -> dict[str, Any]:
    """One client, one request at a time: on one kept-alive connection and on a new
    connection per request (the service's own per-request latency, without queueing)."""
    import http.client
    import urllib.parse

    where = urllib.parse.urlsplit(url)
    headers = {"Authorization": f"Bearer {READ_TOKEN}"}
    out = {}
    for mode in ("keep_alive", "new_connections"):
        latencies = []
        conn = None
        t_all = time.perf_counter()
        for i in range(requests + 5):
            t0 = time.perf_counter()
            if conn is None:
                conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
            conn.request("GET", where.path, headers=headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
            if mode == "new_connections":
                conn.close()
                conn = None
            if i >= 5:  # the first few warm the connection and the service's caches
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                t_all = time.perf_counter()
        if conn is not None:
            conn.close()
        out[mode] = summary(latencies, time.perf_counter() - t_all)
    return out


def pooled(*phases: dict[str, Any]) -> dict[str, Any]:
    """The phases' requests together, per connection mode."""
    out = {}
    for mode in phases[0]:
        latencies = [x for p in phases for x in p[mode]["_latencies"]]
        out[mode] = summary(latencies, sum(p[mode]["_elapsed"] for p in phases))
    return out


def ratios(campaign: dict[str, Any], idle: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for mode in campaign:
        c, i = campaign[mode], idle[mode]
        out[mode] = {k: round(c[k] / i[k], 2) if i[k] else None
                     for k in ("p50_ms", "p99_ms", "rps")}
    return out


def public(phase: dict[str, Any]) -> dict[str, Any]:
    return {mode: {k: v for k, v in row.items() if not k.startswith("_")}
            for mode, row in phase.items()}


def campaign_load(svc: ServiceProcess, runs: int, clients: int, seconds: float
                  ) -> dict[str, Any]:
    """Trigger a rehearsal of ``runs`` runs; poll while its job runs; cancel it."""
    status, job = svc.request("POST", "/api/v1/deployments/checkout/rehearsals",
                              token=WRITE_TOKEN, body={"runs": runs, "seed": 1})
    assert status == 202, (status, job)
    job = svc.wait_job(job["id"], ("running", "succeeded", "failed", "cancelled",
                                   "interrupted"), 120)
    assert job["status"] == "running", job
    time.sleep(1.0)  # past the worker's start-up (imports), into the runs
    before = svc.job(job["id"])
    _log(f"campaign: job {job['id']} running, {before['progress']}")
    load = poll(svc.url + VERDICT, clients, seconds)
    after = svc.job(job["id"])
    _log(f"campaign: after the load, {after['status']} {after['progress']}")
    svc.request("POST", f"/api/v1/jobs/{job['id']}/cancel", token=WRITE_TOKEN)
    svc.wait_job(job["id"], ("succeeded", "failed", "cancelled", "interrupted"), 120)
    return {"load": load, "job": {
        "id": job["id"], "runs": runs, "done_before": before["progress"]["done"],
        "done_after": after["progress"]["done"],
        "running_throughout": after["status"] == "running"
        and after["progress"]["done"] < after["progress"]["total"]}}


# --------------------------------------------------------------------------- the dashboard

OBSERVE_ROW = """
window.__rowAt = null;
new MutationObserver(function (_m, observer) {
  if (document.querySelector('ROW')) {
    window.__rowAt = performance.now();
    observer.disconnect();
  }
}).observe(document, {childList: true, subtree: true});
""".replace("ROW", ROW)

TIMING = """
const nav = performance.getEntriesByType('navigation')[0];
return nav ? {dom_content_loaded_ms: nav.domContentLoadedEventEnd,
              load_event_end_ms: nav.loadEventEnd, response_end_ms: nav.responseEnd,
              transfer_bytes: nav.transferSize, status: nav.responseStatus} : null;
"""


def dashboard(url: str, loads: int) -> dict[str, Any]:
    """Load times of ``/dashboard/`` in headless Chromium (the first cold, then warm)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service as DriverService
    except ImportError:
        return {"skipped": "selenium is not installed (pip install selenium)"}
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        return {"skipped": "no chromium or chromedriver (apt-get install chromium-driver)"}
    status, _ = ServiceProbe(url).get("/dashboard/")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--disable-gpu", "--no-sandbox", "--window-size=1280,900",
                 "--disable-dev-shm-usage"):
        options.add_argument(flag)
    t0 = time.perf_counter()
    driver = webdriver.Chrome(service=DriverService(driver_path), options=options)
    started_s = time.perf_counter() - t0
    samples: list[dict[str, Any]] = []
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                               {"source": OBSERVE_ROW})
        for _ in range(loads):
            driver.get("about:blank")
            t0 = time.perf_counter()
            driver.get(f"{url}/dashboard/#token={READ_TOKEN}")
            timing = driver.execute_script(TIMING) or {}
            row_at = None
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                row_at = driver.execute_script("return window.__rowAt")
                if row_at is not None:
                    break
                time.sleep(0.02)
            samples.append({**{k: round(v, 1) if isinstance(v, float) else v
                               for k, v in timing.items()},
                            "deployment_row_ms": None if row_at is None else round(row_at, 1),
                            "wall_ms": round((time.perf_counter() - t0) * 1000, 1)})
        rows = len(driver.find_elements("css selector", ROW))
        version = driver.capabilities.get("browserVersion")
    finally:
        driver.quit()
    warm = samples[1:]

    def median(key: str) -> float | None:
        values = [s[key] for s in warm if s.get(key) is not None]
        return round(statistics.median(values), 1) if values else None

    out: dict[str, Any] = {
        "http_status": status, "chromium": version, "browser_start_s": round(started_s, 2),
        "cold": samples[0] if samples else None,
        "warm_median": {k: median(k) for k in ("dom_content_loaded_ms", "load_event_end_ms",
                                                "deployment_row_ms")},
        "loads": len(samples), "deployment_rows": rows,
    }
    if status != 200:
        out["note"] = f"/dashboard/ answered {status}: what is there was measured"
    elif rows == 0:
        out["note"] = ("no [data-testid=\"deployment-row\"] appeared within 15 s: the page's "
                       "load times only")
    return out


class ServiceProbe:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=3.0, help="of load per phase and mode")
    ap.add_argument("--runs", type=int, default=1000,
                    help="runs of the campaign's rehearsal (long enough to outlast the load; "
                    "at most 1000)")
    ap.add_argument("--sequential", type=int, default=50,
                    help="requests of the one-client measurement, per connection mode")
    ap.add_argument("--startup-runs", type=int, default=3,
                    help="runs of the start-up rehearsal that gives the first verdict")
    ap.add_argument("--dashboard-loads", type=int, default=5)
    args = ap.parse_args()

    load_before = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="shadowrl-bench-service-"))
    svc = None
    try:
        t0 = time.perf_counter()
        svc = ServiceProcess(write_config(folder, args.startup_runs))
        started_s = time.perf_counter() - t0
        _log(f"service at {svc.url} in {started_s:.1f} s; waiting for the start-up verdict")
        status, jobs = svc.request("GET", "/api/v1/jobs")
        assert status == 200 and jobs, (status, jobs)
        first = svc.wait_job(jobs[-1]["id"], ("succeeded", "failed", "cancelled",
                                              "interrupted"), 300)
        assert first["status"] == "succeeded", first
        assert svc.request("GET", VERDICT)[0] == 200

        _log(f"idle: one client, {args.sequential} requests per mode")
        single = sequential(svc.url + VERDICT, args.sequential)
        _log(f"idle: {args.clients} clients, {args.seconds} s per mode")
        idle = poll(svc.url + VERDICT, args.clients, args.seconds)
        _log(f"campaign: a rehearsal of {args.runs} runs")
        campaign = campaign_load(svc, args.runs, args.clients, args.seconds)
        _log("idle again")
        idle_after = poll(svc.url + VERDICT, args.clients, args.seconds)
        _log(f"dashboard: {args.dashboard_loads} loads in headless Chromium")
        board = dashboard(svc.url, args.dashboard_loads)
    finally:
        if svc is not None:
            svc.stop()
        shutil.rmtree(folder, ignore_errors=True)

    result = {
        "benchmark": "service",
        "endpoint": f"GET {VERDICT}",
        "clients": args.clients, "seconds_per_phase": args.seconds,
        "verdict_latency": {
            "idle": public(idle), "campaign": public(campaign["load"]),
            "idle_after": public(idle_after),
            # against the idle requests before and after together (the machine drifts)
            "campaign_over_idle": ratios(campaign["load"], pooled(idle, idle_after)),
        },
        "verdict_latency_one_client_idle": single,
        "campaign_job": campaign["job"],
        "dashboard": board,
        "service_start_s": round(started_s, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

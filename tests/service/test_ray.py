"""``serve --ray-address``: a job's shadow replicas run on a Ray cluster (a real head node
started for the test, in its own session, stopped by its process group)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import Service, service_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_head() -> Iterator[str]:
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray), "start", "--head", "--block", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={temp}",
                             "--node-ip-address=127.0.0.1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(15)
                break
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(temp, ignore_errors=True)


def test_jobs_join_the_ray_cluster(tmp_path: Path, ray_head: str) -> None:
    config = service_config(tmp_path, runs=4, every=None,
                            deployment_extra="    replicas: 2\n")
    svc = Service(config, args=("--ray-address", ray_head)).start()
    try:
        job = svc.wait_job(svc.get("/api/v1/jobs")[0]["id"], timeout_s=240)
        assert job["status"] == "succeeded", job
        assert job["result"]["runs"] == 4
        log = (tmp_path / "data" / "jobs" / f"{job['id']}.log").read_text()
        port = ray_head.rsplit(":", 1)[1]
        assert re.search(rf"Connecting to existing Ray cluster at address: \S+:{port}\b",
                         log), log[-3000:]
    finally:
        svc.stop()

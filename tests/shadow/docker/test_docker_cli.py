"""``shadowrl docker status|build|sweep``: one JSON object each, against the real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.shadow.docker.session_host import docker_host_env

ROOT = Path(__file__).resolve().parents[3]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``shadowrl *args`` on the session's daemon, when one answers."""
    return subprocess.run([sys.executable, "-m", "shadowrl", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, **docker_host_env()})


def test_status_build_and_sweep_print_one_json_object(docker_client: Any,
                                                      shadow_images: Any) -> None:
    status = cli("docker", "status", "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["running"] and info["where"] == "DOCKER_HOST" and info["server_version"]

    build = cli("docker", "build", "--json")
    assert build.returncode == 0, build.stderr
    images = json.loads(build.stdout)
    assert (images["base"], images["app"]) == (shadow_images.base, shadow_images.app)
    assert images["seconds"] < 30  # cached: nothing was built

    sweep = cli("docker", "sweep", "--json")
    assert sweep.returncode == 0, sweep.stderr
    assert set(json.loads(sweep.stdout)) >= {"containers", "networks", "volumes", "rules"}


def test_a_bad_subcommand_or_flag_exits_2() -> None:
    for args in (["docker", "frobnicate"], ["docker", "sweep", "--everything"]):
        done = cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr

"""``shadowrl sync`` against a "live" compose-style deployment on the same daemon as the
shadow: the synced scenario validates and rehearses on both backends, a new live version is
drift, ``--watch --shadow`` rolls a real shadow to it, and SIGTERM ends the watch and
removes the shadow.

The live deployment (``shadowrl.live.sync.demo_deployment``, which ``make demo`` uses too)
is a few idle containers of the app image carrying compose's labels
(``com.docker.compose.project``/``service``) and ``shadowrl.*`` labels, on their own
network; everything is labelled with the module's id and removed by label at the end.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from shadowrl.app.sync import SyncRequest, sync, watch
from shadowrl.cli.commands import Command
from shadowrl.cli.sync import SYNC_HELP, sync_cmd
from shadowrl.core.spec import load_scenario
from shadowrl.live.sync.demo_deployment import DemoDeployment
from shadowrl.rehearsal.runner import rehearse
from shadowrl.shadow.docker import labels as lbl
from shadowrl.shadow.docker.daemon import docker_host

SHADOW_SETTINGS = "\nshadow: {time_compression: 60, sample_fraction: 0.4}  # by hand: kept\n"


@pytest.fixture(scope="module")
def live(docker_client: Any, image: str) -> Iterator[DemoDeployment]:
    deployment = DemoDeployment(docker_client, image, f"sync-{secrets.token_hex(3)}")
    try:
        deployment.start_shop("v1")
        yield deployment
    finally:
        deployment.close()


def cli_check(source: str, scenario: Path) -> Any:
    app = typer.Typer()
    app.command("sync", cls=Command, help=SYNC_HELP)(sync_cmd)
    app.callback()(lambda: None)
    return CliRunner().invoke(app, ["sync", source, "--scenario", str(scenario), "--check",
                                    "--json"])


def test_sync_rehearses_on_both_backends_and_reports_a_new_version(live: DemoDeployment,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    source = f"docker:{live.project}"
    created = sync(SyncRequest(source=source, scenario=path))
    assert created.status == "created" and created.written
    path.write_text(path.read_text() + SHADOW_SETTINGS)
    sc = load_scenario(path)
    assert [s.name for s in sc.deployment.services] == ["web", "api"]
    assert [(s.replicas, str(s.version.live)) for s in sc.deployment.services] == [
        (2, "v1"), (2, "v7")]
    assert [d.name for d in sc.deployment.datastores] == ["db"]
    assert sc.deployment.services[0].config is not None  # the added environment's hash
    assert rehearse(sc, 0).outcome == "recovered"

    real = rehearse(sc, 1, backend="docker")
    assert real.outcome == "recovered", (real.outcome, [a.message for a in real.alerts],
                                         [(s.name, s.status, s.message) for s in real.steps])
    assert [s.status for s in real.steps] == ["ok", "ok"]

    assert cli_check(source, path).exit_code == 0
    live.run("web", 2, **{"shadowrl.version": "v2", "shadowrl.calls": "api",
                          "shadowrl.edge": "true"})
    done = cli_check(source, path)
    assert done.exit_code == 1, done.output
    changes = json.loads(done.output)["changes"]
    assert [(c["component"], c["field"], c["scenario"], c["live"]) for c in changes] == [
        ("web", "version", "v1", "v2")]


def test_watch_rolls_the_shadow_to_the_new_live_version(live: DemoDeployment, tmp_path: Path,
                                                        docker_client: Any) -> None:
    live.run("web", 2, **{"shadowrl.version": "v1", "shadowrl.calls": "api",
                          "shadowrl.edge": "true"})
    path = tmp_path / "shop.yaml"
    source = f"docker:{live.project}"
    sync(SyncRequest(source=source, scenario=path))
    path.write_text(path.read_text() + SHADOW_SETTINGS)
    shadows: list[Any] = []
    logs: list[str] = []
    stop = threading.Event()
    request = SyncRequest(source=source, scenario=path, watch=True, interval=1.0, shadow=True)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            watch(request, on_log=logs.append, stop=stop, on_shadow=shadows.append)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            stop.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 60
        while not shadows and not stop.is_set() and time.time() < deadline:
            time.sleep(0.2)
        assert shadows, (errors, logs)
        shadow_id = shadows[0].shadow_id
        assert web_versions(docker_client, shadow_id) == ["v1", "v1"]

        config_before = load_scenario(path).deployment.services[0].config.live
        live.run("web", 2, feature="b", **{"shadowrl.version": "v3", "shadowrl.calls": "api",
                                           "shadowrl.edge": "true"})
        # the watch acts once two readings agree, so the swap is seen done (were a
        # half-done state to hold for an interval, the shadow would follow it, then this)
        deadline = time.time() + 60
        while not (any(line.startswith("shadow: web ok") for line in logs)
                   and web_versions(docker_client, shadow_id) == ["v3", "v3"]):
            assert time.time() < deadline and not errors, (errors, logs)
            time.sleep(0.2)
        assert "drift: web: version v1 -> v3" in logs
        web = load_scenario(path).deployment.services[0]
        assert web.config.previous == config_before != web.config.live  # FEATURE=b
        assert (f"shadow: rolling web to version v3, config {web.config.live}, 1 replica(s) "
                f"at a time") in logs
        web = load_scenario(path).deployment.services[0]
        assert (web.version.live, web.version.previous) == ("v3", "v1")
        assert "by hand: kept" in path.read_text()
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive() and not errors, errors
    assert not docker_client.containers.list(all=True,
                                             filters={"label": f"{lbl.LABEL}={shadow_id}"})


def web_versions(client: Any, shadow_id: str) -> list[str]:
    """The versions the shadow's running web replicas serve (their reference app spec)."""
    out = []
    for c in client.containers.list(filters={"label": [f"{lbl.LABEL}={shadow_id}",
                                                       f"{lbl.ROLE_LABEL}=app"]}):
        env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
        spec = json.loads(env.get("SHADOW_SPEC", "{}"))
        if spec.get("service") == "web":
            out.append(spec["version"])
    return sorted(out)


WATCHER = """
import sys
from pathlib import Path
from shadowrl.app.sync import SyncRequest, watch
request = SyncRequest(source=sys.argv[1], scenario=Path(sys.argv[2]), watch=True,
                      interval=1.0, shadow=True)
watch(request, on_log=lambda m: print(m, file=sys.stderr, flush=True))
"""


def test_sigterm_ends_the_watch_and_removes_its_shadow(live: DemoDeployment, tmp_path: Path,
                                                       docker_client: Any) -> None:
    path = tmp_path / "shop.yaml"
    source = f"docker:{live.project}"
    sync(SyncRequest(source=source, scenario=path))
    path.write_text(path.read_text() + SHADOW_SETTINGS)
    child = subprocess.Popen([sys.executable, "-c", WATCHER, source, str(path)],
                             stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "DOCKER_HOST": docker_host()})
    shadow_id = None
    assert child.stderr is not None
    for line in child.stderr:
        if found := re.search(r"shadow (\S+) up in", line):
            shadow_id = found.group(1)
        if line.startswith("watching"):
            break
    assert shadow_id is not None
    assert docker_client.containers.list(filters={"label": f"{lbl.LABEL}={shadow_id}"})
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 128 + signal.SIGTERM
    assert not docker_client.containers.list(all=True,
                                             filters={"label": f"{lbl.LABEL}={shadow_id}"})

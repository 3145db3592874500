"""DockerShadow end to end: real rehearsals from the command line, real steps, real faults,
and nothing left behind, even by a process killed outright.

The scenario is envs/checkout.yaml with time compressed 60x (``shadow.time_compression``),
so a whole rehearsal takes under a minute of wall time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from shadowrl.core.injection import Injection
from shadowrl.core.spec import Scenario, Step, load_scenario
from shadowrl.rehearsal.runner import MAX_DRAWS
from shadowrl.shadow.docker.backend import DockerShadow
from shadowrl.shadow.docker.labels import LABEL
from tests.shadow.docker.session_host import docker_host_env

ROOT = Path(__file__).resolve().parents[3]
COMPRESSION = 60


def fast_scenario(tmp_path: Path, **changes: Any) -> Path:
    """checkout.yaml with time compressed 60x, plus ``changes`` merged into its top level."""
    data = yaml.safe_load((ROOT / "envs" / "checkout.yaml").read_text())
    data["shadow"] = {"time_compression": COMPRESSION, "sample_fraction": 0.1}
    for key, value in changes.items():
        data[key] = value
    path = tmp_path / "checkout-fast.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """``shadowrl *args`` on the session's daemon, when one answers."""
    full_env = {**os.environ, **docker_host_env(), **(env or {})}
    return subprocess.run([sys.executable, "-m", "shadowrl", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=ROOT)


def containers_of(client: Any, shadow_id: str | None = None) -> list[Any]:
    label = LABEL if shadow_id is None else f"{LABEL}={shadow_id}"
    return client.containers.list(all=True, filters={"label": label})


def test_rehearse_on_the_real_shadow_writes_real_timelines(docker_client: Any,
                                                           shadow_images: Any,
                                                           tmp_path: Path) -> None:
    scenario = fast_scenario(tmp_path)
    out = tmp_path / "real"
    done = cli("rehearse", str(scenario), "--backend", "docker", "--runs", "1", "--seed", "1",
               "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["backend"] == "docker" and summary["runs"] == 1
    # every step ran (whether the SLO then held is the machine's to say: it is measured)
    assert summary["outcomes"]["rollback_failed"] == 0, done.stderr[-3000:]
    # one launch when the first draw breached; a draw that breaches before its onset (a busy
    # host slows the healthy shadow) or not at all is drawn again on a fresh shadow, up to
    # MAX_DRAWS times: how many is the host's to say (CI once needed 4)
    launched = [line for line in done.stderr.splitlines() if " up in " in line]
    assert 1 <= len(launched) <= MAX_DRAWS, done.stderr
    shadow_ids = [re.search(r"shadow (\S+) up in", line).group(1) for line in launched]

    table = pq.read_table(out / "profiles.parquet").to_pandas()
    assert set(table["backend"]) == {"docker"}
    edge = table[table["component"] == "edge"].sort_values("t")
    # one row per wall second: t advances by the compression
    steps = edge["t"].diff().dropna()
    assert steps.median() == pytest.approx(COMPRESSION, rel=0.2)
    # real measurements that move with the incident and the steps
    assert edge["rps"].median() == pytest.approx(400, rel=0.3)
    # the bad release's 500s, from its onset until the rollback replaced it
    onset = edge[edge["phase"].isin(["incident", "rollback"])]
    rollback = edge[edge["phase"] == "rollback"]
    assert onset["error_rate"].max() > 0.02
    assert set(rollback["step"].dropna()) >= {"revert-web", "revert-orders"}
    web = table[table["component"] == "web"]
    assert web["replicas"].max() >= 9  # scale-web ran for real
    assert table[table["component"] == "orders"]["cpu"].max() > 0.001
    assert table[table["component"] == "db"]["memory"].max() > 0.01
    report = (out / "report.html").read_text()
    assert "real (Docker) shadow" in report
    # and nothing is left behind, of any draw
    for shadow_id in shadow_ids:
        assert containers_of(docker_client, shadow_id) == []


def _launched(scenario: Scenario) -> DockerShadow:
    shadow = DockerShadow(scenario, on_progress=lambda message: None)
    shadow.launch(1)
    return shadow


def _run(shadow: DockerShadow, name: str, **settings: Any) -> Any:
    step = shadow.scenario.procedure.step(name)
    return shadow.run_step(step, {**step.default_settings(), **settings})


def test_steps_do_the_real_thing(docker_client: Any, shadow_images: Any,
                                 tmp_path: Path) -> None:
    path = fast_scenario(tmp_path)
    data = yaml.safe_load(path.read_text())
    # a 5 s (wall) lock: the writes that wait longer than the 1 s lock timeout number
    # about 30, not the 0-4 of checkout's 1.5 s lock, so the count below cannot be 0 by chance
    data["deployment"]["datastores"][0]["migration"]["duration"] = "300s"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    sc = load_scenario(path)
    with _launched(sc) as shadow:
        ids = {c.name for c in containers_of(docker_client, shadow.shadow_id)}
        # 6 web + 4 orders + 2 load balancers + db + cache + the external dependency's proxy
        assert len(ids) == 15
        web = shadow._services["web"]
        assert len(web.lb.members()) == 6

        result = _run(shadow, "scale-web", replicas=9)
        assert result.status == "ok"
        assert len(web.replicas) == 9 and len(web.lb.members()) == 9

        # a rollback with surge never has fewer than 9 ready web replicas in HAProxy
        seen: list[int] = []
        stop = False

        def watch() -> None:
            while not stop:
                seen.append(sum(1 for _, state in web.lb.members().values()
                                if state == "ready"))
                time.sleep(0.02)

        import threading
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            result = _run(shadow, "revert-web", batch=3, surge=3, drain=30.0)
        finally:
            stop = True
            watcher.join()
        assert result.status == "ok", result.message
        assert min(seen) >= 9
        assert {r.version_role for r in web.replicas} == {"previous"}
        # what the replicas themselves say they run
        assert {json.loads(_stats(r.ip))["version"] for r in web.replicas} == {"v41"}

        # orders back to v16 first: v17 cannot read schema 41 (the warmer below runs in an
        # orders replica, and would fail on v17 for real)
        result = _run(shadow, "revert-orders", batch=4, surge=2, drain=0.0)
        assert result.status == "ok", result.message

        # the offline migration holds a real lock: writes wait and fail meanwhile
        result = _run(shadow, "migrate-db-down", online=False)
        assert result.status == "ok", result.message
        assert result.span.errors_by_source.get("write_lock", 0) > 0
        code, columns = shadow._psql(shadow._stores["db"], (
            "SELECT string_agg(column_name, ',') FROM information_schema.columns "
            "WHERE table_name = 'items'"))
        assert code == 0 and "s_42" not in columns and "qty" in columns

        # a second migrate_down has nothing left to undo
        again = _run(shadow, "migrate-db-down")
        assert (again.status, again.message) == ("ok", "schema already at the previous version")

        result = _run(shadow, "flush-cache")
        assert result.status == "ok"
        keys = shadow._caches["cache"].container.exec_run(["redis-cli", "dbsize"]).output
        assert int(keys) < 50  # refilled only by the traffic since the flush
        result = _run(shadow, "warm-cache")
        assert result.status == "ok", result.message
        keys = shadow._caches["cache"].container.exec_run(["redis-cli", "dbsize"]).output
        # every hot key, less the few that writes invalidated since
        assert int(keys) >= 0.8 * shadow._hot_keys(sc.deployment.caches[0]) > 10
    assert containers_of(docker_client, shadow.shadow_id) == []


def test_an_irreversible_migration_fails_for_real(docker_client: Any, shadow_images: Any,
                                                  tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "envs" / "checkout.yaml").read_text())
    data["deployment"]["datastores"][0]["migration"]["reversible"] = False
    data["shadow"] = {"time_compression": COMPRESSION}
    path = tmp_path / "irreversible.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with _launched(load_scenario(path)) as shadow:
        result = _run(shadow, "migrate-db-down")
        assert result.status == "failed"
        assert "irreversible" in result.message and "ERROR" in result.message


def test_a_flag_incident_ends_when_the_flag_is_disabled(docker_client: Any,
                                                        shadow_images: Any,
                                                        tmp_path: Path) -> None:
    sc = load_scenario(fast_scenario(tmp_path))
    with _launched(sc) as shadow:
        incident = sc.incident("new-checkout-flag")
        effect = incident.effects[0]
        from shadowrl.core.injection import ActiveEffect
        shadow.inject(Injection(incident.name, "flag", "web", "new-checkout",
                                (ActiveEffect("error_rate", "web", add=0.3),),
                                onset_s=0.0))
        time.sleep(2.0)
        assert shadow.sample().edge.error_rate > 0.1  # the flagged code path fails
        assert effect.metric == "error_rate"
        result = _run(shadow, "disable-new-checkout")
        assert result.status == "ok"
        time.sleep(1.5)  # a window of requests after the toggle
        assert shadow.sample().edge.error_rate < 0.03
        flags = [json.loads(_stats(r.ip))["flags"] for r in shadow._services["web"].replicas]
        assert all(f == {"new-checkout": False} for f in flags)


def _stats(ip: str) -> str:
    from shadowrl.shadow.docker.backend import _http

    status, body = _http("GET", ip, "/__shadow/stats")
    assert status == 200
    return body.decode()


def test_a_command_step_runs_its_argv_and_is_killed_at_its_timeout(
        docker_client: Any, shadow_images: Any, tmp_path: Path) -> None:
    sc = load_scenario(fast_scenario(tmp_path))
    marker = tmp_path / "ran"
    script = tmp_path / "probe.py"
    script.write_text(
        "import os, sys, time, urllib.request\n"
        "url = os.environ['SHADOWRL_WEB_URL']\n"
        "status = urllib.request.urlopen(url, timeout=5).status\n"
        "open(sys.argv[1], 'w').write(f\"{status} {sorted(os.environ)}\")\n"
        "if len(sys.argv) > 2:\n"
        "    import subprocess; child = subprocess.Popen(['sleep', '300'])\n"
        "    open(sys.argv[3], 'w').write(str(child.pid))\n"
        "    time.sleep(300)\n")
    with _launched(sc) as shadow:
        ok = shadow.run_step(Step(name="probe", action="command",
                                  run=[sys.executable, str(script), str(marker)]), {})
        assert ok.status == "ok", ok.message
        status, env = marker.read_text().split(" ", 1)
        assert status == "200"  # it reached the shadow's edge load balancer
        assert "HOME" not in env and "SHADOWRL_SHADOW_ID" in env  # a minimal environment

        hang, pid_file = tmp_path / "hang", tmp_path / "grandchild.pid"
        result = shadow.run_step(
            Step(name="hang", action="command", run=[sys.executable, str(script), str(hang),
                                                     "hang", str(pid_file)]), {},
            timeout_s=180.0)
        assert result.status == "timed_out"
        assert result.end_s - result.start_s == pytest.approx(180.0, abs=20.0)
        # the whole process group went: the script's own child too
        grandchild = int(pid_file.read_text())
        deadline = time.monotonic() + 5.0
        while _running(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(grandchild)

        failed = shadow.run_step(Step(name="bad", action="command",
                                      run=[sys.executable, "-c", "raise SystemExit(3)"]), {})
        assert failed.status == "failed" and "exit code 3" in failed.message


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _launch_in_child(scenario: Path) -> tuple[subprocess.Popen[str], str]:
    """Another process that launches a real shadow of ``scenario`` and then waits: itself
    and its shadow's id."""
    from shadowrl.shadow.docker.daemon import docker_host

    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from shadowrl.core.spec import load_scenario\n"
         "from shadowrl.shadow.docker.backend import DockerShadow\n"
         "s = DockerShadow(load_scenario(sys.argv[1]), on_progress=lambda m: None)\n"
         "s.launch(1)\n"
         "print(s.shadow_id, flush=True)\n"
         "time.sleep(600)\n", str(scenario)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "DOCKER_HOST": docker_host()})
    assert child.stdout is not None
    shadow_id = child.stdout.readline().strip()
    assert shadow_id, "the child did not launch its shadow"
    return child, shadow_id


def test_a_killed_process_leaves_nothing_after_the_next_sweep(docker_client: Any,
                                                              shadow_images: Any,
                                                              tmp_path: Path) -> None:
    """SIGKILL a process mid-rehearsal: its containers outlive it, and the next process's
    start-up sweep removes them (and the network and firewall rule)."""
    from shadowrl.shadow.docker.network import host_rules

    child, shadow_id = _launch_in_child(fast_scenario(tmp_path))
    try:
        assert len(containers_of(docker_client, shadow_id)) == 15
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    time.sleep(1.0)
    # the killed process could not clean up
    assert len(containers_of(docker_client, shadow_id)) == 15
    assert any(rule.shadow_id == shadow_id for rule in host_rules())

    # the next real shadow of another process sweeps on its first launch
    done = cli("docker", "sweep", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["containers"] >= 15 and report["networks"] >= 1 and report["rules"] >= 1
    assert containers_of(docker_client, shadow_id) == []
    assert not docker_client.networks.list(filters={"label": f"{LABEL}={shadow_id}"})
    assert not any(rule.shadow_id == shadow_id for rule in host_rules())


def test_a_terminated_process_removes_its_shadow_on_the_way_out(docker_client: Any,
                                                                shadow_images: Any,
                                                                tmp_path: Path) -> None:
    """SIGTERM (a service manager stopping it) ends the process like an exception: exit 143
    and its shadow removed, no sweep needed."""
    child, shadow_id = _launch_in_child(fast_scenario(tmp_path))
    assert len(containers_of(docker_client, shadow_id)) == 15
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 143
    assert containers_of(docker_client, shadow_id) == []
    assert not docker_client.networks.list(filters={"label": f"{LABEL}={shadow_id}"})


def test_the_start_up_sweep_runs_on_launch(docker_client: Any, shadow_images: Any,
                                           tmp_path: Path) -> None:
    """A leftover of a dead owner goes when any process launches its first real shadow."""
    from shadowrl.shadow.docker import backend
    from shadowrl.shadow.docker.labels import OWNER_LABEL

    dead = f"{os.uname().nodename}:{2**22 + 12345}"
    alive = f"{os.uname().nodename}:{os.getpid()}"
    leftover = docker_client.containers.create(
        shadow_images.app, ["sleep", "600"], labels={LABEL: "crashed-run", OWNER_LABEL: dead})
    busy = docker_client.containers.create(
        shadow_images.app, ["sleep", "600"], labels={LABEL: "in-use", OWNER_LABEL: alive})
    try:
        backend._SWEPT = False  # as in a new process
        with _launched(load_scenario(fast_scenario(tmp_path))):
            assert containers_of(docker_client, "crashed-run") == []
            assert len(containers_of(docker_client, "in-use")) == 1  # a live owner's stays
    finally:
        busy.remove(force=True)
        try:
            leftover.remove(force=True)
        except Exception:  # noqa: BLE001 - already swept
            pass


def test_close_removes_a_container_that_lands_after_the_sweep_listed(
        docker_client: Any, shadow_images: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A step still creating a replica while close() sweeps pins the network: close sweeps
    again until the network goes, and a closing shadow creates no more containers."""
    from shadowrl.shadow.docker import sweep as sweep_module
    from shadowrl.shadow.docker.labels import labels

    shadow = _launched(load_scenario(fast_scenario(tmp_path)))
    real_remove_all, calls = sweep_module._remove_all, []

    def remove_then_a_late_container(items: Any, remove: Any, what: str, errors: list[str]
                                     ) -> int:
        removed = real_remove_all(items, remove, what, errors)
        if what == "container" and not calls:  # listed and removed: a step's container lands
            docker_client.containers.run(
                shadow_images.app, ["sleep", "600"], detach=True, network=shadow._net.name,
                labels=labels(shadow.shadow_id, "service"))
        calls.append(what)
        return removed

    monkeypatch.setattr(sweep_module, "_remove_all", remove_then_a_late_container)
    net = shadow._net
    shadow.close()
    assert calls.count("container") >= 2  # swept again
    assert containers_of(docker_client, shadow.shadow_id) == []
    assert docker_client.networks.list(filters={"label": f"{LABEL}={shadow.shadow_id}"}) == []
    assert not os.path.exists(f"/sys/class/net/{net.bridge}")
    with pytest.raises(Exception, match="closed"):
        shadow.sample()


def test_backend_flag_is_checked(tmp_path: Path) -> None:
    done = cli("simulate", str(ROOT / "envs" / "checkout.yaml"), "--backend", "kubernetes")
    assert done.returncode == 2
    assert "--backend: must be sim or docker" in done.stderr and "Traceback" not in done.stderr


def test_too_much_load_for_this_machine_is_refused(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "envs" / "checkout.yaml").read_text())
    data["shadow"] = {"sample_fraction": 1.0}
    path = tmp_path / "heavy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    done = cli("simulate", str(path), "--backend", "docker")
    assert done.returncode == 1
    assert "shadow.sample_fraction" in done.stderr and "Traceback" not in done.stderr


def test_a_shadow_container_reaches_nothing_outside_the_shadow(docker_client: Any,
                                                              shadow_images: Any,
                                                              tmp_path: Path) -> None:
    """From inside a replica of a launched shadow: the other components answer; a service on
    the host (listening on every address) and the outside world do not."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    probe = ("import socket, sys\n"
             "try:\n"
             "    socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()\n"
             "    print('open')\n"
             "except OSError as e:\n"
             "    print('closed', e)\n")
    try:
        with _launched(load_scenario(fast_scenario(tmp_path))) as shadow:
            replica = shadow._services["web"].replicas[0].container
            gateway = shadow._net.gateway

            def reach(host: str, to: int) -> str:
                return replica.exec_run(["python3", "-c", probe, host, str(to)]).output.decode()

            assert reach(shadow._stores["db"].ip, 5432).startswith("open")
            assert reach(shadow._services["orders"].lb_ip, 80).startswith("open")
            assert reach(gateway, port).startswith("closed")  # the host, via the bridge
            assert reach("1.1.1.1", 80).startswith("closed")  # the outside world
            # and the host still reaches the shadow (the load generator does, all along)
            assert shadow.sample().edge.rps > 0
    finally:
        server.shutdown()


def test_a_service_can_run_the_users_own_images(docker_client: Any, shadow_images: Any,
                                                tmp_path: Path) -> None:
    """``runtime:`` images instead of the reference app; a rollback moves replicas from the
    live image to the previous one."""
    import io

    tags = []
    for version in ("live", "previous"):
        dockerfile = (f"FROM {shadow_images.app}\nRUN mkdir -p /srv && echo {version} > "
                      f"/srv/version\nWORKDIR /srv\n"
                      f'CMD ["python3", "-m", "http.server", "9000"]\n')
        tag = f"shadowrl-test/web:{version}"
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag,
                                   network_mode="none", rm=True)
        tags.append(tag)
    data = yaml.safe_load((ROOT / "envs" / "checkout.yaml").read_text())
    web = data["deployment"]["services"][0]
    web["runtime"] = {"image": {"live": tags[0], "previous": tags[1]}, "port": 9000,
                      "health": "/version", "env": {"GREETING": "hello"}}
    web["replicas"] = 2
    data["deployment"]["traffic"]["write_fraction"] = 0.0  # http.server answers POST 501
    data["shadow"] = {"time_compression": COMPRESSION}
    path = tmp_path / "own-images.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        with _launched(load_scenario(path)) as shadow:
            box = shadow._services["web"]
            assert {r.container.image.tags[0] for r in box.replicas} == {tags[0]}
            assert all(not r.reference for r in box.replicas)
            env = box.replicas[0].container.attrs["Config"]["Env"]
            assert "GREETING=hello" in env
            time.sleep(1.0)
            assert shadow.sample().edge.rps > 0 and shadow.sample().edge.error_rate == 0
            result = _run(shadow, "revert-web", batch=1, surge=0, drain=0.0)
            assert result.status == "ok", result.message
            assert {r.container.image.tags[0] for r in box.replicas} == {tags[1]}
            from shadowrl.shadow.docker.backend import _http

            status, body = _http("GET", box.lb_ip, "/version", port=80)
            assert (status, body.strip()) == (200, b"previous")
    finally:
        for tag in tags:
            docker_client.images.remove(tag, force=True)

"""Finding or starting the Docker daemon: the order, the private daemon's life, the errors."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import docker
import pytest

from shadowrl.shadow.docker import daemon
from shadowrl.shadow.docker.daemon import (
    DockerUnavailable,
    connect,
    docker_host,
    private_dir,
    status,
    stop_private_daemon,
)


def _dead_socket(path: Path) -> Path:
    """A unix socket file nobody listens on (bound, then closed): connections are refused."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()
    return path


def test_connect_twice_returns_working_clients_of_one_daemon(
        docker_client: docker.DockerClient) -> None:
    first, second = connect(), connect()
    assert first.ping() and second.ping()
    assert first.info()["ID"] == second.info()["ID"] == docker_client.info()["ID"]
    assert docker_host(first) == docker_host(second) == docker_host()


def test_status_names_the_daemon_that_answered(docker_client: docker.DockerClient) -> None:
    st = status()
    assert st.running
    assert st.server_version == docker_client.version()["Version"]
    assert st.socket == docker_host(docker_client)
    if st.where == "private":
        assert st.socket == f"unix://{private_dir() / 'docker.sock'}"
        assert st.pid is not None and daemon._is_dockerd(st.pid)
    else:
        assert st.where in ("DOCKER_HOST", "system")


def test_a_dead_docker_host_falls_through_to_a_working_daemon(
        docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    working = docker_host(docker_client)
    if not working.startswith("unix://"):
        pytest.fail(f"this test expects a unix-socket daemon, got {working}")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{_dead_socket(tmp_path / 'dead.sock')}")
    monkeypatch.setattr(daemon, "SYSTEM_SOCKET", Path(working[len("unix://"):]))
    monkeypatch.setattr(daemon, "_last_url", daemon._last_url)
    client = connect(start=False)
    assert client.ping()
    assert docker_host(client) == working


def test_no_daemon_and_no_start_fails_saying_how_to_get_docker(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dead = _dead_socket(tmp_path / "dead.sock")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{dead}")
    monkeypatch.setenv("SHADOWRL_DOCKER_DIR", str(tmp_path / "private"))
    monkeypatch.setattr(daemon, "SYSTEM_SOCKET", tmp_path / "absent.sock")
    with pytest.raises(DockerUnavailable) as info:
        connect(start=False)
    message = str(info.value)
    assert f"DOCKER_HOST=unix://{dead} (no answer)" in message
    assert "apt-get install docker.io" in message and "DOCKER_HOST" in message
    assert status().where == "none"


def test_a_private_daemon_starts_once_for_racing_callers_and_stops(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The start path, in a throwaway dir, beside whatever daemon the session uses: without
    the default bridge and iptables, so the two daemons never touch the same rules."""
    root = Path(tempfile.mkdtemp(prefix="srd-", dir="/tmp"))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("SHADOWRL_DOCKER_DIR", str(root))
    monkeypatch.setattr(daemon, "SYSTEM_SOCKET", root / "absent.sock")
    monkeypatch.setattr(daemon, "DOCKERD_EXTRA_ARGS", ("--bridge=none", "--iptables=false"))
    monkeypatch.setattr(daemon, "_last_url", daemon._last_url)
    reason = daemon._cannot_start()
    if reason is not None:
        with pytest.raises(DockerUnavailable, match=reason):
            connect()
        return
    messages: list[str] = []
    ids: list[str] = []
    try:
        t0 = time.monotonic()
        threads = [threading.Thread(target=lambda: ids.append(
            connect(on_progress=messages.append).info()["ID"])) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        started_in = time.monotonic() - t0
        assert len(ids) == 3 and len(set(ids)) == 1, messages
        assert sum(m.startswith("starting a private dockerd") for m in messages) == 1
        assert started_in < daemon.START_TIMEOUT_S

        st = status()
        assert (st.where, st.running, st.private_dir) == ("private", True, root)
        assert st.socket == f"unix://{root / 'docker.sock'}"
        assert st.pid == int((root / "dockerd.pid").read_text())
        assert os.getsid(st.pid) != os.getsid(0), "dockerd must run in its own session"
        assert docker_host() == st.socket

        assert stop_private_daemon() is True
        assert not daemon._is_dockerd(st.pid)
        assert status().where == "none"
        assert stop_private_daemon() is False
    finally:
        stop_private_daemon(root)
        shutil.rmtree(root, ignore_errors=True)


def test_a_dockerd_slow_to_exec_is_waited_for_not_taken_for_dead(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a busy machine the spawned process can still be the shell, not yet dockerd, when
    we first look at it: that is a daemon starting, not one that exited. Here a wrapper
    sleeps a second before it execs the real dockerd."""
    real = daemon._dockerd()
    if real is None or daemon._cannot_start() is not None:
        pytest.fail(f"this test starts a dockerd: {daemon._cannot_start()}")
    root = Path(tempfile.mkdtemp(prefix="srd-", dir="/tmp"))
    late = root / "late-dockerd"
    late.write_text(f'#!/bin/sh\nsleep 1\nexec {real} "$@"\n')
    late.chmod(0o755)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("SHADOWRL_DOCKER_DIR", str(root))
    monkeypatch.setattr(daemon, "SYSTEM_SOCKET", root / "absent.sock")
    monkeypatch.setattr(daemon, "DOCKERD_EXTRA_ARGS", ("--bridge=none", "--iptables=false"))
    monkeypatch.setattr(daemon, "_dockerd", lambda: str(late))
    monkeypatch.setattr(daemon, "_last_url", daemon._last_url)
    try:
        client = connect()
        assert client.ping()
        st = status()
        assert (st.where, st.running) == ("private", True)
        assert st.pid is not None and daemon._is_dockerd(st.pid)
    finally:
        stop_private_daemon(root)
        shutil.rmtree(root, ignore_errors=True)

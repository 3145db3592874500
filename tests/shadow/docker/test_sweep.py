"""The sweep removes what dead processes left behind and keeps what live ones use."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shadowrl.shadow.docker import labels as labels_mod
from shadowrl.shadow.docker.labels import LABEL, OWNER_LABEL, labels, owner_alive
from shadowrl.shadow.docker.network import (
    add_host_rule,
    create_isolated_network,
    host_rules,
)
from shadowrl.shadow.docker.sweep import SweepReport, sweep

pytestmark = pytest.mark.docker


@pytest.fixture
def shadow_id(docker_client: Any) -> Iterator[str]:
    """A fresh shadow id; everything carrying it is removed afterwards, whoever owns it."""
    sid = f"t-sweep-{secrets.token_hex(3)}"
    yield sid
    sweep(docker_client, shadow_id=sid, only_dead_owners=False)
    assert not [r for r in host_rules() if r.shadow_id == sid]


@pytest.fixture
def dead_owner() -> str:
    """``host:pid`` of a process that has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    value = f"{socket.gethostname()}:{proc.pid}"
    assert not owner_alive(value)
    return value


def _count(client: Any, sid: str) -> tuple[int, int, int]:
    f = {"label": f"{LABEL}={sid}"}
    return (
        len(client.containers.list(all=True, filters=f, sparse=True)),
        len(client.networks.list(filters=f)),
        len(client.volumes.list(filters=f)),
    )


def test_dead_owners_go_live_owners_stay(
    docker_client: Any,
    image: str,
    shadow_id: str,
    dead_owner: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    live = labels(shadow_id)
    live_net = create_isolated_network(docker_client, shadow_id)
    live_c = docker_client.containers.create(image, ["true"], labels=live)
    live_v = docker_client.volumes.create(labels=live)

    with monkeypatch.context() as m:
        m.setattr(labels_mod, "owner", lambda: dead_owner)
        dead = labels(shadow_id)
        dead_net = create_isolated_network(docker_client, shadow_id)
    assert dead[OWNER_LABEL] == dead_owner
    docker_client.containers.run(
        image, ["sleep", "infinity"], labels=dead, network=dead_net.name, detach=True
    )
    docker_client.containers.create(image, ["true"], labels=dead)
    docker_client.volumes.create(labels=dead)
    add_host_rule("shd-gone00000", shadow_id)  # a rule whose bridge vanished long ago
    assert _count(docker_client, shadow_id) == (3, 2, 2)

    t0 = time.perf_counter()
    report = sweep(docker_client, shadow_id=shadow_id)
    took = time.perf_counter() - t0
    print(f"sweep of 2 containers, 1 network, 1 volume, 2 rules: {took:.3f} s")
    assert report == SweepReport(containers=2, networks=1, volumes=1, rules=2)

    assert _count(docker_client, shadow_id) == (1, 1, 1)
    live_c.reload()
    live_v.reload()
    assert docker_client.networks.get(live_net.id).id == live_net.id
    assert [r.bridge for r in host_rules() if r.shadow_id == shadow_id] == [live_net.bridge]
    assert not os.path.exists(f"/sys/class/net/{dead_net.bridge}")

    t0 = time.perf_counter()
    assert sweep(docker_client, shadow_id=shadow_id) == SweepReport()
    print(f"sweep with nothing to do: {time.perf_counter() - t0:.3f} s")


def test_everything_of_one_shadow_only(docker_client: Any, image: str, shadow_id: str) -> None:
    other = f"{shadow_id}-other"
    try:
        net = create_isolated_network(docker_client, shadow_id)
        docker_client.containers.create(image, ["true"], labels=labels(shadow_id), network=net.name)
        docker_client.containers.create(image, ["true"], labels=labels(other))
        docker_client.containers.create(image, ["true"], labels={LABEL: shadow_id})

        # No owner label: not provably dead, so kept; live owners are kept.
        assert sweep(docker_client, shadow_id=shadow_id) == SweepReport()

        t0 = time.perf_counter()
        report = sweep(docker_client, shadow_id=shadow_id, only_dead_owners=False)
        print(
            f"close-style sweep (2 containers, 1 network, 1 rule): {time.perf_counter() - t0:.3f} s"
        )
        assert report == SweepReport(containers=2, networks=1, rules=1)
        assert _count(docker_client, shadow_id) == (0, 0, 0)
        assert _count(docker_client, other) == (1, 0, 0)
    finally:
        sweep(docker_client, shadow_id=other, only_dead_owners=False)


def test_nothing_to_do_is_fast(docker_client: Any, shadow_id: str) -> None:
    t0 = time.perf_counter()
    for _ in range(5):
        assert sweep(docker_client, shadow_id=shadow_id).total == 0
    assert (time.perf_counter() - t0) / 5 < 0.5

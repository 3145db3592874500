"""One service's HAProxy: replicas join, drain and leave through the runtime API."""

from __future__ import annotations

import http.client
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from shadowrl.core.errors import BackendUnavailable
from shadowrl.shadow.docker.labels import LABEL, ROLE_LABEL, labels
from shadowrl.shadow.docker.lb import (
    HaproxyError,
    HaproxyLB,
    container_ip,
    haproxy_config,
    start_lb,
)
from shadowrl.shadow.docker.network import (
    IsolatedNetwork,
)

pytestmark = pytest.mark.docker

SLOTS = 3

# A replica that answers every request with its own name (keep-alive, HTTP/1.1).
ECHO = """
import http.server, os
NAME = os.environ["NAME"].encode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(NAME)))
        self.end_headers()
        self.wfile.write(NAME)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


@pytest.fixture(scope="module")
def shadow_id() -> str:
    return f"t-lb-{secrets.token_hex(3)}"


def _get(conn: http.client.HTTPConnection) -> tuple[int, str]:
    conn.request("GET", "/")
    r = conn.getresponse()
    return r.status, r.read().decode()


@pytest.fixture(scope="module")
def replicas(
    docker_client: Any, image: str, iso: IsolatedNetwork, shadow_id: str
) -> dict[str, str]:
    """Two echo replicas on the shadow network: name -> IP, both answering."""
    ips = {}
    for name in ("a", "b"):
        c = docker_client.containers.run(
            image,
            ["python3", "-c", ECHO],
            environment={"NAME": name},
            labels=labels(shadow_id, role="app"),
            network=iso.name,
            init=True,
            detach=True,
        )
        ips[name] = container_ip(c, iso.name)
    deadline = time.monotonic() + 10
    for name, ip in ips.items():
        while True:
            try:
                assert _get(http.client.HTTPConnection(ip, 8080, timeout=1)) == (200, name)
                break
            except OSError:
                assert time.monotonic() < deadline, f"replica {name} never answered"
                time.sleep(0.05)
    return ips


@pytest.fixture(scope="module")
def lb_pair(
    docker_client: Any, image: str, iso: IsolatedNetwork, shadow_id: str
) -> tuple[Any, HaproxyLB]:
    t0 = time.perf_counter()
    pair = start_lb(
        docker_client, image, iso, shadow_id, f"{shadow_id}-lb", slots=SLOTS, queue_timeout_s=2
    )
    print(f"\nLB start until the admin socket answers: {time.perf_counter() - t0:.3f} s")
    return pair


@pytest.fixture
def lb(lb_pair: tuple[Any, HaproxyLB]) -> Iterator[HaproxyLB]:
    """The module's LB, emptied after each test."""
    yield lb_pair[1]
    for slot in lb_pair[1].members():
        lb_pair[1].remove(slot)


def test_config_declares_disabled_slots() -> None:
    cfg = haproxy_config(4, queue_timeout_s=2.5)
    assert "stats socket ipv4@0.0.0.0:9999 level admin" in cfg
    assert "    server r4 127.0.0.1:8080 disabled" in cfg and "r5" not in cfg
    assert "timeout queue 2500ms" in cfg and "timeout connect 1s" in cfg
    assert "option redispatch" in cfg and "retries 1" in cfg and "bind :80" in cfg
    assert "default-server check inter 1s" in cfg and "on-error mark-down" in cfg
    with pytest.raises(ValueError):
        haproxy_config(0, queue_timeout_s=1)


def test_lb_container(lb_pair: tuple[Any, HaproxyLB], shadow_id: str) -> None:
    container, lb = lb_pair
    container.reload()
    assert container.status == "running"
    assert container.labels[LABEL] == shadow_id and container.labels[ROLE_LABEL] == "lb"
    assert container.attrs["HostConfig"]["Init"] is True
    assert container.attrs["HostConfig"]["PortBindings"] in (None, {})
    assert lb.members() == {}


def test_add_drain_remove(lb: HaproxyLB, replicas: dict[str, str]) -> None:
    conn = http.client.HTTPConnection(lb.address, 80, timeout=3)  # one keep-alive client
    a = lb.add(replicas["a"], 8080)
    b = lb.add(replicas["b"], 8080)
    assert lb.members() == {a: (replicas["a"], "ready"), b: (replicas["b"], "ready")}
    assert {_get(conn) for _ in range(6)} == {(200, "a"), (200, "b")}

    t0 = time.perf_counter()
    lb.drain(a)
    print(f"\ndrain call: {1000 * (time.perf_counter() - t0):.1f} ms")
    assert lb.members()[a] == (replicas["a"], "drain")
    before = lb.stats()[a].lbtot
    assert {_get(conn) for _ in range(6)} == {(200, "b")}  # same client connection
    assert lb.stats()[a].lbtot == before

    lb.remove(a)
    assert lb.members() == {b: (replicas["b"], "ready")}
    fresh = [_get(http.client.HTTPConnection(lb.address, 80, timeout=3)) for _ in range(4)]
    assert set(fresh) == {(200, "b")}

    lb.remove(b)
    assert lb.members() == {}
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://{lb.address}/", timeout=3)
    assert err.value.code == 503

    # haproxy counts a response when it closes the stream, which can be just after the client
    # has read it: wait (bounded) for the 503 to show in the frontend's counters
    deadline = time.monotonic() + 5.0
    stats = lb.stats()
    while stats["frontend"].hrsp_5xx < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = lb.stats()
    assert stats["frontend"].hrsp_5xx >= 1 and stats["backend"].req_tot >= 17
    assert stats[b].lbtot >= 9 and stats[b].hrsp_5xx == 0


def test_freed_slot_is_reused_for_a_new_address(lb: HaproxyLB, replicas: dict[str, str]) -> None:
    first = lb.add(replicas["a"], 8080)
    conn = http.client.HTTPConnection(lb.address, 80, timeout=3)
    assert _get(conn) == (200, "a")
    lb.remove(first)
    t0 = time.perf_counter()
    again = lb.add(replicas["b"], 8080)
    assert again == first
    assert _get(conn) == (200, "b")  # HAProxy's pooled connection to "a" is not reused
    print(
        f"\nswitch (add + first answer from the new replica): "
        f"{1000 * (time.perf_counter() - t0):.1f} ms"
    )


def test_slots_run_out(lb: HaproxyLB, replicas: dict[str, str]) -> None:
    slots = [lb.add(replicas["a"], 8080) for _ in range(SLOTS)]
    assert slots == list(range(1, SLOTS + 1))
    with pytest.raises(HaproxyError, match="in use"):
        lb.add(replicas["b"], 8080)
    with pytest.raises(HaproxyError, match="No such server"):
        lb.drain(SLOTS + 1)


def test_killed_replica_costs_one_slow_request(
    docker_client: Any,
    image: str,
    iso: IsolatedNetwork,
    shadow_id: str,
    lb: HaproxyLB,
    replicas: dict[str, str],
) -> None:
    """A replica killed while still "ready": the first request to it waits for the connect
    timeout and is redispatched, after that the slot is down and requests are fast."""
    victim = docker_client.containers.run(
        image,
        ["python3", "-c", ECHO],
        environment={"NAME": "c"},
        labels=labels(shadow_id, role="app"),
        network=iso.name,
        init=True,
        detach=True,
    )
    ip = container_ip(victim, iso.name)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert _get(http.client.HTTPConnection(ip, 8080, timeout=1)) == (200, "c")
            break
        except OSError:
            assert time.monotonic() < deadline, "replica c never answered"
            time.sleep(0.05)
    c = lb.add(ip, 8080)
    b = lb.add(replicas["b"], 8080)
    conn = http.client.HTTPConnection(lb.address, 80, timeout=5)
    assert {_get(conn) for _ in range(4)} == {(200, "b"), (200, "c")}
    victim.kill()
    took = []
    for _ in range(6):
        t0 = time.perf_counter()
        assert _get(http.client.HTTPConnection(lb.address, 80, timeout=5)) == (200, "b")
        took.append(time.perf_counter() - t0)
    assert sum(t > 0.5 for t in took) <= 1, took
    assert lb.stats()[c].status.startswith("DOWN")
    assert lb.members() == {c: (ip, "ready"), b: (replicas["b"], "ready")}  # admin view


def test_unreachable_admin_socket() -> None:
    lb = HaproxyLB("127.0.0.1", 1, timeout=0.2)
    with pytest.raises(BackendUnavailable):
        lb.wait_ready(timeout=0.2)
    with pytest.raises(ValueError):
        lb.command("show info; show stat")
    with pytest.raises(ValueError):
        lb.add("10.0.0.1;show info", 80)

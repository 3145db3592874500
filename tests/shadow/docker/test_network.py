"""The shadow network is fenced off: from inside a container the host's services and the
outside are unreachable, the shadow's own containers are reachable, and the host can still
reach the containers. A control check shows the host rule is what blocks the host."""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shadowrl.core.errors import BackendUnavailable
from shadowrl.shadow.docker import network as netmod
from shadowrl.shadow.docker.labels import LABEL, labels
from shadowrl.shadow.docker.network import (
    IFNAMSIZ,
    IsolatedNetwork,
    IsolationUnavailable,
    add_host_rule,
    create_isolated_network,
    delete_host_rule,
    host_rules,
    remove_isolated_network,
)

pytestmark = pytest.mark.docker

# Runs inside the probe container: connect to every target at once, 1 s each.
PROBE = """
import json, socket, sys, threading
out = {}
def probe(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
        out[target] = True
    except OSError:
        out[target] = False
threads = [threading.Thread(target=probe, args=(t,)) for t in json.loads(sys.argv[1])]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def shadow_id() -> str:
    return f"t-net-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def peer(docker_client: Any, image: str, iso: IsolatedNetwork, shadow_id: str) -> str:
    """An HTTP server on the shadow network; its IP."""
    c = docker_client.containers.run(
        image,
        ["python3", "-m", "http.server", "8080"],
        labels=labels(shadow_id),
        network=iso.name,
        init=True,
        detach=True,
        working_dir="/tmp",
    )
    c.reload()
    ip = c.attrs["NetworkSettings"]["Networks"][iso.name]["IPAddress"]
    deadline = time.monotonic() + 10
    while True:
        try:
            if _http_ok(ip, 8080):
                return ip
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


@pytest.fixture(scope="module")
def prober(docker_client: Any, image: str, iso: IsolatedNetwork, shadow_id: str) -> Any:
    """A container on the shadow network to probe from."""
    return docker_client.containers.run(
        image,
        ["sleep", "infinity"],
        labels=labels(shadow_id),
        network=iso.name,
        init=True,
        detach=True,
    )


@pytest.fixture(scope="module")
def host_port() -> Iterator[int]:
    """A host service on 0.0.0.0: what a shadow container must not reach."""

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("0.0.0.0", 0), Hello)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def _host_eth0_ip() -> str:
    """The host's address on its default route (eth0 here); no packet is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.123", 9))
        return s.getsockname()[0]


def _outside() -> str:
    try:
        return f"{socket.gethostbyname('deb.debian.org')}:80"
    except OSError:
        return "1.1.1.1:80"


def probe(container: Any, targets: list[str]) -> dict[str, bool]:
    """Which of ``targets`` (``ip:port``) accept a TCP connection from inside ``container``."""
    code, out = container.exec_run(["python3", "-c", PROBE, json.dumps(targets)])
    assert code == 0, out
    return json.loads(out)


def _http_ok(ip: str, port: int) -> bool:
    with urllib.request.urlopen(f"http://{ip}:{port}/", timeout=2) as r:
        return r.status == 200


def test_bridge_is_named_and_rule_tagged(iso: IsolatedNetwork, shadow_id: str) -> None:
    assert iso.bridge.startswith("shd-") and len(iso.bridge) <= IFNAMSIZ
    assert os.path.exists(f"/sys/class/net/{iso.bridge}")
    assert iso.network.attrs["Internal"] is True
    assert iso.network.attrs["Labels"][LABEL] == shadow_id
    mine = [r for r in host_rules() if r.bridge == iso.bridge]
    assert [r.shadow_id for r in mine] == [shadow_id]


def test_container_is_fenced_in(
    iso: IsolatedNetwork, peer: str, prober: Any, host_port: int
) -> None:
    host_targets = [f"{iso.gateway}:{host_port}", f"{_host_eth0_ip()}:{host_port}"]
    outside = _outside()
    seen = probe(prober, [*host_targets, f"{peer}:8080", outside])
    assert seen == {**dict.fromkeys(host_targets, False), f"{peer}:8080": True, outside: False}
    # The host's own connections into the network are unaffected (replies are not NEW).
    assert _http_ok(peer, 8080)
    # Docker disables IPv6 in containers on a network without IPv6: no v6 path to the host.
    code, out = prober.exec_run(["cat", "/proc/net/if_inet6"])
    assert code == 0 and out.strip() == b""


def test_without_the_rule_the_host_is_reachable(
    iso: IsolatedNetwork, prober: Any, host_port: int
) -> None:
    """Control: ``internal=True`` alone leaves the host open; the rule is what closes it."""
    (rule,) = [r for r in host_rules() if r.bridge == iso.bridge]
    targets = [f"{iso.gateway}:{host_port}", f"{_host_eth0_ip()}:{host_port}"]
    assert delete_host_rule(rule)
    try:
        assert probe(prober, targets) == dict.fromkeys(targets, True)
    finally:
        add_host_rule(iso.bridge, iso.shadow_id)
    assert probe(prober, targets) == dict.fromkeys(targets, False)


def test_remove_is_idempotent(docker_client: Any, shadow_id: str) -> None:
    import docker.errors

    net = create_isolated_network(docker_client, shadow_id)
    remove_isolated_network(docker_client, net)
    remove_isolated_network(docker_client, net)
    assert not [r for r in host_rules() if r.bridge == net.bridge]
    with pytest.raises(docker.errors.NotFound):
        docker_client.networks.get(net.id)


def test_no_iptables_is_a_clear_error(
    docker_client: Any, shadow_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = len(docker_client.networks.list(filters={"label": f"{LABEL}={shadow_id}"}))
    monkeypatch.setattr(netmod.shutil, "which", lambda _name: None)
    with pytest.raises(IsolationUnavailable, match="cannot be isolated") as err:
        create_isolated_network(docker_client, shadow_id)
    assert isinstance(err.value, BackendUnavailable)
    after = len(docker_client.networks.list(filters={"label": f"{LABEL}={shadow_id}"}))
    assert after == before


def test_failed_rule_removes_the_network(
    docker_client: Any, shadow_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = len(docker_client.networks.list(filters={"label": f"{LABEL}={shadow_id}"}))

    def refuse(*args: str) -> Any:
        raise IsolationUnavailable(f"iptables {args[0]} failed: cannot be isolated")

    monkeypatch.setattr(netmod, "_iptables", refuse)
    with pytest.raises(IsolationUnavailable):
        create_isolated_network(docker_client, shadow_id)
    after = len(docker_client.networks.list(filters={"label": f"{LABEL}={shadow_id}"}))
    assert after == before

"""The shadow's isolated network: an internal Docker bridge plus one host firewall rule.

``internal=True`` stops traffic to the outside and to other networks (Docker adds FORWARD
rules), but a container can still open connections to the host's own services through the
bridge (that traffic goes through INPUT, which Docker leaves alone). One INPUT rule per
bridge drops the NEW connections a container starts towards the host; replies to
connections the host started (health checks, the LB's admin socket, the load generator)
are not NEW and still pass. The rule carries the comment ``shadowrl:<shadow id>`` so that
:func:`remove_isolated_network` and the sweep can find it again.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from shadowrl.core.errors import BackendUnavailable, ShadowError
from shadowrl.shadow.docker.labels import labels

BRIDGE_PREFIX = "shd-"
COMMENT_PREFIX = "shadowrl:"
IFNAMSIZ = 15  # Linux interface names: at most 15 characters


class IsolationUnavailable(BackendUnavailable):
    """The host firewall cannot be set up, so the real shadow could reach the host."""


@dataclass(frozen=True)
class IsolatedNetwork:
    """A created shadow network: the Docker object and what the host rule needs."""

    network: Any  # docker.models.networks.Network
    id: str
    name: str
    bridge: str
    subnet: str
    gateway: str
    shadow_id: str


@dataclass(frozen=True)
class HostRule:
    """One shadowrl INPUT rule, as ``iptables -S`` prints it."""

    bridge: str
    shadow_id: str
    spec: tuple[str, ...]  # the rule without ``-A INPUT``: what ``-D INPUT`` needs


def _rule_spec(bridge: str, shadow_id: str) -> tuple[str, ...]:
    return (
        "-i", bridge, "-m", "conntrack", "--ctstate", "NEW",
        "-m", "comment", "--comment", f"{COMMENT_PREFIX}{shadow_id}", "-j", "DROP",
    )  # fmt: skip


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    """Run iptables (waiting for its lock); missing binary or failure is an isolation error."""
    exe = shutil.which("iptables")
    if exe is None:
        raise IsolationUnavailable(
            "iptables is not installed: the real shadow cannot be isolated from the host"
        )
    try:
        return subprocess.run(
            [exe, "-w", *args], capture_output=True, text=True, timeout=30, check=True
        )
    except subprocess.CalledProcessError as exc:
        raise IsolationUnavailable(
            f"iptables {' '.join(args)} failed ({exc.stderr.strip() or exc.returncode}): "
            "the real shadow cannot be isolated from the host"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise IsolationUnavailable(
            "iptables timed out: the real shadow cannot be isolated from the host"
        ) from exc


def add_host_rule(bridge: str, shadow_id: str) -> None:
    """Drop new connections from ``bridge`` to the host (inserted first in INPUT)."""
    _iptables("-I", "INPUT", *_rule_spec(bridge, shadow_id))


def delete_host_rule(rule: HostRule) -> bool:
    """Delete one rule; False when it was already gone."""
    try:
        _iptables("-D", "INPUT", *rule.spec)
    except IsolationUnavailable:
        if rule in host_rules():
            raise
        return False
    return True


def host_rules() -> list[HostRule]:
    """Every shadowrl rule in INPUT (none when iptables is not installed)."""
    if shutil.which("iptables") is None:
        return []
    out: list[HostRule] = []
    for line in _iptables("-S", "INPUT").stdout.splitlines():
        if COMMENT_PREFIX not in line:
            continue
        words = shlex.split(line)
        if words[:2] != ["-A", "INPUT"] or "--comment" not in words or "-i" not in words:
            continue
        comment = words[words.index("--comment") + 1]
        if not comment.startswith(COMMENT_PREFIX):
            continue
        out.append(
            HostRule(
                bridge=words[words.index("-i") + 1],
                shadow_id=comment[len(COMMENT_PREFIX) :],
                spec=tuple(words[2:]),
            )
        )
    return out


def new_bridge_name() -> str:
    """A fresh bridge name that fits Linux's interface-name limit."""
    name = f"{BRIDGE_PREFIX}{secrets.token_hex(5)}"
    assert len(name) <= IFNAMSIZ
    return name


def create_isolated_network(client: Any, shadow_id: str) -> IsolatedNetwork:
    """Create the shadow's internal bridge network and fence the host off from it.

    The network exists before the rule, but nothing is attached to it until this returns.
    If the rule cannot be added the network is removed again and
    :class:`IsolationUnavailable` is raised: an unisolated shadow is never handed out.
    """
    if shutil.which("iptables") is None:
        _iptables("-V")  # raises the clear error before anything is created
    bridge = new_bridge_name()
    net = client.networks.create(
        f"shadowrl-{shadow_id}-{bridge[len(BRIDGE_PREFIX) :]}",
        driver="bridge",
        internal=True,
        labels=labels(shadow_id),
        options={"com.docker.network.bridge.name": bridge},
    )
    rule = HostRule(bridge, shadow_id, _rule_spec(bridge, shadow_id))
    try:
        add_host_rule(bridge, shadow_id)
        net.reload()
        config = net.attrs["IPAM"]["Config"][0]
    except BaseException:
        _remove_network(client, net.id)
        with contextlib.suppress(IsolationUnavailable):
            delete_host_rule(rule)  # the sweep removes it too, once the bridge is gone
        raise
    return IsolatedNetwork(
        network=net,
        id=net.id,
        name=net.name,
        bridge=bridge,
        subnet=config["Subnet"],
        gateway=config.get("Gateway", ""),
        shadow_id=shadow_id,
    )


class NetworkInUse(ShadowError):
    """The network still has containers attached, so Docker refused to remove it."""


def _remove_network(client: Any, network_id: str) -> bool:
    """Remove a Docker network; False when it was already gone."""
    import docker.errors

    try:
        client.api.remove_network(network_id)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        if "active endpoints" in str(exc.explanation or exc):
            raise NetworkInUse(f"network {network_id[:12]} still has containers attached") from exc
        raise
    return True


def remove_isolated_network(client: Any, net: IsolatedNetwork) -> None:
    """Remove the network, then its host rule; safe to call twice.

    The network goes first: while containers are still attached Docker refuses, and the
    rule then stays in place, so the host is never exposed to a live container.
    """
    _remove_network(client, net.id)
    delete_host_rule(HostRule(net.bridge, net.shadow_id, _rule_spec(net.bridge, net.shadow_id)))

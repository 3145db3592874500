"""One HAProxy per shadow service, driven through its runtime API.

Replicas come and go during a rollback, and a config reload would drop idle keep-alive
connections. So the config declares a fixed pool of disabled server slots (``r1`` ...
``rN``) once, and membership changes go through the runtime API: ``add`` points a free
slot at a replica and enables it, ``drain`` stops new requests to it while in-flight ones
finish, ``remove`` puts it in maintenance, which frees the slot. The admin socket listens
on TCP inside the container; the host reaches it (and the frontend on port 80) by the
container's IP on the shadow's internal network, so nothing is published.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import socket
import tarfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from shadowrl.core.errors import BackendUnavailable, ShadowError
from shadowrl.shadow.docker.labels import labels

BACKEND = "be"
ADMIN_PORT = 9999
CONFIG_DIR = "/etc/shadowrl"
CONFIG_PATH = f"{CONFIG_DIR}/haproxy.cfg"
COMMAND = ["haproxy", "-db", "-f", CONFIG_PATH]

# srv_admin_state bits (management.txt, "show servers state"). CMAINT (0x04, "disabled" in
# the config) stays set after "state ready" as a memory of the config and does not stop
# traffic; HAProxy's own SRV_ADMF_MAINT leaves it out too.
_FMAINT, _IMAINT, _FDRAIN, _IDRAIN, _RMAINT = 0x01, 0x02, 0x08, 0x10, 0x20
_MAINT = _FMAINT | _IMAINT | _RMAINT
_DRAIN = _FDRAIN | _IDRAIN


class HaproxyError(ShadowError):
    """HAProxy refused a runtime command, or no slot is free."""


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def haproxy_config(slots: int = 64, *, queue_timeout_s: float) -> str:
    """The whole haproxy.cfg: a frontend on :80 and a backend of ``slots`` disabled slots.

    ``retries 1`` with ``option redispatch`` moves a request whose connect failed (a replica
    that just died) to another replica once. The default ``retry-on conn-failure`` is kept on
    purpose: retrying after a request was sent could run a write twice. ``http-reuse safe``
    (a new client's first request never rides a pooled server connection) keeps a server
    closing an idle connection from failing a request the client cannot retry.

    Slots in use get TCP checks (every second) and are marked down at the first failed
    connect (``observe layer4``). Without them a killed replica that is still "ready" costs
    every request, not one in N, the 1 s connect timeout: the redispatched request takes the
    other replica's round-robin turn, so the next request lands on the dead one again. A slot
    set ready is up at once (no check to wait for); slots in maintenance are not checked.
    """
    if slots < 1:
        raise ValueError("an LB needs at least one slot")
    servers = "\n".join(f"    server r{i} 127.0.0.1:8080 disabled" for i in range(1, slots + 1))
    return f"""\
global
    stats socket ipv4@0.0.0.0:{ADMIN_PORT} level admin
    stats timeout 10s
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    option redispatch
    retries 1
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout queue {_ms(queue_timeout_s)}
    timeout http-keep-alive 30s

frontend fe
    bind :80
    default_backend {BACKEND}

backend {BACKEND}
    balance roundrobin
    http-reuse safe
    default-server check inter 1s fall 2 rise 1 observe layer4 error-limit 1 on-error mark-down
{servers}
"""


@dataclass(frozen=True)
class ServerStats:
    """One ``show stat`` row (a server slot, or the frontend/backend totals)."""

    status: str  # slots: UP, DOWN (failed checks), DRAIN, MAINT; frontend OPEN; backend UP
    scur: int  # current sessions
    stot: int  # sessions ever (a slot's counters span every replica it has held)
    req_tot: int  # HTTP requests
    lbtot: int  # times the slot was picked by the balancer
    hrsp_5xx: int
    addr: str


def _int(row: dict[str, str], key: str) -> int:
    value = row.get(key) or "0"
    return int(value) if value.isdigit() else 0


class HaproxyLB:
    """The runtime API of one HAProxy: one command per TCP connection, with a timeout."""

    def __init__(self, address: str, admin_port: int = ADMIN_PORT, *, timeout: float = 2.0) -> None:
        self.address = address
        self.admin_port = admin_port
        self.timeout = timeout
        self._lock = threading.Lock()  # add() picks a free slot then takes it: one at a time

    def command(self, line: str) -> str:
        """Send one command and return the whole answer (HAProxy closes after it)."""
        if "\n" in line or ";" in line:
            raise ValueError(f"one command per call, got {line!r}")
        try:
            with socket.create_connection(
                (self.address, self.admin_port), timeout=self.timeout
            ) as sock:
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise BackendUnavailable(
                f"HAProxy admin socket {self.address}:{self.admin_port}: {exc}"
            ) from exc
        return b"".join(chunks).decode()

    def _set(self, line: str) -> None:
        """``set server ... state`` answers an empty line on success, an error otherwise."""
        answer = self.command(line).strip()
        if answer:
            raise HaproxyError(f"HAProxy refused {line!r}: {answer}")

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the admin socket answers (HAProxy parsed its config and listens)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if "Name: HAProxy" in self.command("show info"):
                    return
            except BackendUnavailable:
                pass
            if time.monotonic() > deadline:
                raise BackendUnavailable(
                    f"HAProxy at {self.address}:{self.admin_port} not ready after {timeout} s"
                )
            time.sleep(0.05)

    def _servers(self) -> dict[int, tuple[str, int]]:
        """Every slot with its address and admin-state mask, from ``show servers state``."""
        lines = self.command(f"show servers state {BACKEND}").splitlines()
        header = next((ln for ln in lines if ln.startswith("# be_id")), None)
        if header is None:
            raise HaproxyError(f"unexpected 'show servers state' answer: {lines[:3]}")
        cols = header[2:].split()
        out: dict[int, tuple[str, int]] = {}
        for ln in lines:
            if not ln or ln.startswith("#") or " " not in ln:  # blank, header, version
                continue
            row = dict(zip(cols, ln.split()))
            name = row.get("srv_name", "")
            if row.get("be_name") == BACKEND and name.startswith("r") and name[1:].isdigit():
                out[int(name[1:])] = (row["srv_addr"], int(row["srv_admin_state"]))
        return out

    def members(self) -> dict[int, tuple[str, str]]:
        """Slots in use: slot -> (ip, "ready" | "drain"). Slots in maintenance are free.

        This is the admin view: a "ready" slot whose replica died is still listed here;
        ``stats()`` shows it DOWN (failed checks), and ``remove`` frees it.
        """
        out: dict[int, tuple[str, str]] = {}
        for slot, (addr, admin) in sorted(self._servers().items()):
            if admin & _MAINT:
                continue
            out[slot] = (addr, "drain" if admin & _DRAIN else "ready")
        return out

    def add(self, ip: str, port: int) -> int:
        """Point the lowest free slot at ``ip:port`` and let it take requests at once."""
        ip = str(ipaddress.ip_address(ip))  # also keeps the command line a single command
        with self._lock:
            free = [s for s, (_, admin) in sorted(self._servers().items()) if admin & _MAINT]
            if not free:
                raise HaproxyError(f"all LB slots at {self.address} are in use")
            slot = free[0]
            line = f"set server {BACKEND}/r{slot} addr {ip} port {int(port)}"
            answer = self.command(line).strip()  # it reports what changed, even on success
            if "changed from" not in answer and "no need to change" not in answer:
                raise HaproxyError(f"HAProxy refused {line!r}: {answer}")
            self._set(f"set server {BACKEND}/r{slot} state ready")
            return slot

    def drain(self, slot: int) -> None:
        """No new requests to ``slot``; requests it is serving finish."""
        self._set(f"set server {BACKEND}/r{int(slot)} state drain")

    def remove(self, slot: int) -> None:
        """Take ``slot`` out (maintenance): no traffic at all, and the slot is free again."""
        self._set(f"set server {BACKEND}/r{int(slot)} state maint")

    def stats(self) -> dict[int | str, ServerStats]:
        """``show stat`` of the service: ``"frontend"``, ``"backend"`` and every slot that is
        in use or has served anything (int keys). Counters only grow, and a reused slot keeps
        its earlier replicas' counts: diff two calls for a window."""
        text = self.command("show stat").lstrip("# ")
        out: dict[int | str, ServerStats] = {}
        for row in csv.DictReader(io.StringIO(text)):
            sv = row.get("svname", "")
            key: int | str
            if row.get("pxname") == "fe" and sv == "FRONTEND":
                key = "frontend"
            elif row.get("pxname") != BACKEND:
                continue
            elif sv == "BACKEND":
                key = "backend"
            elif sv.startswith("r") and sv[1:].isdigit():
                key = int(sv[1:])
                if row.get("status") == "MAINT" and not _int(row, "stot"):
                    continue
            else:
                continue
            out[key] = ServerStats(
                status=row.get("status", ""),
                scur=_int(row, "scur"),
                stot=_int(row, "stot"),
                req_tot=_int(row, "req_tot"),
                lbtot=_int(row, "lbtot"),
                hrsp_5xx=_int(row, "hrsp_5xx"),
                addr=row.get("addr", ""),
            )
        return out


def _config_tar(config: str) -> bytes:
    """A tar holding ``shadowrl/haproxy.cfg``, to unpack into /etc of a created container."""
    buf = io.BytesIO()
    data = config.encode()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        folder = tarfile.TarInfo("shadowrl")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        info = tarfile.TarInfo("shadowrl/haproxy.cfg")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def container_ip(container: Any, network_name: str) -> str:
    """The container's IPv4 address on ``network_name``."""
    container.reload()
    return container.attrs["NetworkSettings"]["Networks"][network_name]["IPAddress"]


def start_lb(
    client: Any,
    image: str,
    network: Any,
    shadow_id: str,
    name: str,
    *,
    slots: int = 64,
    queue_timeout_s: float = 2.0,
    ready_timeout: float = 10.0,
) -> tuple[Any, HaproxyLB]:
    """Start one service's HAProxy on the shadow network and wait for its admin socket.

    ``network`` is an ``IsolatedNetwork`` or a Docker network name.
    """
    net_name = getattr(network, "name", network)
    container = client.containers.create(
        image,
        COMMAND,
        name=name,
        labels=labels(shadow_id, role="lb"),
        init=True,
        network=net_name,
        detach=True,
    )
    try:
        container.put_archive(
            "/etc", _config_tar(haproxy_config(slots, queue_timeout_s=queue_timeout_s))
        )
        container.start()
        lb = HaproxyLB(container_ip(container, net_name))
        try:
            lb.wait_ready(ready_timeout)
        except BackendUnavailable as exc:
            logs = container.logs(tail=20).decode(errors="replace").strip()
            raise BackendUnavailable(f"{exc}; HAProxy said: {logs or '(nothing)'}") from exc
    except BaseException:
        container.remove(force=True)
        raise
    return container, lb

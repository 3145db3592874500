"""The traffic mirror (``shadowrl mirror``, docs/mirror.md) against real HTTP servers.

One subprocess runs the upstream servers for the whole module: a "live" answering at once, a
"shadow" recording what it receives (and hanging for 30 s on every request while paused)
and a control server the tests drive them with. Each test starts the real command,
``shadowrl mirror ... --json``, as a subprocess in front of them, sends it traffic from
this process and stops it with SIGINT, reading its one JSON object.

    python -m tests.live.test_mirror upstream      # the upstream servers (ports on stdout)
    python -m tests.live.test_mirror cli mirror …  # the command line (with ``mirror``)
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARK = "X-Shadowrl-Mirror"
COVERAGE = ("not_sampled", "writes_skipped", "dropped", "queued", "in_flight", "mirrored",
            "failed")


# --------------------------------------------------------------------------- the servers


def upstream_main() -> None:
    """Live, shadow and control servers on ephemeral ports; their ports as one JSON line."""
    from aiohttp import web

    state: dict[str, Any] = {}

    def reset() -> None:
        state.update(live=0, live_marked=0, live_bodies=[], shadow=[], paused=False)

    reset()

    async def live(request: web.Request) -> web.Response:
        body = await request.read()
        state["live"] += 1
        state["live_marked"] += MARK in request.headers
        if request.method != "GET":
            state["live_bodies"].append([request.method, body.hex()])
        if request.path == "/echo":
            return web.json_response({"method": request.method, "path": request.raw_path,
                                      "body": body.hex(),
                                      "headers": sorted([k, v] for k, v in
                                                        request.headers.items()
                                                        if k not in ("Host", "Connection"))},
                                     headers={"X-Live": "1"})
        if request.path == "/missing":
            return web.Response(status=404, text="no such thing")
        return web.Response(text="live ok")

    async def shadow(request: web.Request) -> web.Response:
        body = await request.read()
        state["shadow"].append({"method": request.method, "path": request.raw_path,
                                "user": request.headers.get("X-User")
                                or request.cookies.get("session"),
                                "body": body.hex(), "mark": request.headers.get(MARK)})
        if state["paused"]:
            await asyncio.sleep(30)
        return web.Response(text="shadow ok")

    async def control(request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action == "reset":
            reset()
        elif action in ("pause", "resume"):
            state["paused"] = action == "pause"
        return web.json_response(state)

    async def main() -> None:
        ports = {}
        for name, handler in (("live", live), ("shadow", shadow), ("control", control)):
            app = web.Application(client_max_size=1 << 26)
            path = "/{action}" if name == "control" else "/{tail:.*}"
            app.router.add_route("*", path, handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            ports[name] = runner.addresses[0][1]
        print(json.dumps(ports), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def cli_app() -> Any:
    """The command line with ``mirror``: shadowrl's own once main.py registers it, else a
    group holding just that command."""
    import typer

    from shadowrl.cli.commands import Command, Group
    from shadowrl.cli.main import app
    from shadowrl.cli.mirror import MIRROR_HELP, mirror_cmd

    if any(c.callback is mirror_cmd for c in app.registered_commands):
        return app
    alone = typer.Typer(cls=Group, add_completion=False, pretty_exceptions_enable=False)
    alone.command("mirror", cls=Command, help=MIRROR_HELP)(mirror_cmd)
    alone.callback()(lambda: None)
    return alone


class Upstream:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.live.test_mirror",
                                      "upstream"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ports = json.loads(self.proc.stdout.readline())
        self.live = f"http://127.0.0.1:{ports['live']}"
        self.shadow = f"http://127.0.0.1:{ports['shadow']}"
        self.control = f"http://127.0.0.1:{ports['control']}"

    def do(self, action: str = "state") -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.control}/{action}", timeout=10) as r:
            return json.loads(r.read())


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    try:
        yield up
    finally:
        up.proc.terminate()
        up.proc.wait(10)


@pytest.fixture
def servers(upstream: Upstream) -> Upstream:
    upstream.do("reset")
    return upstream


class Mirror:
    """``shadowrl mirror --json`` in front of the upstream servers, on a free port."""

    def __init__(self, up: Upstream, tmp: Path, *flags: str, shadow: str | None = None,
                 percent: float = 100) -> None:
        self.log = tmp / f"mirror-{time.monotonic_ns()}.log"
        if "--shadow-timeout" not in flags:  # a starved healthy shadow must not count failed
            flags = (*flags, "--shadow-timeout", "10")
        with self.log.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.live.test_mirror", "cli", "mirror", "--listen",
                 "127.0.0.1:0", "--live", up.live, "--shadow", shadow or up.shadow,
                 "--percent", f"{percent:g}", *flags, "--json"],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
        deadline = time.monotonic() + 30
        while "listening on " not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the mirror did not start"
            time.sleep(0.05)
        self.url = self.log.read_text().split("listening on ")[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/__mirror/stats", timeout=10) as r:
            return json.loads(r.read())

    def settled(self) -> dict[str, Any]:
        """The stats once no shadow copy is queued or in flight."""
        deadline = time.monotonic() + 30
        while True:
            s = self.stats()
            if s["queued"] + s["in_flight"] == 0 or time.monotonic() > deadline:
                return s
            time.sleep(0.05)

    def stop(self) -> dict[str, Any]:
        """SIGINT, as Ctrl-C; the command's stdout must be exactly one JSON object."""
        self.proc.send_signal(signal.SIGINT)
        stdout, _ = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, self.log.read_text()
        assert "Traceback" not in self.log.read_text()
        return json.loads(stdout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def mirrors(tmp_path: Path) -> Iterator[list[Mirror]]:
    started: list[Mirror] = []
    yield started
    for m in started:
        m.kill()


def start(mirrors: list[Mirror], up: Upstream, tmp: Path, *flags: str, **kw: Any) -> Mirror:
    m = Mirror(up, tmp, *flags, **kw)
    mirrors.append(m)
    return m


def request(base: str, method: str = "GET", path: str = "/", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def _blast(base: str, paths: list[str], headers: list[dict[str, str]],
                 concurrency: int) -> Counter[int]:
    import aiohttp

    statuses: Counter[int] = Counter()
    todo = iter(range(len(paths)))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in todo:
            async with session.get(base + paths[i], headers=headers[i]) as r:
                await r.read()
                statuses[r.status] += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return statuses


def blast(base: str, paths: list[str], headers: list[dict[str, str]] | None = None,
          concurrency: int = 16) -> Counter[int]:
    """GET every path, ``concurrency`` at a time; the statuses counted."""
    return asyncio.run(_blast(base, paths, headers or [{}] * len(paths), concurrency))


def adds_up(s: dict[str, Any]) -> None:
    assert s["seen"] == sum(s[k] for k in COVERAGE), s
    assert s["sampled"] == s["seen"] - s["not_sampled"] - s["writes_skipped"], s


def final_adds_up(result: dict[str, Any]) -> None:
    parts = ("not_sampled", "writes_skipped", "dropped", "unsent", "mirrored", "failed")
    assert result["seen"] == sum(result[k] for k in parts), result


# --------------------------------------------------------------------------- units


def test_sampling_per_user_is_consistent_and_near_p() -> None:
    from shadowrl.live.mirror import Sampler, bucket

    users = [f"user-{i}" for i in range(20_000)]
    for percent in (1, 10, 37.5, 50):
        sampler = Sampler(percent)
        picked = [sampler.pick(u) for u in users]
        assert picked == [Sampler(percent, seed=9).pick(u) for u in users]  # any process
        assert abs(sum(picked) / len(users) * 100 - percent) < 1
    assert bucket("alice") == bucket("alice")
    assert not any(Sampler(0).pick(u) for u in users[:100])
    assert all(Sampler(100).pick(u) for u in users[:100])
    # a share of the users at 10 % is a subset of the share at 20 %: raising P adds users
    assert {u for u in users if Sampler(10).pick(u)} <= {u for u in users if Sampler(20).pick(u)}
    # without the key: random, at P
    rand = Sampler(10, seed=1)
    assert abs(sum(rand.pick(None) for _ in range(20_000)) / 200 - 10) < 1


def test_hop_by_hop_headers_are_not_forwarded() -> None:
    from multidict import CIMultiDict

    from shadowrl.live.mirror import end_to_end

    headers = CIMultiDict([("Connection", "keep-alive, X-Secret"), ("Keep-Alive", "5"),
                           ("X-Secret", "1"), ("Transfer-Encoding", "chunked"),
                           ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Ok", "y")])
    kept = end_to_end(headers)
    assert list(kept.items()) == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Ok", "y")]


# --------------------------------------------------------------------------- the checks


def test_live_p50_through_the_mirror_stays_within_2_ms_with_a_paused_shadow(
        servers: Upstream, mirrors: list[Mirror], tmp_path: Path) -> None:
    """Direct and mirrored requests alternate on two keep-alive connections (so a burst of
    load on this shared machine hits both alike); medians of 500 each after a warm-up. A
    failed round is retried (twice at most): the medians move with the machine's other
    work, and a mirror that waited for the shadow would fail every round by ~1 s, not
    occasionally by a few ms."""
    servers.do("pause")
    m = start(mirrors, servers, tmp_path, "--queue", "100", "--shadow-timeout", "1",
              percent=100)
    live_port = int(servers.live.rsplit(":", 1)[1])
    direct = http.client.HTTPConnection("127.0.0.1", live_port, timeout=10)
    mirrored = http.client.HTTPConnection("127.0.0.1", m.port, timeout=10)

    def timed(conn: http.client.HTTPConnection, i: int) -> float:
        t0 = time.perf_counter()
        conn.request("GET", f"/item?id={i}")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b"live ok"
        return (time.perf_counter() - t0) * 1000

    for i in range(200):
        timed(direct, i)
        timed(mirrored, i)
    rounds = []
    for _ in range(3):
        d, w = [], []
        for i in range(500):
            d.append(timed(direct, i))
            w.append(timed(mirrored, i))
        rounds.append((statistics.median(d), statistics.median(w)))
        if rounds[-1][1] - rounds[-1][0] < 2.0:
            break
    direct_p50, mirror_p50 = rounds[-1]
    assert mirror_p50 - direct_p50 < 2.0, rounds
    s = m.stats()
    adds_up(s)
    assert s["dropped"] > 0 and s["mirrored"] == 0  # the shadow really hung: the queue filled
    servers.do("resume")
    final_adds_up(m.stop())


def test_the_mirrored_share_over_10000_requests_is_within_1_point_of_p(
        servers: Upstream, mirrors: list[Mirror], tmp_path: Path) -> None:
    m = start(mirrors, servers, tmp_path, "--seed", "7", "--queue", "10000", percent=10)
    statuses = blast(m.url, [f"/item?id={i}" for i in range(10_000)])
    assert statuses == {200: 10_000}
    s = m.settled()
    adds_up(s)
    received = servers.do()["shadow"]
    assert s["seen"] == 10_000 and s["dropped"] == s["failed"] == 0
    assert len(received) == s["mirrored"] == s["sampled"]
    assert abs(len(received) / 10_000 - 0.10) <= 0.01, len(received)
    assert all(r["mark"] == "1" and r["method"] == "GET" for r in received)
    assert len({r["path"] for r in received}) == len(received)  # each one copied once
    state = servers.do()
    assert state["live"] == 10_000 and state["live_marked"] == 0
    result = m.stop()
    final_adds_up(result)
    assert result["seen"] == 10_000 and result["mirrored"] == len(received)
    assert result["mirrored_share"] == pytest.approx(len(received) / 10_000)


@pytest.mark.parametrize("key", ["header:X-User", "cookie:session"])
def test_sampling_by_user_is_consistent(servers: Upstream, mirrors: list[Mirror],
                                        tmp_path: Path, key: str) -> None:
    m = start(mirrors, servers, tmp_path, "--sample-key", key, percent=30)
    users = [f"u{i}" for i in range(300)]
    kind, name = key.split(":")

    def carry(u: str) -> dict[str, str]:
        return {name: u} if kind == "header" else {"Cookie": f"theme=dark; {name}={u}"}

    paths = [f"/u/{u}/{n}" for n in range(2) for u in users] + [f"/anon/{i}" for i in
                                                                   range(200)]
    headers = [carry(u) for _ in range(2) for u in users] + [{}] * 200
    assert blast(m.url, paths, headers) == {200: 800}
    m.settled()
    received = servers.do()["shadow"]
    per_user = Counter(r["user"] for r in received if r["user"])
    assert set(per_user.values()) <= {2}  # a user's requests: all mirrored, or none
    assert abs(len(per_user) / len(users) - 0.30) < 0.08
    anonymous = sum(r["path"].startswith("/anon/") for r in received)
    assert 0 < anonymous < 200  # no key: sampled at random
    final_adds_up(m.stop())


BODY = bytes(range(256)) * 3


def test_writes_are_not_mirrored_by_default(servers: Upstream, mirrors: list[Mirror],
                                            tmp_path: Path) -> None:
    m = start(mirrors, servers, tmp_path, percent=100)
    assert request(m.url, "GET", "/a")[0] == 200
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert request(m.url, method, "/w", BODY)[0] == 200
    s = m.settled()
    adds_up(s)
    assert (s["seen"], s["writes_skipped"], s["mirrored"]) == (5, 4, 1)
    state = servers.do()
    assert [r["method"] for r in state["shadow"]] == ["GET"]
    assert state["live_bodies"] == [[x, BODY.hex()] for x in ("POST", "PUT", "PATCH", "DELETE")]
    final_adds_up(m.stop())


def test_writes_are_mirrored_with_their_body_when_allowed(
        servers: Upstream, mirrors: list[Mirror], tmp_path: Path) -> None:
    m = start(mirrors, servers, tmp_path, "--mirror-writes", percent=100)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert request(m.url, method, f"/w?m={method}", BODY,
                       {"Content-Type": "application/octet-stream"})[0] == 200
    s = m.settled()
    assert (s["seen"], s["writes_skipped"], s["mirrored"]) == (4, 0, 4)
    received = servers.do()["shadow"]
    assert sorted((r["method"], r["path"], r["body"], r["mark"]) for r in received) == sorted(
        (x, f"/w?m={x}", BODY.hex(), "1") for x in ("POST", "PUT", "PATCH", "DELETE"))
    final_adds_up(m.stop())


def test_coverage_adds_up_and_a_full_queue_drops(servers: Upstream, mirrors: list[Mirror],
                                                 tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    servers.do("pause")
    m = start(mirrors, servers, tmp_path, "--queue", "2", "--senders", "1",
              "--shadow-timeout", "0.5", "--seed", "3", percent=50)
    for i in range(60):
        assert request(m.url, "GET", f"/g/{i}")[0] == 200
    for _ in range(5):
        assert request(m.url, "POST", "/w", b"x")[0] == 200
    s = m.stats()
    adds_up(s)
    assert s["seen"] == 65 and s["writes_skipped"] == 5 and s["dropped"] > 0
    with urllib.request.urlopen(f"{m.url}/__mirror/metrics", timeout=10) as r:
        text = r.read().decode()
    metrics = {f.name: f.samples[0].value for f in text_string_to_metric_families(text)
               if f.samples}
    assert metrics["shadowrl_mirror_requests_seen"] == 65
    scraped = {k: metrics[f"shadowrl_mirror_{n}"] for k, n in (
        ("not_sampled", "requests_not_sampled"), ("writes_skipped", "writes_skipped"),
        ("dropped", "shadow_dropped"), ("queued", "shadow_queued"),
        ("in_flight", "shadow_in_flight"), ("mirrored", "shadow_mirrored"),
        ("failed", "shadow_failed"))}
    assert sum(scraped.values()) == 65
    # admin paths are answered by the mirror, never forwarded to live nor counted
    live_before = servers.do()["live"]
    assert request(m.url, "GET", "/__mirror/other")[0] == 404
    assert servers.do()["live"] == live_before and m.stats()["seen"] == 65
    result = m.stop()
    final_adds_up(result)
    assert result["dropped"] >= s["dropped"] and result["seen"] == 65
    servers.do("resume")


def test_a_dead_shadow_fails_copies_and_live_still_answers(
        servers: Upstream, mirrors: list[Mirror], tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    m = start(mirrors, servers, tmp_path, percent=100, shadow=dead)
    assert blast(m.url, [f"/d/{i}" for i in range(50)]) == {200: 50}
    s = m.settled()
    adds_up(s)
    assert s["failed"] + s["dropped"] == 50 and s["mirrored"] == 0
    final_adds_up(m.stop())


def test_live_responses_come_back_unchanged(servers: Upstream, mirrors: list[Mirror],
                                            tmp_path: Path) -> None:
    """Status, body and headers as live sent them; the request as the client sent it (but
    for the hop-by-hop ``Connection`` urllib adds, which a proxy must not pass on)."""
    m = start(mirrors, servers, tmp_path, percent=0)
    for method, path, body in (("GET", "/echo?a=1&b=%2F", None), ("POST", "/echo", BODY),
                               ("GET", "/missing", None)):
        headers = {"X-Trace": "t-1", "Cookie": "session=s1"}
        direct = fetch(servers.live, method, path, body, headers)
        through = fetch(m.url, method, path, body, headers)
        assert through == direct
    final = m.stop()
    assert (final["seen"], final["not_sampled"], final["writes_skipped"]) == (3, 2, 1)


def fetch(base: str, method: str, path: str, body: bytes | None,
          headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        r = urllib.request.urlopen(req, timeout=10)
    except urllib.error.HTTPError as exc:
        r = exc
    with r:
        data = r.read()
        kept = sorted((k, v) for k, v in r.headers.items() if k not in ("Date", "Connection"))
        status = r.status
    return status, kept, data


def test_the_recording_file(servers: Upstream, mirrors: list[Mirror], tmp_path: Path) -> None:
    out = tmp_path / "rec.jsonl"
    m = start(mirrors, servers, tmp_path, "--record", str(out), "--mirror-writes",
              "--sample-key", "header:X-User", percent=100)
    request(m.url, "GET", "/orders?id=3", headers={"X-User": "u-1"})
    request(m.url, "POST", "/orders", b"{\"n\": 1}", {"X-User": "u-2"})
    request(m.url, "GET", "/missing")
    deadline = time.monotonic() + 10  # written while serving, not only at the stop
    while len(out.read_text().splitlines()) < 4:
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.05)
    result = m.stop()
    assert result["recorded"] == 3 and result["record"] == str(out)
    text = out.read_text()
    assert text.endswith("\n")
    header, *rows = [json.loads(line) for line in text.splitlines()]
    assert set(header) == {"format", "started", "percent"}
    assert header["format"] == "shadowrl-recording/1" and header["percent"] == 100
    assert [(r["method"], r["path"], r["user"], r["live_status"]) for r in rows] == [
        ("GET", "/orders?id=3", "u-1", 200), ("POST", "/orders", "u-2", 200),
        ("GET", "/missing", None, 404)]
    assert all(isinstance(r["live_ms"], float) and r["live_ms"] > 0 for r in rows)
    assert [r["t"] for r in rows] == sorted(r["t"] for r in rows)
    assert header["started"] <= rows[0]["t"] < time.time()
    assert base64.b64decode(rows[1]["body_b64"]) == b"{\"n\": 1}"
    assert "body_b64" not in rows[0] and "body_b64" not in rows[2]
    assert {k for r in rows for k in r} <= {"t", "method", "path", "user", "live_status",
                                            "live_ms", "body_b64"}


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(("args", "flag"), [
    (["--live", "localhost:8000"], "--live"),
    (["--shadow", "ftp://x"], "--shadow"),
    (["--shadow", "http://127.0.0.1:9"], "--shadow"),  # = --live
    (["--percent", "150"], "--percent"),
    (["--percent", "-1"], "--percent"),
    (["--sample-key", "user"], "--sample-key"),
    (["--sample-key", "query:id"], "--sample-key"),
    (["--listen", "8080"], "--listen"),
    (["--listen", "127.0.0.1:99999"], "--listen"),
    (["--queue", "0"], "--queue"),
    (["--record", "/nonexistent-dir/rec.jsonl"], "--record"),
    (["--record", "/tmp/never-written.jsonl", "--percent", "0"], "--record"),
])
def test_bad_flags_exit_2_naming_the_flag(args: list[str], flag: str) -> None:
    from typer.testing import CliRunner

    base = {"--live": "http://127.0.0.1:9", "--shadow": "http://127.0.0.1:10",
            "--percent": "10", "--listen": "127.0.0.1:0"}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = ["mirror", *[x for kv in base.items() for x in kv], "--json"]
    result = CliRunner().invoke(cli_app(), argv)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith(f"error: {flag}"), result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_an_existing_recording_or_a_busy_port_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    old = tmp_path / "old.jsonl"
    old.write_text('{"format": "shadowrl-recording/1"}\n')
    base = ["mirror", "--live", "http://127.0.0.1:9", "--shadow", "http://127.0.0.1:10",
            "--percent", "10"]
    result = CliRunner().invoke(cli_app(), [*base, "--listen", "127.0.0.1:0", "--record",
                                            str(old)])
    assert result.exit_code == 2 and result.stderr.startswith("error: --record"), result.stderr
    assert old.read_text() == '{"format": "shadowrl-recording/1"}\n'
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli_app(), [*base, "--listen", f"127.0.0.1:{port}"])
    assert result.exit_code == 2 and result.stderr.startswith("error: --listen"), result.stderr
    assert "Traceback" not in result.stderr


def test_without_the_live_extra_the_command_names_it() -> None:
    code = """
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("aiohttp", "prometheus_client"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)

sys.meta_path.insert(0, Blocker())
from typer.testing import CliRunner
from tests.live.test_mirror import cli_app

r = CliRunner().invoke(cli_app(), ["mirror", "--live", "http://127.0.0.1:9", "--shadow",
                                   "http://127.0.0.1:10", "--percent", "1", "--listen",
                                   "127.0.0.1:0"])
print(r.exit_code)
print(r.stderr)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    exit_code, _, message = done.stdout.partition("\n")
    assert exit_code == "2"
    assert "the live extra is needed: pip install 'shadowrl[live]'" in message
    assert "Traceback" not in message


def test_the_text_summary(servers: Upstream) -> None:
    """Without --json: the coverage as text on stdout (the JSON form is every test above)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.live.test_mirror", "cli", "mirror", "--listen",
         "127.0.0.1:0", "--live", servers.live, "--shadow", servers.shadow, "--percent", "100"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        url = line.split("listening on ")[1].split()[0]
        assert request(url, "GET", "/x")[0] == 200
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert stdout.startswith("seen 1: not sampled 0, writes skipped 0, sampled 1\n"), stdout
    assert "mirrored 1," in stdout


if __name__ == "__main__":
    if sys.argv[1] == "upstream":
        upstream_main()
    elif sys.argv[1] == "cli":
        os.environ.setdefault("COLUMNS", "200")
        cli_app()(args=sys.argv[2:], prog_name="shadowrl")

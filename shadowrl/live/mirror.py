"""The traffic mirror: a proxy in front of live that copies a sampled share of its requests
to the shadow, fire-and-forget (docs/mirror.md).

Live's path is an ordinary reverse proxy: the request goes to live as the client sent it
(hop-by-hop headers aside) and live's response comes back unchanged. The shadow's copy is
only ever put on a bounded queue with ``put_nowait``: a full queue drops the copy and counts
it, so nothing on live's path waits for the shadow. A few sender tasks take copies off the
queue, send them with a short timeout and discard the answers. nginx's ``mirror`` module, by
contrast, holds live's response until the mirror subrequest ends (docker-feasibility notes,
section 7: live's p50 went from 4 ms to 990 ms with a paused shadow).

Every request for live is counted exactly once, so the coverage adds up at any moment::

    seen = not_sampled + writes_skipped + dropped + queued + in_flight + mirrored + failed

Admin endpoints under ``/__mirror/`` (never forwarded to live, never counted):
``/__mirror/metrics`` (Prometheus text) and ``/__mirror/stats`` (JSON).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shadowrl.core.extras import missing_extra

try:
    import aiohttp
    from aiohttp import web
    from multidict import CIMultiDict, CIMultiDictProxy
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from yarl import URL
except ImportError as exc:
    raise missing_extra("live", exc) from exc

from shadowrl.live.record_writer import RecordEntry, RecordWriter

MIRROR_HEADER = "X-Shadowrl-Mirror"
ADMIN_PREFIX = "/__mirror"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BUCKETS = 10_000  # sampling resolution: percent in steps of 0.01
# RFC 9110 section 7.6.1: these describe one connection, not the message; a proxy drops them
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade"})
BUFFERED_RESPONSE = 1 << 20  # live responses up to this size are read whole; larger stream


class ListenError(OSError):
    """The mirror cannot listen on its address (in use, not local, not allowed)."""


@dataclass(frozen=True)
class SampleKey:
    """What identifies a user for consistent sampling: a request header or a cookie."""

    kind: Literal["header", "cookie"]
    name: str

    def value(self, request: web.BaseRequest) -> str | None:
        if self.kind == "header":
            return request.headers.get(self.name)
        return request.cookies.get(self.name)

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class MirrorConfig:
    live: str  # base URLs, no trailing slash: a request's path and query are appended
    shadow: str
    percent: float
    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port (MirrorServer.url says which)
    sample_key: SampleKey | None = None
    mirror_writes: bool = False
    record: Path | None = None
    queue: int = 1000  # shadow copies waiting at most
    senders: int = 8  # concurrent requests to the shadow
    shadow_timeout_s: float = 1.0
    seed: int | None = None  # of random sampling (None: from the OS)
    live_connections: int = 1000
    max_body: int = 64 << 20  # request bodies are buffered (copied to the shadow)


def bucket(value: str) -> int:
    """A user's fixed place in 0..BUCKETS-1: the same value, the same decision, in every
    process and run."""
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class Sampler:
    """Picks a request for the shadow: by its user's :func:`bucket` when it carries the
    sample key, else at random (so traffic without the key is still sampled at P %)."""

    def __init__(self, percent: float, seed: int | None = None) -> None:
        self.threshold = round(percent * BUCKETS / 100)
        self._rng = random.Random(seed)

    def pick(self, user: str | None) -> bool:
        if self.threshold >= BUCKETS:
            return True
        if self.threshold <= 0:
            return False
        if user is not None:
            return bucket(user) < self.threshold
        return self._rng.random() * BUCKETS < self.threshold


@dataclass
class Coverage:
    """What became of every request for live (the module docstring's invariant)."""

    seen: int = 0
    not_sampled: int = 0
    writes_skipped: int = 0  # not GET/HEAD/OPTIONS, and not mirrored for that reason
    sampled: int = 0  # = dropped + queued + in_flight + mirrored + failed
    dropped: int = 0  # the shadow queue was full
    in_flight: int = 0
    mirrored: int = 0  # sent to the shadow and answered (any status)
    failed: int = 0  # the shadow refused, reset or timed out
    live_errors: int = 0  # live unreachable or timed out (the client got 502 or 504)
    too_large: int = 0  # bodies over max_body: refused with 413, not counted in seen
    shadow_status: Counter[str] = field(default_factory=Counter)  # "2xx": answers


@dataclass
class ShadowCopy:
    method: str
    path: str  # raw path and query, as the client sent them
    headers: CIMultiDict[str]
    body: bytes


def end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str],
               drop: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    """``headers`` without the hop-by-hop ones (and those ``Connection`` names) or ``drop``;
    repeated headers (``Set-Cookie``) stay repeated."""
    named = {token.strip().lower() for value in headers.getall("Connection", ())
             for token in value.split(",")}
    kept: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        low = name.lower()
        if low not in HOP_BY_HOP and low not in named and low not in drop:
            kept.add(name, value)
    return kept


REQUEST_DROP = frozenset({"host", "content-length"})  # the client session sets them anew


def _session(limit: int) -> aiohttp.ClientSession:
    """A client that adds and keeps nothing: no cookie jar (users' cookies must not leak
    between requests), no decompression, no redirects followed (per request), no default
    Accept, User-Agent, Accept-Encoding or Content-Type."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0, enable_cleanup_closed=True),
        cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
        skip_auto_headers=("Accept", "User-Agent", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))


class MirrorServer:
    """The proxy: :meth:`start`, serve, :meth:`stop`; :meth:`stats` at any time."""

    def __init__(self, config: MirrorConfig) -> None:
        self.config = config
        self.coverage = Coverage()
        self.url = ""
        self.started = time.time()
        self._sampler = Sampler(config.percent, config.seed)
        self._queue: asyncio.Queue[ShadowCopy] = asyncio.Queue(maxsize=config.queue)
        self._shadow_timeout = aiohttp.ClientTimeout(total=config.shadow_timeout_s)
        self._recorder = (RecordWriter(config.record, config.percent)
                          if config.record is not None else None)
        self._senders: list[asyncio.Task[None]] = []
        self._record_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._live: aiohttp.ClientSession | None = None
        self._shadow: aiohttp.ClientSession | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        c = self.config
        self._live = _session(c.live_connections)
        self._shadow = _session(c.senders)
        if self._recorder is not None:
            self._recorder.open()
            self._record_task = asyncio.create_task(self._recorder.run())
        self._senders = [asyncio.create_task(self._sender()) for _ in range(c.senders)]
        app = web.Application(client_max_size=c.max_body)
        app.router.add_get(f"{ADMIN_PREFIX}/metrics", self._metrics)
        app.router.add_get(f"{ADMIN_PREFIX}/stats", self._stats)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=10)
        await self._runner.setup()
        site = web.TCPSite(self._runner, c.host, c.port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            await self._close()
            raise ListenError(exc.errno, exc.strerror or str(exc)) from exc
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        self.started = time.time()

    async def stop(self) -> None:
        """Stop accepting, let live's requests in progress finish, give the shadow copies
        already queued up to one shadow timeout, then close. Copies still queued or in
        flight after that are not sent; they stay counted as queued / in flight."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        try:
            await asyncio.wait_for(self._queue.join(), self.config.shadow_timeout_s)
        except asyncio.TimeoutError:
            pass
        await self._close()

    async def _close(self) -> None:
        for task in self._senders:
            task.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        self._senders = []
        if self._recorder is not None and self._record_task is not None:
            self._recorder.stop()
            await self._record_task
            self._record_task = None
        for session in (self._live, self._shadow):
            if session is not None:
                await session.close()
        self._live = self._shadow = None

    # ------------------------------------------------------------------ coverage

    def stats(self) -> dict[str, Any]:
        """The coverage now, as ``/__mirror/stats`` serves it (consistent: the counters
        only change on the event loop, between awaits)."""
        c = self.coverage
        rec = self._recorder
        return {
            "seen": c.seen, "not_sampled": c.not_sampled, "writes_skipped": c.writes_skipped,
            "sampled": c.sampled, "dropped": c.dropped, "queued": self._queue.qsize(),
            "in_flight": c.in_flight, "mirrored": c.mirrored, "failed": c.failed,
            "mirrored_share": round(c.mirrored / c.seen, 6) if c.seen else None,
            "live_errors": c.live_errors, "too_large": c.too_large,
            "shadow_status": dict(sorted(c.shadow_status.items())),
            "recorded": rec.written if rec else 0,
            "record_pending": rec.pending if rec else 0,
            "record_dropped": rec.dropped if rec else 0,
            "percent": self.config.percent, "url": self.url,
            "uptime_s": round(time.time() - self.started, 3),
        }

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ------------------------------------------------------------------ live's path

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        if request.path == ADMIN_PREFIX or request.path.startswith(ADMIN_PREFIX + "/"):
            raise web.HTTPNotFound(text="unknown mirror admin path\n")
        arrived = time.time()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.coverage.too_large += 1
            raise
        entry = self._decide(request, body, arrived)  # no await before: counts stay exact
        started = time.perf_counter()
        answered = False
        try:
            response, answered = await self._forward(request, body)
            return response
        finally:
            if entry is not None:
                ms = (time.perf_counter() - started) * 1000
                entry.finish(response.status if answered else None, ms if answered else None)

    def _decide(self, request: web.Request, body: bytes, arrived: float) -> RecordEntry | None:
        """Count the request and, when sampled, queue its shadow copy (never waiting) and
        start its record."""
        c = self.coverage
        c.seen += 1
        method = request.method
        if method not in SAFE_METHODS and not (self.config.mirror_writes
                                               and method in WRITE_METHODS):
            c.writes_skipped += 1
            return None
        key = self.config.sample_key
        user = key.value(request) if key is not None else None
        if not self._sampler.pick(user):
            c.not_sampled += 1
            return None
        c.sampled += 1
        headers = end_to_end(request.headers, REQUEST_DROP)
        headers[MIRROR_HEADER] = "1"
        try:
            self._queue.put_nowait(ShadowCopy(method, request.raw_path, headers, body))
        except asyncio.QueueFull:
            c.dropped += 1
        if self._recorder is None:
            return None
        return self._recorder.begin(arrived, method, request.raw_path, user, body)

    async def _forward(self, request: web.Request,
                       body: bytes) -> tuple[web.StreamResponse, bool]:
        """Live's answer to the request, unchanged but for hop-by-hop headers, and True; or
        our 502 (live unreachable) or 504 (timed out) and False. A failure after live's
        response has started streaming propagates: the client's connection is cut, as
        live's was."""
        assert self._live is not None
        url = URL(self.config.live + request.raw_path, encoded=True)
        out: web.StreamResponse | None = None
        try:
            async with self._live.request(request.method, url, data=body or None,
                                          headers=end_to_end(request.headers, REQUEST_DROP),
                                          allow_redirects=False) as upstream:
                headers = end_to_end(upstream.headers)
                size = upstream.content_length
                if size is not None and size <= BUFFERED_RESPONSE:
                    return _whole(upstream, headers, await upstream.read()), True
                out = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                         headers=headers)
                await out.prepare(request)
                async for chunk in upstream.content.iter_chunked(1 << 16):
                    await out.write(chunk)
                await out.write_eof()
                return out, True
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            if out is not None and out.prepared:
                raise
            self.coverage.live_errors += 1
            if isinstance(exc, asyncio.TimeoutError):
                return web.Response(status=504, text="shadowrl mirror: live timed out\n"), False
            return web.Response(status=502,
                                text=f"shadowrl mirror: live unreachable: {exc}\n"), False

    # ------------------------------------------------------------------ the shadow

    async def _sender(self) -> None:
        """Send queued copies to the shadow one at a time, discarding the answers. A copy
        in flight when the mirror stops stays counted in ``in_flight``."""
        assert self._shadow is not None
        c = self.coverage
        while True:
            copy = await self._queue.get()
            c.in_flight += 1
            try:
                url = URL(self.config.shadow + copy.path, encoded=True)
                async with self._shadow.request(copy.method, url, headers=copy.headers,
                                                data=copy.body or None, allow_redirects=False,
                                                timeout=self._shadow_timeout) as answer:
                    await answer.read()  # drained, so the connection is reused
                c.shadow_status[f"{answer.status // 100}xx"] += 1
                c.mirrored += 1
            except asyncio.CancelledError:
                raise
            except Exception:  # refused, reset, timed out, malformed: the shadow's problem
                c.failed += 1
            c.in_flight -= 1
            self._queue.task_done()


def _whole(upstream: aiohttp.ClientResponse, headers: CIMultiDict[str],
           data: bytes) -> web.Response:
    """A buffered copy of live's response. Content-Length is kept as live sent it (a HEAD
    answer's announces a body it does not carry)."""
    response = web.Response(status=upstream.status, reason=upstream.reason, headers=headers)
    if data:
        response.body = data
    return response


class _Collector:
    """The Prometheus view of :meth:`MirrorServer.stats`, read at each scrape (one snapshot,
    so the counters scraped together add up)."""

    def __init__(self, server: MirrorServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        s = self.server.stats()
        counters = {
            "requests_seen": ("seen", "Requests for live the mirror received."),
            "requests_not_sampled": ("not_sampled", "Requests the sampler left out."),
            "writes_skipped": ("writes_skipped", "Requests not mirrored for their method "
                                                 "(writes without --mirror-writes)."),
            "requests_sampled": ("sampled", "Requests picked for the shadow."),
            "shadow_dropped": ("dropped", "Shadow copies dropped: the queue was full."),
            "shadow_mirrored": ("mirrored", "Shadow copies sent and answered."),
            "shadow_failed": ("failed", "Shadow copies that failed or timed out."),
            "live_errors": ("live_errors", "Requests live did not answer (502/504 sent)."),
            "requests_too_large": ("too_large", "Request bodies refused as too large (413)."),
            "recorded": ("recorded", "Sampled requests written to the recording."),
            "record_dropped": ("record_dropped", "Sampled requests the recording missed."),
        }
        for name, (key, text) in counters.items():
            yield CounterMetricFamily(f"shadowrl_mirror_{name}", text, value=s[key])
        by_class = CounterMetricFamily("shadowrl_mirror_shadow_responses",
                                       "Shadow answers by status class.", labels=["code"])
        for code, n in s["shadow_status"].items():
            by_class.add_metric([code], n)
        yield by_class
        yield GaugeMetricFamily("shadowrl_mirror_shadow_queued",
                                "Shadow copies waiting for a sender.", value=s["queued"])
        yield GaugeMetricFamily("shadowrl_mirror_shadow_in_flight",
                                "Shadow copies being sent.", value=s["in_flight"])
        yield GaugeMetricFamily("shadowrl_mirror_percent", "The sampled share, in percent.",
                                value=s["percent"])


async def serve(config: MirrorConfig, *, on_ready: Callable[[str], None] | None = None,
                stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Run the mirror until ``stop`` is set, or SIGINT or SIGTERM arrives (handled here, on
    the main thread: after the first, a second SIGINT interrupts the shutdown). Returns the
    final :meth:`MirrorServer.stats`."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def stopping() -> None:
        stop.set()
        for sig in signals:
            loop.remove_signal_handler(sig)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    server = MirrorServer(config)
    await server.start()
    handled = []
    try:
        for sig in signals:
            try:
                loop.add_signal_handler(sig, stopping)
                handled.append(sig)
            except (RuntimeError, ValueError, NotImplementedError):  # not the main thread
                pass
        if on_ready is not None:
            on_ready(server.url)
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await server.stop()
    return server.stats()


def run(config: MirrorConfig, *, on_ready: Callable[[str], None] | None = None
        ) -> dict[str, Any]:
    """:func:`serve` in a new event loop: blocks until SIGINT or SIGTERM."""
    return asyncio.run(serve(config, on_ready=on_ready))

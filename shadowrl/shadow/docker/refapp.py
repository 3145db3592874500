"""The reference app: one generic aiohttp service that every app container of a real shadow
runs, so a scenario becomes containers without building an image per service.

Each replica reads its whole behaviour from ``SHADOW_SPEC`` (JSON, see the contract in
``docs/docker-shadow.md``); the backend steers incidents and flags over HTTP at run time.
The model of one request, ``GET /`` (a read) or ``POST /`` (a write), on port 8080:

1. Admission. A token bucket at ``capacity_rps`` (each admission reserves the next free
   slot time; one more than ``queue_timeout_s`` away is refused at once), then one of
   ``concurrency`` slots (waiting at most what is left of ``queue_timeout_s``). Refused:
   503 with ``X-Shadow-Error: overload``. This is the replica's capacity: overdriven, it
   queues and then sheds, like a saturated service.
2. Incident errors: with probability ``error_add`` (the sum over the active effects) 500
   ``incident``.
3. Own service time: an exponential sleep of mean ``latency_s * latency_factor`` holding
   the slot.
4. Calls, in order: services and externals by HTTP (a callee's 5xx fails the request with
   502 and the callee's source), datastores by SQL through asyncpg (``pg_sleep`` is their
   service time, so a migration's locks and schema changes act on real queries), caches in
   Redis in front of a datastore (a hit skips the datastore). Datastore errors are
   classified into the shadow's error sources (``compatibility``, ``write_lock``,
   ``dropped``, ``overload``, ``incident``) and fail the request with 500.
5. 200. Every response carries ``X-Version``; reads through a cache also ``X-Cache``.

Admin: ``GET /healthz`` (503 until ``startup_s`` after the start), ``PUT /__shadow/control``
(the active effects), ``PUT /__shadow/flags``, ``GET /__shadow/stats`` (reset on read).
``warm`` (a subcommand) fills a cache's hot keys from its datastore.

It runs inside containers on Debian's python3 3.11 with aiohttp 3.8, asyncpg 0.27 and
redis-py 4.3 only, and never imports shadowrl. Those three are imported lazily, so the host
(where they may be missing) can still import this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import ClientSession, web

STARTED = time.monotonic()
PORT = 8080
LAT_CAP = 200_000  # latencies kept per counter between two stats reads (bounds memory)
HTTP_TIMEOUT_S = 5.0
POOL_ACQUIRE_S = 5.0
COLD_SPAN = 100_000  # cold ids are drawn above the hot ones from this many
SOURCES = ("incident", "compatibility", "dropped", "overload", "write_lock")
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Spec:
    """One replica's ``SHADOW_SPEC``; unknown keys are ignored so the backend can add some."""

    service: str = "app"
    version: str = "v0"
    config: str = ""
    version_role: str = "live"
    latency_s: float = 0.0
    concurrency: int = 1
    capacity_rps: float = 0.0  # 0: no token bucket
    queue_timeout_s: float = 2.0
    startup_s: float = 0.0
    flags: dict[str, bool] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Spec:
        data = json.loads(text or "{}")
        spec = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        spec.concurrency = max(1, round(float(spec.concurrency)))
        spec.flags = {str(k): bool(v) for k, v in (spec.flags or {}).items()}
        spec.calls = [dict(c) for c in spec.calls or []]
        for call in spec.calls:
            column = call.get("live_column")
            if column is not None and not IDENT.match(str(column)):
                raise ValueError(f"live_column {column!r} is not a plain SQL identifier")
        return spec

    def call(self, name: str | None) -> dict[str, Any] | None:
        return next((c for c in self.calls if c.get("name") == name), None)


class CallFailed(Exception):
    """A step that fails the request: the status to answer and the error source."""

    def __init__(self, status: int, source: str) -> None:
        super().__init__(f"{status} {source}")
        self.status = status
        self.source = source


class Stat:
    """Counters of one callee (or of the requests served) between two stats reads."""

    def __init__(self, cache: bool = False) -> None:
        self.n = 0
        self.errors: dict[str, int] = {}
        self.lat_ms: list[float] = []
        self.hits: int | None = 0 if cache else None
        self.misses = 0

    def add(self, t0: float, error: str | None = None) -> None:
        self.n += 1
        if error is not None:
            self.errors[error] = self.errors.get(error, 0) + 1
        if len(self.lat_ms) < LAT_CAP:
            self.lat_ms.append(round((time.monotonic() - t0) * 1000.0, 2))

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, "errors": self.errors, "lat_ms": self.lat_ms}
        if self.hits is not None:
            out.update(hits=self.hits, misses=self.misses)
        return out


class Burner:
    """``cpu_add``: burns a share of cores in 100 ms duty cycles. Hashing large buffers
    releases the GIL, so this loads the CPU like a noisy neighbour instead of freezing the
    event loop."""

    def __init__(self) -> None:
        self.share = 0.0
        self._stop = threading.Event()

    def set(self, share: float) -> None:
        share = max(0.0, float(share))
        if abs(share - self.share) < 1e-9:
            return
        self._stop.set()
        self._stop = threading.Event()
        self.share = share
        n = math.ceil(share)
        for _ in range(n):
            threading.Thread(target=self._burn, args=(share / n, self._stop),
                             daemon=True).start()

    @staticmethod
    def _burn(share: float, stop: threading.Event) -> None:
        block = b"\x5a" * 65536
        while not stop.is_set():
            start, cpu0 = time.monotonic(), time.thread_time()
            # CPU time, not wall time: a contended core still gets the share it asks for.
            while (time.thread_time() - cpu0 < 0.1 * share
                   and time.monotonic() - start < 0.1):
                hashlib.sha256(block).digest()
            stop.wait(max(0.0, start + 0.1 - time.monotonic()))


def _effect(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError("an effect is a JSON object")
    when = raw.get("when") or {}
    if not isinstance(when, dict):
        raise ValueError("an effect's 'when' is a JSON object")
    call = raw.get("call")
    return {"when": when, "call": None if call is None else str(call),
            "error_add": float(raw.get("error_add") or 0.0),
            "latency_factor": float(1.0 if raw.get("latency_factor") is None
                                    else raw["latency_factor"]),
            "cpu_add": float(raw.get("cpu_add") or 0.0),
            "memory_add": float(raw.get("memory_add") or 0.0)}


def _http_source(status: int, header: str | None) -> str:
    """The error source of a callee's 5xx answer."""
    if header:
        return header
    return {502: "dropped", 503: "overload", 504: "overload"}.get(status, "incident")


def _pg_source(sqlstate: str, write: bool) -> str:
    """The error source of a PostgreSQL error (SQLSTATE)."""
    if sqlstate in ("55P03", "57014"):  # lock not available, query cancelled
        return "write_lock" if write else "overload"
    if sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03"):
        return "dropped"  # connection failures, the server shutting down
    if sqlstate[:2] in ("42", "23", "22"):  # undefined column, not null, bad value
        return "compatibility"
    if sqlstate.startswith("53"):  # insufficient resources (too many connections)
        return "overload"
    return "incident"


def _ident(name: str) -> str:
    return f'"{name}"'


def read_sql(call: dict[str, Any], role: str) -> str:
    """One row with its own ``pg_sleep``; the LEFT JOIN makes every read return (and sleep)
    once even for an id that has no row. The previous role reads ``*`` and checks the width;
    the live role names the live column, which fails while it does not exist."""
    join = "FROM (SELECT 1) AS d LEFT JOIN items AS i ON i.id = $1"
    if role == "previous":
        return f"SELECT i.*, pg_sleep($2) {join}"
    column = call.get("live_column")
    extra = f", i.{_ident(column)}" if column else ""
    return f"SELECT i.id, i.qty, i.note{extra}, pg_sleep($2) {join}"


def write_sql(call: dict[str, Any], role: str) -> str:
    """One insert; the live role sets the live column with an untyped literal, which
    PostgreSQL converts to the column's type."""
    column = call.get("live_column")
    if role == "previous" or not column:
        return "INSERT INTO items (qty, note) VALUES ($1, $2) RETURNING pg_sleep($3)"
    return (f"INSERT INTO items (qty, note, {_ident(column)}) VALUES ($1, $2, '1') "
            "RETURNING pg_sleep($3)")


class Replica:
    """One replica's state: spec, flags, effects, counters and its clients."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.flags = dict(spec.flags)
        self.effects: list[dict[str, Any]] = []
        self.served = Stat()
        self.calls = self._new_call_stats()
        self.next_free = 0.0
        self.slots: asyncio.Semaphore | None = None
        self.in_flight = 0
        self.session: ClientSession | None = None
        self.pools: dict[str, Any] = {}
        self.pool_locks: dict[str, asyncio.Lock] = {}
        self.redis: dict[str, Any] = {}
        self.burner = Burner()
        self.ballast = b""
        self.fronted = {c.get("fronts") for c in spec.calls if c.get("kind") == "cache"}

    def _new_call_stats(self) -> dict[str, Stat]:
        return {str(c["name"]): Stat(cache=c.get("kind") == "cache") for c in self.spec.calls}

    # ----------------------------------------------------------------- effects and flags

    def active(self, effect: dict[str, Any]) -> bool:
        for key, want in effect["when"].items():
            if key == "flag":
                if not self.flags.get(str(want), False):
                    return False
            elif getattr(self.spec, key, None) != want:
                return False
        return True

    def error_add(self, call: str | None) -> float:
        return sum(e["error_add"] for e in self.effects if e["call"] == call and self.active(e))

    def latency_factor(self, call: str | None) -> float:
        return math.prod(e["latency_factor"] for e in self.effects
                         if e["call"] == call and self.active(e))

    def apply_resources(self) -> None:
        """Re-evaluate the CPU burn and the memory ballast (after effects or flags change)."""
        mine = [e for e in self.effects if e["call"] is None and self.active(e)]
        self.burner.set(sum(e["cpu_add"] for e in mine))
        size = int(max(0.0, sum(e["memory_add"] for e in mine)) * 256 * 2**20)
        if size != len(self.ballast):
            self.ballast = b""
            self.ballast = b"\x01" * size  # filled, so the pages are really resident

    @staticmethod
    def hit(p: float) -> bool:
        return p > 0 and random.random() < p

    async def stretch(self, name: str, t0: float) -> None:
        """A callee's latency factor: stretch the call by sleeping the extra share."""
        factor = self.latency_factor(name)
        if factor > 1.0:
            await asyncio.sleep((time.monotonic() - t0) * (factor - 1.0))

    # ------------------------------------------------------------------------- requests

    async def admit(self) -> bool:
        spec = self.spec
        start = time.monotonic()
        if spec.capacity_rps > 0:
            slot = max(start, self.next_free)
            if slot - start > spec.queue_timeout_s:
                return False
            self.next_free = slot + 1.0 / spec.capacity_rps
            if slot > start:
                await asyncio.sleep(slot - start)
        assert self.slots is not None
        if not self.slots.locked():
            await self.slots.acquire()
            return True
        left = spec.queue_timeout_s - (time.monotonic() - start)
        if left <= 0:
            return False
        try:
            await asyncio.wait_for(self.slots.acquire(), left)
        except asyncio.TimeoutError:
            return False
        return True

    async def process(self, write: bool) -> tuple[int, str | None, str | None]:
        """The status, error source and cache outcome of one request."""
        if not await self.admit():
            return 503, "overload", None
        assert self.slots is not None
        try:
            if self.hit(self.error_add(None)):
                return 500, "incident", None
            mean = self.spec.latency_s * self.latency_factor(None)
            if mean > 0:
                await asyncio.sleep(random.expovariate(1.0 / mean))
        finally:
            self.slots.release()
        try:
            cache = await self.run_calls(write)
        except CallFailed as exc:
            return exc.status, exc.source, None
        return 200, None, cache

    async def run_calls(self, write: bool) -> str | None:
        done: set[str] = set()  # datastores already written by their cache's step
        cache_state = None
        for call in self.spec.calls:
            kind, name = call.get("kind"), str(call.get("name"))
            if kind in ("service", "external"):
                await self.http_call(call, write)
            elif kind == "datastore":
                if name in done or (not write and name in self.fronted):
                    continue
                done.add(name)
                await self.db_call(call, write, None)
            elif kind == "cache":
                state = await self.cache_call(call, write, done)
                cache_state = cache_state or state
        return cache_state

    async def http_call(self, call: dict[str, Any], write: bool) -> None:
        import aiohttp

        name = str(call["name"])
        stat, t0 = self.calls[name], time.monotonic()
        source = None
        if self.hit(self.error_add(name)):
            source = "incident"
        else:
            assert self.session is not None
            try:
                async with self.session.request("POST" if write else "GET", call["url"],
                                                data=b"" if write else None) as resp:
                    await resp.read()
                    if resp.status >= 500:
                        source = _http_source(resp.status, resp.headers.get("X-Shadow-Error"))
            except asyncio.TimeoutError:
                source = "overload"
            except (aiohttp.ClientError, OSError):
                source = "dropped"
            await self.stretch(name, t0)
        stat.add(t0, source)
        if source is not None:
            raise CallFailed(502, source)

    async def db_call(self, call: dict[str, Any], write: bool,
                      row_id: int | None) -> dict[str, Any] | None:
        """One datastore query, counted; a failure raises CallFailed(500, source)."""
        name = str(call["name"])
        stat, t0 = self.calls[name], time.monotonic()
        try:
            if self.hit(self.error_add(name)):
                raise CallFailed(500, "incident")
            row = await self.query(call, write, row_id)
        except CallFailed as exc:
            stat.add(t0, exc.source)
            raise
        stat.add(t0)
        return row

    async def pool(self, call: dict[str, Any]) -> Any:
        import asyncpg

        name = str(call["name"])
        pool = self.pools.get(name)
        if pool is None:
            async with self.pool_locks.setdefault(name, asyncio.Lock()):
                pool = self.pools.get(name)
                if pool is None:
                    timeout_ms = int(float(call.get("lock_timeout_s") or 0.0) * 1000)
                    pool = await asyncpg.create_pool(
                        call["dsn"], min_size=1, max_size=4, timeout=2.0,
                        server_settings={"lock_timeout": str(timeout_ms)})
                    self.pools[name] = pool
        return pool

    def drop_pool(self, name: str) -> None:
        pool = self.pools.pop(name, None)
        if pool is not None:
            pool.terminate()

    async def query(self, call: dict[str, Any], write: bool,
                    row_id: int | None) -> dict[str, Any] | None:
        import asyncpg

        name, role = str(call["name"]), self.spec.version_role
        sleep_s = float(call.get("latency_s") or 0.0) * self.latency_factor(name)
        if row_id is None:
            row_id = random.randint(1, 1000)
        try:
            pool = await self.pool(call)
            async with pool.acquire(timeout=POOL_ACQUIRE_S) as conn:
                if write:
                    await conn.execute(write_sql(call, role), random.randint(1, 100),
                                       "w", sleep_s)
                    return None
                row = await conn.fetchrow(read_sql(call, role), row_id, sleep_s)
        except asyncpg.PostgresError as exc:
            source = _pg_source(str(getattr(exc, "sqlstate", "") or ""), write)
            if source == "dropped":
                self.drop_pool(name)
            raise CallFailed(500, source) from exc
        except asyncio.TimeoutError as exc:
            raise CallFailed(500, "overload") from exc
        except (OSError, asyncpg.InterfaceError) as exc:
            self.drop_pool(name)
            raise CallFailed(500, "dropped") from exc
        values = dict(row) if row is not None else {}
        values.pop("pg_sleep", None)
        if role == "previous" and row is not None and len(row) != 4:
            raise CallFailed(500, "compatibility")  # a newer schema than this version knows
        return values

    def redis_client(self, call: dict[str, Any]) -> Any:
        import redis.asyncio

        name = str(call["name"])
        if name not in self.redis:
            self.redis[name] = redis.asyncio.Redis(
                host=call.get("host", "127.0.0.1"), port=int(call.get("port", 6379)),
                socket_timeout=1.0, socket_connect_timeout=1.0)
        return self.redis[name]

    async def redis_op(self, call: dict[str, Any], op: str, *args: Any) -> tuple[Any, str | None]:
        """One cache command: (its result, the error source or None). Shielded: redis-py 4.3
        can mix up replies when a command is cancelled halfway."""
        import redis

        name = str(call["name"])
        if self.hit(self.error_add(name)):
            return None, "incident"
        t0 = time.monotonic()
        try:
            client = self.redis_client(call)
            result = await asyncio.shield(getattr(client, op)(*args))
        except (redis.exceptions.TimeoutError, asyncio.TimeoutError):
            return None, "overload"
        except (redis.exceptions.RedisError, OSError):
            return None, "dropped"
        await self.stretch(name, t0)
        return result, None

    async def cache_call(self, call: dict[str, Any], write: bool, done: set[str]) -> str | None:
        """A cache step: reads try a hot key (a miss reads the fronted datastore and fills
        the key), cold reads go to the datastore; writes write it and drop the key."""
        name, front = str(call["name"]), self.spec.call(call.get("fronts"))
        stat, t0 = self.calls[name], time.monotonic()
        hot_keys = int(call.get("hot_keys") or 0)
        hot = hot_keys > 0 and random.random() < float(call.get("hit_ratio") or 0.0)
        n = random.randrange(hot_keys) if hot else None
        key = f"hot:{n}"
        error: str | None = None
        try:
            if write:
                if front is not None and front["name"] not in done:
                    done.add(str(front["name"]))
                    await self.db_call(front, True, None)
                if hot:
                    _, error = await self.redis_op(call, "delete", key)
                return None
            if hot:
                value, error = await self.redis_op(call, "get", key)
                if value is not None:
                    stat.hits = (stat.hits or 0) + 1
                    return "hit"
            stat.misses += 1
            row_id = n + 1 if n is not None else hot_keys + 1 + random.randrange(COLD_SPAN)
            row = await self.db_call(front, False, row_id) if front is not None else {}
            if hot and error is None:
                _, error = await self.redis_op(call, "set", key,
                                               json.dumps(row, default=str))
            return "miss"
        finally:
            stat.add(t0, error)

    # ------------------------------------------------------------------------- handlers

    async def handle(self, request: web.Request) -> web.Response:
        from aiohttp import web

        t0 = time.monotonic()
        self.in_flight += 1
        try:
            status, source, cache = await self.process(request.method == "POST")
        finally:
            self.in_flight -= 1
        self.served.add(t0, source)
        headers = {}
        if source is not None:
            headers["X-Shadow-Error"] = source
        if cache is not None:
            headers["X-Cache"] = cache
        body = {"service": self.spec.service, "version": self.spec.version, "error": source}
        return web.json_response(body, status=status, headers=headers)

    async def healthz(self, request: web.Request) -> web.Response:
        from aiohttp import web

        ready = self.ready()
        return web.Response(status=200 if ready else 503, text="ok" if ready else "starting")

    def ready(self) -> bool:
        return time.monotonic() - STARTED >= self.spec.startup_s

    async def control(self, request: web.Request) -> web.Response:
        from aiohttp import web

        try:
            body = await request.json()
            effects = [_effect(e) for e in (body.get("effects") or [])]
        except (ValueError, TypeError, AttributeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.effects = effects
        self.apply_resources()
        return web.json_response({"effects": len(effects)})

    async def set_flags(self, request: web.Request) -> web.Response:
        from aiohttp import web

        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("flags are a JSON object")
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.flags.update({str(k): bool(v) for k, v in body.items()})
        self.apply_resources()
        return web.json_response({"flags": self.flags})

    async def stats(self, request: web.Request) -> web.Response:
        from aiohttp import web

        served, calls = self.served, self.calls
        self.served, self.calls = Stat(), self._new_call_stats()
        spec = self.spec
        return web.json_response({
            "service": spec.service, "version": spec.version, "config": spec.config,
            "flags": self.flags, "ready": self.ready(), "in_flight": self.in_flight,
            "served": served.dump(), "calls": {k: v.dump() for k, v in calls.items()}})

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Version"] = self.spec.version

    async def on_startup(self, app: web.Application) -> None:
        import aiohttp

        self.slots = asyncio.Semaphore(self.spec.concurrency)
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=0))

    async def on_cleanup(self, app: web.Application) -> None:
        """After the drain (aiohttp runs cleanup once in-flight requests ended)."""
        if self.session is not None:
            await self.session.close()
        for pool in list(self.pools.values()):
            try:
                await asyncio.wait_for(pool.close(), 2.0)
            except (asyncio.TimeoutError, OSError):
                pool.terminate()
        for client in self.redis.values():
            try:
                await client.close()
            except OSError:
                pass
        self.burner.set(0.0)

    def app(self) -> web.Application:
        from aiohttp import web

        app = web.Application()
        app.router.add_route("GET", "/", self.handle)
        app.router.add_route("POST", "/", self.handle)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_put("/__shadow/control", self.control)
        app.router.add_put("/__shadow/flags", self.set_flags)
        app.router.add_get("/__shadow/stats", self.stats)
        app.on_response_prepare.append(self.on_prepare)
        app.on_startup.append(self.on_startup)
        app.on_cleanup.append(self.on_cleanup)
        return app


def serve(spec: Spec, port: int) -> None:
    """Serve until SIGTERM, then finish in-flight requests (up to 10 s) and exit 0."""
    from aiohttp import web

    web.run_app(Replica(spec).app(), host="0.0.0.0", port=port, shutdown_timeout=10.0,
                access_log=None, print=None, backlog=1024)


async def warm(spec: Spec) -> int:
    """Fill every hot key of the first cache from its datastore (the ``warm_cache`` step)."""
    import asyncpg
    import redis.asyncio

    cache = next((c for c in spec.calls if c.get("kind") == "cache"), None)
    if cache is None:
        print("no cache to warm")
        return 0
    hot_keys = int(cache.get("hot_keys") or 0)
    front = spec.call(cache.get("fronts"))
    rows: dict[int, dict[str, Any]] = {}
    if front is not None and hot_keys > 0:
        column = front.get("live_column")
        cols = "*" if spec.version_role == "previous" or not column else \
            f"id, qty, note, {_ident(column)}"
        conn = await asyncpg.connect(front["dsn"], timeout=5.0)
        try:
            found = await conn.fetch(f"SELECT {cols} FROM items WHERE id = ANY($1::int[])",
                                     list(range(1, hot_keys + 1)))
        finally:
            await conn.close()
        rows = {int(r["id"]): dict(r) for r in found}
    values = {f"hot:{n}": json.dumps(rows.get(n + 1, {"id": None}), default=str)
              for n in range(hot_keys)}
    client = redis.asyncio.Redis(host=cache.get("host", "127.0.0.1"),
                                 port=int(cache.get("port", 6379)), socket_timeout=10.0,
                                 socket_connect_timeout=5.0)
    try:
        if values:
            await client.mset(values)
    finally:
        await client.close()
    print(f"warmed {len(values)} keys")
    return 0


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "serve"
    spec = Spec.parse(os.environ.get("SHADOW_SPEC", "{}"))
    if command == "serve":
        serve(spec, int(os.environ.get("SHADOW_PORT", PORT)))
        return 0
    if command == "warm":
        return asyncio.run(warm(spec))
    print(f"usage: {argv[0]} serve|warm", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""DockerShadow: the scenario's deployment as real containers, driven through the seam.

Shape
-----
One isolated internal network per shadow (no route out, and a host firewall rule so it
cannot reach the host's own services either). On it, per scenario component:

- each service: ``replicas`` containers of the reference app (or the user's ``runtime:``
  images) behind its own HAProxy, whose membership follows the replicas;
- each datastore: a PostgreSQL whose live schema is a real migration from the previous one;
- each cache: a Redis in front of its datastores;
- an external dependency behind a fault proxy, when an incident blames one.

Traffic is an open-loop load generator on the host at ``rps x sample_fraction`` requests per
wall second, aimed at the edge service's load balancer.

Time
----
Wall clock, compressed: ``now()`` is scenario seconds, ``time_compression`` of them per wall
second. Startups, drains, migrations, ramps and the SLO's durations run that much faster;
request latencies do not. Rates are reported in scenario units (measured / sample fraction).

Steps
-----
``run_step`` runs the action in a worker thread and returns at the step's end, its timeout
or its cancellation, whichever comes first; a stopped step keeps what it had done (its
worker stops at its next checkpoint and removes what it had started but not put into
service). Metrics come from a collector thread that, every ``TICK_S`` wall seconds, reads
the generator's records, the replicas' call statistics and the containers' cgroup files,
and pushes the incident's effects to the replicas as they develop.

Lifecycle
---------
Everything created carries ``shadowrl.shadow=<id>``; ``close()`` removes it whatever state
the shadow is in, and each process sweeps what dead processes left behind on its first
launch.
"""

from __future__ import annotations

import atexit
import http.client
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shadowrl.core.errors import BackendUnavailable
from shadowrl.core.extras import missing_extra
from shadowrl.core.injection import ActiveEffect, Injection
from shadowrl.core.results import (
    FULL_OUTAGE_ERROR,
    ComponentMetrics,
    Metrics,
    Span,
    StepResult,
    StepStatus,
)
from shadowrl.core.slo import Clock, violated
from shadowrl.core.spec import Cache, Datastore, Scenario, Service, Step
from shadowrl.shadow.base import PROFILE_COLUMNS, CancelToken, Phase
from shadowrl.shadow.docker import labels as lbl
from shadowrl.shadow.docker.lb import container_ip
from shadowrl.shadow.docker.metrics import CgroupReader, RequestLog, Usage, component_metrics
from shadowrl.shadow.sim.params import SimParams
from shadowrl.shadow.sim.topology import compile_topology, rollout_width

TICK_S = 0.25  # wall seconds between collector ticks
POLL_S = 0.05  # wall seconds between checks of a running step
WINDOW_S = 1.0  # wall seconds of requests one sample covers
PROFILE_S = 1.0  # wall seconds between profile rows
APP_PORT = 8080
LB_PORT = 80
MAX_WALL_RPS = 400.0  # what this kind of machine serves without distorting latencies
MAX_CONTAINERS = 80
APP_MEMORY = 256 * 2**20
STORE_MEMORY = 512 * 2**20
READY_TIMEOUT_S = 60.0  # wall: a container that is not ready by then failed to start
TEARDOWN_TIMEOUT_S = 30.0  # wall: how long close() retries a network a late container pins
SEED_ROWS = 2000
EXTERNAL_LATENCY_S = 0.001  # the external dependency's fault proxy, when healthy

ProgressFn = Callable[[str], None]


class DockerShadowError(BackendUnavailable):
    """The real shadow could not be built or kept running."""


class _Stop(Exception):
    """Raised inside a step's worker once the step was stopped (timeout or cancel)."""


@dataclass
class _Replica:
    container: Any
    ip: str
    version_role: str  # live | previous
    config_role: str
    slot: str | None = None  # its LB slot while in service
    reference: bool = True  # the reference app (has the admin endpoints)


@dataclass
class _ServiceBox:
    spec: Service
    lb_container: Any = None
    lb: Any = None
    lb_ip: str = ""
    replicas: list[_Replica] = field(default_factory=list)
    template: list[str] = field(default_factory=lambda: ["live", "live"])  # version, config
    flags_off: set[str] = field(default_factory=set)
    serial: int = 0
    control: str = ""  # the last control body pushed


@dataclass
class _StoreBox:
    spec: Datastore
    container: Any = None
    ip: str = ""
    schema_live: bool = True


@dataclass
class _CacheBox:
    spec: Cache
    container: Any = None
    ip: str = ""


class DockerShadow:
    """A real shadow of the scenario's deployment in Docker. See the module docstring."""

    name = "docker"
    clock: Clock = "wall"
    # Capabilities: ErrorAttribution (the sources the reference app and the load generator
    # report), ProfileRecording.
    error_sources = ("incident", "compatibility", "dropped", "overload", "write_lock")

    def __init__(self, scenario: Scenario, *, record_profile: bool = False,
                 pattern: Callable[[float], float] | None = None, client: Any = None,
                 time_compression: float | None = None, sample_fraction: float | None = None,
                 on_progress: ProgressFn | None = None) -> None:
        _require_extra()
        self.scenario = scenario
        self.record_profile = record_profile
        self.profile: dict[str, list[Any]] = {}
        self.k = float(time_compression or scenario.shadow.time_compression)
        self.f = float(sample_fraction or scenario.shadow.sample_fraction)
        self.params = SimParams()
        # what the mechanics took, in scenario seconds, for calibration (kind, component,
        # seconds): "startup" (create to ready), "stop" (after the drain), "migration_offline"
        # and "migration_online"; kept from launch to close
        self.timings: list[tuple[str, str, float]] = []
        self.sample_period_s = TICK_S * self.k  # scenario seconds between SLO samples
        self.sample_window_s = WINDOW_S * self.k  # scenario seconds of requests a sample covers
        self._pattern = pattern
        self._client = client
        self._progress = on_progress or _to_stderr
        self.shadow_id = f"{_slug(scenario.name)[:20]}-{uuid.uuid4().hex[:8]}"
        self._live = self._closed = False
        self._lock = threading.RLock()
        # containers being created or started: removing one mid-start can leave Docker a
        # stale network endpoint, so teardown waits for these first
        self._starting = 0
        self._started = threading.Condition()
        self._t0 = 0.0
        self._net: Any = None
        self._services: dict[str, _ServiceBox] = {}
        self._stores: dict[str, _StoreBox] = {}
        self._caches: dict[str, _CacheBox] = {}
        self._external: _Replica | None = None
        self._logs: dict[str, RequestLog] = {}
        self._usage: dict[str, Usage] = {}
        self._scraped: dict[str, float] = {}  # replica IP -> when its stats were last read
        self._cgroups = CgroupReader()
        self._generator: Any = None
        self._rate = 0.0  # the load generator's rate, requests per wall second
        self._collector: threading.Thread | None = None
        self._halt = threading.Event()
        self._stop_step = threading.Event()
        self._worker: threading.Thread | None = None
        self._injection: Injection | None = None
        self._phase: Phase = "normal"
        self._step: str | None = None
        self._images: Any = None
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="shadow")
        # a rollout's two groups wait on work they give ``_pool``: never the same pool
        self._rounds = ThreadPoolExecutor(2, thread_name_prefix="shadow-round")
        self.topo = compile_topology(scenario)  # what the RL environment observes
        self._check_size()
        _OPEN.add(self)

    @property
    def time_compression(self) -> float:
        """Scenario seconds per wall second (the SLO drivers sleep by it)."""
        return self.k

    # ------------------------------------------------------------------ lifecycle

    def _check_size(self) -> None:
        """Refuse a deployment this machine cannot run faithfully, before creating anything."""
        sc = self.scenario
        load_max = max(sc.deviations.load)
        rps = sc.deployment.traffic.rps
        wall_rps = rps * load_max * self.f
        if wall_rps > MAX_WALL_RPS:
            raise DockerShadowError(
                f"the real shadow would send {wall_rps:.0f} requests/s (rps {rps:g} x load "
                f"up to {load_max:g} x shadow.sample_fraction "
                f"{self.f:g}); at most {MAX_WALL_RPS:.0f} keep latencies honest on this "
                f"machine: lower shadow.sample_fraction in the scenario")
        most = sum(_most_replicas(sc, s) for s in sc.deployment.services)
        total = most + 2 * len(sc.deployment.services) + len(sc.deployment.datastores) \
            + len(sc.deployment.caches)
        if total > MAX_CONTAINERS:
            raise DockerShadowError(
                f"the real shadow would need up to {total} containers (at most "
                f"{MAX_CONTAINERS}): lower the scenario's replicas or scale choices")

    @property
    def client(self) -> Any:
        if self._client is None:
            from shadowrl.shadow.docker.daemon import connect
            self._client = connect(start=True, on_progress=self._progress)
        return self._client

    def launch(self, seed: int) -> None:
        """Bring up a healthy shadow (tearing down the previous one when relaunched)."""
        if self._closed:
            raise BackendUnavailable("this docker shadow is closed: make a new one")
        if self._live:
            self._teardown()
        self._live = False
        _exit_on_sigterm()
        _sweep_once(self.client)
        try:
            self._build(seed)
        except BaseException:
            self._teardown()
            raise
        self.timings.clear()  # the launch's own replicas start with no startup to model
        self._live = True

    def _build(self, seed: int) -> None:
        from shadowrl.shadow.docker.images import ensure_images, progress_lines
        from shadowrl.shadow.docker.network import create_isolated_network

        started = time.time()
        if self._images is None:
            self._progress("checking the shadow images (built once, then cached)")
            self._images = ensure_images(self.client, on_progress=progress_lines(
                self._progress, "building the shadow images: "))
        sc = self.scenario
        self._net = create_isolated_network(self.client, self.shadow_id)
        self._services = {s.name: _ServiceBox(s) for s in sc.deployment.services}
        self._stores = {d.name: _StoreBox(d) for d in sc.deployment.datastores}
        self._caches = {c.name: _CacheBox(c) for c in sc.deployment.caches}
        self._logs = {name: RequestLog() for name in ("edge", *sc.components())}
        self._injection = None
        self._phase, self._step = "normal", None
        self._stop_step.clear()
        self._halt.clear()
        self._progress(f"starting shadow {self.shadow_id}: datastores, caches and load "
                       f"balancers")
        jobs = [self._pool.submit(self._start_store, b) for b in self._stores.values()]
        jobs += [self._pool.submit(self._start_cache, b) for b in self._caches.values()]
        jobs += [self._pool.submit(self._start_lb, b) for b in self._services.values()]
        if any(i.cause.kind == "external" for i in sc.incidents):
            jobs.append(self._pool.submit(self._start_external))
        for job in jobs:
            job.result()
        for store in self._stores.values():
            self._seed_store(store)
        self._progress("starting the replicas")
        for box in self._services.values():
            self._add_replicas(box, box.spec.replicas, startup_s=0.0, check=None)
        for cache in self._caches:  # the simulator starts with warm caches too
            status, message = self._warm(cache)
            if status != "ok":
                raise DockerShadowError(f"warming cache '{cache}' failed: {message}")
        self.profile = {k: [] for k in PROFILE_COLUMNS}
        self._start_traffic(seed)
        # a first window of requests, so the first sample already measures something
        time.sleep(WINDOW_S)
        self._t0 = time.time()
        self._collector = threading.Thread(target=self._collect, name="shadow-collector",
                                           daemon=True)
        self._collector.start()
        self._progress(f"shadow {self.shadow_id} up in {time.time() - started:.1f}s "
                       f"({self._container_count()} containers)")

    def close(self) -> None:
        """Remove everything this shadow created; closing twice is allowed."""
        if self._closed:
            return
        self._closed = True
        self._live = False
        self._teardown()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._rounds.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> DockerShadow:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _teardown(self) -> None:
        """Stop the traffic and the collector, then remove every object labelled with this
        shadow's id (containers, networks, volumes and the firewall rule)."""
        self._halt.set()
        self._stop_step.set()
        if self._generator is not None:
            try:
                self._generator.close()
            except Exception:  # noqa: BLE001 - teardown goes on whatever failed
                pass
            self._generator = None
        if self._collector is not None:
            self._collector.join(timeout=5.0)
            self._collector = None
        if self._worker is not None:
            self._worker.join(timeout=15.0)
            self._worker = None
        if self._client is None:
            return
        from shadowrl.shadow.docker.sweep import sweep
        with self._started:  # no container is removed while it is still starting
            self._started.wait_for(lambda: self._starting == 0, timeout=TEARDOWN_TIMEOUT_S)
        # a container a step was creating while the sweep listed them pins the network:
        # sweep again until the network goes
        deadline = time.monotonic() + TEARDOWN_TIMEOUT_S
        while True:
            try:
                sweep(self._client, shadow_id=self.shadow_id, only_dead_owners=False)
            finally:
                self._remove_network(deadline)
            if self._net is None:
                break
            time.sleep(0.2)
        self._services, self._stores, self._caches, self._external = {}, {}, {}, None

    def _remove_network(self, deadline: float) -> None:
        """Remove the shadow's network and its host rule; while containers still pin it,
        keep it (for another sweep) until ``deadline``, then leave it fenced."""
        from shadowrl.shadow.docker.network import NetworkInUse, remove_isolated_network

        if self._net is None:
            return
        try:
            remove_isolated_network(self._client, self._net)
            self._net = None
        except NetworkInUse:
            if time.monotonic() > deadline:
                self._leave_network()

    def _leave_network(self) -> None:
        """Docker still counts an endpoint on the network though no container is attached
        (a stale endpoint, which only a daemon restart clears): say so and leave the network
        fenced by its host rule rather than fail the run; a later sweep removes both."""
        self._progress(f"could not remove network {self._net.name}: Docker reports an "
                       f"endpoint still attached (no container is); it stays fenced off, and "
                       f"`shadowrl docker sweep` removes it once Docker releases it (a daemon "
                       f"restart does)")
        self._net = None

    def _check(self) -> None:
        if not self._live:
            raise BackendUnavailable("this docker shadow is closed: make a new one"
                                     if self._closed else "launch() the docker shadow first")

    def _container_count(self) -> int:
        n = sum(len(b.replicas) + 1 for b in self._services.values())
        return n + len(self._stores) + len(self._caches) + (self._external is not None)

    # ------------------------------------------------------------------ containers

    def _run(self, name: str, role: str, command: list[str], *, image: str | None = None,
             env: dict[str, str] | None = None, user: str | None = None,
             stop_signal: str | None = None, memory: int = APP_MEMORY) -> tuple[Any, str]:
        """Create and start one labelled container on the shadow network; its IP."""
        kwargs: dict[str, Any] = dict(
            image=image or self._images.app, command=command,
            name=f"shd-{self.shadow_id}-{name}", labels=lbl.labels(self.shadow_id, role),
            network=self._net.name, environment=env or {}, detach=True,
            mem_limit=memory, init=user is None)
        if user is not None:
            kwargs["user"] = user
        if stop_signal is not None:
            kwargs["stop_signal"] = stop_signal
        with self._started:
            if self._halt.is_set():  # closing: a late step must not add to what close removes
                raise _Stop()
            self._starting += 1
        try:
            container = self.client.containers.create(**kwargs)
            if self._halt.is_set():
                container.remove(force=True)
                raise _Stop()
            container.start()
        finally:
            with self._started:
                self._starting -= 1
                self._started.notify_all()
        return container, container_ip(container, self._net.name)

    def _start_store(self, box: _StoreBox) -> None:
        from shadowrl.shadow.docker.images import POSTGRES_COMMAND

        box.container, box.ip = self._run(
            box.spec.name, "datastore", [*POSTGRES_COMMAND, "-c", "max_connections=300"],
            user="postgres", stop_signal="SIGINT", memory=STORE_MEMORY)
        deadline = time.time() + READY_TIMEOUT_S
        while True:
            code, _ = self._psql(box, "select 1")
            if code == 0:
                return
            if time.time() > deadline:
                raise DockerShadowError(f"PostgreSQL for '{box.spec.name}' did not start: "
                                        f"{box.container.logs(tail=20).decode(errors='replace')}")
            time.sleep(0.1)

    def _psql(self, box: _StoreBox, sql: str, app: str = "shadowrl") -> tuple[int, str]:
        """Run SQL in the datastore's container (psql, stop at the first error)."""
        result = box.container.exec_run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "shadow",
             "-c", sql], user="postgres", environment={"PGAPPNAME": app})
        return result.exit_code, result.output.decode(errors="replace").strip()

    def _seed_store(self, box: _StoreBox) -> None:
        """The previous schema and its rows, then the live schema as a real migration."""
        rows = max(SEED_ROWS, 4 * self._hot_keys(None))
        code, out = self._psql(box, (
            "CREATE TABLE items (id serial PRIMARY KEY, qty int NOT NULL, note text NOT "
            f"NULL); INSERT INTO items (qty, note) SELECT g % 10, 'item ' || g FROM "
            f"generate_series(1, {rows}) g;"))
        if code != 0:
            raise DockerShadowError(f"seeding '{box.spec.name}' failed: {out}")
        if box.spec.schema_ is not None:
            column = _live_column(box.spec)
            sql = f"ALTER TABLE items ADD COLUMN {column} int NOT NULL DEFAULT 0;"
            mig = box.spec.migration
            if mig is not None and not mig.backward_compatible:
                # the previous version's inserts do not name the column: they now fail
                sql += f" ALTER TABLE items ALTER COLUMN {column} DROP DEFAULT;"
            code, out = self._psql(box, sql)
            if code != 0:
                raise DockerShadowError(f"migrating '{box.spec.name}' up failed: {out}")
        box.schema_live = box.spec.schema_ is not None

    def _start_cache(self, box: _CacheBox) -> None:
        box.container, box.ip = self._run(
            box.spec.name, "cache", ["redis-server", "--save", "", "--appendonly", "no",
                                     "--protected-mode", "no", "--bind", "0.0.0.0"])
        deadline = time.time() + READY_TIMEOUT_S
        while box.container.exec_run(["redis-cli", "ping"]).exit_code != 0:
            if time.time() > deadline:
                raise DockerShadowError(f"Redis for '{box.spec.name}' did not start")
            time.sleep(0.1)

    def _start_lb(self, box: _ServiceBox) -> None:
        from shadowrl.shadow.docker.lb import start_lb
        box.lb_container, box.lb = start_lb(
            self.client, self._images.app, self._net.network, self.shadow_id,
            f"shd-{self.shadow_id}-{box.spec.name}-lb",
            queue_timeout_s=self.params.queue_timeout_s)
        box.lb_ip = box.lb.address

    def _start_external(self) -> None:
        spec = {"service": "external", "version": "external", "config": "external",
                "version_role": "live", "latency_s": EXTERNAL_LATENCY_S, "concurrency": 64,
                "capacity_rps": 10_000.0, "queue_timeout_s": 5.0, "startup_s": 0.0,
                "flags": {}, "calls": []}
        container, ip = self._run("external", "external",
                                  ["python3", "/app/refapp.py", "serve"],
                                  env={"SHADOW_SPEC": json.dumps(spec)})
        self._external = _Replica(container, ip, "live", "live")
        self._wait_healthy([self._external], "/healthz", APP_PORT, None)

    def _hot_keys(self, cache: Cache | None) -> int:
        """Hot keys per cache: refilled by misses in about the cache's ``warmup``
        (1 - e^-3 = 95 % after three times as many hot requests as keys)."""
        traffic = self.scenario.deployment.traffic
        warmup = (cache.warmup if cache is not None else 120.0) / self.k
        hit = cache.hit_ratio if cache is not None else 0.85
        return max(10, round(traffic.rps * self.f * (1 - traffic.write_fraction) * hit
                             * warmup / 3))

    def _app_spec(self, box: _ServiceBox, version_role: str, config_role: str,
                  startup_s: float) -> dict[str, Any]:
        svc = box.spec
        version = (str(getattr(svc.version, version_role)) if svc.version else "v")
        config = f"{svc.name}-config-{config_role}"
        concurrency = svc.concurrency or max(1, math.ceil(svc.capacity_rps * svc.latency))
        calls: list[dict[str, Any]] = []
        for callee in svc.calls:
            if callee in self._services:
                calls.append({"name": callee, "kind": "service",
                              "url": f"http://{self._services[callee].lb_ip}:{LB_PORT}/"})
            elif callee in self._stores:
                store = self._stores[callee]
                calls.append({"name": callee, "kind": "datastore",
                              "dsn": f"postgresql://postgres@{store.ip}:5432/shadow",
                              "latency_s": store.spec.latency,
                              "live_column": _live_column(store.spec)
                              if store.spec.schema_ is not None else None,
                              "lock_timeout_s": self.params.queue_timeout_s / 2})
            elif callee in self._caches:
                cache = self._caches[callee]
                fronts = cache.spec.fronts or [d for d in svc.calls if d in self._stores]
                calls.append({"name": callee, "kind": "cache", "host": cache.ip,
                              "port": 6379, "hit_ratio": cache.spec.hit_ratio,
                              "hot_keys": self._hot_keys(cache.spec),
                              "fronts": fronts[0] if fronts else None})
        if self._external is not None and self._external_targets().get(svc.name):
            calls.append({"name": "external", "kind": "external",
                          "url": f"http://{self._external.ip}:{APP_PORT}/"})
        # datastores are listed before caches so a cache finds the pool of what it fronts
        calls.sort(key=lambda c: {"service": 0, "datastore": 1, "cache": 2,
                                  "external": 3}[c["kind"]])
        return {
            "service": svc.name, "version": version, "config": config,
            "version_role": version_role, "latency_s": svc.latency,
            "concurrency": max(1, round(concurrency * self.f)),
            "capacity_rps": svc.capacity_rps * self.f,
            "queue_timeout_s": self.params.queue_timeout_s, "startup_s": startup_s,
            "flags": {flag: flag not in box.flags_off for flag in svc.flags},
            "calls": calls, "write_fraction": self.scenario.deployment.traffic.write_fraction,
        }

    def _external_targets(self) -> dict[str, bool]:
        """Services whose calls go through the external dependency's fault proxy."""
        out: dict[str, bool] = {}
        for incident in self.scenario.incidents:
            if incident.cause.kind == "external":
                for eff in incident.effects:
                    if eff.target in self._services:
                        out[eff.target] = True
        return out

    def _new_replica(self, box: _ServiceBox, startup_s: float) -> _Replica:
        version_role, config_role = box.template
        box.serial += 1
        name = f"{box.spec.name}-{box.serial}"
        runtime = box.spec.runtime
        if runtime is not None:
            image = str(getattr(runtime.image, version_role))
            container, ip = self._run(name, "app", [], image=image, env=dict(runtime.env))
            return _Replica(container, ip, version_role, config_role, reference=False)
        spec = self._app_spec(box, version_role, config_role, startup_s)
        container, ip = self._run(name, "app", ["python3", "/app/refapp.py", "serve"],
                                  env={"SHADOW_SPEC": json.dumps(spec)})
        return _Replica(container, ip, version_role, config_role)

    def _wait_healthy(self, replicas: list[_Replica], path: str, port: int,
                      check: Callable[[], None] | None,
                      on_ready: Callable[[_Replica], None] | None = None) -> None:
        """Until every replica answers its readiness path with 2xx (``on_ready`` as each
        does)."""
        pending = list(replicas)
        deadline = time.time() + READY_TIMEOUT_S
        while pending:
            if check is not None:
                check()
            still = [r for r in pending if not _healthy(r.ip, port, path)]
            if on_ready is not None:
                for r in pending:
                    if r not in still:
                        on_ready(r)
            pending = still
            if not pending:
                return
            if time.time() > deadline:
                logs = pending[0].container.logs(tail=15).decode(errors="replace")
                raise DockerShadowError(f"replica {pending[0].container.name} was not ready "
                                        f"after {READY_TIMEOUT_S:.0f}s: {logs}")
            time.sleep(0.05)

    def _add_replicas(self, box: _ServiceBox, count: int, *, startup_s: float,
                      check: Callable[[], None] | None) -> list[_Replica]:
        """Start ``count`` replicas of the current template, wait until they are ready and
        put them into service. A stop (``check`` raising) removes the unfinished ones."""
        if count <= 0:
            return []
        began = time.time()
        started = list(self._pool.map(lambda _: self._new_replica(box, startup_s),
                                      range(count)))

        def ready(replica: _Replica) -> None:
            self.timings.append(("startup", box.spec.name, (time.time() - began) * self.k))

        try:
            runtime = box.spec.runtime
            self._wait_healthy(started, runtime.health if runtime else "/healthz",
                               runtime.port if runtime else APP_PORT, check, on_ready=ready)
        except BaseException:
            self._pool.map(_remove, [r.container for r in started])
            raise
        control = box.control
        for r in started:
            if r.reference and control:
                _http("PUT", r.ip, "/__shadow/control", control)
            port = runtime.port if runtime else APP_PORT
            r.slot = box.lb.add(r.ip, port)
            with self._lock:
                box.replicas.append(r)
        return started

    def _retire(self, box: _ServiceBox, replicas: list[_Replica], drain_s: float,
                check: Callable[[], None] | None) -> None:
        """Take replicas out of service, let them drain ``drain_s`` scenario seconds, then
        stop them: gracefully when the drain covered their in-flight time, at once
        otherwise (their in-flight requests are dropped)."""
        for r in replicas:
            if r.slot is not None:
                box.lb.drain(r.slot)
        if drain_s > 0:
            self._sleep(drain_s, check)
        for r in replicas:
            if r.slot is not None:
                box.lb.remove(r.slot)
                r.slot = None
        with self._lock:
            for r in replicas:
                if r in box.replicas:
                    box.replicas.remove(r)
        graceful = drain_s >= box.spec.inflight_time

        def stop(r: _Replica) -> None:
            began = time.time()
            _stop(r.container, 10 if graceful else 0)
            self.timings.append(("stop", box.spec.name, (time.time() - began) * self.k))

        list(self._pool.map(stop, replicas))

    # ------------------------------------------------------------------ traffic

    def _start_traffic(self, seed: int) -> None:
        from shadowrl.shadow.docker.loadgen import LoadGenerator, replay_plan
        edge = self._services[self.scenario.edge.name]
        # the edge service is seen by the generator alone: its view is the edge's
        logs = (self._logs["edge"], self._logs[edge.spec.name])

        def record(rec: Any) -> None:
            failed = rec.status == 0 or rec.status >= 500
            for log in logs:
                log.add(rec.t, rec.ms, failed, (rec.src or "overload") if failed else None)

        # recorded traffic (deployment.traffic.replay) instead of Poisson arrivals
        replay = replay_plan(self.scenario, self.k, self.f, seed=seed,
                             max_wall_rps=MAX_WALL_RPS, on_progress=self._progress)
        self._generator = LoadGenerator(
            f"http://{edge.lb_ip}:{LB_PORT}/",
            write_fraction=self.scenario.deployment.traffic.write_fraction,
            on_record=record, replay=replay)
        self._rate = self._wall_rate(0.0)
        self._generator.set_rate(self._rate)
        # the recording starts at scenario time 0, one window from now (launch sets _t0 then)
        self._generator.replay_from(time.time() + WINDOW_S, 0.0)

    def _wall_rate(self, t: float) -> float:
        """Requests per wall second at scenario time ``t``."""
        inj = self._injection
        mult = inj.load_multiplier if inj else 1.0
        offset = inj.start_offset_s if inj else 0.0
        pattern = self._pattern(offset + t) if self._pattern is not None else 1.0
        return self.scenario.deployment.traffic.rps * mult * pattern * self.f

    def inject(self, injection: Injection) -> None:
        """Schedule the deviation; the collector pushes its effects as they develop."""
        self._check()
        self._injection = injection
        self._phase = "incident"
        self._rate = self._wall_rate(self.now())
        self._generator.set_rate(self._rate)
        self._generator.replay_from(self._t0, injection.start_offset_s,
                                    injection.load_multiplier)

    # ------------------------------------------------------------------ time and metrics

    def now(self) -> float:
        self._check()
        return (time.time() - self._t0) * self.k

    def _to_wall(self, t: float) -> float:
        return self._t0 + t / self.k

    def sample(self) -> Metrics:
        self._check()
        return self._metrics(time.time())

    def _metrics(self, wall: float) -> Metrics:
        comps: dict[str, ComponentMetrics] = {}
        for name in self.scenario.components():
            ms, failed, _ = self._logs[name].window(wall - WINDOW_S, wall)
            cpu, memory = self._component_usage(name)
            comps[name] = component_metrics(ms, failed, WINDOW_S, self.f, cpu, memory)
        ms, failed, _ = self._logs["edge"].window(wall - WINDOW_S, wall)
        e = comps[self.scenario.edge.name]
        edge = component_metrics(ms, failed, WINDOW_S, self.f, e.cpu, e.memory)
        m = Metrics((wall - self._t0) * self.k, edge, comps, ())
        rules = self.scenario.slo.rules
        m.failing_rules = tuple(r.name for r, v in zip(rules, violated(rules, m)) if v)
        return m

    def _containers_of(self, name: str) -> list[tuple[Any, int]]:
        if name in self._services:
            return [(r.container, APP_MEMORY) for r in list(self._services[name].replicas)]
        if name in self._stores:
            return [(self._stores[name].container, STORE_MEMORY)]
        if name in self._caches:
            return [(self._caches[name].container, APP_MEMORY)]
        return []

    def _component_usage(self, name: str) -> tuple[float, float]:
        """Mean cores per container (at most 1) and mean memory share of its limit."""
        boxes = self._containers_of(name)
        if not boxes:
            return 0.0, 0.0
        usages = [(self._usage.get(c.id, Usage()), limit) for c, limit in boxes
                  if c is not None]
        if not usages:
            return 0.0, 0.0
        cpu = sum(min(1.0, u.cores) for u, _ in usages) / len(usages)
        memory = sum(min(1.0, u.memory / limit) for u, limit in usages) / len(usages)
        return cpu, memory

    def mark_phase(self, phase: Phase) -> None:
        self._phase = phase

    def _collect(self) -> None:
        """The collector loop: call statistics, cgroups, effects, load, profile rows."""
        next_row = time.time()
        while not self._halt.wait(TICK_S):
            try:
                now = time.time()
                self._scrape(now)
                ids = [c.id for name in self.scenario.components()
                       for c, _ in self._containers_of(name) if c is not None]
                self._usage = self._cgroups.read(ids, now)
                t = (now - self._t0) * self.k
                self._push_effects(t)
                rate = self._wall_rate(t)
                if self._generator is not None and rate != self._rate:
                    self._generator.set_rate(rate)
                    self._rate = rate
                if self.record_profile and now >= next_row:
                    self._record(now)
                    next_row += PROFILE_S
            except Exception:  # noqa: BLE001 - a failed tick must not end the collector
                if self._halt.is_set():
                    return

    def _scrape(self, now: float) -> None:
        """Each reference replica's call statistics since the last scrape, as records of
        its callees (spread over the tick they came from)."""
        replicas = [r for b in list(self._services.values()) for r in list(b.replicas)
                    if r.reference]
        batch: dict[str, list[tuple[float, float, bool, str | None]]] = {}
        for r, stats in zip(replicas, self._pool.map(
                lambda r: _get_json(r.ip, "/__shadow/stats"), replicas)):
            since = self._scraped.get(r.ip, now - TICK_S)
            self._scraped[r.ip] = now
            if not stats:
                continue
            for callee, calls in (stats.get("calls") or {}).items():
                if callee not in self._logs:
                    continue
                lat = list(calls.get("lat_ms") or [])
                errors = [src for src, n in (calls.get("errors") or {}).items()
                          for _ in range(int(n))]
                # spread over the time since this replica's previous scrape
                rows = batch.setdefault(callee, [])
                for i, ms in enumerate(lat):
                    failed = i < len(errors)
                    rows.append((since + (now - since) * (i + 0.5) / len(lat), float(ms),
                                 failed, errors[i] if failed else None))
        for callee, rows in batch.items():
            log = self._logs[callee]
            for row in sorted(rows, key=lambda x: x[0]):  # windows scan in time order
                log.add(*row)

    def _record(self, wall: float) -> None:
        m = self._metrics(wall)
        phase = self._phase
        inj = self._injection
        if phase == "incident" and (inj is None or m.at_s < inj.onset_s):
            phase = "normal"
        rows = [("edge", m.edge, len(self._services[self.scenario.edge.name].replicas))]
        for name, c in m.components.items():
            replicas = len(self._services[name].replicas) if name in self._services else 1
            rows.append((name, c, replicas))
        p = self.profile
        for name, c, replicas in rows:
            p["t"].append(m.at_s)
            p["component"].append(name)
            p["rps"].append(c.rps)
            p["error_rate"].append(c.error_rate)
            p["latency_p50_ms"].append(c.latency_p50_ms)
            p["latency_p99_ms"].append(c.latency_p99_ms)
            p["cpu"].append(c.cpu)
            p["memory"].append(c.memory)
            p["replicas"].append(replicas)
            p["step"].append(self._step)
            p["phase"].append(phase)

    # ------------------------------------------------------------------ faults

    def _progress_of(self, eff: ActiveEffect, t: float) -> float:
        """How far an effect has developed at ``t``: the simulator's ramp and shape rule."""
        inj = self._injection
        if inj is None or t < inj.onset_s:
            return 0.0
        since = t - inj.onset_s
        if eff.shape:
            idx = int(since // eff.shape_step_s)
            return eff.shape[idx] if idx < len(eff.shape) else eff.shape[-1]
        if eff.ramp_s <= 0:
            return 1.0
        return min(1.0, since / eff.ramp_s)

    def _share(self, target: str | None, kind: str) -> float:
        """Share of the cause still in place (the simulator's fault share)."""
        if kind == "external":
            return 1.0
        if kind == "schema":
            store = self._stores.get(target or "")
            return 1.0 if store is not None and store.schema_live else 0.0
        box = self._services.get(target or "")
        if box is None:
            return 0.0
        if kind == "flag":
            inj = self._injection
            return 0.0 if inj and inj.cause_flag in box.flags_off else 1.0
        reps = list(box.replicas)
        if not reps:
            return 0.0
        index = 0 if kind == "version" else 1
        live = sum(1 for r in reps if (r.version_role, r.config_role)[index] == "live")
        return live / len(reps)

    def _effect_bodies(self, t: float) -> tuple[dict[str, list[dict[str, Any]]],
                                                list[dict[str, Any]]]:
        """The effects each service's replicas apply, and the external proxy's."""
        per: dict[str, list[dict[str, Any]]] = {name: [] for name in self._services}
        external: list[dict[str, Any]] = []
        inj = self._injection
        if inj is None:
            return per, external
        kind, cause = inj.cause_kind, inj.cause_target
        gate: dict[str, str] = {}
        if cause in self._services:
            box = self._services[cause]
            if kind == "version" and box.spec.version is not None:
                gate = {"version": str(box.spec.version.live)}
            elif kind == "config":
                gate = {"config": f"{cause}-config-live"}
            elif kind == "flag" and inj.cause_flag:
                gate = {"flag": inj.cause_flag}
        share = self._share(cause, kind)  # of the cause still in place
        for eff in inj.effects:
            p = self._progress_of(eff, t)
            if p <= 0:
                continue
            body = _effect_body(eff, p, self._base_latency(eff.target))
            if kind == "external":  # the proxy's own latency is 1 ms: rescale the factor
                body["latency_factor"] = 1.0 + (body["latency_factor"] - 1.0) * (
                    self._base_latency(eff.target) / EXTERNAL_LATENCY_S)
                external.append(body)
                continue
            if eff.target in self._services:
                hosts = {eff.target: None}
            else:  # a datastore or a cache: its callers apply it to their calls
                hosts = {s: eff.target for s, b in self._services.items()
                         if eff.target in b.spec.calls}
            for host, call in hosts.items():
                item = dict(body, call=call)
                if gate and host == cause:
                    item["when"] = gate
                else:  # not the cause's own replicas: the share still at fault
                    item = _scaled(item, share)
                    item["when"] = {}
                per[host].append(item)
        return per, external

    def _base_latency(self, name: str) -> float:
        comp = self.scenario.components().get(name)
        return float(getattr(comp, "latency", 0.02) or 0.02)

    def _push_effects(self, t: float) -> None:
        per, external = self._effect_bodies(t)
        for name, effects in per.items():
            box = self._services[name]
            body = json.dumps({"effects": effects}, sort_keys=True)
            if body == box.control:
                continue
            box.control = body
            for r in list(box.replicas):
                if r.reference:
                    _http("PUT", r.ip, "/__shadow/control", body)
        if self._external is not None:
            body = json.dumps({"effects": [dict(e, call=None, when={}) for e in external]},
                              sort_keys=True)
            _http("PUT", self._external.ip, "/__shadow/control", body)

    # ------------------------------------------------------------------ steps

    def run_step(self, step: Step, settings: dict[str, Any], *, timeout_s: float | None = None,
                 cancel: CancelToken | None = None) -> StepResult:
        """Run ``step`` in a worker; return at its end, timeout or cancellation."""
        self._check()
        if self._worker is not None:  # a stopped step's worker finishing its last call
            self._worker.join(timeout=30.0)
        start = self.now()
        span = Span(start, start)
        if cancel is not None and cancel.cancelled:
            return StepResult(step.name, step.action, "cancelled", dict(settings), span,
                              "cancelled before it started")
        self._phase, self._step = "rollback", step.name
        self._stop_step.clear()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["result"] = self._act(step, settings)
            except _Stop:
                outcome["stopped"] = True
            except Exception as exc:  # noqa: BLE001 - a step's failure is its result
                outcome["error"] = exc

        self._worker = threading.Thread(target=work, name=f"step-{step.name}", daemon=True)
        deadline = math.inf if timeout_s is None else start + timeout_s
        meter = _Meter(self, start)
        self._worker.start()
        status: StepStatus = "ok"
        message = ""
        while self._worker.is_alive():
            self._worker.join(POLL_S)
            t = self.now()
            if t >= deadline:
                status, message = "timed_out", f"stopped part-way at its {timeout_s:g}s timeout"
                self._halt_step()
                meter.tick(deadline)
                break
            if cancel is not None and cancel.cancelled:
                status, message = "cancelled", "stopped part-way on request"
                self._halt_step()
                meter.tick(t)
                break
            meter.tick(t)
        else:
            self._worker = None
            meter.tick(self.now())
            if "error" in outcome:
                status, message = "failed", _reason(outcome["error"])
            elif "result" in outcome:
                status, message = outcome["result"]
        self._step = None
        return StepResult(step.name, step.action, status, dict(settings), meter.span(),
                          message)

    def _halt_step(self) -> None:
        """Stop the running step's worker at its next checkpoint; what ends with its
        process ends now (a migration's lock)."""
        self._stop_step.set()
        for store in self._stores.values():
            if store.container is not None:
                self._pool.submit(self._psql, store, (
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE "
                    "application_name = 'shadowrl-migrate'"))

    def _checkpoint(self) -> None:
        if self._stop_step.is_set() or self._halt.is_set():
            raise _Stop

    def _sleep(self, scenario_s: float, check: Callable[[], None] | None = None) -> None:
        """Wait ``scenario_s`` scenario seconds, stopping early when the step is stopped."""
        end = time.time() + scenario_s / self.k
        while (left := end - time.time()) > 0:
            (check or self._checkpoint)()
            time.sleep(min(left, POLL_S))
        (check or self._checkpoint)()

    def _act(self, step: Step, settings: dict[str, Any]) -> tuple[StepStatus, str]:
        action = step.action
        target = step.target or ""
        check = self._checkpoint
        if action == "scale":
            return self._scale(self._services[target], int(settings["replicas"]))
        if action in ("rollback_version", "revert_config"):
            dim = 0 if action == "rollback_version" else 1
            self._replace(self._services[target], dim, int(settings.get("batch", 1)),
                          float(settings.get("drain", 30.0)), int(settings.get("surge", 0)))
            return "ok", ""
        if action == "migrate_down":
            return self._migrate_down(self._stores[target], bool(settings.get("online")))
        if action == "disable_flag":
            box = self._services[target]
            flag = str(settings["flag"])
            box.flags_off.add(flag)
            for r in list(box.replicas):
                if r.reference:
                    _http("PUT", r.ip, "/__shadow/flags", json.dumps({flag: False}))
            return "ok", ""
        if action == "flush_cache":
            result = self._caches[target].container.exec_run(["redis-cli", "FLUSHALL"])
            if result.exit_code != 0:
                return "failed", result.output.decode(errors="replace").strip()
            return "ok", ""
        if action == "warm_cache":
            return self._warm(target)
        if action == "wait":
            self._sleep(float(settings["duration"]), check)
            return "ok", ""
        if action == "command":
            return self._command(step)
        return "failed", f"action {action!r} is not supported by the docker shadow"

    def _scale(self, box: _ServiceBox, replicas: int) -> tuple[StepStatus, str]:
        current = len(box.replicas)
        if replicas > current:
            self._add_replicas(box, replicas - current,
                               startup_s=box.spec.startup / self.k, check=self._checkpoint)
        elif replicas < current:
            self._retire(box, list(box.replicas)[replicas:], 0.0, self._checkpoint)
        return "ok", ""

    def _replace(self, box: _ServiceBox, dim: int, batch: int, drain: float,
                 surge: int) -> None:
        """Rolling replacement in rounds, as the simulator rolls (Kubernetes' maxSurge and
        maxUnavailable): ``surge`` replacements start beside the old replicas and, once
        ready, as many old ones drain and stop; the rest of the round's old replicas leave
        service at once, drain, stop and are replaced."""
        box.template[dim] = "previous"
        width = rollout_width(batch, surge)
        startup = box.spec.startup / self.k

        def at_fault() -> list[_Replica]:
            return [r for r in list(box.replicas)
                    if (r.version_role, r.config_role)[dim] == "live"]

        while old := at_fault():
            self._checkpoint()
            n = min(width, len(old))
            covered = min(surge, n)
            group_surge, group_out = old[:covered], old[covered:n]

            def surge_round(group: list[_Replica] = group_surge) -> None:
                if group:
                    self._add_replicas(box, len(group), startup_s=startup,
                                       check=self._checkpoint)
                    self._retire(box, group, drain, self._checkpoint)

            def out_round(group: list[_Replica] = group_out) -> None:
                if group:
                    self._retire(box, group, drain, self._checkpoint)
                    self._add_replicas(box, len(group), startup_s=startup,
                                       check=self._checkpoint)

            jobs = [self._rounds.submit(surge_round), self._rounds.submit(out_round)]
            for job in jobs:
                job.result()

    def roll_to(self, service: str, *, version: str | None = None, config: str | None = None,
                image: str | None = None, batch: int = 1,
                drain_s: float | None = None) -> StepResult:
        """Roll ``service`` forward to a new live ``version`` and/or ``config`` (and, for a
        service with ``runtime:`` images, to ``image``), as the live deployment just did
        (``shadowrl sync --watch``): a rolling update that starts ``batch`` replicas of the
        new release, puts them into service once ready, then drains (``drain_s`` scenario
        seconds, by default the service's ``inflight_time``: no request is dropped) and
        stops as many old ones (maxSurge ``batch``, maxUnavailable 0), until
        no old one is left. What ran live becomes ``previous``, so a later
        ``rollback_version`` or ``revert_config`` returns to it. Not while a step runs."""
        self._check()
        if self._worker is not None and self._worker.is_alive():
            raise BackendUnavailable("roll_to: a step is running on this shadow")
        if service not in self._services:
            raise KeyError(f"no service {service!r} in this shadow")
        box = self._services[service]
        spec = box.spec
        start = self.now()
        settings: dict[str, Any] = {"version": version, "config": config, "batch": batch}
        updates = _forward(spec, version, config, image)
        dims = sorted({0 if key in ("version", "runtime") else 1 for key in updates})
        if not dims:
            return StepResult(f"roll-{service}", "roll_to", "ok", settings, Span(start, start),
                              "already at that version and config")
        with self._lock:
            box.spec = spec.model_copy(update=updates)
            stale = list(box.replicas)  # every replica runs the release that is now previous
            for r in stale:
                if 0 in dims:
                    r.version_role = "previous"
                if 1 in dims:
                    r.config_role = "previous"
            for dim in dims:
                box.template[dim] = "live"

        drain = spec.inflight_time if drain_s is None else drain_s
        status, message = self._roll_replicas(box, stale, batch, drain)
        return StepResult(f"roll-{service}", "roll_to", status, settings,
                          Span(start, self.now()), message)

    def _roll_replicas(self, box: _ServiceBox, stale: list[_Replica], batch: int,
                       drain_s: float) -> tuple[StepStatus, str]:
        """Replace ``stale`` replicas by ones of the current template, ``batch`` at a time,
        each batch started and ready before as many old ones leave (``roll_to``)."""
        def check() -> None:
            if self._halt.is_set():
                raise _Stop

        try:
            while old := [r for r in stale if r in box.replicas]:
                n = min(max(1, batch), len(old))
                self._add_replicas(box, n, startup_s=box.spec.startup / self.k, check=check)
                self._retire(box, old[:n], drain_s, check)
        except _Stop:
            return "cancelled", "the shadow was closed"
        except Exception as exc:  # noqa: BLE001 - a failed rollout is its result
            return "failed", _reason(exc)
        return "ok", ""

    def _migrate_down(self, box: _StoreBox, online: bool) -> tuple[StepStatus, str]:
        mig = box.spec.migration
        if box.spec.schema_ is None or mig is None:
            return "failed", f"'{box.spec.name}' has no migration to undo"
        if not box.schema_live:
            return "ok", "schema already at the previous version"
        column = _live_column(box.spec)
        if not mig.reversible:
            sql = ("DO $$ BEGIN RAISE EXCEPTION 'the migration to schema % is irreversible', "
                   f"'{_sql_text(box.spec.schema_.live)}'; END $$;")
        elif online:  # a ghost-table copy without locks, then a short swap
            sql = (f"SELECT pg_sleep({mig.duration * mig.online_factor / self.k:.3f}); "
                   f"ALTER TABLE items DROP COLUMN {column};")
        else:  # offline: writes wait on the table lock for the whole migration
            sql = (f"BEGIN; LOCK TABLE items IN EXCLUSIVE MODE; SELECT pg_sleep("
                   f"{mig.duration / self.k:.3f}); ALTER TABLE items DROP COLUMN {column}; "
                   f"COMMIT;")
        began = time.time()
        code, out = self._psql(box, sql, app="shadowrl-migrate")
        self._checkpoint()
        if code != 0:
            return "failed", f"migrate_down on '{box.spec.name}' failed: {_sql_error(out)}"
        self.timings.append((f"migration_{'online' if online else 'offline'}", box.spec.name,
                             (time.time() - began) * self.k))
        box.schema_live = False
        return "ok", ""

    def _warm(self, cache: str) -> tuple[StepStatus, str]:
        """Run the reference app's cache warmer in one replica of a caller of ``cache``."""
        for box in self._services.values():
            if cache in box.spec.calls:
                replica = next((r for r in list(box.replicas) if r.reference), None)
                if replica is None:
                    continue
                result = replica.container.exec_run(["python3", "/app/refapp.py", "warm"],
                                                    environment={"SHADOW_WARM": cache})
                if result.exit_code != 0:
                    return "failed", _last_line(result.output.decode(errors="replace"))
                return "ok", ""
        return "failed", f"no running caller of cache '{cache}' to warm it from"

    def _command(self, step: Step) -> tuple[StepStatus, str]:
        """The step's ``run:`` argv on the host: no shell, a minimal environment that names
        the shadow's endpoints, and its whole process group killed when the step stops."""
        if not step.run:
            return "failed", "a command step needs `run:` (an argv) on the docker shadow"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "SHADOWRL_SHADOW_ID": self.shadow_id}
        for name, box in self._services.items():
            env[f"SHADOWRL_{_env_name(name)}_URL"] = f"http://{box.lb_ip}:{LB_PORT}/"
        for name, store in self._stores.items():
            env[f"SHADOWRL_{_env_name(name)}_DSN"] = f"postgresql://postgres@{store.ip}/shadow"
        try:
            proc = subprocess.Popen(step.run, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        except OSError as exc:
            return "failed", f"could not run {step.run[0]!r}: {exc.strerror or exc}"
        try:
            while proc.poll() is None:
                try:
                    self._checkpoint()
                except _Stop:
                    _kill_group(proc)
                    raise
                time.sleep(POLL_S)
        finally:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            if proc.stdout:
                proc.stdout.close()
        if proc.returncode != 0:
            return "failed", f"exit code {proc.returncode}: {_last_line(out)}"
        return "ok", ""


class _Meter:
    """A step's span: requests and failures counted from the generator's records over the
    step, downtime and outage from the SLO rules at each check."""

    def __init__(self, shadow: DockerShadow, start: float) -> None:
        self.shadow = shadow
        self.start = start
        self.t = start
        self.downtime = self.outage = self.peak = 0.0
        self.violated_until: float | None = None

    def tick(self, t: float) -> None:
        sh = self.shadow
        m = sh._metrics(sh._to_wall(t))
        dt = t - self.t
        if dt > 0:
            if m.failing_rules:
                self.downtime += dt
                self.violated_until = t
            if m.edge.error_rate >= FULL_OUTAGE_ERROR:
                self.outage += dt
            self.peak = max(self.peak, m.edge.error_rate)
        self.t = max(self.t, t)

    def span(self) -> Span:
        sh = self.shadow
        ms, failed, sources = sh._logs["edge"].window(sh._to_wall(self.start),
                                                      sh._to_wall(self.t))
        scale = sh.k / sh.f  # scenario requests per real one
        by_source: dict[str, float] = {}
        for src, bad in zip(sources, failed):
            if bad:
                key = src or "overload"
                by_source[key] = by_source.get(key, 0.0) + scale
        threshold = sh.scenario.slo.objective.latency_threshold
        slow = float(((ms > threshold * 1000) & ~failed).sum()) if threshold else 0.0
        span = Span(self.start, self.t, downtime_s=self.downtime,
                    failed_requests=float(failed.sum()) * scale,
                    requests=len(ms) * scale, errors_by_source=by_source,
                    bad_requests=(float(failed.sum()) + slow) * scale,
                    outage_s=self.outage, peak_error=self.peak,
                    violated_until_s=self.violated_until)
        return span


# ---------------------------------------------------------------------- helpers

_SWEPT = False
_SWEEP_LOCK = threading.Lock()
_OPEN: weakref.WeakSet[DockerShadow] = weakref.WeakSet()


@atexit.register
def _close_open_shadows() -> None:
    """A process that exits without closing its shadows (an exception, Ctrl-C) still
    removes them; a killed one leaves them to the next start-up sweep."""
    for shadow in list(_OPEN):
        try:
            shadow.close()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


def _sweep_once(client: Any) -> None:
    """The start-up sweep: what dead processes left behind, once per process."""
    global _SWEPT
    with _SWEEP_LOCK:
        if _SWEPT:
            return
        from shadowrl.shadow.docker.sweep import sweep
        sweep(client, only_dead_owners=True)
        _SWEPT = True


def _require_extra() -> None:
    """The Docker SDK and aiohttp (the load generator) come with the ``docker`` extra."""
    try:
        import aiohttp  # noqa: F401
        import docker  # noqa: F401
    except ImportError as exc:
        raise missing_extra("docker", exc) from exc


def _exit_on_sigterm() -> None:
    """A SIGTERM (a service manager, ``kill``) ends the process as an exception would, so
    its shadows are removed on the way out; only where nothing else handles it."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def _to_stderr(message: str) -> None:
    """The default progress display: one line per stage on stderr."""
    sys.stderr.write(f"docker shadow: {message}\n")
    sys.stderr.flush()


def _forward(spec: Service, version: str | None, config: str | None,
             image: str | None) -> dict[str, Any]:
    """The fields of ``spec`` a roll forward to ``version``/``config``/``image`` changes:
    each new value becomes live and the old live one previous (``roll_to``)."""
    from shadowrl.core.spec import Versioned

    def moved(current: Versioned | None, new: str | None) -> Versioned | None:
        if new is None or (current is not None and str(current.live) == new):
            return None
        return Versioned(live=new, previous=current.live if current else new)

    updates: dict[str, Any] = {}
    if (new_version := moved(spec.version, version)) is not None:
        updates["version"] = new_version
    if (new_config := moved(spec.config, config)) is not None:
        updates["config"] = new_config
    if spec.runtime is not None and (new_image := moved(spec.runtime.image, image)):
        updates["runtime"] = spec.runtime.model_copy(update={"image": new_image})
    return updates


def _most_replicas(sc: Scenario, svc: Service) -> int:
    """The most replicas a service can have at once: its replicas, scale choices, surge."""
    most = svc.replicas
    for step in sc.procedure.steps:
        if step.target != svc.name:
            continue
        for key, value in step.settings.items():
            choices = getattr(value, "choices", [value])
            numbers = [int(c) for c in choices if isinstance(c, (int, float))
                       and not isinstance(c, bool)]
            if key == "replicas" and numbers:
                most = max(most, max(numbers))
            elif key == "surge" and numbers:
                most = max(most, svc.replicas + max(numbers))
    return most


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "shadow"


def _env_name(name: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", name.upper())


def _live_column(store: Datastore) -> str:
    live = store.schema_.live if store.schema_ is not None else "live"
    return "s_" + re.sub(r"[^a-z0-9_]+", "_", str(live).lower())


def _sql_text(value: Any) -> str:
    return str(value).replace("'", "''")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _sql_error(text: str) -> str:
    """psql's ``ERROR:`` line (the context lines after it say less)."""
    for line in text.splitlines():
        if line.strip().startswith("ERROR:"):
            return line.strip()
    return _last_line(text)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, DockerShadowError) \
        else str(exc)


def _effect_body(eff: ActiveEffect, p: float, base_latency_s: float) -> dict[str, Any]:
    """One developed effect as the reference app's control body spells it."""
    body: dict[str, Any] = {"error_add": 0.0, "latency_factor": 1.0, "cpu_add": 0.0,
                            "memory_add": 0.0}
    if eff.metric == "error_rate":
        body["error_add"] = min(1.0, eff.add * p)
    elif eff.metric == "latency":
        factor = 1.0 + (eff.factor - 1.0) * p
        if eff.add:  # added milliseconds, as a factor on the component's own latency
            factor += eff.add * p / 1000.0 / max(base_latency_s, 1e-3)
        body["latency_factor"] = factor
    elif eff.metric == "cpu":
        body["cpu_add"] = eff.add * p
    elif eff.metric == "memory":
        body["memory_add"] = eff.add * p
    return body


def _scaled(item: dict[str, Any], share: float) -> dict[str, Any]:
    out = dict(item)
    out["error_add"] = item["error_add"] * share
    out["latency_factor"] = 1.0 + (item["latency_factor"] - 1.0) * share
    out["cpu_add"] = item["cpu_add"] * share
    out["memory_add"] = item["memory_add"] * share
    return out


def _http(method: str, ip: str, path: str, body: str | None = None, *, port: int = APP_PORT,
          timeout: float = 1.0) -> tuple[int, bytes]:
    """One small request to a container; (0, b"") when it cannot be reached."""
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


def _healthy(ip: str, port: int, path: str) -> bool:
    status, _ = _http("GET", ip, path, port=port, timeout=0.5)
    return 200 <= status < 300


def _get_json(ip: str, path: str) -> dict[str, Any] | None:
    status, body = _http("GET", ip, path)
    if status != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _stop(container: Any, timeout: int) -> None:
    try:
        container.stop(timeout=timeout)
    except Exception:  # noqa: BLE001 - already gone is fine
        pass
    _remove(container)


def _remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except Exception:  # noqa: BLE001 - already gone is fine
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()

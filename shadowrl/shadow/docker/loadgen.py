"""Open-loop load for a real shadow, in its own process so that the backend's thread and
the GIL never slow the arrivals down.

Arrivals are Poisson at the current rate and every request is its own task: a slow or
stalled shadow does not lower the send rate (a closed loop would hide exactly the overload
a rollback causes). Run as ``python -m shadowrl.shadow.docker.loadgen --url URL
--write-fraction 0.2 [--timeout 5]``; stdin takes ``rate <r>`` (requests per wall second,
0 pauses) and ``stop`` (or EOF: exit once in-flight requests end, at most ``--timeout``
later). It prints ``ready`` before the first request, then one line per finished request,
``<t> <ms> <status> <src>`` (``t`` = ``time.time()`` at completion, status 0 = no response,
src ``-`` below 500), flushed every 0.1 s.

Replay mode (``--replay FILE --speed S --duration D [--loop]``) sends recorded requests
instead (docs/replay.md): FILE holds one ``<offset> <method> <path> <body base64 or ->`` per
line, offsets in recording seconds, sorted; stdin's ``replay <wall> <position> <keep>``
anchors the recording (at unix time ``wall`` it is at ``position``, advancing ``S`` recording
seconds per wall second, repeating every ``D`` with ``--loop``) and sends each request with
probability ``keep`` (``rate`` is ignored). Still open loop: a request is sent at its time
whether or not the earlier ones were answered. Its lines end with `` <method> <path>``.

:class:`LoadGenerator` runs that process for the backend and hands over :class:`Record` s.
The process side imports only the standard library and aiohttp (the file also runs as a
plain script, which skips importing shadowrl and starts faster).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import math
import os
import queue
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

FLUSH_S = 0.1
POLL_S = 0.05  # the longest the scheduler sleeps before looking at a new command
MAX_LAG_S = 1.0  # arrivals further behind than this (a stalled loop) are skipped, not burst


class Record(NamedTuple):
    """One finished request: completion time (``time.time()``), latency, HTTP status (0: no
    response) and error source (None below 500); in replay mode also what was sent."""

    t: float
    ms: float
    status: int
    src: str | None
    method: str | None = None
    path: str | None = None


def error_source(status: int, header: str | None) -> str | None:
    """The error source of an answer: the app's ``X-Shadow-Error``, else what the status
    means (an LB's 503/504 is overload, 502 a dropped request)."""
    if status < 500:
        return None
    if header:
        return header
    return {502: "dropped", 503: "overload", 504: "overload"}.get(status, "incident")


def format_record(r: Record) -> str:
    sent = f" {r.method} {r.path}" if r.method is not None and r.path is not None else ""
    return f"{r.t:.6f} {r.ms:.3f} {r.status} {r.src or '-'}{sent}\n"


def parse_record(line: str) -> Record | None:
    """A record from an output line, or None for other lines (``ready``)."""
    parts = line.split()
    if len(parts) not in (4, 6):
        return None
    try:
        return Record(float(parts[0]), float(parts[1]), int(parts[2]),
                      None if parts[3] == "-" else parts[3], *parts[4:])
    except ValueError:
        return None


# ------------------------------------------------------------------------ replay arrivals


def replay_window(offsets: Sequence[float], duration: float, loop: bool, start: float,
                  end: float) -> Iterator[int]:
    """Indices of the recorded arrivals at recording positions in [start, end), in order.

    Position p is offset ``p - c * duration`` of cycle ``c = floor(p / duration)``; cycles
    past the first exist only with ``loop``, and negative positions always wrap (a replay
    anchored ahead of its start plays the recording's tail first). The simulator's replay
    pattern counts arrivals the same way (``Recording.count_before``).
    """
    if end <= start or not offsets:
        return
    c = math.floor(start / duration)
    while True:
        base = c * duration
        if base >= end or (c > 0 and not loop):
            return
        lo = bisect.bisect_left(offsets, start - base) if start > base else 0
        hi = bisect.bisect_left(offsets, end - base) if end - base < duration else len(offsets)
        yield from range(lo, hi)
        c += 1


def next_arrival(offsets: Sequence[float], duration: float, loop: bool,
                 position: float) -> float | None:
    """The recording position of the first arrival at or after ``position`` (None: no more)."""
    if not offsets:
        return None
    c = math.floor(position / duration)
    if c > 0 and not loop:
        return None
    i = bisect.bisect_left(offsets, position - c * duration)
    if i < len(offsets):
        return c * duration + offsets[i]
    if c + 1 > 0 and not loop:
        return None
    return (c + 1) * duration + offsets[0]


# ------------------------------------------------------------------------ the process side


class _Generator:
    """The event-loop side: schedule arrivals, run requests, batch output lines."""

    def __init__(self, url: str, write_fraction: float, timeout_s: float, out: IO[str],
                 replay: _Replay | None = None) -> None:
        self.url, self.write_fraction, self.timeout_s, self.out = (url, write_fraction,
                                                                   timeout_s, out)
        self.replay = replay
        self.anchor: tuple[float, float, float] | None = None  # replay: wall, position, keep
        self.rate = 0.0
        self.generation = 0  # bumped by every rate command: the next arrival is redrawn
        self.stopping = False
        self.aborting = False
        self.lines: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.session: Any = None

    def command(self, line: str) -> None:
        words = line.split()
        if not words:
            return
        if words[0] == "rate" and len(words) == 2:
            try:
                self.rate = max(0.0, float(words[1]))
            except ValueError:
                return
            self.generation += 1
        elif words[0] == "replay" and len(words) == 4:
            try:
                wall, position, keep = (float(w) for w in words[1:])
            except ValueError:
                return
            if all(math.isfinite(x) for x in (wall, position, keep)):
                self.anchor = (wall, position, max(0.0, keep))
                self.generation += 1
        elif words[0] == "stop":
            self.stopping = True

    def abort(self) -> None:
        """SIGTERM: stop now, without waiting for in-flight requests."""
        self.stopping = self.aborting = True

    async def request(self, post: bool, sent: tuple[str, str, bytes | None] | None = None
                      ) -> None:
        """One request: a synthetic GET or POST, or the recorded ``sent`` (method, path,
        body), whose record then names it."""
        import aiohttp

        t0 = time.perf_counter()
        status, src = 0, "dropped"
        if sent is None:
            method, url, data = "POST" if post else "GET", self.url, b"" if post else None
        else:
            from yarl import URL

            assert self.replay is not None
            method, data = sent[0], sent[2]
            url = URL(self.replay.origin + sent[1], encoded=True)
        try:
            async with self.session.request(method, url, data=data) as resp:
                await resp.read()
                status = resp.status
                src = error_source(status, resp.headers.get("X-Shadow-Error"))
        except TimeoutError:
            src = "overload"
        except (aiohttp.ClientError, OSError):
            src = "dropped"
        ms = (time.perf_counter() - t0) * 1000.0
        self.lines.append(format_record(Record(time.time(), ms, status, src,
                                               *(sent[:2] if sent else ()))))

    def spawn(self, sent: tuple[str, str, bytes | None] | None = None) -> None:
        post = sent is None and random.random() < self.write_fraction
        task = asyncio.ensure_future(self.request(post, sent))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def flush(self) -> None:
        if self.lines:
            lines, self.lines = self.lines, []
            self.out.write("".join(lines))
            self.out.flush()

    async def flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self.flush()

    async def schedule(self) -> None:
        """Poisson arrivals at the current rate until ``stop``."""
        loop = asyncio.get_running_loop()
        generation, next_t = -1, 0.0
        while not self.stopping:
            now = loop.time()
            if self.rate <= 0:
                await asyncio.sleep(POLL_S)
                continue
            if generation != self.generation:  # memoryless: redraw from now
                generation, next_t = self.generation, now + random.expovariate(self.rate)
            if next_t < now - MAX_LAG_S:
                next_t = now
            while next_t <= now:
                self.spawn()
                next_t += random.expovariate(self.rate)
            await asyncio.sleep(min(next_t - now, POLL_S))

    async def schedule_replay(self) -> None:
        """The recorded arrivals at their (compressed, scaled) times, each kept with the
        anchor's probability, until ``stop``. Arrivals further behind than ``MAX_LAG_S``
        (a stalled loop) are skipped, not burst."""
        rp = self.replay
        assert rp is not None
        rng = random.Random(rp.seed)
        generation, cursor = -1, 0.0
        while not self.stopping:
            if self.anchor is None:
                await asyncio.sleep(POLL_S)
                continue
            wall, position, keep = self.anchor
            now = time.time()
            pos = position + (now - wall) * rp.speed
            if generation != self.generation:  # a new anchor: start from its present
                generation, cursor = self.generation, pos
            cursor = max(cursor, pos - MAX_LAG_S * rp.speed)
            if pos > cursor:
                for i in replay_window(rp.offsets, rp.duration, rp.loop, cursor, pos):
                    if keep >= 1.0 or rng.random() < keep:
                        self.spawn((rp.methods[i], rp.paths[i], rp.body(i)))
                cursor = pos
            nxt = next_arrival(rp.offsets, rp.duration, rp.loop, cursor)
            delay = POLL_S if nxt is None else (nxt - pos) / rp.speed
            await asyncio.sleep(max(0.0, min(delay, POLL_S)))

    async def run(self) -> None:
        import aiohttp

        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGTERM, self.abort)
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=0))
        flusher = asyncio.ensure_future(self.flusher())
        try:
            self.out.write("ready\n")
            self.out.flush()
            await (self.schedule() if self.replay is None else self.schedule_replay())
            if self.tasks and not self.aborting:
                await asyncio.wait(set(self.tasks), timeout=self.timeout_s + 0.5)
        finally:
            for task in list(self.tasks):
                task.cancel()
            flusher.cancel()
            self.flush()
            await self.session.close()


class _Replay:
    """The process side's recording (read from ``--replay``'s file)."""

    def __init__(self, path: str, url: str, speed: float, duration: float, loop: bool,
                 seed: int) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.speed, self.duration, self.loop, self.seed = speed, duration, loop, seed
        self.offsets: list[float] = []
        self.methods: list[str] = []
        self.paths: list[str] = []
        self.bodies: dict[int, str] = {}
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                offset, method, target, body = line.split()
                if body != "-":
                    self.bodies[len(self.offsets)] = body
                self.offsets.append(float(offset))
                self.methods.append(method)
                self.paths.append(target)

    def body(self, i: int) -> bytes | None:
        """The recorded body, else the synthetic requests' (empty for writes)."""
        raw = self.bodies.get(i)
        if raw is not None:
            return base64.b64decode(raw)
        return None if self.methods[i] in ("GET", "HEAD", "OPTIONS") else b""


def _read_commands(gen: _Generator, loop: asyncio.AbstractEventLoop) -> None:
    """stdin, read raw (a daemon thread blocked in a buffered read can abort interpreter
    shutdown); EOF means stop."""
    buf = b""
    while True:
        try:
            chunk = os.read(0, 4096)
        except OSError:
            chunk = b""
        buf += chunk
        *lines, buf = buf.split(b"\n")
        if not chunk:
            lines.append(b"stop")
        for line in lines:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(gen.command, line.decode(errors="replace"))
        if not chunk:
            return


def _raise_fd_limit() -> None:
    """Open loop at a few hundred rps against a stalled shadow holds many sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--write-fraction", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    parser.add_argument("--replay", help="recorded arrivals to send instead of Poisson ones")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="recording seconds per wall second (replay)")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="the recording's loop period, seconds (replay)")
    parser.add_argument("--loop", action="store_true", help="repeat the recording (replay)")
    parser.add_argument("--seed", type=int, default=0, help="of the replay's sampling")
    args = parser.parse_args(argv)
    _raise_fd_limit()
    replay = None
    if args.replay:
        if args.speed <= 0 or args.duration <= 0:
            parser.error("--replay needs a positive --speed and --duration")
        replay = _Replay(args.replay, args.url, args.speed, args.duration, args.loop,
                         args.seed)

    async def go() -> None:
        gen = _Generator(args.url, args.write_fraction, args.timeout, sys.stdout, replay)
        threading.Thread(target=_read_commands, args=(gen, asyncio.get_running_loop()),
                         daemon=True).start()
        await gen.run()

    try:
        asyncio.run(go())
    except BrokenPipeError:  # the reader went away: nobody wants the records
        with contextlib.suppress(OSError):  # silence the flush at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


# --------------------------------------------------------------------------- the host side


@dataclass
class ReplayPlan:
    """What a replaying generator sends (built from a scenario by :func:`replay_plan`).

    ``offsets`` (recording seconds from the first request, sorted), ``methods``, ``paths``
    and ``bodies`` (by index) are the arrivals, already thinned once on the host (see
    :func:`replay_plan`); ``scale`` recording seconds pass per scenario second and
    ``time_compression`` scenario seconds per wall second; ``keep`` is the share of these
    arrivals sent at load 1 (more than 1: the recording is too sparse, everything is sent
    and ``1 - 1/keep`` of the wanted requests are missing).
    """

    offsets: Sequence[float]
    methods: Sequence[str]
    paths: Sequence[str]
    duration_s: float
    scale: float = 1.0
    time_compression: float = 1.0
    keep: float = 1.0
    loop: bool = True
    seed: int = 0
    bodies: dict[int, bytes] = field(default_factory=dict)

    @property
    def speed(self) -> float:
        """Recording seconds per wall second."""
        return self.scale * self.time_compression

    def shortfall(self, load: float = 1.0) -> float:
        """The share of the wanted requests the recording cannot supply at ``load``."""
        want = self.keep * load
        return 0.0 if want <= 1.0 else 1.0 - 1.0 / want

    def write(self, fh: IO[str]) -> None:
        """The arrivals file the process reads (``--replay``)."""
        for i, (t, method, target) in enumerate(zip(self.offsets, self.methods, self.paths)):
            body = self.bodies.get(i)
            b64 = base64.b64encode(body).decode() if body else "-"
            fh.write(f"{t!r} {method} {target} {b64}\n")


def replay_plan(scenario: Any, time_compression: float, sample_fraction: float, *,
                seed: int = 0, max_wall_rps: float | None = None,
                on_progress: Callable[[str], None] | None = None) -> ReplayPlan | None:
    """The real shadow's replay of the scenario's ``deployment.traffic.replay`` (None
    without one), for a generator aimed at the edge service.

    A recording holding P % of live traffic, replayed ``scale`` times faster with time
    compressed k-fold, offers k x scale x (recorded rate) requests per wall second, while
    the shadow sends the live rate x scale x ``sample_fraction`` x the drawn load: each
    recorded request is sent with probability ``sample_fraction x 100 / (k x P)`` (x load).
    Arrivals are thinned here once, at the highest load ``deviations.load`` may draw, so the
    process holds only what it may send. The reference app serves only ``GET /`` and
    ``POST /``: for it paths become ``/`` (keeping the query) and methods GET (GET, HEAD,
    OPTIONS) or POST (any other); a ``runtime:`` image gets them as recorded.
    """
    import numpy as np

    from shadowrl.core.errors import BackendUnavailable
    from shadowrl.traffic.recording import describe, replay_pattern, scenario_recording

    spec = scenario.deployment.traffic.replay
    rec = scenario_recording(scenario)
    if spec is None or rec is None:
        return None
    k, f = float(time_compression), float(sample_fraction)
    load_max = max(1.0, *scenario.deviations.load)
    keep = f * 100.0 / (k * rec.percent)
    if max_wall_rps is not None:
        pattern = replay_pattern(rec, 1.0, scale=spec.scale, loop=spec.loop)
        horizon = rec.duration_s / spec.scale
        grid = np.arange(max(1, math.ceil(horizon / 60.0))) * 60.0 + 30.0
        peak = float(np.max(pattern(grid))) * f * load_max  # type: ignore[arg-type]
        if peak > max_wall_rps:
            raise BackendUnavailable(
                f"the replay would send up to {peak:.0f} requests/s (its busiest minute x "
                f"scale {spec.scale:g} x shadow.sample_fraction {f:g}"
                + (f" x load {load_max:g}" if load_max > 1 else "") + f"); at most "
                f"{max_wall_rps:.0f} keep latencies honest on this machine: lower "
                "shadow.sample_fraction or the replay's scale")
    pre = min(1.0, keep * load_max)
    draws = np.random.default_rng(seed).random(len(rec))
    chosen = np.flatnonzero(draws < pre).tolist() if pre < 1.0 else range(len(rec))
    reference = scenario.edge.runtime is None
    methods, paths = [], []
    for i in chosen:
        method, target = rec.methods[i], rec.paths[i]
        if reference:
            method = "GET" if method in ("GET", "HEAD", "OPTIONS") else "POST"
            target = "/" + target[target.index("?"):] if "?" in target else "/"
        methods.append(method)
        paths.append(target)
    bodies = {j: rec.bodies[i] for j, i in enumerate(chosen) if i in rec.bodies}
    plan = ReplayPlan([float(rec.offsets[i]) for i in chosen], methods, paths, rec.duration_s,
                      scale=spec.scale, time_compression=k, keep=keep / pre, loop=spec.loop,
                      seed=seed, bodies=bodies if not reference else {})
    if on_progress is not None:
        how = f"x{spec.scale:g}{', looped' if spec.loop else ''}"
        if keep <= 1.0:
            sent = f"one recorded request in {1 / keep:,.1f} is sent"
        else:
            sent = (f"the recording holds only {100 / keep:.0f} % of the requests the shadow "
                    f"should send: all are sent, {1 - 1 / keep:.0%} short")
        if keep <= 1.0 < keep * load_max:
            sent += (f" (at a drawn load above {1 / keep:.2f} the recording runs short: "
                     "all its requests are sent)")
        writes = sum(m not in ("GET", "HEAD", "OPTIONS") for m in rec.methods) / len(rec)
        on_progress(f"replaying {describe(rec)}; {how}: {sent}; writes: {writes:.0%} "
                    f"(traffic.write_fraction {scenario.deployment.traffic.write_fraction:g})")
        for note in rec.notes:
            on_progress(f"replay: {note}")
    return plan


class LoadGenerator:
    """The load generator process, seen from the backend: ``set_rate``, records out.

    Records go to ``on_record`` (called on the reader thread) or, without one, to the
    thread-safe :attr:`records` queue (:meth:`drain` empties it). ``stop`` ends it
    gracefully (in-flight requests finish and are recorded); ``close`` always ends it:
    SIGTERM, then SIGKILL after ``kill_after_s``.
    """

    def __init__(self, url: str, write_fraction: float = 0.0, *, timeout_s: float = 5.0,
                 on_record: Callable[[Record], None] | None = None,
                 start_timeout_s: float = 15.0, kill_after_s: float = 2.0,
                 replay: ReplayPlan | None = None) -> None:
        self.url, self.timeout_s, self.kill_after_s = url, timeout_s, kill_after_s
        self.on_record = on_record
        self.records: queue.SimpleQueue[Record] = queue.SimpleQueue()
        self.callback_errors = 0
        self.replay = replay
        # replay mode: (method, path) -> requests sent and answered (a bounded tally)
        self.sent: Counter[tuple[str, str]] = Counter()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._stderr: deque[str] = deque(maxlen=40)
        self._closed = False
        self._arrivals: str | None = None
        cmd = [sys.executable, str(Path(__file__).resolve()), "--url", url,
               "--write-fraction", repr(float(write_fraction)), "--timeout", repr(timeout_s)]
        if replay is not None:
            with tempfile.NamedTemporaryFile("w", prefix="shadowrl-replay-", suffix=".txt",
                                             delete=False, encoding="utf-8") as fh:
                self._arrivals = fh.name
                replay.write(fh)
            cmd += ["--replay", self._arrivals, "--speed", repr(replay.speed),
                    "--duration", repr(replay.duration_s), "--seed", str(replay.seed)]
            cmd += ["--loop"] if replay.loop else []
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, start_new_session=True)
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True,
                                          name="loadgen-records"),
                         threading.Thread(target=self._read_stderr, daemon=True,
                                          name="loadgen-stderr")]
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + start_timeout_s
        while not self._ready.wait(0.05):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise _unavailable(f"the load generator did not start: {self.stderr()}")

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def stderr(self) -> str:
        """The tail of the process's stderr (for error messages)."""
        return "".join(self._stderr).strip() or "(no output)"

    def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode(errors="replace")
            record = parse_record(line)
            if record is None:
                if line.strip() == "ready":
                    self._ready.set()
                continue
            if record.method is not None:
                key = (record.method, record.path or "")
                if key in self.sent or len(self.sent) < 1000:
                    self.sent[key] += 1
            if self.on_record is None:
                self.records.put(record)
                continue
            try:
                self.on_record(record)
            except Exception:  # noqa: BLE001 - a bad callback must not stop the records
                self.callback_errors += 1

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        for raw in self._proc.stderr:
            self._stderr.append(raw.decode(errors="replace"))

    def _send(self, line: str) -> None:
        with self._lock:
            if self._closed or not self.alive or self._proc.stdin is None:
                raise _unavailable(f"the load generator is not running: {self.stderr()}")
            try:
                self._proc.stdin.write(line.encode() + b"\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                raise _unavailable(f"the load generator is not running: {exc}") from exc

    def set_rate(self, rate: float) -> None:
        """Requests per wall second from now on (0 pauses); ignored while replaying, whose
        rate is the recording's (:meth:`replay_from`)."""
        self._send(f"rate {max(0.0, float(rate))!r}")

    def replay_from(self, wall: float, scenario_s: float, load: float = 1.0) -> None:
        """Replay so that at unix time ``wall`` the shadow is at scenario second
        ``scenario_s`` (the recording at ``scenario_s x scale``), with ``load`` times the
        recorded rate; a no-op without a replay, so the backend calls it unconditionally."""
        plan = self.replay
        if plan is None:
            return
        keep = plan.keep * max(0.0, float(load))
        self._send(f"replay {float(wall)!r} {float(scenario_s) * plan.scale!r} {keep!r}")

    def drain(self) -> list[Record]:
        """Every queued record (only without ``on_record``)."""
        out: list[Record] = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.records.get_nowait())
        return out

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Stop sending and wait until the in-flight requests ended and their records were
        delivered (at most ``--timeout`` plus a margin); then close. The exit code."""
        with self._lock:
            if not self._closed and self.alive and self._proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self._proc.stdin.write(b"stop\n")
                    self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(self.timeout_s + 2.0 if timeout_s is None else timeout_s)
        self.close()
        return self._proc.returncode

    def close(self) -> None:
        """End the process (SIGTERM, then SIGKILL after ``kill_after_s``); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(self.kill_after_s)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self._proc.stdin.close()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(2.0)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self._arrivals is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._arrivals)

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not self._closed and self._proc.poll() is None:
                self._proc.kill()


def _unavailable(message: str) -> Exception:
    from shadowrl.core.errors import BackendUnavailable

    return BackendUnavailable(message)


if __name__ == "__main__":
    sys.exit(main())

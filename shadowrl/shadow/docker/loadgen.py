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

:class:`LoadGenerator` runs that process for the backend and hands over :class:`Record` s.
The process side imports only the standard library and aiohttp (the file also runs as a
plain script, which skips importing shadowrl and starts faster).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple

FLUSH_S = 0.1
POLL_S = 0.05  # the longest the scheduler sleeps before looking at a new command
MAX_LAG_S = 1.0  # arrivals further behind than this (a stalled loop) are skipped, not burst


class Record(NamedTuple):
    """One finished request: completion time (``time.time()``), latency, HTTP status (0: no
    response) and error source (None below 500)."""

    t: float
    ms: float
    status: int
    src: str | None


def error_source(status: int, header: str | None) -> str | None:
    """The error source of an answer: the app's ``X-Shadow-Error``, else what the status
    means (an LB's 503/504 is overload, 502 a dropped request)."""
    if status < 500:
        return None
    if header:
        return header
    return {502: "dropped", 503: "overload", 504: "overload"}.get(status, "incident")


def format_record(r: Record) -> str:
    return f"{r.t:.6f} {r.ms:.3f} {r.status} {r.src or '-'}\n"


def parse_record(line: str) -> Record | None:
    """A record from an output line, or None for other lines (``ready``)."""
    parts = line.split()
    if len(parts) != 4:
        return None
    try:
        return Record(float(parts[0]), float(parts[1]), int(parts[2]),
                      None if parts[3] == "-" else parts[3])
    except ValueError:
        return None


# ------------------------------------------------------------------------ the process side


class _Generator:
    """The event-loop side: schedule arrivals, run requests, batch output lines."""

    def __init__(self, url: str, write_fraction: float, timeout_s: float, out: IO[str]) -> None:
        self.url, self.write_fraction, self.timeout_s, self.out = (url, write_fraction,
                                                                   timeout_s, out)
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
        elif words[0] == "stop":
            self.stopping = True

    def abort(self) -> None:
        """SIGTERM: stop now, without waiting for in-flight requests."""
        self.stopping = self.aborting = True

    async def request(self, post: bool) -> None:
        import aiohttp

        t0 = time.perf_counter()
        status, src = 0, "dropped"
        try:
            async with self.session.request("POST" if post else "GET", self.url,
                                            data=b"" if post else None) as resp:
                await resp.read()
                status = resp.status
                src = error_source(status, resp.headers.get("X-Shadow-Error"))
        except TimeoutError:
            src = "overload"
        except (aiohttp.ClientError, OSError):
            src = "dropped"
        ms = (time.perf_counter() - t0) * 1000.0
        self.lines.append(format_record(Record(time.time(), ms, status, src)))

    def spawn(self) -> None:
        task = asyncio.ensure_future(self.request(random.random() < self.write_fraction))
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
            await self.schedule()
            if self.tasks and not self.aborting:
                await asyncio.wait(set(self.tasks), timeout=self.timeout_s + 0.5)
        finally:
            for task in list(self.tasks):
                task.cancel()
            flusher.cancel()
            self.flush()
            await self.session.close()


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
    args = parser.parse_args(argv)
    _raise_fd_limit()

    async def go() -> None:
        gen = _Generator(args.url, args.write_fraction, args.timeout, sys.stdout)
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


class LoadGenerator:
    """The load generator process, seen from the backend: ``set_rate``, records out.

    Records go to ``on_record`` (called on the reader thread) or, without one, to the
    thread-safe :attr:`records` queue (:meth:`drain` empties it). ``stop`` ends it
    gracefully (in-flight requests finish and are recorded); ``close`` always ends it:
    SIGTERM, then SIGKILL after ``kill_after_s``.
    """

    def __init__(self, url: str, write_fraction: float = 0.0, *, timeout_s: float = 5.0,
                 on_record: Callable[[Record], None] | None = None,
                 start_timeout_s: float = 15.0, kill_after_s: float = 2.0) -> None:
        self.url, self.timeout_s, self.kill_after_s = url, timeout_s, kill_after_s
        self.on_record = on_record
        self.records: queue.SimpleQueue[Record] = queue.SimpleQueue()
        self.callback_errors = 0
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._stderr: deque[str] = deque(maxlen=40)
        self._closed = False
        cmd = [sys.executable, str(Path(__file__).resolve()), "--url", url,
               "--write-fraction", repr(float(write_fraction)), "--timeout", repr(timeout_s)]
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
        """Requests per wall second from now on (0 pauses)."""
        self._send(f"rate {max(0.0, float(rate))!r}")

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

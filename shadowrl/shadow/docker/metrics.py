"""What the real shadow measured: per-request records per component, and container usage.

The truth about requests is what their callers saw: the load generator for the edge, the
reference app's per-callee call statistics for every other component (what a service saw of
its callees behind their load balancers). :class:`RequestLog` keeps those records in wall
time; :func:`component_metrics` turns a window of them into the simulator's
:class:`~shadowrl.core.results.ComponentMetrics`, rates converted to scenario units
(requests per scenario second = wall rate / sample fraction). :class:`CgroupReader` reads
each container's CPU and memory from its cgroup files, which costs well under a
millisecond per container (the Docker stats API gives one sample a second per container).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shadowrl.core.results import ComponentMetrics

MAX_RECORDS = 2_000_000  # per component; beyond it the oldest half is dropped


@dataclass
class RequestLog:
    """Finished requests of one component, in completion order: wall time, latency (ms),
    whether it failed, and the error source of failures."""

    t: list[float] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)
    failed: list[bool] = field(default_factory=list)
    source: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, t: float, ms: float, failed: bool, source: str | None) -> None:
        with self.lock:
            self.t.append(t)
            self.ms.append(ms)
            self.failed.append(failed)
            self.source.append(source)
            if len(self.t) > MAX_RECORDS:
                half = MAX_RECORDS // 2
                del self.t[:half], self.ms[:half], self.failed[:half], self.source[:half]

    def window(self, start: float, end: float) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """Latencies, failed flags and sources of the requests that finished in
        ``[start, end)``."""
        with self.lock:
            t = self.t
            i = len(t)
            while i > 0 and t[i - 1] >= end:
                i -= 1
            j = i
            while j > 0 and t[j - 1] >= start:
                j -= 1
            return (np.asarray(self.ms[j:i], dtype=float),
                    np.asarray(self.failed[j:i], dtype=bool), self.source[j:i])

    def clear(self) -> None:
        with self.lock:
            self.t.clear()
            self.ms.clear()
            self.failed.clear()
            self.source.clear()


def component_metrics(ms: np.ndarray, failed: np.ndarray, seconds: float,
                      sample_fraction: float, cpu: float, memory: float) -> ComponentMetrics:
    """One component's metrics over a window of ``seconds`` wall seconds: rps in scenario
    units, error rate, p50 and p99 of every request's latency (failures included, as a
    client sees them)."""
    n = len(ms)
    if n == 0:
        return ComponentMetrics(0.0, 0.0, 0.0, 0.0, cpu, memory)
    p50, p99 = np.percentile(ms, [50.0, 99.0])
    return ComponentMetrics(n / seconds / sample_fraction, float(failed.sum()) / n,
                            float(p50), float(p99), cpu, memory)


@dataclass
class Usage:
    """One container's CPU (cores, over the last read interval) and memory (bytes)."""

    cores: float = 0.0
    memory: float = 0.0


class CgroupReader:
    """CPU and memory per container from the cgroup files (v1 ``cpuacct``/``memory`` under
    ``docker/<id>``, or v2 ``docker/<id>``); a container whose files are missing reads 0."""

    def __init__(self, root: str | os.PathLike[str] = "/sys/fs/cgroup") -> None:
        self.root = Path(root)
        self._last: dict[str, tuple[float, float]] = {}  # id -> (wall time, cpu seconds)
        self.v2 = (self.root / "cgroup.controllers").exists()

    def _cpu_seconds(self, cid: str) -> float | None:
        try:
            if self.v2:
                for line in (self.root / "docker" / cid / "cpu.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        return int(value) / 1e6
                return None
            return int((self.root / "cpuacct" / "docker" / cid / "cpuacct.usage")
                       .read_text()) / 1e9
        except (OSError, ValueError):
            return None

    def _memory(self, cid: str) -> float:
        path = (self.root / "docker" / cid / "memory.current" if self.v2
                else self.root / "memory" / "docker" / cid / "memory.usage_in_bytes")
        try:
            return float(int(path.read_text()))
        except (OSError, ValueError):
            return 0.0

    def read(self, ids: Iterable[str], now: float) -> dict[str, Usage]:
        """Each container's usage since the previous read (cores over that interval)."""
        out: dict[str, Usage] = {}
        seen = set()
        for cid in ids:
            seen.add(cid)
            cpu = self._cpu_seconds(cid)
            usage = Usage(memory=self._memory(cid))
            if cpu is not None:
                last = self._last.get(cid)
                if last is not None and now > last[0]:
                    usage.cores = max(0.0, (cpu - last[1]) / (now - last[0]))
                self._last[cid] = (now, cpu)
            out[cid] = usage
        for gone in set(self._last) - seen:
            del self._last[gone]
        return out

"""The recording of the mirror's sampled requests: a JSON Lines file (docs/mirror.md, The
recording), written by a background task so the live path never touches the disk.

The first line is a header, ``{"format": "shadowrl-recording/1", "started": T, "percent":
P}``; then one object per sampled request, in arrival order::

    {"t": 1764412345.123456, "method": "GET", "path": "/orders?id=3", "user": "u-17",
     "live_status": 200, "live_ms": 1.234}

with ``"body_b64"`` (base64) when the request had a body. A request's line waits until
live has answered it (its status and latency are part of it); the lines of later requests
wait behind it, so the file stays in arrival order. Lines are written whole, in batches,
at least every ``flush_s`` seconds and when the writer stops.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

FORMAT = "shadowrl-recording/1"


class RecordEntry:
    """One sampled request, created when it arrives and finished when live has answered."""

    __slots__ = ("t", "method", "path", "user", "body", "live_status", "live_ms", "done",
                 "created")

    def __init__(self, t: float, method: str, path: str, user: str | None,
                 body: bytes) -> None:
        self.t = t
        self.method = method
        self.path = path
        self.user = user
        self.body = body
        self.live_status: int | None = None
        self.live_ms: float | None = None
        self.done = False
        self.created = time.monotonic()

    def finish(self, status: int | None, ms: float | None) -> None:
        """Live's answer (None, None when live could not be reached)."""
        self.live_status = status
        self.live_ms = None if ms is None else round(ms, 3)
        self.done = True

    def line(self) -> str:
        obj: dict[str, Any] = {"t": round(self.t, 6), "method": self.method, "path": self.path,
                               "user": self.user, "live_status": self.live_status,
                               "live_ms": self.live_ms}
        if self.body:
            obj["body_b64"] = base64.b64encode(self.body).decode("ascii")
        return json.dumps(obj) + "\n"


class RecordWriter:
    """Appends finished entries to ``path`` from :meth:`run`, a task of the mirror's loop.

    :meth:`begin` is all the live path calls: it appends to an in-memory queue (bounded by
    ``max_pending``; beyond it the entry is not recorded and counted in ``dropped``). An
    entry whose live request has not finished after ``max_wait_s`` is written without live's
    answer rather than holding back every later line."""

    def __init__(self, path: Path, percent: float, *, flush_s: float = 0.5,
                 max_pending: int = 100_000, max_wait_s: float = 60.0) -> None:
        self.path = path
        self.percent = percent
        self.flush_s = flush_s
        self.max_pending = max_pending
        self.max_wait_s = max_wait_s
        self.written = 0
        self.dropped = 0
        self._pending: deque[RecordEntry] = deque()
        self._file: IO[str] | None = None
        self._stop = asyncio.Event()

    def open(self) -> None:
        """Create the file and write its header (before the mirror accepts requests)."""
        self._file = self.path.open("w", encoding="utf-8")
        header = {"format": FORMAT, "started": round(time.time(), 6), "percent": self.percent}
        self._file.write(json.dumps(header) + "\n")
        self._file.flush()

    def begin(self, t: float, method: str, path: str, user: str | None,
              body: bytes) -> RecordEntry | None:
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            return None
        entry = RecordEntry(t, method, path, user, body)
        self._pending.append(entry)
        return entry

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _ready(self, final: bool) -> list[str]:
        """The lines that can be written now: the finished entries at the head."""
        now = time.monotonic()
        lines: list[str] = []
        while self._pending:
            head = self._pending[0]
            if not (head.done or final or now - head.created > self.max_wait_s):
                break
            lines.append(self._pending.popleft().line())
        return lines

    async def run(self) -> None:
        """Write batches until :meth:`stop`, then the rest, then close the file."""
        assert self._file is not None, "open() first"
        try:
            while True:
                try:
                    await asyncio.wait_for(self._stop.wait(), self.flush_s)
                except asyncio.TimeoutError:
                    pass
                final = self._stop.is_set()
                lines = self._ready(final)
                if lines:  # a thread: a slow disk must not stall the loop live runs on
                    await asyncio.to_thread(self._append, "".join(lines))
                    self.written += len(lines)
                if final:
                    return
        finally:
            await asyncio.to_thread(self._file.close)

    def stop(self) -> None:
        """Ask :meth:`run` to write what is left (unfinished entries without live's answer)
        and close the file."""
        self._stop.set()

    def _append(self, text: str) -> None:
        assert self._file is not None
        self._file.write(text)
        self._file.flush()

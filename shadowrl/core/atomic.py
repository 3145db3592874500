"""Atomic file writes: a crash never leaves a half-written output behind.

Whole files are written under a temporary name beside the target and renamed over it
(:class:`PendingFile`, :func:`atomic_write_with`); logs that grow while work goes on grow by
whole records only (:class:`RecordLog`).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


def _current_umask() -> int:
    """The process umask, read now (there is no getter: set it and put it back)."""
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


class PendingFile:
    """A file being filled under a hidden temporary name beside ``path``.

    :meth:`commit` renames it over ``path`` in one step (after an fsync, with the
    permissions a plain ``open`` would give); :meth:`discard` removes it. Until then the
    final name keeps its old content, or stays absent. For writers that outlive one call
    (a Parquet writer fed run by run).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.target = Path(path)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.",
                                   suffix=self.target.suffix or ".tmp",
                                   dir=self.target.parent)
        os.close(fd)
        self.tmp = tmp
        self.done = False

    def commit(self) -> Path:
        """fsync, then rename over the target; on failure the temporary file is removed."""
        try:
            with open(self.tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(self.tmp, 0o666 & ~_current_umask())
            os.replace(self.tmp, self.target)
        except BaseException:
            self.discard()
            raise
        self.done = True
        return self.target

    def discard(self) -> None:
        """Remove the temporary file (idempotent; a committed file is left alone)."""
        if self.done:
            return
        self.done = True
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    return atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_json_array(path: str | os.PathLike[str], items: Iterable[Any]) -> Path:
    """Write the items as a JSON array, byte for byte what :func:`atomic_write_json` writes
    for ``list(items)``, holding one item at a time (for arrays too big to build)."""
    def writer(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            first = True
            for item in items:
                text = json.dumps(item, indent=2, sort_keys=False).replace("\n", "\n  ")
                handle.write(("[\n  " if first else ",\n  ") + text)
                first = False
            handle.write("[]\n" if first else "\n]\n")

    return atomic_write_with(path, writer)


def atomic_write_with(path: str | os.PathLike[str], writer: Callable[[str], Any]) -> Path:
    """Let ``writer`` fill a temporary path, then rename it over ``path``.

    For libraries that want a file name (pyarrow, matplotlib, SB3's ``save``).
    """
    pending = PendingFile(path)
    try:
        writer(pending.tmp)
    except BaseException:
        pending.discard()
        raise
    return pending.commit()


class RecordLog:
    """An append-only file that grows by whole records (JSON Lines, say).

    Each :meth:`append` writes its bytes completely or not at all: when a write fails part
    way (a full disk), the file is cut back to where it was, so it never ends in half a
    record. Appends are not fsynced one by one (a killed process loses nothing already
    written; :meth:`close` fsyncs).
    """

    def __init__(self, path: str | os.PathLike[str], *, truncate: bool = True) -> None:
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
        self._fd: int | None = os.open(self.path, flags, 0o666)
        self.size = os.fstat(self._fd).st_size

    def append(self, data: bytes) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path}: closed")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except BaseException:
            os.ftruncate(self._fd, self.size)  # frees what the partial write took
            raise
        self.size += len(data)

    def close(self) -> None:
        """fsync and close (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""Atomic file writes: the target is replaced in one step or not at all."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowrl.core.atomic import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
)


@pytest.fixture
def umask() -> Iterator[int]:
    """The process umask, restored after the test."""
    mask = os.umask(0o022)
    os.umask(mask)
    try:
        yield mask
    finally:
        os.umask(mask)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_bytes_text_and_json(tmp_path: Path) -> None:
    assert atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01") == tmp_path / "a.bin"
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    atomic_write_text(tmp_path / "b.txt", "héllo\n")
    assert (tmp_path / "b.txt").read_bytes() == "héllo\n".encode()
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2.5, None], "é": "ü"})
    assert json.loads((tmp_path / "c.json").read_text(encoding="utf-8")) == {
        "x": [1, 2.5, None], "é": "ü"}
    assert (tmp_path / "c.json").read_text().endswith("\n")
    atomic_write_text(tmp_path / "deep" / "er" / "d.txt", "made the folders")
    assert (tmp_path / "deep" / "er" / "d.txt").read_text() == "made the folders"
    assert listing(tmp_path) == ["a.bin", "b.txt", "c.json", "deep"]


def test_replaces_the_target_in_one_rename(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")
    old_inode = target.stat().st_ino
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        assert target.read_text() == "old"  # untouched until the rename
        assert Path(src).parent == target.parent  # same file system: rename is atomic
        assert Path(src).read_text() == '{\n  "new": true\n}\n'  # complete before the rename
        renames.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write_json(target, {"new": True})
    assert renames and len(renames) == 1 and renames[0][1] == str(target)
    assert json.loads(target.read_text()) == {"new": True}
    assert target.stat().st_ino != old_inode  # a new file renamed over, not rewritten
    assert listing(tmp_path) == ["summary.json"]


def test_writer_sees_a_temp_file_beside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "profiles.parquet"
    target.write_bytes(b"old")
    seen: list[Path] = []

    def writer(tmp: str) -> None:
        p = Path(tmp)
        seen.append(p)
        assert p.parent == tmp_path and p != target
        assert p.name.startswith(".profiles.parquet.")  # hidden, named after the target
        assert target.read_bytes() == b"old"
        p.write_bytes(b"new")

    atomic_write_with(target, writer)
    assert target.read_bytes() == b"new"
    assert not seen[0].exists()


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()],
                         ids=["exception", "ctrl-c"])
def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path: Path,
                                                          error: BaseException) -> None:
    target = tmp_path / "report.html"
    target.write_text("old report")
    before = target.stat()

    def writer(tmp: str) -> None:
        Path(tmp).write_text("half a rep")
        raise error

    with pytest.raises(type(error)):
        atomic_write_with(target, writer)
    assert target.read_text() == "old report"
    assert target.stat().st_ino == before.st_ino
    assert target.stat().st_mtime_ns == before.st_mtime_ns
    assert listing(tmp_path) == ["report.html"]


def test_a_failing_writer_with_no_old_file_leaves_nothing(tmp_path: Path) -> None:
    def writer(tmp: str) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write_with(tmp_path / "new.txt", writer)
    assert listing(tmp_path) == []


def test_unserialisable_json_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "alerts.json"
    target.write_text("[]\n")
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert target.read_text() == "[]\n"
    assert listing(tmp_path) == ["alerts.json"]


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "big.json"
    payloads = [{"n": n, "pad": "x" * 200_000} for n in range(2)]
    atomic_write_json(target, payloads[0])
    stop = threading.Event()
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            text = target.read_text()
            try:
                json.loads(text)
            except json.JSONDecodeError:
                bad.append(f"{len(text)} bytes")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for k in range(40):
            atomic_write_json(target, payloads[k % 2])
    finally:
        stop.set()
        thread.join(timeout=10)
    assert bad == []
    assert listing(tmp_path) == ["big.json"]


def test_permissions_follow_the_umask(tmp_path: Path, umask: int) -> None:
    target = atomic_write_text(tmp_path / "out.txt", "x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what any other tool would create
    assert mode(target) == 0o666 & ~umask == mode(plain)
    if umask & 0o044 == 0:
        assert mode(target) != 0o600  # not mkstemp's private mode
        assert mode(target) & 0o044 == 0o044


def test_permissions_of_a_replaced_file_follow_the_umask(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "summary.json"
    target.write_text("{}")
    os.chmod(target, 0o600)
    atomic_write_json(target, {"a": 1})
    assert mode(target) == 0o666 & ~umask


@pytest.mark.parametrize("new_mask", [0o077, 0o002], ids=["077", "002"])
def test_permissions_follow_a_umask_set_after_import(tmp_path: Path, umask: int,
                                                    new_mask: int) -> None:
    assert new_mask != umask
    os.umask(new_mask)
    target = atomic_write_text(tmp_path / "out.txt", "x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert mode(plain) == 0o666 & ~new_mask
    assert mode(target) == mode(plain)


# --------------------------------------------------------------------------- streaming writers


def test_pending_file_keeps_the_old_content_until_commit(tmp_path: Path) -> None:
    from shadowrl.core.atomic import PendingFile

    target = tmp_path / "profiles.parquet"
    target.write_text("old")
    pending = PendingFile(target)
    Path(pending.tmp).write_text("new")
    assert target.read_text() == "old"  # a reader never sees the half-filled file
    assert pending.commit() == target
    assert target.read_text() == "new" and not Path(pending.tmp).exists()
    pending.discard()  # after a commit: leaves the committed file alone
    assert target.read_text() == "new"


def test_pending_file_discard_removes_only_the_temporary(tmp_path: Path) -> None:
    from shadowrl.core.atomic import PendingFile

    pending = PendingFile(tmp_path / "x.json")
    Path(pending.tmp).write_text("partial")
    pending.discard()
    pending.discard()  # idempotent
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("items", [[], [1], [{"a": [1, {"b": None}]}, "é ✓", 2.5],
                                   [[], {}, [[]]]])
def test_json_array_is_byte_for_byte_what_atomic_write_json_writes(
        tmp_path: Path, items: list[object]) -> None:
    from shadowrl.core.atomic import atomic_write_json_array

    atomic_write_json(tmp_path / "whole.json", items)
    atomic_write_json_array(tmp_path / "streamed.json", iter(items))
    assert (tmp_path / "streamed.json").read_bytes() == (tmp_path / "whole.json").read_bytes()
    assert json.loads((tmp_path / "streamed.json").read_text()) == items


def test_record_log_cuts_a_failed_append_back_to_whole_records(tmp_path: Path) -> None:
    """A write that fails part way (here: past RLIMIT_FSIZE, as a full disk would) leaves
    the file ending at the last whole record."""
    import resource
    import signal

    from shadowrl.core.atomic import RecordLog

    path = tmp_path / "alerts.jsonl"
    log = RecordLog(path)
    log.append(b'{"run": 0}\n')
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))
    try:
        with pytest.raises(OSError):
            log.append(b'{"run": 1, "pad": "' + b"x" * 200 + b'"}\n')
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    log.append(b'{"run": 2}\n')
    log.close()
    log.close()  # idempotent
    assert path.read_bytes() == b'{"run": 0}\n{"run": 2}\n'
    with pytest.raises(ValueError, match="closed"):
        log.append(b"{}\n")

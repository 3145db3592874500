"""Use case ``mirror``: run the traffic mirror in front of live until SIGINT or SIGTERM, then
report its coverage (docs/mirror.md).

The request is checked before anything starts; each problem is a ``UsageError`` naming the
flag (a URL without a scheme, a percent out of range, a bad sample key, a recording file
that exists or cannot be written, a listen address in use), so the command exits 2.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from shadowrl.analysis.summary import ResultModel
from shadowrl.app.errors import UsageError

SAMPLE_KINDS = ("header", "cookie")


class MirrorRequest(BaseModel):
    live: str
    shadow: str
    percent: float
    listen: str = "127.0.0.1:8080"
    sample_key: str | None = None  # header:NAME | cookie:NAME
    mirror_writes: bool = False
    record: Path | None = None
    queue: int = 1000
    senders: int = 8
    shadow_timeout: float = 1.0  # seconds
    seed: int | None = None


class MirrorResult(ResultModel):
    """The coverage when the mirror stopped: ``seen = not_sampled + writes_skipped + dropped
    + unsent + mirrored + failed`` (``unsent``: copies still queued or in flight at the
    stop)."""

    listen: str
    url: str  # where it listened (the port chosen for port 0)
    live: str
    shadow: str
    percent: float
    sample_key: str | None
    mirror_writes: bool
    duration_s: float
    seen: int
    not_sampled: int
    writes_skipped: int
    sampled: int
    dropped: int
    unsent: int
    mirrored: int
    failed: int
    mirrored_share: float | None
    live_errors: int
    too_large: int
    shadow_status: dict[str, int]
    record: str | None
    recorded: int
    record_dropped: int


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6; port 0 picks a free one)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen: HOST:PORT, e.g. 127.0.0.1:8080 or 0.0.0.0:8080, got "
                         f"{text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UsageError(f"--listen: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise UsageError(f"--listen: put an IPv6 address in brackets, e.g. [::1]:8080, got "
                         f"{text!r}")
    return host, int(port)


def check_url(flag: str, text: str) -> str:
    """An http(s) base URL without query or fragment, returned without a trailing slash (a
    request's path is appended to it)."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{flag}: an http:// or https:// URL, e.g. http://127.0.0.1:8000, "
                         f"got {text!r}")
    if parts.query or parts.fragment:
        raise UsageError(f"{flag}: a base URL without query or fragment, got {text!r}")
    try:
        parts.port  # noqa: B018 - raises on a port out of range or not a number
    except ValueError:
        raise UsageError(f"{flag}: bad port in {text!r}") from None
    return text.rstrip("/")


def parse_sample_key(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    kind, sep, name = text.partition(":")
    if not sep or kind not in SAMPLE_KINDS or not name.strip() or any(c in name for c in
                                                                          " ;,=\t"):
        raise UsageError(f"--sample-key: header:NAME or cookie:NAME (e.g. header:X-User), "
                         f"got {text!r}")
    return kind, name.strip()


def check_record(path: Path | None) -> None:
    """A new (or empty) file whose folder exists and can be written: a recording is never
    overwritten, and a bad path fails now rather than after hours of serving."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"--record {path}: is a folder; give a file name")
    if path.exists() and path.stat().st_size > 0:
        raise UsageError(f"--record {path}: exists; choose another file (a recording is "
                         f"never overwritten)")
    try:
        with path.open("a"):
            pass
    except OSError as exc:
        raise UsageError(f"--record {path}: cannot be written ({exc.strerror or exc})") from None


def check(request: MirrorRequest) -> dict[str, Any]:
    """The mirror's settings (``MirrorConfig``'s fields), or the first problem as a
    UsageError."""
    host, port = parse_listen(request.listen)
    live = check_url("--live", request.live)
    shadow = check_url("--shadow", request.shadow)
    if live == shadow:
        raise UsageError("--shadow: is --live; mirroring to live would send it its traffic "
                         "twice")
    if not 0 <= request.percent <= 100:
        raise UsageError(f"--percent: between 0 and 100, got {request.percent:g}")
    key = parse_sample_key(request.sample_key)
    for flag, value, low in (("--queue", request.queue, 1), ("--senders", request.senders, 1)):
        if value < low:
            raise UsageError(f"{flag}: at least {low}, got {value}")
    if not request.shadow_timeout > 0:
        raise UsageError(f"--shadow-timeout: seconds > 0, got {request.shadow_timeout:g}")
    if request.record is not None and request.percent == 0:
        raise UsageError("--record: --percent 0 samples nothing to record")
    check_record(request.record)
    return {"live": live, "shadow": shadow, "percent": request.percent, "host": host,
            "port": port, "sample_key": key, "mirror_writes": request.mirror_writes,
            "record": request.record, "queue": request.queue, "senders": request.senders,
            "shadow_timeout_s": request.shadow_timeout, "seed": request.seed}


def mirror(request: MirrorRequest, *,
           on_ready: Callable[[str], None] | None = None) -> MirrorResult:
    """Serve until SIGINT or SIGTERM; ``on_ready(url)`` once the mirror accepts requests.
    Raises UsageError for bad input (also a listen address that cannot be bound),
    MissingExtraError without the ``live`` extra."""
    settings = check(request)
    from shadowrl.live.mirror import ListenError, MirrorConfig, SampleKey, run

    key = settings.pop("sample_key")
    config = MirrorConfig(**settings, sample_key=SampleKey(*key) if key else None)
    started = time.monotonic()
    try:
        stats = run(config, on_ready=on_ready)
    except ListenError as exc:
        raise UsageError(f"--listen {request.listen}: {exc.strerror}") from None
    return MirrorResult(
        listen=request.listen, url=stats["url"], live=config.live, shadow=config.shadow,
        percent=config.percent, sample_key=request.sample_key,
        mirror_writes=config.mirror_writes, duration_s=round(time.monotonic() - started, 3),
        seen=stats["seen"], not_sampled=stats["not_sampled"],
        writes_skipped=stats["writes_skipped"], sampled=stats["sampled"],
        dropped=stats["dropped"], unsent=stats["queued"] + stats["in_flight"],
        mirrored=stats["mirrored"], failed=stats["failed"],
        mirrored_share=stats["mirrored_share"], live_errors=stats["live_errors"],
        too_large=stats["too_large"], shadow_status=stats["shadow_status"],
        record=str(config.record) if config.record else None, recorded=stats["recorded"],
        record_dropped=stats["record_dropped"])

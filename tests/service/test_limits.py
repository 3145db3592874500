"""The request limits: the trigger token bucket, and the body size middleware driven
directly as an ASGI app (a declared size over the limit, a chunked body that grows over it,
and bodies under it that reach the app whole)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest

from shadowrl.service import limits
from shadowrl.service.limits import BodyLimit, RateLimit


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The rate limit's clock, moved by hand."""
    now = [1000.0]
    monkeypatch.setattr(limits, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def test_rate_limit_allows_a_burst_then_refuses_with_the_wait(clock: list[float]) -> None:
    bucket = RateLimit(per_minute=6, burst=3)  # one more every 10 s
    assert [bucket.take("ops") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = bucket.take("ops")
    assert wait == pytest.approx(10.0)
    assert bucket.take("ops") == pytest.approx(10.0)  # a refusal costs nothing
    # another token has its own bucket
    assert bucket.take("ci") == 0.0
    clock[0] += 4.0
    assert bucket.take("ops") == pytest.approx(6.0)
    clock[0] += 6.0
    assert bucket.take("ops") == 0.0
    assert bucket.take("ops") > 0
    # a long pause refills only up to the burst
    clock[0] += 3600.0
    assert [bucket.take("ops") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("ops") == pytest.approx(10.0)


def test_rate_limit_on_the_real_clock() -> None:
    bucket = RateLimit(per_minute=60, burst=2)
    assert bucket.take("ops") == 0.0 and bucket.take("ops") == 0.0
    wait = bucket.take("ops")
    assert 0.0 < wait <= 1.0


# --------------------------------------------------------------------------- BodyLimit


async def echo_length(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, answers its length (and, for lifespan, completes it)."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = json.dumps({"read": size}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def drive(app: Any, chunks: list[bytes], headers: list[tuple[bytes, bytes]],
          scope_type: str = "http") -> tuple[int, Any, int]:
    """(status, JSON body, how many chunks the app was handed)."""
    scope = {"type": scope_type, "method": "POST", "path": "/api/v1/x", "headers": headers}
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
               for i, c in enumerate(chunks)] or [{"type": "http.request", "body": b""}]
    handed = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal handed
        if scope_type == "lifespan":
            return {"type": "lifespan.startup"}
        handed += 1
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    if scope_type == "lifespan":
        return 0, sent, handed
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    hdrs = dict(start["headers"])
    assert hdrs[b"content-type"] == b"application/json"
    if b"content-length" in hdrs:
        assert int(hdrs[b"content-length"]) == len(body)
    return start["status"], json.loads(body), handed


LIMIT = 1024


def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    app = BodyLimit(echo_length, max_bytes=LIMIT)
    status, body, handed = drive(app, [b"x" * 2000], [(b"content-length", b"2000")])
    assert (status, handed) == (413, 0)
    assert body == {"detail": "request body over 1024 bytes"}
    # an unparseable length is refused too
    status, _, handed = drive(app, [b"x"], [(b"content-length", b"12abc")])
    assert (status, handed) == (413, 0)


def test_a_chunked_body_growing_over_the_limit_is_refused() -> None:
    app = BodyLimit(echo_length, max_bytes=LIMIT)
    chunks = [b"x" * 400] * 10
    status, body, handed = drive(app, chunks, [(b"transfer-encoding", b"chunked")])
    assert status == 413 and "over 1024 bytes" in body["detail"]
    assert handed == 3  # stopped at the chunk that crossed the limit, not at the end
    # a length that lies (says small, sends more) is caught while it streams
    status, _, handed = drive(app, chunks, [(b"content-length", b"10")])
    assert (status, handed) == (413, 3)


@pytest.mark.parametrize("chunks", [[b""], [b"x" * LIMIT], [b"x" * 400, b"y" * 400],
                                    [b"z" * 512, b"", b"z" * 512]])
def test_bodies_within_the_limit_pass_whole(chunks: list[bytes]) -> None:
    app = BodyLimit(echo_length, max_bytes=LIMIT)
    size = sum(map(len, chunks))
    for headers in ([(b"content-length", str(size).encode())],
                    [(b"transfer-encoding", b"chunked")]):
        status, body, handed = drive(app, list(chunks), headers)
        assert (status, body, handed) == (200, {"read": size}, len(chunks))


def test_other_scopes_pass_through() -> None:
    app = BodyLimit(echo_length, max_bytes=LIMIT)
    _, sent, _ = drive(app, [], [], scope_type="lifespan")
    assert sent == [{"type": "lifespan.startup.complete"}]

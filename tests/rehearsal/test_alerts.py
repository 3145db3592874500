"""Alert sinks against a real local HTTP server (no mocks)."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from shadowrl.rehearsal.alerts import (
    Alert,
    ConsoleSink,
    FileSink,
    WebhookError,
    WebhookSink,
    alertmanager_payload,
    dispatch,
    sinks_from_options,
)
from tests.trickler import Trickler

FAST = {"backoff_s": 0.01, "timeout_s": 2.0}


def make_alerts() -> list[Alert]:
    return [
        Alert(kind="rollback_failed", severity="critical", step="migrate-db-down",
              message="migrate_down failed: schema 42 is not reversible", scenario="checkout",
              incident="bad-release", run=3, seed=7, at_s=412.0),
        Alert(kind="too_slow", severity="warning", step=None,
              message="downtime 380s exceeds budget 300s [budget.downtime]",
              scenario="checkout", incident="bad-release", value=380.0),
    ]


class Recorder:
    """What the server saw, and what it should answer next."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []  # answers in order; 200 once exhausted
        self.sleep_s = 0.0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    @property
    def attempts(self) -> int:
        return len(self.requests)


class Server:
    def __init__(self, httpd: ThreadingHTTPServer, recorder: Recorder) -> None:
        self.httpd = httpd
        self.rec = recorder
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}/hook/secret-token"


def _handler(rec: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with rec.lock:
                rec.requests.append({"headers": dict(self.headers), "body": body,
                                     "path": self.path})
                status = rec.statuses.pop(0) if rec.statuses else 200
            if rec.sleep_s:
                rec.stop.wait(rec.sleep_s)  # bounded, and cut short at teardown
            try:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the client gave up (timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    rec = Recorder()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield Server(httpd, rec)
    finally:
        rec.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=2)


def test_alert_json_contract() -> None:
    alert = make_alerts()[0]
    assert alert.to_json() == {"kind": "rollback_failed", "severity": "critical",
                               "step": "migrate-db-down",
                               "message": "migrate_down failed: schema 42 is not reversible"}
    record = alert.to_record()
    assert record["seed"] == 7 and record["at_s"] == 412.0 and record["value"] is None
    assert Alert.from_record(record) == alert
    with pytest.raises(ValueError):
        Alert(kind="oops", severity="critical", step=None, message="", scenario="s")


def test_webhook_payload(server: Server) -> None:
    alerts = make_alerts()
    WebhookSink(server.url, receiver="team-a", external_url="http://shadowrl.local",
                **FAST).send(alerts)
    assert server.rec.attempts == 1
    req = server.rec.requests[0]
    assert req["path"] == "/hook/secret-token"
    assert req["headers"]["Content-Type"] == "application/json"
    payload = json.loads(req["body"])
    assert payload["version"] == "4"
    assert payload["status"] == "firing"
    assert payload["receiver"] == "team-a"
    assert payload["truncatedAlerts"] == 0
    assert payload["externalURL"] == "http://shadowrl.local"
    assert payload["groupLabels"] == {"scenario": "checkout"}
    assert payload["groupKey"] == '{}:{scenario="checkout"}'
    assert payload["commonLabels"] == {"scenario": "checkout", "incident": "bad-release"}
    assert [a["labels"]["alertname"] for a in payload["alerts"]] == [
        "ShadowRollbackFailed", "ShadowRollbackTooSlow"]
    first, second = payload["alerts"]
    assert first["status"] == "firing"
    assert first["labels"] == {"alertname": "ShadowRollbackFailed",
                               "severity": "critical", "scenario": "checkout",
                               "step": "migrate-db-down", "incident": "bad-release",
                               "kind": "rollback_failed"}
    assert "step" not in second["labels"]  # None values are skipped
    assert second["labels"]["severity"] == "warning"
    assert first["annotations"]["description"] == alerts[0].message
    assert "migrate-db-down" in first["annotations"]["summary"]
    assert first["annotations"]["seed"] == "7"
    assert all(isinstance(v, str) for a in payload["alerts"] for v in a["annotations"].values())
    starts = datetime.fromisoformat(first["startsAt"].replace("Z", "+00:00"))
    assert starts.tzinfo is not None and starts.utcoffset().total_seconds() == 0
    assert abs((datetime.now(timezone.utc) - starts).total_seconds()) < 60
    assert first["endsAt"] == "0001-01-01T00:00:00Z"
    assert len(first["fingerprint"]) == 16 and int(first["fingerprint"], 16) >= 0
    assert first["fingerprint"] != second["fingerprint"]
    # stable across calls: receivers dedup on it
    again = alertmanager_payload(alerts)["alerts"][0]["fingerprint"]
    assert again == first["fingerprint"]


def test_webhook_retries_503_then_delivers(server: Server) -> None:
    server.rec.statuses = [503, 503, 200]
    WebhookSink(server.url, retries=3, **FAST).send(make_alerts())
    assert server.rec.attempts == 3
    bodies = {r["body"] for r in server.rec.requests}
    assert len(bodies) == 1  # the same payload each time


def test_webhook_429_is_retried_and_gives_up(server: Server) -> None:
    server.rec.statuses = [429, 429, 429]
    with pytest.raises(WebhookError) as info:
        WebhookSink(server.url, retries=2, **FAST).send(make_alerts())
    assert server.rec.attempts == 3
    assert info.value.attempts == 3 and info.value.status == 429


def test_webhook_400_not_retried(server: Server) -> None:
    server.rec.statuses = [400, 200]
    with pytest.raises(WebhookError) as info:
        WebhookSink(server.url, retries=3, **FAST).send(make_alerts())
    assert server.rec.attempts == 1
    assert info.value.status == 400
    assert "secret-token" not in str(info.value)  # URL paths may hold tokens


def test_webhook_timeout_raises_quickly(server: Server) -> None:
    server.rec.sleep_s = 3.0
    start = time.monotonic()
    with pytest.raises(WebhookError) as info:
        WebhookSink(server.url, timeout_s=0.2, retries=1, backoff_s=0.01).send(make_alerts())
    elapsed = time.monotonic() - start
    assert elapsed < 1.5
    assert info.value.attempts == 2 and server.rec.attempts == 2


@pytest.fixture
def trickler(monkeypatch: pytest.MonkeyPatch) -> Iterator[Trickler]:
    for var in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    t = Trickler()
    try:
        yield t
    finally:
        t.close()


def test_webhook_trickling_its_answer_hits_the_total_timeout(trickler: Trickler) -> None:
    start = time.monotonic()
    with pytest.raises(WebhookError, match=r"no answer within 1 s \(total\) after 2 "
                                           r"attempt\(s\)") as info:
        # a byte a second never trips a per-read timeout of 1 s: only a total one ends it
        WebhookSink(trickler.url + "/head", timeout_s=1.0, retries=1,
                    backoff_s=0.01).send(make_alerts())
    elapsed = time.monotonic() - start
    assert 2.0 <= elapsed < 3.5, elapsed
    assert info.value.attempts == 2 and trickler.posts == 2


def test_webhook_deadline_bounds_every_retry_together(trickler: Trickler) -> None:
    start = time.monotonic()
    with pytest.raises(WebhookError, match=r"\(2.5 s in all\)"):
        WebhookSink(trickler.url + "/head", timeout_s=1.0, retries=10, backoff_s=0.01,
                    deadline_s=2.5).send(make_alerts())
    assert time.monotonic() - start < 3.5
    assert 2 <= trickler.posts <= 3


def test_webhook_2xx_delivers_without_waiting_for_the_body(trickler: Trickler) -> None:
    start = time.monotonic()
    WebhookSink(trickler.url + "/body", timeout_s=5.0).send(make_alerts())
    assert time.monotonic() - start < 1.0
    assert trickler.posts == 1


def test_dead_port_falls_back_to_file(dead_url: str, tmp_path: Path) -> None:
    alerts = make_alerts()
    with pytest.raises(WebhookError):
        WebhookSink(dead_url, retries=1, **FAST).send(alerts)

    fallback = tmp_path / "out" / "alerts.json"
    errors = dispatch(alerts, [WebhookSink(dead_url, retries=1, **FAST)], fallback)
    assert len(errors) == 1 and errors[0].startswith("webhook:http://127.0.0.1:")
    records = json.loads(fallback.read_text())
    assert [Alert.from_record(r) for r in records] == alerts


def test_dispatch_keeps_going_and_does_not_duplicate_fallback(
    dead_url: str, server: Server, tmp_path: Path
) -> None:
    alerts = make_alerts()
    path = tmp_path / "alerts.json"
    sinks = [FileSink(path), WebhookSink(dead_url, retries=0, **FAST),
             WebhookSink(server.url, **FAST)]
    errors = dispatch(alerts, sinks, fallback_file=path)
    assert len(errors) == 1
    assert server.rec.attempts == 1  # the healthy sink after the broken one still ran
    assert len(json.loads(path.read_text())) == len(alerts)  # not written twice


def test_file_sink_appends(tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    sink = FileSink(path)
    first, second = make_alerts()
    sink.send([first])
    sink.send([second])
    records = json.loads(path.read_text())
    assert isinstance(records, list)
    assert [r["kind"] for r in records] == ["rollback_failed", "too_slow"]
    assert records[0] == first.to_record()


def test_file_sink_refuses_to_clobber(tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    path.write_text('{"not": "a list"}')
    errors = dispatch(make_alerts(), [FileSink(path)], fallback_file=tmp_path / "fb.json")
    assert len(errors) == 1
    assert json.loads(path.read_text()) == {"not": "a list"}
    assert len(json.loads((tmp_path / "fb.json").read_text())) == 2


def test_empty_alerts_send_nothing(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    buffer = io.StringIO()
    sinks = [ConsoleSink(Console(file=buffer)), FileSink(path), WebhookSink(server.url)]
    assert dispatch([], sinks, fallback_file=tmp_path / "fb.json") == []
    for sink in sinks:
        sink.send([])
    assert server.rec.attempts == 0
    assert not path.exists() and not (tmp_path / "fb.json").exists()
    assert buffer.getvalue() == ""


def test_console_sink_prints_without_markup(tmp_path: Path) -> None:
    buffer = io.StringIO()
    ConsoleSink(Console(file=buffer, width=200)).send(make_alerts())
    out = buffer.getvalue()
    assert "migrate-db-down" in out and "[budget.downtime]" in out and "critical" in out


def test_sinks_from_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SHADOWRL_ALERT_WEBHOOK", raising=False)
    assert sinks_from_options(None, None, console=False) == []
    monkeypatch.setenv("SHADOWRL_ALERT_WEBHOOK", "http://example.invalid/hook")
    sinks = sinks_from_options(None, tmp_path / "a.json", console=True)
    assert [type(s) for s in sinks] == [ConsoleSink, FileSink, WebhookSink]
    explicit = sinks_from_options("https://other.invalid/x", None, console=False)
    assert isinstance(explicit[0], WebhookSink)
    assert explicit[0].url == "https://other.invalid/x"
    with pytest.raises(ValueError):
        WebhookSink("file:///etc/passwd")

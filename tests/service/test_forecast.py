"""The load history: fetched from a real (local) HTTP server answering Prometheus'
``query_range`` API, written atomically, failures named; and the peak forecast from it."""

from __future__ import annotations

import csv
import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shadowrl.service.forecast import (
    MAX_POINTS,
    HistoryFetchError,
    fetch_prometheus,
    forecast_peak,
)

HISTORY = Path(__file__).resolve().parents[2] / "envs" / "history" / "checkout_rps.csv"
NOW = 1_710_720_000.0  # 2024-03-18T00:00:00Z, the end of the history file


def read_csv() -> tuple[np.ndarray, np.ndarray]:
    with HISTORY.open() as handle:
        rows = list(csv.DictReader(handle))
    t = np.array([datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00")).timestamp()
                  for r in rows])
    return t, np.array([float(r["value"]) for r in rows])


def query_range_answer() -> dict[str, Any]:
    t, v = read_csv()
    return {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"job": "checkout"},
         "values": [[float(a), f"{b:g}"] for a, b in zip(t, v)]}]}}


class Prometheus(BaseHTTPRequestHandler):
    """``/ok``: the history; ``/error``: a query error; ``/fail``: HTTP 500;
    ``/html``: not JSON. Every request's query string is kept in ``server.seen``."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urllib.parse.urlsplit(self.path)
        self.server.seen.append((url.path, urllib.parse.parse_qs(url.query)))  # type: ignore
        prefix = url.path.removesuffix("/api/v1/query_range")
        if prefix == "/ok":
            self.answer(200, json.dumps(query_range_answer()).encode())
        elif prefix == "/error":
            self.answer(400, b'{"status":"error","errorType":"bad_data",'
                             b'"error":"parse error at char 4"}')
        elif prefix == "/error200":
            self.answer(200, b'{"status":"error","error":"query timed out"}')
        elif prefix == "/fail":
            self.answer(500, b"internal error", "text/plain")
        elif prefix == "/html":
            self.answer(200, b"<html>a login page</html>", "text/html")
        else:
            self.answer(404, b"not found", "text/plain")

    def answer(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def prometheus() -> Iterator[tuple[str, list[Any]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Prometheus)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.seen  # type: ignore
    server.shutdown()
    server.server_close()


def test_fetch_writes_the_answer_and_asks_for_the_range(prometheus: tuple[str, list[Any]],
                                                        tmp_path: Path) -> None:
    base, seen = prometheus
    dest = tmp_path / "history.json"
    query = 'sum(rate(http_requests_total{job="checkout"}[5m]))'
    assert fetch_prometheus(base + "/ok/", query, 14 * 86400, 300, dest, now=NOW) == dest
    assert json.loads(dest.read_text()) == query_range_answer()
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]  # no temporary left
    path, params = seen[-1]
    assert path == "/ok/api/v1/query_range"  # the trailing slash of the base is dropped
    assert params["query"] == [query]
    assert float(params["end"][0]) == NOW and float(params["start"][0]) == NOW - 14 * 86400
    assert float(params["step"][0]) == 300
    # the fetched file is a history the forecast reads like the CSV
    assert forecast_peak(dest) == forecast_peak(HISTORY)


def test_fetch_grows_the_step_to_stay_under_prometheus_limit(
        prometheus: tuple[str, list[Any]], tmp_path: Path) -> None:
    base, seen = prometheus
    fetch_prometheus(base + "/ok", "up", 90 * 86400, 15, tmp_path / "h.json", now=NOW)
    step = float(seen[-1][1]["step"][0])
    # Prometheus refuses when (end - start) / step, in whole steps, is over its limit
    assert step > 15 and 90 * 86400 // step <= MAX_POINTS
    assert 90 * 86400 / step > MAX_POINTS - 1  # grown no more than needed


@pytest.mark.parametrize(("prefix", "message"), [
    ("/error", "HTTP 400 for query_range"),
    ("/error200", "query_range failed: query timed out"),
    ("/fail", "HTTP 500 for query_range"),
    ("/html", "query_range did not answer JSON"),
    ("/nowhere", "HTTP 404 for query_range"),
])
def test_fetch_failures_are_named_and_keep_the_old_file(
        prometheus: tuple[str, list[Any]], tmp_path: Path, prefix: str, message: str) -> None:
    base, _seen = prometheus
    dest = tmp_path / "history.json"
    dest.write_text("the previous history")
    with pytest.raises(HistoryFetchError) as info:
        fetch_prometheus(base + prefix, "up", 86400, 300, dest, now=NOW)
    assert str(info.value) == f"{base + prefix}: {message}"
    assert dest.read_text() == "the previous history"
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


def test_fetch_from_a_port_nobody_listens_on(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with pytest.raises(HistoryFetchError, match=rf"^{base}: cannot fetch the history: .*refused"):
        fetch_prometheus(base, "up", 86400, 300, tmp_path / "h.json", timeout_s=5)
    assert not (tmp_path / "h.json").exists()


def test_forecast_peak_is_after_the_history_at_its_daily_peak() -> None:
    t, v = read_csv()
    peak = forecast_peak(HISTORY)
    assert set(peak) == {"peak_at", "load"}
    assert t[-1] < peak["peak_at"] <= t[-1] + 86400
    # the history's busiest time of day (its mean daily profile) and how busy it is
    slot = ((t % 86400) // 300).astype(int)
    profile = np.array([v[slot == k].mean() for k in range(288)])
    busiest_s = float(np.argmax(profile)) * 300
    assert abs(peak["peak_at"] % 86400 - busiest_s) <= 3600
    assert peak["load"] > 1.0
    assert peak["load"] == pytest.approx(profile.max() / v.mean(), rel=0.1)

"""The service's loop on a real service: a live change (a compose file) synced into the
scenario queues a rehearsal and a re-optimization; an optimization that beats the
configured procedure is published and rehearsed; ``at: peak`` rehearses at the forecast
peak of a history fetched from a Prometheus-compatible HTTP server."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from shadowrl.core.spec import load_scenario
from tests.service.conftest import ROOT, WRITE_TOKEN, Service

COMPOSE = ROOT / "tests" / "live" / "sync" / "data" / "compose.yaml"
HEAD = """apiVersion: shadowrl/v1
kind: Service
data: data
auth:
  tokens:
    - {name: reader, scope: read, env: SHADOWRL_TEST_READ}
    - {name: ops, scope: write, env: SHADOWRL_TEST_WRITE}
deployments:
"""


def wait_for(what: str, check: Any, svc: Service, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout_s} s\n" + "".join(svc.log[-40:]))


def test_a_live_change_is_synced_rehearsed_and_reoptimized(tmp_path: Path) -> None:
    from shadowrl.app.sync import SyncRequest, sync

    compose = tmp_path / "compose.yaml"
    shutil.copy(COMPOSE, compose)
    scenario = tmp_path / "shop.yaml"
    assert sync(SyncRequest(source=f"compose:{compose}", scenario=scenario)).written
    config = tmp_path / "service.yaml"
    config.write_text(HEAD + """  - name: shop
    scenario: shop.yaml
    sync: {source: "compose:compose.yaml", every: 1s}
    rehearse: {every: null, runs: 2}
    optimize: {on_change: true, method: search, episodes: 3, trials: 5}
""")
    svc = Service(config).start()
    try:
        startup = svc.wait_job(svc.get("/api/v1/jobs")[0]["id"])
        assert startup["reason"] == "start-up" and startup["status"] == "succeeded"
        dep = wait_for("a first sync", lambda: (d := svc.get("/api/v1/deployments/shop"))
                       ["synced_at"] and d, svc)
        assert dep["drift"] == 0
        # the live side releases web v43
        compose.write_text(compose.read_text().replace("${WEB_TAG:-v42}", "v43"))
        jobs = wait_for("jobs for the change", lambda: [
            j for j in svc.get("/api/v1/jobs") if j["reason"] == "scenario changed"], svc)
        assert sorted(j["kind"] for j in jobs) == ["optimize", "rehearse"]
        web = load_scenario(scenario).deployment.services[0]
        assert (web.version.live, web.version.previous) == ("v43", "v42")
        described = svc.get("/api/v1/deployments/shop")
        assert {(c["component"], c["field"]) for c in described["drift_changes"]} >= {
            ("web", "version")}
        assert "# " in scenario.read_text()  # the hand-written comments are kept
        for job in jobs:
            assert svc.wait_job(job["id"], timeout_s=240)["status"] == "succeeded"
        verdict = svc.get("/api/v1/deployments/shop/verdict")
        assert verdict["job"] in {j["id"] for j in svc.get("/api/v1/jobs")
                                  if j["kind"] == "rehearse" and j["id"] != startup["id"]}
    finally:
        svc.stop()


def test_an_optimization_that_wins_is_published_then_rehearsed(tmp_path: Path) -> None:
    config = tmp_path / "service.yaml"
    config.write_text(HEAD + f"""  - name: checkout
    scenario: {ROOT / 'envs' / 'checkout.yaml'}
    rehearse: {{every: null, runs: 2}}
    optimize: {{on_change: false, episodes: 5, trials: 10}}
""")
    svc = Service(config).start()
    try:
        svc.wait_job(svc.get("/api/v1/jobs")[0]["id"])
        before = svc.get("/api/v1/deployments/checkout/procedure?format=yaml")
        status, job, _ = svc.request("POST", "/api/v1/deployments/checkout/optimizations",
                                     token=WRITE_TOKEN, body={"method": "search"})
        assert status == 202
        done = svc.wait_job(job["id"], timeout_s=240)
        assert done["status"] == "succeeded", done
        result = done["result"]
        costs = {k: v["cost"]["mean"] for k, v in result["methods"].items()}
        assert result["published"] == (costs["best_static"] < costs["configured"])
        assert result["published"], result["publish_reason"]  # checkout's search wins
        dep = svc.get("/api/v1/deployments/checkout")
        assert dep["procedure"]["source"] == "optimized" and dep["procedure"]["job"] == job["id"]
        after = svc.get("/api/v1/deployments/checkout/procedure?format=yaml")
        assert after != before
        assert yaml.safe_load(after)["procedure"]["name"].endswith("-optimized")
        # the published procedure is rehearsed next, and the verdict is about it
        follow = wait_for("the rehearsal of the published procedure", lambda: [
            j for j in svc.get("/api/v1/jobs") if j["reason"] == "procedure published"], svc)
        rehearsed = svc.wait_job(follow[0]["id"])
        assert rehearsed["result"]["procedure_source"] == "optimized"
        assert svc.get("/api/v1/deployments/checkout/verdict")["job"] == rehearsed["id"]
    finally:
        svc.stop()


class PrometheusStandIn(BaseHTTPRequestHandler):
    """Answers query_range with envs/history/checkout_rps.csv's samples (a real HTTP
    server speaking Prometheus' API format; the queries it saw are kept)."""

    queries: list[dict[str, list[str]]] = []

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        from urllib.parse import parse_qs, urlparse

        url = urlparse(self.path)
        if url.path != "/api/v1/query_range":
            self.send_error(404)
            return
        PrometheusStandIn.queries.append(parse_qs(url.query))
        rows = (ROOT / "envs" / "history" / "checkout_rps.csv").read_text().splitlines()[1:]
        values = [[_epoch(r.split(",")[0]), r.split(",")[1]] for r in rows if r]
        body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {"job": "checkout"}, "values": values}]}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def _epoch(text: str) -> float:
    from shadowrl.traffic.history import parse_timestamp

    return parse_timestamp(text)


@pytest.fixture
def prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), PrometheusStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    PrometheusStandIn.queries = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_peak_rehearsals_use_the_forecast_of_a_fetched_history(tmp_path: Path,
                                                               prometheus: str) -> None:
    from shadowrl.service.forecast import forecast_peak

    config = tmp_path / "service.yaml"
    config.write_text(HEAD + f"""  - name: checkout
    scenario: {ROOT / 'envs' / 'checkout.yaml'}
    history: {{prometheus: "{prometheus}", query: 'sum(rate(http_requests_total[5m]))',
               range: 14d, step: 5m}}
    rehearse: {{every: null, runs: 2, at: peak}}
    optimize: {{on_change: false}}
""")
    svc = Service(config).start()
    try:
        job = svc.wait_job(svc.get("/api/v1/jobs")[0]["id"])
        assert job["status"] == "succeeded", job
        assert PrometheusStandIn.queries[0]["query"] == ["sum(rate(http_requests_total[5m]))"]
        assert float(PrometheusStandIn.queries[0]["step"][0]) == 300
        verdict = svc.get("/api/v1/deployments/checkout/verdict")
        assert verdict["at"] == "peak"
        expected = forecast_peak(ROOT / "envs" / "history" / "checkout_rps.csv", "csv")
        assert verdict["forecast"]["load"] == pytest.approx(expected["load"], rel=0.02)
        assert verdict["forecast"]["load"] > 1.0  # a peak is busier than the mean
        assert job["result"]["history"].endswith("-history.json")
    finally:
        svc.stop()


class Receiver(BaseHTTPRequestHandler):
    """An Alertmanager-style webhook receiver: keeps every JSON body posted to it."""

    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        length = int(self.headers.get("Content-Length", 0))
        Receiver.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


def test_rehearsal_alerts_reach_the_configured_webhook(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.bodies = []
    config = tmp_path / "service.yaml"
    config.write_text(HEAD + f"""  - name: checkout
    scenario: {ROOT / 'envs' / 'checkout.yaml'}
    alert_webhook: http://127.0.0.1:{server.server_address[1]}/alerts
    rehearse: {{every: null, runs: 2}}
    optimize: {{on_change: false}}
""")
    svc = Service(config).start()
    try:
        job = svc.wait_job(svc.get("/api/v1/jobs")[0]["id"])
        assert job["status"] == "succeeded" and not job["result"].get("alert_errors")
        raised = sum(group["count"] for group in job["result"]["alerts"])
        assert raised > 0  # checkout's configured procedure raises alerts
        posted = [a for body in Receiver.bodies for a in body["alerts"]]
        assert len(posted) == raised
        assert {a["labels"]["scenario"] for a in posted} == {"checkout"}
    finally:
        svc.stop()
        server.shutdown()

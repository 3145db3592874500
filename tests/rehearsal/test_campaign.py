"""Campaigns of rehearsals: seeds, Ctrl-C safety, output folder, alert delivery, and the
``shadowrl rehearse`` command around them (webhook tests use a real local HTTP server)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner, Result

import shadowrl.rehearsal.alerts as alerts_mod
import shadowrl.rehearsal.campaign as campaign_mod
from shadowrl.analysis.profile import attribution, profile_table
from shadowrl.analysis.report import render_report
from shadowrl.analysis.summary import summarize
from shadowrl.app.models import CampaignSummary
from shadowrl.cli.main import app
from shadowrl.core.spec import Scenario
from shadowrl.rehearsal.alerts import Alert, WebhookSink
from shadowrl.rehearsal.campaign import (
    Campaign,
    CtrlC,
    OutputError,
    OutputFolder,
    all_alerts,
    run_campaign,
    send_alerts,
    write_outputs,
)
from shadowrl.rehearsal.deviation import load_history
from shadowrl.rehearsal.runner import Rehearsal, rehearse

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
HISTORY = ROOT / "envs" / "history" / "checkout_rps.csv"
PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
              "ALL_PROXY", "no_proxy", "NO_PROXY")



@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*PROXY_VARS, alerts_mod.WEBHOOK_ENV):
        monkeypatch.delenv(var, raising=False)


def run(*args: Any) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def interrupting(after: int, *, real_signal: bool = False) -> tuple[Callable[..., Rehearsal],
                                                                     list[int]]:
    """A rehearse_fn whose call number ``after + 1`` is interrupted (Ctrl-C)."""
    calls: list[int] = []

    def fn(scenario: Scenario, seed: int, **kwargs: Any) -> Rehearsal:
        calls.append(seed)
        if len(calls) == after + 1:
            if real_signal:
                os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt here
            raise KeyboardInterrupt
        return rehearse(scenario, seed, **kwargs)

    return fn, calls


def campaign_summary(campaign: Campaign) -> CampaignSummary:
    """What ``shadowrl rehearse`` reports for a campaign of the configured procedure."""
    return CampaignSummary(**dict(summarize("checkout", "configured", campaign.runs)),
                           interrupted=campaign.interrupted)


class FastWebhook(WebhookSink):
    """The real sink with a short backoff, so dead-port tests take milliseconds."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **{"backoff_s": 0.01, "timeout_s": 2.0, **kwargs})


class Receiver:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.lock = threading.Lock()


@pytest.fixture
def receiver() -> Iterator[tuple[str, Receiver]]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with rec.lock:
                rec.posts.append({"path": self.path, "headers": dict(self.headers),
                                  "body": json.loads(body)})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", rec
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=2)


# --------------------------------------------------------------------------- seeds


def test_run_i_uses_seed_plus_i(checkout: Scenario) -> None:
    campaign = run_campaign(checkout, 4, seed=100, record_profile=True)
    assert not campaign.interrupted
    assert [r.seed for r in campaign.runs] == [100, 101, 102, 103]
    for i, r in enumerate(campaign.runs):
        alone = rehearse(checkout, 100 + i, record_profile=True)
        assert r.to_json() == alone.to_json()
        assert r.profile == alone.profile


def test_progress_goes_to_on_run_and_nothing_is_drawn(
        checkout: Scenario, capfd: pytest.CaptureFixture[str]) -> None:
    done: list[int] = []
    campaign = run_campaign(checkout, 3, seed=1, on_run=done.append)
    assert done == [1, 2, 3] and len(campaign.runs) == 3
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # drawing progress is the caller's job


def test_history_and_peak_reach_every_run(checkout: Scenario) -> None:
    history = load_history(HISTORY)
    campaign = run_campaign(checkout, 3, seed=5, history=history, at="peak")
    for r in campaign.runs:
        inj = r.injection
        assert inj.start_offset_s + inj.onset_s == pytest.approx(history.peak_offset_s)
        assert inj.load_multiplier == 1.0


# --------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("real_signal", [False, True], ids=["raise", "sigint"])
def test_ctrl_c_keeps_finished_runs_and_writes_consistent_outputs(
        tmp_path: Path, checkout: Scenario, real_signal: bool) -> None:
    if real_signal and signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler in this process")
    fn, calls = interrupting(3, real_signal=real_signal)
    campaign = run_campaign(checkout, 10, seed=7, record_profile=True, rehearse_fn=fn)
    assert campaign.interrupted is True
    assert calls == [7, 8, 9, 10]  # stopped at the 4th call, nothing after it
    assert [r.seed for r in campaign.runs] == [7, 8, 9]

    summary = campaign_summary(campaign)
    paths = write_outputs(tmp_path / "out", checkout, summary, campaign.runs, "cmd")
    data = json.loads(Path(paths.summary).read_text())
    assert data["runs"] == 3 and data["interrupted"] is True
    assert sum(data["outcomes"].values()) == 3
    assert data == summarize("checkout", "configured", campaign.runs).model_dump(
        mode="json") | {"interrupted": True}
    table = pq.read_table(paths.profiles)
    assert sorted(set(table.column("run").to_pylist())) == [0, 1, 2]
    assert sorted(set(table.column("seed").to_pylist())) == [7, 8, 9]
    assert Path(paths.report).is_file()
    assert "<h2>Overview</h2>" in Path(paths.report).read_text()
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_ctrl_c_before_the_first_run_finishes(tmp_path: Path, checkout: Scenario) -> None:
    fn, _ = interrupting(0)
    campaign = run_campaign(checkout, 5, record_profile=True, rehearse_fn=fn)
    assert campaign.interrupted and campaign.runs == []
    paths = write_outputs(tmp_path, checkout, campaign_summary(campaign), campaign.runs, "cmd")
    assert json.loads(Path(paths.summary).read_text())["runs"] == 0
    assert pq.read_table(paths.profiles).num_rows == 0
    assert Path(paths.report).is_file()


def test_uninterrupted_summary_has_no_interrupted_key(checkout: Scenario) -> None:
    summary = campaign_summary(Campaign(runs=[rehearse(checkout, 0)]))
    assert summary.interrupted is False
    assert "interrupted" not in summary.model_dump(mode="json")
    assert list(summary.model_dump(mode="json")) == [
        "scenario", "policy", "backend", "runs", "outcomes", "downtime_s", "failed_requests",
        "bad_requests", "budget_burn", "outage_s", "peak_error_rate", "alerts", "steps"]


def test_cli_rehearse_exits_130_on_ctrl_c_with_outputs(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # run_campaign's default rehearse_fn is bound when the module is imported, so patching
    # shadowrl.rehearsal.campaign.rehearse would not reach it: wrap run_campaign instead (the
    # rehearse use case looks it up on shadowrl.rehearsal.campaign when it runs).
    fn, calls = interrupting(3)
    real = campaign_mod.run_campaign
    monkeypatch.setattr(campaign_mod, "run_campaign",
                        lambda *a, **kw: real(*a, **{**kw, "rehearse_fn": fn}))
    out = tmp_path / "out"
    result = run("rehearse", CHECKOUT, "--runs", 10, "--out", out, "--json")
    assert result.exit_code == 130, (result.stderr[-2000:], repr(result.exception))
    assert "interrupted" in result.stderr
    assert len(calls) == 4
    printed = json.loads(result.stdout)
    assert printed["runs"] == 3 and printed["interrupted"] is True
    assert sorted(printed["outputs"]) == ["alerts", "profiles", "report", "summary"]
    written = json.loads((out / "summary.json").read_text())
    assert written == {k: v for k, v in printed.items() if k != "outputs"}
    assert sorted(set(pq.read_table(out / "profiles.parquet").column("run").to_pylist())) \
        == [0, 1, 2]
    assert (out / "report.html").stat().st_size > 10_000
    records = json.loads((out / "alerts.json").read_text())
    assert {r["run"] for r in records} == {0, 1, 2}  # checkout alerts on every seed
    assert alert_log(out) == records


# --------------------------------------------------------------------------- streaming


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def alert_log(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "alerts.jsonl").read_text().splitlines()]


def test_output_folder_records_each_run_as_it_finishes(tmp_path: Path,
                                                       checkout: Scenario) -> None:
    out = tmp_path / "out"
    folder = OutputFolder.open(out)
    full = [rehearse(checkout, 11 + i, record_profile=True) for i in range(6)]
    logged: list[set[int]] = []
    campaign = run_campaign(checkout, 6, seed=11, record_profile=True, output=folder,
                            on_run=lambda i: logged.append({a["run"] for a in alert_log(out)}))
    # alerts.jsonl grows with every run (checkout raises alerts on every seed)
    assert logged == [set(range(i)) for i in range(1, 7)]
    assert listing(out) == sorted(["alerts.jsonl", next(n for n in listing(out)
                                                         if n.startswith(".profiles."))])
    # memory keeps compact records: what the summary and the report read, no profile
    for r, f in zip(campaign.runs, full):
        assert r.profile is None and r.breach.before is None and r.errors_by_source == {}
        assert r.to_json() == f.to_json() and r.alerts == f.alerts
        assert [dataclasses.replace(s.span, errors_by_source={}) for s in f.steps] == \
            [s.span for s in r.steps]
        assert [{k: v for k, v in row.items() if k != "errors_by_source"}
                for row in attribution(f)] == \
            [{k: v for k, v in row.items() if k != "errors_by_source"}
             for row in attribution(r)]
    assert summarize("checkout", "configured", campaign.runs) == \
        summarize("checkout", "configured", full)

    summary = summarize("checkout", "configured", campaign.runs)
    folder.finish(checkout, summary, campaign.runs, "cmd")
    files = folder.commit_summary(summary)
    folder.close()
    assert listing(out) == ["alerts.json", "alerts.jsonl", "profiles.parquet", "report.html",
                            "summary.json"]
    assert pq.read_table(files.profiles).equals(profile_table(full))
    records = [a.to_record() for a in all_alerts(full)]
    assert alert_log(out) == records
    # alerts.json is written from the log a record at a time, in atomic_write_json's format
    assert (out / "alerts.json").read_text() == json.dumps(records, indent=2) + "\n"
    assert json.loads((out / "summary.json").read_text()) == summary.model_dump(mode="json")
    # the report reloads its example runs' profiles: the page is the in-memory one
    assert (out / "report.html").read_text() == render_report(
        checkout, summarize("checkout", "configured", full), full, "cmd")
    assert folder.kept == ["alerts.jsonl", "alerts.json", "profiles.parquet", "report.html",
                           "summary.json"]


def test_output_folder_with_no_finished_run_is_complete_and_empty(
        tmp_path: Path, checkout: Scenario) -> None:
    fn, _ = interrupting(0)
    with OutputFolder.open(tmp_path) as folder:
        campaign = run_campaign(checkout, 5, record_profile=True, rehearse_fn=fn,
                                output=folder)
        summary = campaign_summary(campaign)
        folder.finish(checkout, summary, campaign.runs, "cmd")
        folder.commit_summary(summary)
    assert campaign.interrupted and campaign.runs == []
    assert json.loads((tmp_path / "summary.json").read_text())["runs"] == 0
    assert json.loads((tmp_path / "alerts.json").read_text()) == []
    assert (tmp_path / "alerts.jsonl").read_text() == ""
    assert pq.read_table(tmp_path / "profiles.parquet").num_rows == 0
    assert "<h2>Overview</h2>" in (tmp_path / "report.html").read_text()


def test_output_folder_open_checks_the_path_and_clears_an_earlier_campaign(
        tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="^exists and is not a folder$"):
        OutputFolder.open(a_file)
    with pytest.raises(OutputError, match="^cannot create the folder: Not a directory$"):
        OutputFolder.open(a_file / "sub")
    assert a_file.read_text() == "x"
    old = tmp_path / "old"
    old.mkdir()
    for name in ("summary.json", "report.html", "profiles.parquet", "alerts.json",
                 "alerts.jsonl", "notes.txt"):
        (old / name).write_text("earlier")
    OutputFolder.open(old).close()
    # an earlier campaign's outputs are gone (never mixed with this one's); the rest stays
    assert listing(old) == ["alerts.jsonl", "notes.txt"]
    assert (old / "alerts.jsonl").read_text() == ""


def test_ctrl_c_while_a_run_is_recorded_lets_it_finish(tmp_path: Path, checkout: Scenario,
                                                       capfd: pytest.CaptureFixture[str]
                                                       ) -> None:
    class SignalledFolder(OutputFolder):
        """The real folder; Ctrl-C arrives (a real SIGINT) while run 1 is recorded."""

        def record(self, k: int, r: Rehearsal) -> bool:
            if k == 1:
                os.kill(os.getpid(), signal.SIGINT)
            return super().record(k, r)

    out = tmp_path / "out"
    folder = SignalledFolder.open(out)
    with CtrlC(out) as ctrl_c:
        campaign = run_campaign(checkout, 5, seed=3, record_profile=True, output=folder,
                                ctrl_c=ctrl_c)
    assert campaign.interrupted and ctrl_c.pressed == 1
    assert [r.seed for r in campaign.runs] == [3, 4]  # run 1 recorded completely, then stop
    assert {a["run"] for a in alert_log(out)} == {0, 1}
    assert folder.recorded == 2
    assert capfd.readouterr().err == f"interrupted: writing 2 finished runs to {out}...\n"
    folder.close()
    assert sorted(p.name for p in out.iterdir()) == ["alerts.jsonl"]  # the temp file is gone


def test_ctrl_c_after_the_runs_never_raises(capfd: pytest.CaptureFixture[str]) -> None:
    before = signal.getsignal(signal.SIGINT)
    with CtrlC(Path("/tmp/x")) as ctrl_c:
        ctrl_c.done = 7
        ctrl_c.finishing()
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGINT)  # handled before os.kill returns
        assert ctrl_c.pressed == 3 and ctrl_c.interrupted
    assert signal.getsignal(signal.SIGINT) is before  # put back
    assert capfd.readouterr().err.splitlines() == [
        "interrupted: writing 7 finished runs to /tmp/x...",
        "still writing 7 finished runs; please wait",
        "still writing 7 finished runs; please wait"]


def test_ctrl_c_without_an_output_folder_says_summarising(
        checkout: Scenario, capfd: pytest.CaptureFixture[str]) -> None:
    fn, _ = interrupting(2, real_signal=True)
    with CtrlC() as ctrl_c:
        campaign = run_campaign(checkout, 5, rehearse_fn=fn, ctrl_c=ctrl_c, compact=True)
        os.kill(os.getpid(), signal.SIGINT)  # during the summary: absorbed
    assert campaign.interrupted and len(campaign.runs) == 2 and ctrl_c.pressed == 2
    assert all(r.breach.before is None for r in campaign.runs)  # compact records
    assert capfd.readouterr().err.splitlines() == [
        "interrupted: summarising 2 finished runs...",
        "still summarising 2 finished runs; please wait"]


def test_ctrl_c_outside_the_main_thread_is_left_alone() -> None:
    seen: list[object] = []

    def body() -> None:
        with CtrlC() as ctrl_c:
            seen.append(signal.getsignal(signal.SIGINT))
            seen.append(ctrl_c.pressed)

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [before, 0]


# --------------------------------------------------------------------------- alerts


@pytest.fixture(scope="module")
def some_alerts(checkout: Scenario) -> list[Alert]:
    alerts = all_alerts(run_campaign(checkout, 4).runs)
    assert alerts, "checkout's runbook exceeds its downtime budget on some of seeds 0..3"
    return alerts


def test_all_alerts_carry_the_run_index(checkout: Scenario) -> None:
    campaign = run_campaign(checkout, 4, seed=20)
    alerts = all_alerts(campaign.runs)
    expected = [(k, a.kind, a.seed) for k, r in enumerate(campaign.runs) for a in r.alerts]
    assert [(a.run, a.kind, a.seed) for a in alerts] == expected


def test_send_alerts_with_a_dead_webhook_still_writes_alerts_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dead_url: str,
        some_alerts: list[Alert]) -> None:
    monkeypatch.setattr(alerts_mod, "WebhookSink", FastWebhook)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    errors = send_alerts(some_alerts, out, dead_url)
    assert len(errors) == 1 and errors[0].startswith("webhook:http://127.0.0.1:")
    assert "/hook" not in errors[0]  # the URL path (often a token) is redacted
    assert [p.name for p in out.iterdir()] == ["alerts.json"]  # no temp file left behind
    assert json.loads((out / "alerts.json").read_text()) == [a.to_record()
                                                              for a in some_alerts]
    assert not (tmp_path / "shadowrl-alerts.json").exists()  # the out dir has them already


def test_send_alerts_without_out_dir_falls_back_to_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dead_url: str,
        some_alerts: list[Alert]) -> None:
    monkeypatch.setattr(alerts_mod, "WebhookSink", FastWebhook)
    monkeypatch.chdir(tmp_path)
    errors = send_alerts(some_alerts, None, dead_url)
    assert len(errors) == 1
    fallback = tmp_path / "shadowrl-alerts.json"
    assert json.loads(fallback.read_text()) == [a.to_record() for a in some_alerts]
    assert [Alert.from_record(r) for r in json.loads(fallback.read_text())] == some_alerts


def test_send_alerts_writes_an_empty_alerts_json_and_sends_nothing(
        tmp_path: Path, receiver: tuple[str, Receiver]) -> None:
    url, rec = receiver
    assert send_alerts([], tmp_path, url) == []
    assert json.loads((tmp_path / "alerts.json").read_text()) == []
    assert rec.posts == []


def test_cli_webhook_receives_one_alertmanager_payload(
        tmp_path: Path, receiver: tuple[str, Receiver]) -> None:
    url, rec = receiver
    out = tmp_path / "out"
    result = run("rehearse", CHECKOUT, "--runs", 3, "--out", out, "--alert-webhook", url,
                 "--json")
    assert result.exit_code == 0, (result.stderr[-2000:], repr(result.exception))
    summary = json.loads(result.stdout)
    assert "alert_errors" not in summary
    records = json.loads((out / "alerts.json").read_text())
    assert records, "seeds 0..2 of checkout raise alerts"
    assert sum(a["count"] for a in summary["alerts"]) == len(records)
    assert len(rec.posts) == 1
    post = rec.posts[0]
    assert post["path"] == "/hook"
    assert post["headers"]["Content-Type"] == "application/json"
    body = post["body"]
    assert body["version"] == "4" and body["status"] == "firing"
    assert body["groupLabels"] == {"scenario": "checkout"}
    assert body["commonLabels"]["scenario"] == "checkout"
    assert len(body["alerts"]) == len(records)
    for item, record in zip(body["alerts"], records):
        labels, notes = item["labels"], item["annotations"]
        assert item["status"] == "firing"
        assert labels["kind"] == record["kind"]
        assert labels["severity"] == record["severity"]
        assert labels["scenario"] == record["scenario"] == "checkout"
        assert labels.get("step") == record["step"]
        assert labels["incident"] == record["incident"]
        assert labels["alertname"].startswith("ShadowRollback")
        assert notes["description"] == record["message"]
        assert notes["run"] == str(record["run"]) and notes["seed"] == str(record["seed"])
        assert len(item["fingerprint"]) == 16


def test_cli_dead_webhook_reports_the_error_and_keeps_alerts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dead_url: str) -> None:
    monkeypatch.setattr(alerts_mod, "WebhookSink", FastWebhook)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    result = run("rehearse", CHECKOUT, "--runs", 2, "--out", out, "--alert-webhook",
                 dead_url, "--json")
    assert result.exit_code == 0, (result.stderr[-2000:], repr(result.exception))
    summary = json.loads(result.stdout)
    assert len(summary["alert_errors"]) == 1
    assert json.loads((out / "alerts.json").read_text())


# --------------------------------------------------------------------------- CLI options


def test_cli_history_at_peak(tmp_path: Path, checkout: Scenario) -> None:
    result = run("rehearse", CHECKOUT, "--runs", 3, "--seed", 4, "--history", HISTORY,
                 "--at", "peak", "--json")
    assert result.exit_code == 0, (result.stderr[-2000:], repr(result.exception))
    summary = json.loads(result.stdout)
    assert summary["runs"] == 3
    assert summary["history"] == str(HISTORY)
    direct = run_campaign(checkout, 3, seed=4, history=load_history(HISTORY), at="peak")
    expected = summarize("checkout", "configured", direct.runs)
    assert summary["outcomes"] == expected.outcomes.model_dump()
    assert summary["downtime_s"] == expected.downtime_s.model_dump()
    now = run_campaign(checkout, 3, seed=4, history=load_history(HISTORY), at="now")
    assert all(a.injection.start_offset_s != b.injection.start_offset_s
               for a, b in zip(now.runs, direct.runs))


@pytest.mark.parametrize("content,name,needle", [
    ("timestamp,value\n1,2\n", "bad.txt", ".json (Prometheus) or .csv"),
    (None, "missing.csv", "missing.csv"),
    ("timestamp,value\n2024-01-01T00:00:00Z,1\nyesterday,2\n", "broken.csv", "broken.csv:3"),
])
def test_cli_bad_history_exits_2(tmp_path: Path, content: str | None, name: str,
                                 needle: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    result = run("rehearse", CHECKOUT, "--runs", 1, "--history", path, "--json")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_at_noon_exits_2() -> None:
    result = run("rehearse", CHECKOUT, "--runs", 1, "--at", "noon", "--json")
    assert result.exit_code == 2
    assert "--at must be 'now' or 'peak'" in result.stderr
    assert result.stdout == ""


def test_output_folder_open_removes_the_temporaries_of_a_killed_campaign(
        tmp_path: Path) -> None:
    """A SIGKILLed campaign leaves its pending files (hidden, beside the final names); the
    next campaign in the folder removes them, and leaves other hidden files alone."""
    for name in (".profiles.parquet.k1ll3d.parquet", ".alerts.json.x9.json",
                 ".report.html.abc.html", ".keep-me"):
        (tmp_path / name).write_text("left by a killed run")
    OutputFolder.open(tmp_path).close()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert ".keep-me" in left
    assert not [n for n in left if n.startswith((".profiles", ".alerts", ".report"))], left

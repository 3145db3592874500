"""``shadowrl rehearse`` loses nothing: Ctrl-C at any moment, bad and full ``--out`` folders,
a webhook that trickles its answer, and memory that does not grow with the runs.

Every test runs the real command in a subprocess and presses Ctrl-C the way a terminal does
(SIGINT to the whole process group). The writing phase is caught with the documented test
hook ``SHADOWRL_TEST_PAUSE_WRITE`` (the command creates the file and waits until it is
removed). Full and read-only disks are real tmpfs mounts (skipped where mounting is refused).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.trickler import Trickler

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
CLEAN_ENV = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
             "ALL_PROXY", "SHADOWRL_ALERT_WEBHOOK", "SHADOWRL_TEST_PAUSE_WRITE", "RAY_ADDRESS")


class Command:
    """``python -m shadowrl ARGS`` in its own process group; stderr lines are timestamped
    as they arrive."""

    def __init__(self, *args: Any, env: dict[str, str] | None = None) -> None:
        environ = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
        environ.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shadowrl", *map(str, args)], cwd=ROOT, env=environ,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.err: list[tuple[float, str]] = []
        self.out = b""
        self._readers = [threading.Thread(target=self._read_stderr, daemon=True),
                         threading.Thread(target=self._read_stdout, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.err.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self.out = self.proc.stdout.read()

    def ctrl_c(self) -> float:
        """SIGINT to the process group, as a terminal sends it; returns when."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return time.monotonic()

    def finish(self, timeout: float = 180) -> tuple[int, str, str]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise
        for reader in self._readers:
            reader.join(timeout=10)
        return self.proc.returncode, self.out.decode(), self.stderr

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.err)

    def line_at(self, pattern: str) -> tuple[float, re.Match[str]] | None:
        for at, line in list(self.err):
            if m := re.search(pattern, line):
                return at, m
        return None


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def logged_runs(out: Path) -> set[int]:
    """Runs whose alerts are in alerts.jsonl (checkout raises alerts on every run)."""
    try:
        text = (out / "alerts.jsonl").read_text()
    except FileNotFoundError:
        return set()
    return {json.loads(line)["run"] for line in text.splitlines() if line.endswith("}")}


def assert_complete(out: Path, runs: int, seed: int = 0) -> dict[str, Any]:
    """The folder holds exactly ``runs`` finished runs, in every file, and nothing else."""
    assert sorted(p.name for p in out.iterdir()) == [
        "alerts.json", "alerts.jsonl", "profiles.parquet", "report.html", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"] == runs == sum(summary["outcomes"].values())
    table = pq.read_table(out / "profiles.parquet", columns=["run", "seed"])
    assert sorted(set(table.column("run").to_pylist())) == list(range(runs))
    assert sorted(set(table.column("seed").to_pylist())) == list(range(seed, seed + runs))
    alerts = json.loads((out / "alerts.json").read_text())
    assert sorted({a["run"] for a in alerts}) == list(range(runs))
    assert sum(a["count"] for a in summary["alerts"]) == len(alerts)
    log = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert log == alerts
    assert "<h2>Overview</h2>" in (out / "report.html").read_text()
    return summary


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_during_the_runs_is_acknowledged_at_once_and_keeps_them(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = Command("rehearse", CHECKOUT, "--runs", 100000, "--out", out, "--json")
    wait_for(lambda: len(logged_runs(out)) >= 3, "three finished runs")
    pressed = cmd.ctrl_c()
    code, stdout, stderr = cmd.finish()
    assert code == 130, stderr[-3000:]
    ack = cmd.line_at(r"^interrupted: writing (\d+) finished runs to (.*)\.\.\.$")
    assert ack is not None, stderr
    at, m = ack
    assert at - pressed < 2.0  # printed by the handler, before the writing starts
    assert m.group(2) == str(out)
    kept = int(m.group(1))
    assert kept >= 3
    printed = json.loads(stdout)
    assert printed["runs"] == kept and printed["interrupted"] is True
    summary = assert_complete(out, kept)
    assert summary == {k: v for k, v in printed.items() if k != "outputs"}
    assert f"interrupted: kept {kept} finished runs" in stderr
    assert "Traceback" not in stderr


def test_ctrl_c_while_the_outputs_are_written_cannot_cut_them_short(tmp_path: Path) -> None:
    out, pause = tmp_path / "out", tmp_path / "pause"
    cmd = Command("rehearse", CHECKOUT, "--runs", 12, "--out", out, "--json",
                  env={"SHADOWRL_TEST_PAUSE_WRITE": str(pause)})
    wait_for(pause.exists, "the writing phase")
    cmd.ctrl_c()
    wait_for(lambda: cmd.line_at("^interrupted: writing") is not None, "the acknowledgement")
    cmd.ctrl_c()
    wait_for(lambda: cmd.line_at("^still writing") is not None, "the reminder")
    pause.unlink()
    code, stdout, stderr = cmd.finish()
    assert code == 130, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if "writing" in line]
    assert lines == [f"interrupted: writing 12 finished runs to {out}...",
                     "still writing 12 finished runs; please wait"]
    summary = assert_complete(out, 12)
    assert summary["interrupted"] is True  # Ctrl-C was pressed; every run is there
    assert json.loads(stdout)["runs"] == 12


def test_a_second_ctrl_c_while_writing_keeps_the_finished_runs(tmp_path: Path) -> None:
    out, pause = tmp_path / "out", tmp_path / "pause"
    cmd = Command("rehearse", CHECKOUT, "--runs", 100000, "--seed", 5, "--out", out,
                  "--json", env={"SHADOWRL_TEST_PAUSE_WRITE": str(pause)})
    wait_for(lambda: len(logged_runs(out)) >= 2, "two finished runs")
    cmd.ctrl_c()
    wait_for(pause.exists, "the writing phase")
    for n in (1, 2):  # one at a time: signals pressed together may arrive as one
        cmd.ctrl_c()
        wait_for(lambda n=n: sum(line.startswith("still") for _, line in cmd.err) == n,
                 f"reminder {n}")
    pause.unlink()
    code, stdout, stderr = cmd.finish()
    assert code == 130, stderr[-3000:]
    ack = cmd.line_at(r"^interrupted: writing (\d+) finished runs")
    assert ack is not None
    kept = int(ack[1].group(1))
    assert stderr.count(f"still writing {kept} finished runs; please wait") == 2
    assert_complete(out, kept, seed=5)
    assert json.loads(stdout)["runs"] == kept


def test_ctrl_c_with_ray_replicas_keeps_the_finished_runs(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    out = tmp_path / "out"
    cmd = Command("rehearse", CHECKOUT, "--runs", 100000, "--replicas", 2, "--out", out,
                  "--json")
    wait_for(lambda: len(logged_runs(out)) >= 4, "four finished runs", timeout=300)
    cmd.ctrl_c()
    code, stdout, stderr = cmd.finish()
    assert code == 130, stderr[-3000:]
    kept = json.loads(stdout)["runs"]
    assert kept >= 4
    assert_complete(out, kept)
    assert f"interrupted: writing {kept} finished runs to {out}..." in stderr


# --------------------------------------------------------------------------- bad --out


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``mount(options)`` mounts a fresh tmpfs under ``tmp_path`` (skips the test when
    mounting is refused: not root, or no CAP_SYS_ADMIN in a container)."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'refused'})")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


def refused(out: Path, *extra: Any) -> tuple[int, str, str]:
    start = time.monotonic()
    code, stdout, stderr = Command("rehearse", CHECKOUT, "--runs", 100000, "--out", out,
                                   *extra).finish()
    # refused before any run: 100000 runs would take an hour
    assert time.monotonic() - start < 60
    assert code == 2 and stdout == ""
    assert "Traceback" not in stderr
    return code, stdout, stderr


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    target = tmp_path / "report"
    target.write_text("not a folder")
    _, _, stderr = refused(target)
    assert stderr.strip() == f"error: --out {target}: exists and is not a folder"
    _, _, stderr = refused(target / "sub")
    assert stderr.strip() == f"error: --out {target / 'sub'}: cannot create the folder: " \
                             "Not a directory"
    assert target.read_text() == "not a folder"


def test_a_read_only_out_is_refused_before_any_work(
        mount_tmpfs: Callable[[str], Path]) -> None:
    read_only = mount_tmpfs("ro,size=1m")  # read-only even for root, unlike chmod 0500
    _, _, stderr = refused(read_only)
    assert stderr.strip() == f"error: --out {read_only}: the folder is not writable: " \
                             "Read-only file system"
    _, _, stderr = refused(read_only / "sub")
    assert stderr.strip() == f"error: --out {read_only / 'sub'}: cannot create the folder: " \
                             "Read-only file system"
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("size,failing", [("1m", "profiles.parquet"), ("12k", "alerts.jsonl")])
def test_a_full_disk_stops_with_a_message_and_keeps_what_was_written(
        mount_tmpfs: Callable[[str], Path], size: str, failing: str) -> None:
    out = mount_tmpfs(f"size={size}") / "out"
    code, stdout, stderr = Command("rehearse", CHECKOUT, "--runs", 300, "--out", out,
                                   "--json").finish()
    assert code == 2 and stdout == "", stderr[-3000:]
    assert "Traceback" not in stderr
    m = re.fullmatch(rf"error: --out {re.escape(str(out))}: cannot write {failing}: No space "
                     r"left on device \(stopped after (\d+) of 300 runs; kept (.*)\)",
                     stderr.strip().splitlines()[-1])
    assert m is not None, stderr
    kept_runs, kept = int(m.group(1)), m.group(2).split(", ")
    assert 0 < kept_runs < 300
    # what is there is complete, and is what the message says
    assert sorted(p.name for p in out.iterdir()) == sorted(kept)
    assert "alerts.jsonl" in kept
    text = (out / "alerts.jsonl").read_text()
    assert text.endswith("\n")  # no half line: a failed append is cut back
    log = [json.loads(line) for line in text.splitlines()]
    assert sorted({a["run"] for a in log}) == list(range(kept_runs))
    if "alerts.json" in kept:
        assert json.loads((out / "alerts.json").read_text()) == log


# --------------------------------------------------------------------------- webhook


@pytest.fixture
def trickler() -> Iterator[Trickler]:
    t = Trickler()
    try:
        yield t
    finally:
        t.close()


def test_a_webhook_trickling_its_body_does_not_hold_rehearse(tmp_path: Path,
                                                             trickler: Trickler) -> None:
    out = tmp_path / "out"
    start = time.monotonic()
    code, stdout, stderr = Command("rehearse", CHECKOUT, "--runs", 3, "--out", out, "--json",
                                   "--alert-webhook", trickler.url + "/body").finish()
    assert code == 0, stderr[-3000:]
    assert time.monotonic() - start < 60  # the body would take 1000 s
    assert "alert_errors" not in json.loads(stdout)  # a 200 delivers the alerts
    assert_complete(out, 3)


@pytest.mark.slow
def test_a_webhook_trickling_its_headers_is_given_up_in_bounded_time(
        tmp_path: Path, trickler: Trickler) -> None:
    out = tmp_path / "out"
    start = time.monotonic()
    code, stdout, stderr = Command("rehearse", CHECKOUT, "--runs", 2, "--out", out, "--json",
                                   "--alert-webhook", trickler.url + "/head").finish()
    elapsed = time.monotonic() - start
    assert code == 0, stderr[-3000:]
    # four attempts of at most 5 s each plus 3.5 s of backoff, within the 30 s deadline
    assert elapsed < 60
    errors = json.loads(stdout)["alert_errors"]
    assert len(errors) == 1 and "no answer within 5 s (total) after 4 attempt(s)" in errors[0]
    summary = assert_complete(out, 2)
    assert summary["alert_errors"] == errors  # summary.json says the delivery failed


# --------------------------------------------------------------------------- memory


_PEAK_RSS = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_kb(*args: Any) -> int:
    """Peak RSS of ``python -m shadowrl ARGS``, measured by a fresh parent process (so no
    other child of the test session counts)."""
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, sys.executable, "-m", "shadowrl",
                           *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.strip())


@pytest.mark.slow
def test_memory_with_out_does_not_grow_with_the_runs(tmp_path: Path) -> None:
    # before streaming, each run's profile stayed in memory: about 3 MB a run, so 400 runs
    # took over a gigabyte more than 80
    few = peak_rss_kb("rehearse", CHECKOUT, "--runs", 80, "--out", tmp_path / "few")
    many = peak_rss_kb("rehearse", CHECKOUT, "--runs", 400, "--out", tmp_path / "many")
    assert many < 1.3 * few, (few, many)
    assert json.loads((tmp_path / "many" / "summary.json").read_text())["runs"] == 400

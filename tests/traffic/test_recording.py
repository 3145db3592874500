"""Recorded traffic (shadowrl.traffic.recording): the three formats and their detection,
errors naming file and line, the live rate series, and the agreement the replay promises:
the simulator's load pattern, the real shadow's replay schedule and the simulated shadow all
see the same per-minute rates. No Docker: the generator's schedule is run offline."""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from shadowrl.core.spec import SpecError, load_scenario
from shadowrl.shadow.docker.loadgen import (
    ReplayPlan,
    next_arrival,
    replay_plan,
    replay_window,
)
from shadowrl.traffic.history import HistoryError, load_pattern
from shadowrl.traffic.recording import (
    RecordingError,
    cache_clear,
    load_recording,
    replay_pattern,
    scenario_pattern,
    scenario_recording,
)

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[2]
T0 = 1767225600.0  # 2026-01-01T00:00:00Z


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    cache_clear()


def write_mirror(path: Path, live_rps: list[float], percent: float = 100.0, seed: int = 1,
                 minute_s: float = 60.0, method: str = "GET") -> Path:
    """A mirror recording whose live rate is ``live_rps[i]`` in minute ``i`` (Poisson)."""
    rng = random.Random(seed)
    lines = [json.dumps({"format": "shadowrl-recording/1", "started": T0, "percent": percent})]
    for i, rate in enumerate(live_rps):
        recorded = rate * percent / 100.0
        t = i * minute_s + (rng.expovariate(recorded) if recorded > 0 else minute_s)
        while t < (i + 1) * minute_s:
            lines.append(json.dumps({"t": T0 + t, "method": method,
                                     "path": f"/m{i}?n={len(lines)}", "user": None,
                                     "live_status": 200, "live_ms": 12.5}))
            t += rng.expovariate(recorded)
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- formats


def test_mirror_recording() -> None:
    rec = load_recording(DATA / "mirror.jsonl")
    assert rec.format == "mirror" and len(rec) == 60 and rec.percent == 5
    assert rec.offsets[0] == 0 and np.all(np.diff(rec.offsets) >= 0)
    assert rec.started == pytest.approx(T0)
    assert rec.methods[0] == "GET" and rec.paths[0] == "/orders?id=3"
    # bodies of the writes, by arrival index
    assert rec.bodies and all(rec.methods[i] == "POST" for i in rec.bodies)
    first = min(rec.bodies)
    assert json.loads(rec.bodies[first]) == {"item": first}
    # 5 % of live traffic: the live rate is 20 times the recorded one
    assert rec.mean_live_rps() == pytest.approx(60 * 20 / rec.duration_s)


def test_nginx_combined_log() -> None:
    rec = load_recording(DATA / "access-combined.log")
    assert rec.format == "nginx" and rec.percent == 100
    assert len(rec) == 30 and rec.skipped == 2  # '"-"' and a TLS handshake: not requests
    assert rec.started == pytest.approx(T0 + 12 * 3600 + 1 / 6)  # 05:00 -0700 is 12:00Z
    # whole seconds: each second's three requests are spread evenly over it
    assert np.allclose(rec.offsets[:4], [0, 1 / 3, 2 / 3, 1])
    assert set(rec.methods) <= {"GET", "POST", "HEAD"}
    assert "/search?q=a%20b" in rec.paths and "/orders?id=4" in rec.paths
    assert rec.duration_s == pytest.approx(10.0)  # 30 requests, one every 1/3 s
    assert rec.notes


def test_json_access_log() -> None:
    rec = load_recording(DATA / "access.json.log")
    assert rec.format == "json" and len(rec) == 40
    assert set(rec.methods) <= {"GET", "PUT", "DELETE"}
    assert any(p.endswith("?page=2") for p in rec.paths)  # uri + args
    assert not rec.notes  # millisecond times: nothing to spread


@pytest.mark.parametrize("line", [
    {"@timestamp": "2026-01-01T00:00:01+01:00", "request": "GET /a?b=1 HTTP/2.0"},
    {"timestamp": 1767222001000, "method": "get", "path": "/a", "query": "b=1"},
    {"ts": 1767222001.0, "request": {"method": "GET", "uri": "/a?b=1", "host": "x"}},
    {"time_local": "01/Jan/2026:00:00:01 +0100", "request_method": "GET",
     "request_uri": "http://shop.example/a?b=1"},
    {"Time": "1767222001", "RequestMethod": "GET", "RequestPath": "/a?b=1"},
])
def test_json_field_names(tmp_path: Path, line: dict[str, Any]) -> None:
    later = dict(line)
    path = tmp_path / "log.json"
    path.write_text(json.dumps(line) + "\n" + json.dumps(later) + "\n")
    rec = load_recording(path)
    assert rec.format == "json" and rec.methods == ["GET", "GET"]
    assert rec.paths == ["/a?b=1", "/a?b=1"]
    assert rec.started == pytest.approx(1767222001.0, abs=1.0)


def test_gzip_and_explicit_format(tmp_path: Path) -> None:
    path = tmp_path / "access.log.gz"
    path.write_bytes(gzip.compress((DATA / "access-combined.log").read_bytes()))
    assert len(load_recording(path)) == 30
    assert len(load_recording(path, "nginx")) == 30
    with pytest.raises(RecordingError, match=r"access\.log\.gz:1: not JSON"):
        load_recording(path, "json")


@pytest.mark.parametrize("name,text,fmt,message", [
    ("empty.log", "\n\n", "auto", r"empty\.log: the file is empty"),
    ("what.log", "hello world\n", "auto", r"what\.log:1: cannot tell the format"),
    ("m.jsonl", '{"format": "shadowrl-recording/2"}\n', "auto",
     r"m\.jsonl:1: format: expected 'shadowrl-recording/1'"),
    ("m.jsonl", '{"format": "shadowrl-recording/1", "percent": 0}\n', "auto",
     r"m\.jsonl:1: percent: expected a number in \(0, 100\]"),
    ("m.jsonl", '{"format": "shadowrl-recording/1"}\n{"t": 1767225600, "method": "GET",'
     ' "path": "/"}\n\n{"t": 1767225601, "method": "GET", "path": "/"\n', "auto",
     r"m\.jsonl:4: not JSON"),
    ("m.jsonl", '{"format": "shadowrl-recording/1"}\n{"method": "GET", "path": "/"}\n', "auto",
     r"m\.jsonl:2: t: missing"),
    ("m.jsonl", '{"format": "shadowrl-recording/1"}\n{"t": 1767225600, "method": "GE T",'
     ' "path": "/"}\n', "auto", r"m\.jsonl:2: method: expected an HTTP method"),
    ("m.jsonl", '{"format": "shadowrl-recording/1"}\n{"t": 1767225600, "method": "GET",'
     ' "path": "orders"}\n', "auto", r"m\.jsonl:2: path: expected a path starting with '/'"),
    ("m.jsonl", '{"format": "shadowrl-recording/1"}\n{"t": 1767225600000000000000,'
     ' "method": "GET", "path": "/"}\n', "auto", r"m\.jsonl:2: t: .* outside 1970"),
    ("m.jsonl", '{"format": "shadowrl-recording/1"}\n{"t": 1767225600, "method": "POST",'
     ' "path": "/", "body_b64": "%%%"}\n', "auto", r"m\.jsonl:2: body_b64: not valid base64"),
    ("j.log", '{"time": "noon", "request": "GET / HTTP/1.1"}\n', "auto",
     r"j\.log:1: time: cannot parse time 'noon'"),
    ("j.log", '{"time": 1767225600, "status": 200}\n', "auto", r"j\.log:1: no request"),
    ("j.log", '{"status": 200, "request": "GET / HTTP/1.1"}\n', "auto", r"j\.log:1: no time"),
    ("j.log", '[1, 2]\n', "json", r"j\.log:1: expected a JSON object"),
    ("n.log", '1.2.3.4 - - [01/Jan/2026:00:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "-"\n'
     'garbage\n', "auto", r"n\.log:2: not an nginx combined log line"),
    ("n.log", '1.2.3.4 - - [01/Foo/2026:00:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "-"\n',
     "auto", r"n\.log:1: time_local: cannot parse"),
    ("n.log", '1.2.3.4 - - [01/Jan/2026:00:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "-"\n',
     "auto", r"n\.log: 1 replayable request\(s\); a recording needs at least 2"),
    ("n.log", '1.2.3.4 - - [01/Jan/2026:00:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "-"\n',
     "mirror", r"n\.log:1: not JSON"),
    ("n.log", "x\n", "csv", r"unknown recording format 'csv'"),
])
def test_errors_name_file_and_line(tmp_path: Path, name: str, text: str, fmt: str,
                                   message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RecordingError, match=message) as info:
        load_recording(path, fmt)
    assert isinstance(info.value, HistoryError)  # reported wherever a bad history is


def test_an_unfinished_last_line_is_ignored(tmp_path: Path) -> None:
    """A recording still being written may end mid-line: that line is left out, noted."""
    text = (DATA / "mirror.jsonl").read_text()
    path = tmp_path / "writing.jsonl"
    path.write_text(text + '{"t": 1767225700.5, "meth')
    rec = load_recording(path)
    assert len(rec) == 60 and "line 62, the last, is unfinished" in rec.notes[0]
    path.write_text(text + '{"t": 1767225700.5, "meth\n')  # a whole line: an error
    with pytest.raises(RecordingError, match=r"writing\.jsonl:62: not JSON"):
        load_recording(path)


def test_binary_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "bin.log"
    path.write_bytes(b'{"time": 1767225600, "request": "GET / HTTP/1.1"}\n\x00\x01\n')
    with pytest.raises(RecordingError, match=r"bin\.log:2: not a text file"):
        load_recording(path)
    with pytest.raises(FileNotFoundError):
        load_recording(tmp_path / "nope.log")


# --------------------------------------------------------------------------- rates


def test_rate_series_is_the_live_rate_per_bin(tmp_path: Path) -> None:
    live = [100.0, 300.0, 200.0, 50.0]
    rec = load_recording(write_mirror(tmp_path / "r.jsonl", live, percent=10))
    series = rec.rate_series(60.0)
    assert series.t[0] == pytest.approx(rec.started)
    assert len(series) == 4
    # Poisson counts of 10 % of 60 s x rate: within 4 sigma of the live rate
    for got, want in zip(series.v, live):
        sigma = math.sqrt(want * 60 * 0.1) / (60 * 0.1)
        assert abs(got - want) < 4 * sigma + 1e-9, (got, want)
    # the history machinery takes it as a history: a pattern of mean 1 following its shape
    pattern = load_pattern(rec.rate_series(10.0))
    assert pattern(90.0) > pattern(210.0)


def test_replay_pattern_scales_loops_and_wraps(tmp_path: Path) -> None:
    rec = load_recording(write_mirror(tmp_path / "r.jsonl", [100.0, 300.0], seed=3))
    minute = [float(rec.live_count(i * 60.0, (i + 1) * 60.0, False)) / 60 for i in range(2)]
    p1 = replay_pattern(rec, 100.0, loop=True)
    assert p1(30.0) * 100 == pytest.approx(minute[0])
    assert p1(90.0) * 100 == pytest.approx(minute[1])
    duration = rec.duration_s
    assert p1(30.0 + duration) * 100 == pytest.approx(minute[0], rel=0.05)  # looped
    off = replay_pattern(rec, 100.0, loop=False)
    assert off(duration + 60.0) == 0.0  # past the end without a loop: nothing
    assert off(-30.0) * 100 == pytest.approx(p1(-30.0) * 100)  # before the start: wraps
    # 2x: the recording plays twice as fast, at twice the rate
    p2 = replay_pattern(rec, 100.0, scale=2.0, loop=True)
    assert p2(30.0) * 100 == pytest.approx(minute[0] + minute[1], rel=1e-9)
    arr = p2(np.array([15.0, 45.0]))
    assert arr.shape == (2,)


def test_replay_window_counts_what_the_pattern_counts(tmp_path: Path) -> None:
    rec = load_recording(write_mirror(tmp_path / "r.jsonl", [120.0, 30.0, 240.0], seed=5))
    offsets = rec.offsets.tolist()
    rng = random.Random(2)
    for loop in (True, False):
        for _ in range(300):
            a = rng.uniform(-400, 700)
            b = a + rng.uniform(0, 500)
            got = len(list(replay_window(offsets, rec.duration_s, loop, a, b)))
            want = float(rec.count_before(b, loop) - rec.count_before(a, loop))
            assert got == want, (loop, a, b)
            nxt = next_arrival(offsets, rec.duration_s, loop, a)
            if nxt is None:
                assert not loop and a >= rec.offsets[-1]
            else:
                assert nxt >= a - 1e-9
                assert not list(replay_window(offsets, rec.duration_s, loop, a, nxt - 1e-9))


# --------------------------------------------------------------------------- scenarios


def scenario_file(tmp_path: Path, replay: dict[str, Any] | None, **traffic: Any) -> Path:
    data = yaml.safe_load((ROOT / "envs" / "checkout.yaml").read_text())
    data["shadow"] = {"time_compression": 60, "sample_fraction": 0.1}
    if replay is not None:
        data["deployment"]["traffic"]["replay"] = replay
    data["deployment"]["traffic"].update(traffic)
    path = tmp_path / "checkout-replay.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_scenario_field(tmp_path: Path) -> None:
    (tmp_path / "rec").mkdir()
    write_mirror(tmp_path / "rec" / "live.jsonl", [100.0, 200.0], percent=5)
    sc = load_scenario(scenario_file(tmp_path, {"file": "rec/live.jsonl", "scale": "2x"}))
    replay = sc.deployment.traffic.replay
    assert replay is not None and replay.scale == 2.0 and replay.loop and replay.format == "auto"
    rec = scenario_recording(sc)
    assert rec is not None and rec.percent == 5
    pattern = scenario_pattern(sc)
    assert pattern is not None and pattern(15.0) > 0
    sc2 = load_scenario(scenario_file(tmp_path, {"file": "rec/live.jsonl", "percent": 50}))
    rec2 = scenario_recording(sc2)
    assert rec2 is not None and rec2.percent == 50


def _problem(tmp_path: Path, replay: dict[str, Any] | None, **traffic: Any) -> str:
    with pytest.raises(SpecError) as info:
        load_scenario(scenario_file(tmp_path, replay, **traffic))
    return str(info.value)


def test_scenario_field_errors(tmp_path: Path) -> None:
    write_mirror(tmp_path / "live.jsonl", [100.0])
    message = _problem(tmp_path, {"file": "missing.jsonl"})
    lines = (tmp_path / "checkout-replay.yaml").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "missing.jsonl" in text)
    assert f":{line}: deployment.traffic.replay.file: no such file: " in message
    assert "deployment.traffic.replay.scale:" in _problem(
        tmp_path, {"file": "live.jsonl", "scale": "fast"})
    assert "deployment.traffic.replay.scale:" in _problem(
        tmp_path, {"file": "live.jsonl", "scale": 0})
    assert "deployment.traffic.replay.format:" in _problem(
        tmp_path, {"file": "live.jsonl", "format": "csv"})
    assert "deployment.traffic.replay.speed:" in _problem(
        tmp_path, {"file": "live.jsonl", "speed": 2})
    message = _problem(tmp_path, {"file": "live.jsonl"}, pattern="diurnal")
    assert "deployment.traffic.pattern: a replay sets the load pattern" in message


def test_replay_and_history_are_exclusive(tmp_path: Path) -> None:
    write_mirror(tmp_path / "live.jsonl", [100.0])
    path = scenario_file(tmp_path, {"file": "live.jsonl"})
    data = yaml.safe_load(path.read_text())
    data["deviations"]["history"] = {"file": "live.jsonl"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError, match="deviations.history: deployment.traffic.replay sets"):
        load_scenario(path)


def test_a_bad_recording_is_reported_on_the_scenario_line(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"format": "shadowrl-recording/1"}\n{"t": "x"}\n')
    path = scenario_file(tmp_path, {"file": "bad.jsonl"})
    sc = load_scenario(path)  # the loader checks existence; content is read on use
    with pytest.raises(SpecError) as info:
        scenario_pattern(sc)
    text = str(info.value)
    assert text.startswith(f"{path}:")
    assert "deployment.traffic.replay.file: " in text and "bad.jsonl:2: t: expected" in text


# --------------------------------------------------------------------------- agreement


def _schedule(plan: ReplayPlan, wall_s: float, load: float = 1.0, seed: int = 0,
              step_s: float = 0.05) -> list[float]:
    """The generator process's schedule, offline: scenario times of the requests it sends
    over ``wall_s`` wall seconds, anchored at scenario time 0 (as the backend does)."""
    rng = random.Random(seed)
    keep = plan.keep * load
    sent: list[float] = []
    cursor = 0.0
    offsets = list(plan.offsets)
    for i in range(1, int(wall_s / step_s) + 1):
        pos = i * step_s * plan.speed
        for _ in replay_window(offsets, plan.duration_s, plan.loop, cursor, pos):
            if keep >= 1 or rng.random() < keep:
                sent.append(pos / plan.scale)  # scenario time (within a step)
        cursor = pos
    return sent


@pytest.mark.parametrize("scale,loop", [(1.0, False), (2.0, True)])
def test_the_simulators_pattern_and_the_replay_agree_on_rates(tmp_path: Path, scale: float,
                                                               loop: bool) -> None:
    """The load the simulator follows (the pattern, through scenario_pattern) and what the
    real shadow's generator sends (its schedule, divided by the sample fraction) agree per
    scenario minute within sampling noise, scaled and looped."""
    live = [200.0, 600.0, 400.0, 100.0, 300.0]  # live requests/s per minute
    write_mirror(tmp_path / "live.jsonl", live, percent=20, seed=11)
    sc = load_scenario(scenario_file(tmp_path, {"file": "live.jsonl", "scale": scale,
                                                "loop": loop}))
    pattern = scenario_pattern(sc)
    assert pattern is not None
    k, f = 60.0, 0.1
    plan = replay_plan(sc, k, f, seed=4)
    assert plan is not None and plan.keep <= 1
    minutes = 10
    sent = np.array(_schedule(plan, minutes * 60 / k, seed=9))
    rps = sc.deployment.traffic.rps
    wall_per_minute = 60.0 / k
    for m in range(minutes):
        want = pattern(m * 60.0 + 30.0) * rps  # live requests/s the simulator sees
        # the shadow sends want x f requests per wall second: a scenario minute is 1 wall s
        expected = want * f * wall_per_minute
        count = np.count_nonzero((sent >= m * 60) & (sent < (m + 1) * 60))
        assert abs(count - expected) <= 4 * math.sqrt(max(expected, 1.0)) + 1, (m, count,
                                                                               expected)
        if not loop and m * 60 * scale >= plan.duration_s:
            assert want == 0 and count == 0  # the recording is over
    # and the pattern follows the recording's own per-minute rates: scale 2 plays two of
    # its minutes in one scenario minute, at twice the rate
    first = live[0] if scale == 1 else live[0] + live[1]
    assert pattern(30.0) * rps == pytest.approx(first, rel=0.25)


def test_the_simulated_shadow_follows_the_recording(tmp_path: Path) -> None:
    """A SimShadow of a replay scenario takes the recording as its load pattern (nothing
    passed in) and serves its per-minute rates; a rehearsal on it runs to an outcome."""
    from shadowrl.rehearsal.runner import rehearse
    from shadowrl.shadow.sim.engine import SimShadow

    live = [300.0, 500.0, 200.0, 400.0]
    write_mirror(tmp_path / "live.jsonl", live, percent=50, seed=2)
    sc = load_scenario(scenario_file(tmp_path, {"file": "live.jsonl", "loop": False}))
    rec = scenario_recording(sc)
    assert rec is not None
    shadow = SimShadow(sc)
    shadow.launch(1)
    for m in range(4):
        shadow.advance(60.0 if m else 59.0)
        got = shadow.sample().edge.rps
        want = float(rec.live_count(m * 60.0, (m + 1) * 60.0, False)) / 60.0
        assert got == pytest.approx(want, rel=0.12), (m, got, want)  # the sim's block noise
    shadow.close()
    looped = load_scenario(scenario_file(tmp_path, {"file": "live.jsonl", "loop": True}))
    r = rehearse(looped, 1)
    assert r.injection.start_offset_s == 0.0  # a replay starts at its first request
    assert r.breach.at_s >= r.injection.onset_s and r.steps


def test_plan_thins_maps_and_reports(tmp_path: Path) -> None:
    write_mirror(tmp_path / "live.jsonl", [400.0, 400.0], percent=100, seed=3, method="PUT")
    sc = load_scenario(scenario_file(tmp_path, {"file": "live.jsonl"}))
    messages: list[str] = []
    plan = replay_plan(sc, 60.0, 0.1, seed=1, on_progress=messages.append)
    assert plan is not None
    # one recorded request in 600 is wanted: the plan holds about that many
    assert len(plan.offsets) == pytest.approx(len(scenario_recording(sc) or []) / 600, rel=0.5)
    assert plan.keep * 1.2 == pytest.approx(1.0)  # thinned for checkout's highest load, 1.2
    # the reference app: PUT becomes POST, paths become '/', keeping the query
    assert set(plan.methods) == {"POST"}
    assert all(p.startswith("/?n=") for p in plan.paths)
    assert "one recorded request in 600.0 is sent" in messages[0]
    assert "at a drawn load above" not in messages[0]
    # a sparse recording (1 % of 400 rps at 10x, 20 % sampled) runs short: all are sent
    write_mirror(tmp_path / "sparse.jsonl", [400.0], percent=1, seed=3)
    sc = load_scenario(scenario_file(tmp_path, {"file": "sparse.jsonl"}))
    messages.clear()
    plan = replay_plan(sc, 10.0, 0.2, on_progress=messages.append)
    assert plan is not None and plan.keep == pytest.approx(2.0)
    assert plan.shortfall() == pytest.approx(0.5)
    assert "50% short" in messages[0]
    assert len(plan.offsets) == len(scenario_recording(sc) or [])


def test_plan_keeps_paths_for_a_runtime_image(tmp_path: Path) -> None:
    rec_path = DATA / "mirror.jsonl"
    path = scenario_file(tmp_path, {"file": str(rec_path)})
    data = yaml.safe_load(path.read_text())
    data["deployment"]["services"][0]["runtime"] = {
        "image": {"live": "shop/web:42", "previous": "shop/web:41"}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    sc = load_scenario(path)
    plan = replay_plan(sc, 1.0, 1.0)
    rec = load_recording(rec_path)
    assert plan is not None and list(plan.paths) == rec.paths and list(plan.methods) == \
        rec.methods
    assert plan.bodies == rec.bodies and plan.keep == pytest.approx(20.0)


def test_plan_refuses_more_than_the_machine_serves(tmp_path: Path) -> None:
    from shadowrl.core.errors import BackendUnavailable

    write_mirror(tmp_path / "live.jsonl", [400.0, 4000.0], percent=10)
    sc = load_scenario(scenario_file(tmp_path, {"file": "live.jsonl"}))
    with pytest.raises(BackendUnavailable, match=r"up to \d+ requests/s .*busiest minute"):
        replay_plan(sc, 60.0, 0.2, max_wall_rps=400)
    assert replay_plan(sc, 60.0, 0.05, max_wall_rps=400) is not None

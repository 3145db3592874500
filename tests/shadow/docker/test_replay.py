"""Replay of recorded traffic by the real shadow's load generator (docs/replay.md).

First the generator process alone against a local server that logs what it gets: recorded
methods, paths and bodies arrive as recorded, at their (scaled, compressed) times, looped.
Then a real shadow of envs/checkout.yaml (60x, sample fraction 0.1) replaying a mirror
recording: its per-second rate follows the recording, scaled and looped, and the methods
and query strings sent are the recorded ones (mapped for the reference app)."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from shadowrl.core.injection import Injection
from shadowrl.core.spec import load_scenario
from shadowrl.shadow.docker.loadgen import LoadGenerator, ReplayPlan, replay_window
from shadowrl.traffic.recording import load_recording
from tests.local_server import serve

ROOT = Path(__file__).resolve().parents[3]
COMPRESSION = 60
T0 = 1767225600.0


@dataclass
class Server:
    url: str = ""
    arrivals: list[tuple[float, str, str, bytes]] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Server]:
    """A local server answering any method and path, logging (time, method, path, body)."""
    from aiohttp import web

    srv = Server()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        srv.arrivals.append((time.time(), request.method, request.raw_path, body))
        return web.Response(text="ok")

    with serve(handle, "/{tail:.*}") as url:
        srv.url = url
        yield srv


def _plan(n: int = 40, **kw: Any) -> ReplayPlan:
    """n requests over 4 recording seconds: 10 in the first 2 s, 30 in the next 2."""
    offsets = [i * 0.2 for i in range(10)] + [2.0 + i * 2.0 / 30 for i in range(30)]
    methods = [("GET", "POST", "PUT", "DELETE")[i % 4] for i in range(n)]
    paths = [f"/orders/{i}?q=a%20b&i={i}" for i in range(n)]
    bodies = {i: json.dumps({"i": i}).encode() for i in range(n) if methods[i] == "POST"}
    return ReplayPlan(offsets, methods, paths, 4.0, bodies=bodies, **kw)


def test_replay_sends_the_recorded_requests_at_their_times(server: Server) -> None:
    plan = _plan(scale=2.0, time_compression=1.0, loop=True)  # 4 s recording in 2 wall s
    with LoadGenerator(server.url, replay=plan) as gen:
        gen.set_rate(500)  # ignored while replaying
        start = time.time() + 0.3
        gen.replay_from(start, 0.0)
        time.sleep(0.3 + 2 * 2.0 + 0.3)  # two loops, and the third's first requests
        assert gen.stop() == 0
        records = gen.drain()
    got = [a for a in server.arrivals if start - 0.01 <= a[0] < start + 3.99]
    assert len(got) == 80, len(got)
    first = got[:40]
    assert [m for _, m, _, _ in first] == list(plan.methods)
    assert [p for _, _, p, _ in first] == list(plan.paths)
    # recorded bodies; other requests carry none (writes: an empty one, as synthetic ones)
    assert [body for _, _, _, body in first] == [plan.bodies.get(i, b"") for i in range(40)]
    # at the recorded times divided by the scale, looped every 2 wall s
    lag = [t - (start + (i // 40) * 2.0 + plan.offsets[i % 40] / 2.0)
           for i, (t, _, _, _) in enumerate(got)]
    assert float(np.median(np.abs(lag))) < 0.03 and max(lag) < 0.25, lag
    # the scaled rate: 5/s then 15/s of recording, twice as fast
    per_half = Counter(int((t - start) // 1.0) for t, _, _, _ in got)
    assert [per_half[i] for i in range(4)] == [10, 30, 10, 30]
    # the records name what was sent
    assert len(records) >= 80 and {(r.method, r.path) for r in records} == set(
        zip(plan.methods, plan.paths))
    assert sum(gen.sent.values()) == len(records)


def test_replay_thins_by_load_and_stops_at_the_end_without_loop(server: Server) -> None:
    offsets = [i * 0.01 for i in range(400)]  # 100 recording/s for 4 s
    plan = ReplayPlan(offsets, ["GET"] * 400, ["/x"] * 400, 4.0, scale=1.0,
                      time_compression=2.0, keep=0.5, loop=False, seed=3)
    with LoadGenerator(server.url, replay=plan) as gen:
        start = time.time() + 0.2
        gen.replay_from(start, 0.0, load=0.8)  # keep 0.4 of them
        time.sleep(0.2 + 2.0 + 1.0)  # the recording (2 wall s), then a second of nothing
        gen.stop()
    # (before ``start`` the recording's tail plays: a replay anchored ahead pre-rolls)
    got = [t for t, _, _, _ in server.arrivals if t >= start]
    assert 125 <= len(got) <= 195, len(got)  # binomial(400, 0.4): 160, sd 10
    assert max(got) < start + 2.1


# --------------------------------------------------------------------------- a real shadow


def _recording(path: Path, seed: int = 5) -> Path:
    """20 recorded minutes of 1 % of live traffic: 10 minutes at 100 requests/s live, then
    10 at 200; a third of the requests write (POST or PUT)."""
    rng = random.Random(seed)
    lines = [json.dumps({"format": "shadowrl-recording/1", "started": T0, "percent": 1})]
    t = rng.expovariate(1.0)
    while t < 1200.0:
        method = rng.choice(["GET", "GET", "POST", "GET", "PUT", "GET"])
        lines.append(json.dumps({"t": T0 + t, "method": method,
                                 "path": f"/orders?id={len(lines)}", "user": None,
                                 "live_status": 200, "live_ms": 30.0}))
        t += rng.expovariate(1.0 if t < 600.0 else 2.0)
    path.write_text("\n".join(lines) + "\n")
    return path


def _sent_per_second(log: Any, t0: float, seconds: int) -> list[int]:
    """The edge's requests by the wall second the generator sent them (finish time less
    latency): a request the pre-roll sent just before ``t0`` that a busy host finishes after
    it belongs to no second."""
    with log.lock:
        sent = np.asarray(log.t, dtype=float) - np.asarray(log.ms, dtype=float) / 1000.0
    return [int(np.sum((sent >= t0 + i) & (sent < t0 + i + 1))) for i in range(seconds)]


def test_a_real_shadow_replays_a_recording(docker_client: Any, shadow_images: Any,
                                           tmp_path: Path) -> None:
    from shadowrl.shadow.docker.backend import DockerShadow

    rec_path = _recording(tmp_path / "live.jsonl")
    data = yaml.safe_load((ROOT / "envs" / "checkout.yaml").read_text())
    data["shadow"] = {"time_compression": COMPRESSION, "sample_fraction": 0.1}
    data["deployment"]["traffic"]["replay"] = {"file": "live.jsonl", "scale": "2x",
                                               "loop": True}
    path = tmp_path / "checkout-replay.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    sc = load_scenario(path)
    rec = load_recording(rec_path)
    messages: list[str] = []
    measure_s = 11  # 11 wall s = 1320 recording s: past the 1200 s recording's loop
    with DockerShadow(sc, on_progress=messages.append) as shadow:
        shadow.launch(1)
        t0 = shadow._t0
        time.sleep(max(0.0, t0 + measure_s + 1.0 - time.time()))
        log = shadow._logs["edge"]
        counts = _sent_per_second(log, t0, measure_s)
        failed = sum(int(np.sum(log.window(t0 + i, t0 + i + 1)[1])) for i in range(measure_s))
        sent = Counter(shadow._generator.sent)
        plan = shadow._generator.replay
        # an injection moves the recording by its start offset and scales it by its load,
        # as the simulator's pattern(offset + t) x load does: 300 s in (the 200 rps half of
        # the recording at 2x), half the load
        shadow.inject(Injection("replay", "version", "web", None, (), onset_s=3600.0,
                                load_multiplier=0.5, start_offset_s=300.0))
        began = time.time()
        time.sleep(3.3)
        after = len(log.window(began + 0.1, began + 3.1)[0])
    assert plan is not None
    speed = COMPRESSION * 2.0  # recording seconds per wall second

    def planned(start: float, end: float, load: float = 1.0) -> float:
        """What the generator should send for recording positions [start, end): the plan's
        arrivals (the recording thinned once on the host) x its keep."""
        n = len(list(replay_window(plan.offsets, plan.duration_s, True, start, end)))
        return n * plan.keep * load

    def live(start: float, end: float, load: float = 1.0) -> float:
        """The same from the recording itself: live requests x sample fraction / k."""
        return float(rec.live_count(start, end, True)) * 0.1 / COMPRESSION * load

    at = (300 + (began + 0.1 - t0) * COMPRESSION) * 2
    plan_after, want_after = planned(at, at + 3 * speed, 0.5), live(at, at + 3 * speed, 0.5)
    print(f"after the injection: {after} requests in 3 s; planned {plan_after:.0f}, from "
          f"the recording {want_after:.0f}")
    assert abs(after - plan_after) <= 3 * plan_after**0.5 + 4
    assert any("replaying live.jsonl" in m and "one recorded request in 6.0 is sent" in m
               for m in messages), messages
    # what the shadow should send in each wall second: the live requests the recording holds
    # for those 120 recording seconds (60x, 2x) x sample fraction / compression
    expected = [planned(i * speed, (i + 1) * speed) for i in range(measure_s)]
    recorded_rate = [live(i * speed, (i + 1) * speed) for i in range(measure_s)]
    total, plan_total, want = sum(counts), sum(expected), sum(recorded_rate)
    print(f"replay: {total} requests in {measure_s} s; planned {plan_total:.0f}, from the "
          f"recording {want:.0f}; per second {counts} vs planned "
          f"{[round(e) for e in expected]} vs recording {[round(e) for e in recorded_rate]}")
    # the generator sends what it should, second by second, through a real shadow
    assert abs(total - plan_total) <= 0.06 * plan_total, (counts, expected)
    for got, exp in zip(counts, expected):
        assert abs(got - exp) <= 3 * exp**0.5 + 4, (counts, expected)
    # which is the recording's rate (scaled 2x, looped, x f / k) within sampling noise
    assert abs(plan_total - want) <= 4 * want**0.5, (plan_total, want)
    # following its shape: the 200 rps half of each loop sends about twice the 100 rps half
    low = [i for i, e in enumerate(recorded_rate) if e < 25]
    high = [i for i, e in enumerate(recorded_rate) if e > 35]
    assert low and high and max(low) > min(high)  # looped: the low half came back

    def ratio(xs: list[float] | list[int]) -> float:
        return float(np.mean([xs[i] for i in high]) / np.mean([xs[i] for i in low]))

    assert ratio(counts) == pytest.approx(ratio(expected), rel=0.2)
    assert ratio(recorded_rate) == pytest.approx(2.0, rel=0.15)
    assert failed <= 0.05 * total
    # methods and paths as recorded, mapped for the reference app (GET / POST on '/',
    # keeping the query)
    recorded = {f"/?id={p.split('=', 1)[1]}": m for m, p in zip(rec.methods, rec.paths)}
    assert sum(sent.values()) >= 0.9 * total
    for (method, target), _ in sent.items():
        assert target in recorded, target
        assert method == ("GET" if recorded[target] == "GET" else "POST")
    writes = sum(n for (m, _), n in sent.items() if m == "POST") / sum(sent.values())
    assert writes == pytest.approx(1 / 3, abs=0.08)


def test_replay_record_lines_name_what_was_sent() -> None:
    from shadowrl.shadow.docker.loadgen import Record, format_record, parse_record

    r = Record(1.5, 2.25, 200, None, "POST", "/?id=3")
    assert format_record(r) == "1.500000 2.250 200 - POST /?id=3\n"
    assert parse_record(format_record(r)) == r
    assert parse_record("1.0 3.0 200 - GET") is None  # neither 4 nor 6 fields
    plan = ReplayPlan([0.0, 0.5], ["GET", "POST"], ["/a", "/b?c=d"], 1.0, bodies={1: b"{}"})
    assert plan.speed == 1.0 and plan.shortfall() == 0.0
    assert ReplayPlan([0.0], ["GET"], ["/"], 1.0, keep=4.0).shortfall(0.5) == 0.5

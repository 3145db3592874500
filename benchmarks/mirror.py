"""Mirror overhead: live's latency direct vs through ``shadowrl mirror``, side by side, with a
healthy and a hanging shadow, and the mirror's throughput ceiling on this machine.

Three processes: the upstream servers (a live answering at once, a healthy shadow, a
shadow that hangs 30 s on every request), the mirror (``shadowrl.live.mirror.run``, as
the command runs it) and this one, the client. Latency: sequential keep-alive requests,
alternating direct and through the mirror, so the machine's other load hits both alike;
p50 and p99 of each, their differences and ratios, per (shadow, percent). Throughput:
``--concurrency`` clients, in turns of ``--seconds / --rounds`` seconds: direct, through a
mirror at P=10 with a healthy shadow, through one at P=100 with a hanging shadow (so a
burst of other load hits all three); client, mirrors and live share this
machine's cores, so the ceiling is this machine's, load generator included. One JSON
object goes to stdout; progress to stderr.

    python benchmarks/mirror.py                          # 2000 requests per phase, 50 x 5 s
    python benchmarks/mirror.py --requests 500 --seconds 2
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the processes


def serve_upstream() -> None:
    """Live, a healthy shadow and a hanging shadow on free ports; their ports as JSON."""
    from aiohttp import web

    async def live(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="live ok")

    async def shadow(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="shadow ok")

    async def hanging(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")

    async def main() -> None:
        ports = {}
        for name, handler in (("live", live), ("shadow", shadow), ("hanging", hanging)):
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            ports[name] = runner.addresses[0][1]
        print(json.dumps(ports), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_mirror(live: str, shadow: str, percent: float) -> None:
    """The mirror with the command's defaults; its URL on stdout when ready, its final
    stats as JSON on stdout after SIGINT."""
    from shadowrl.live.mirror import MirrorConfig, run

    stats = run(MirrorConfig(live=live, shadow=shadow, percent=percent, port=0, seed=0),
                on_ready=lambda url: print(url, flush=True))
    print(json.dumps(stats), flush=True)


class Child:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.first = self.proc.stdout.readline().strip()

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- measurements


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(values), 3),
            "p99_ms": round(percentile(values, 0.99), 3)}


def side_by_side(live_port: int, mirror_port: int, requests: int,
                 warmup: int) -> dict[str, Any]:
    """Sequential GETs alternating between live and the mirror on keep-alive connections."""
    conns = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=30)
             for name, port in (("direct", live_port), ("mirror", mirror_port))}
    times: dict[str, list[float]] = {"direct": [], "mirror": []}
    for i in range(warmup + requests):
        for name, conn in conns.items():
            t0 = time.perf_counter()
            conn.request("GET", f"/item?id={i}")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{name}: status {response.status}")
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1000)
    for conn in conns.values():
        conn.close()
    direct, mirror = summary(times["direct"]), summary(times["mirror"])
    return {"direct": direct, "mirror": mirror,
            "added_ms": {k: round(mirror[f"{k}_ms"] - direct[f"{k}_ms"], 3)
                         for k in ("p50", "p99")},
            "ratio": {k: round(mirror[f"{k}_ms"] / direct[f"{k}_ms"], 3)
                      for k in ("p50", "p99")}}


async def _load(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []  # ms
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal errors
        i = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                async with session.get(f"{url}/item?c={n}&i={i}") as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            latencies.append((time.perf_counter() - t0) * 1000)
            errors += not ok
            i += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, n) for n in range(concurrency)))
    return {"latencies": latencies, "errors": errors,
            "seconds": time.perf_counter() - started}


def throughput(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    return asyncio.run(_load(url, concurrency, seconds))


def merged(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's slices: requests per second over all of them, the median slice's rate
    (robust to a burst of other load), latency percentiles under load."""
    latencies = [x for part in slices for x in part["latencies"]]
    rates = [len(part["latencies"]) / part["seconds"] for part in slices]
    return {"requests": len(latencies), "errors": sum(part["errors"] for part in slices),
            "rps": round(len(latencies) / sum(part["seconds"] for part in slices), 1),
            "rps_median_slice": round(statistics.median(rates), 1), **summary(latencies)}


def stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/__mirror/stats", timeout=30) as r:
        return json.loads(r.read())


COVERAGE_KEYS = ("seen", "sampled", "mirrored", "dropped", "failed", "queued", "in_flight")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000,
                    help="sequential requests per side per latency phase")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=5.0,
                    help="throughput: seconds of load per target, in --rounds slices")
    ap.add_argument("--rounds", type=int, default=5,
                    help="throughput: the targets take turns, one slice each per round")
    ap.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve-mirror", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_upstream:
        return serve_upstream()
    if args.serve_mirror:
        live, shadow, percent = args.serve_mirror
        return serve_mirror(live, shadow, float(percent))

    load_before = os.getloadavg()
    upstream = Child("--serve-upstream")
    children = [upstream]
    try:
        ports = json.loads(upstream.first)
        url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        latency = []
        for shadow in ("healthy", "hanging"):
            for percent in (10, 100):
                _log(f"latency: shadow {shadow}, {percent} %")
                mirror = Child("--serve-mirror", url["live"],
                               url["shadow" if shadow == "healthy" else "hanging"],
                               str(percent))
                children.append(mirror)
                port = int(mirror.first.rsplit(":", 1)[1])
                row = side_by_side(ports["live"], port, args.requests, args.warmup)
                s = stats(mirror.first)
                mirror.stop()
                latency.append({"shadow": shadow, "percent": percent, **row,
                                "coverage": {k: s[k] for k in COVERAGE_KEYS}})
        targets = {"direct": url["live"]}
        for shadow, percent in (("healthy", 10), ("hanging", 100)):
            mirror = Child("--serve-mirror", url["live"],
                           url["shadow" if shadow == "healthy" else "hanging"], str(percent))
            children.append(mirror)
            targets[f"{shadow}-{percent}"] = mirror.first
        slices: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for r in range(args.rounds):
            _log(f"throughput: round {r + 1}/{args.rounds}, {args.concurrency} clients x "
                 f"{args.seconds / args.rounds:g} s each, direct and through the mirrors")
            for name, target in targets.items():
                slices[name].append(throughput(target, args.concurrency,
                                               args.seconds / args.rounds))
        loaded = {name: merged(parts) for name, parts in slices.items()}
        rows = []
        for name, target in targets.items():
            if name == "direct":
                continue
            shadow, percent = name.split("-")
            s = stats(target)
            rows.append({"shadow": shadow, "percent": int(percent), **loaded[name],
                         "ratio_rps": round(loaded[name]["rps"] / loaded["direct"]["rps"], 3),
                         "coverage": {k: s[k] for k in COVERAGE_KEYS}})
        direct = loaded["direct"]
        for child in children[-2:]:
            child.stop()
    finally:
        for child in children:
            child.kill()
    result = {
        "benchmark": "mirror",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    "loadavg_1m_before": round(load_before[0], 2),
                    "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "settings": {"requests": args.requests, "warmup": args.warmup,
                     "concurrency": args.concurrency, "seconds": args.seconds,
                     "rounds": args.rounds, "shadow_timeout_s": 1.0, "queue": 1000,
                     "senders": 8},
        "latency": latency,
        "throughput": {"direct": direct, "mirror": rows},
        "command": " ".join(["python", "benchmarks/mirror.py", *sys.argv[1:]]),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

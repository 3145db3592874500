"""``shadowrl mirror``: a proxy in front of live copying a share of its traffic to the shadow
(docs/mirror.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from shadowrl.cli.commands import JSON_HELP
from shadowrl.cli.render import bad_input_exits_2, emit_json, err, out

MIRROR_HELP = (
    "Put a proxy in front of live: every request goes to live unchanged, and a sampled "
    "share is copied to the shadow fire-and-forget (its answers are dropped; a slow or dead "
    "shadow never slows live: copies beyond --queue are dropped and counted). Only GET, HEAD "
    "and OPTIONS are copied unless --mirror-writes; copies carry `X-Shadowrl-Mirror: 1`. "
    "Coverage is served at /__mirror/metrics (Prometheus) and /__mirror/stats (JSON) on the "
    "same address, never forwarded to live. Runs until Ctrl-C or SIGTERM, then prints the "
    "coverage (seen, mirrored, dropped) and exits 0; 2 on bad input.")


def mirror_cmd(
    live: str = typer.Option(..., help="Live's base URL, e.g. http://10.0.0.5:8000 (a path "
                                       "prefix is kept)."),
    shadow: str = typer.Option(..., help="The shadow's base URL."),
    percent: float = typer.Option(..., help="Share of requests copied to the shadow, 0-100 "
                                            "(steps of 0.01)."),
    listen: str = typer.Option("127.0.0.1:8080", help="HOST:PORT to accept live's traffic on "
                                                      "(port 0: any free port)."),
    sample_key: str | None = typer.Option(
        None, help="header:NAME or cookie:NAME: sample per user, the same user always in or "
                   "out; requests without it are sampled at random."),
    mirror_writes: bool = typer.Option(
        False, "--mirror-writes", help="Also copy POST, PUT, PATCH and DELETE (only when the "
                                       "shadow cannot write to live's data)."),
    record: Path | None = typer.Option(
        None, help="Record the sampled requests to this new JSON Lines file (for replay)."),
    queue: int = typer.Option(1000, help="Shadow copies waiting at most; more are dropped."),
    senders: int = typer.Option(8, help="Concurrent requests to the shadow."),
    shadow_timeout: float = typer.Option(1.0, help="Seconds a shadow copy may take."),
    seed: int | None = typer.Option(None, help="Seed of random sampling (a reproducible "
                                               "share)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Mirror live's traffic to the shadow (MIRROR_HELP)."""
    from shadowrl.app.mirror import MirrorRequest, mirror

    request = MirrorRequest(live=live, shadow=shadow, percent=percent, listen=listen,
                            sample_key=sample_key, mirror_writes=mirror_writes, record=record,
                            queue=queue, senders=senders, shadow_timeout=shadow_timeout,
                            seed=seed)

    def ready(url: str) -> None:
        err.print(f"mirror: listening on {url} -> live {request.live}, {percent:g} % to "
                  f"shadow {request.shadow}; coverage at {url}/__mirror/stats and "
                  f"{url}/__mirror/metrics; Ctrl-C stops", markup=False)
        sys.stderr.flush()

    try:
        with bad_input_exits_2():
            result = mirror(request, on_ready=ready)
    except KeyboardInterrupt:  # a second Ctrl-C during the shutdown
        err.print("interrupted during shutdown: no summary", markup=False)
        raise typer.Exit(130) from None
    if json_out:
        emit_json(result)
        return
    share = "n/a" if result.mirrored_share is None else f"{result.mirrored_share:.2%}"
    out.print(f"seen {result.seen}: not sampled {result.not_sampled}, writes skipped "
              f"{result.writes_skipped}, sampled {result.sampled}", markup=False)
    out.print(f"shadow copies: mirrored {result.mirrored}, failed {result.failed}, dropped "
              f"{result.dropped} (queue full), unsent {result.unsent}; mirrored share {share} "
              f"(--percent {result.percent:g})", markup=False)
    if result.live_errors:
        out.print(f"live errors: {result.live_errors} (answered 502/504)", markup=False)
    if result.record is not None:
        out.print(f"recorded {result.recorded} requests to {result.record}"
                  + (f" ({result.record_dropped} missed)" if result.record_dropped else ""),
                  markup=False)

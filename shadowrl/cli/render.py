"""How the commands show results: rich text and tables on stdout, one JSON object with
``--json``, progress bars and errors on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shadowrl.app.common import ProgressFn
from shadowrl.app.errors import UsageError
from shadowrl.app.models import (
    RehearsalResult,
    RehearsalSummary,
    ResultModel,
    TrainResult,
    ValidateResult,
)
from shadowrl.core.extras import MissingExtraError
from shadowrl.core.plan import describe_settings
from shadowrl.core.spec import Problem, SpecError

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)


def fail(problems: list[Problem] | str) -> NoReturn:
    """Bad input: ``error: MESSAGE`` or one ``file:line: field: message`` line per problem
    on stderr, exit 2."""
    if isinstance(problems, str):
        sys.stderr.write(f"error: {problems}\n")
    else:
        for p in problems:
            sys.stderr.write(f"{p}\n")
    raise typer.Exit(2)


@contextmanager
def bad_input_exits_2() -> Iterator[None]:
    """The use cases' input errors, as the command line reports them."""
    try:
        yield
    except SpecError as exc:
        fail(exc.problems)
    except UsageError as exc:
        fail(str(exc))
    except MissingExtraError as exc:  # an optional dependency the command needs is absent
        fail(str(exc))


@contextmanager
def progress_bars() -> Iterator[ProgressFn]:
    """An ``on_progress(done, total, label)`` callback drawing one transient bar per label
    on stderr. The display starts with the first report, so a command that fails on its
    input shows nothing but the error."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=err, transient=True)
    tasks: dict[str, Any] = {}

    def on_progress(done: int, total: int, label: str) -> None:
        if not tasks:
            bar.start()
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total)
        bar.update(tasks[label], completed=done, total=total)

    try:
        yield on_progress
    finally:
        if tasks:
            bar.stop()


def emit_json(result: ResultModel) -> None:
    sys.stdout.write(json.dumps(result.model_dump(mode="json"), indent=2) + "\n")
    sys.stdout.flush()


def print_validation(result: ValidateResult) -> None:
    for check in result.files:
        for p in check.problems:
            sys.stderr.write(f"{p}\n")
        if check.ok:
            out.print(f"ok: {check.path}", markup=False)


def print_summary(summary: RehearsalSummary, outputs: dict[str, str] | None = None) -> None:
    o = summary.outcomes
    d = summary.downtime_s
    out.print(f"[bold]{summary.scenario}[/] policy [bold]{summary.policy}[/]: "
              f"{summary.runs} runs, [green]{o.recovered} recovered[/], "
              f"[red]{o.rollback_failed} failed[/], "
              f"[red]{o.rollback_ineffective} ineffective[/]")
    out.print(f"downtime mean {d.mean:.0f}s  p50 {d.p50:.0f}s  p95 {d.p95:.0f}s  "
              f"max {d.max:.0f}s; failed requests mean "
              f"{summary.failed_requests.mean:.0f}")
    b = summary.budget_burn
    out.print(f"error budget burn mean {b.mean:.3%}  p50 {b.p50:.3%}  p95 {b.p95:.3%}  "
              f"max {b.max:.3%}; bad requests mean {summary.bad_requests.mean:.0f}; "
              f"full outage mean {summary.outage_s.mean:.0f}s")
    table = Table("step", "mean s", "p95 s", "downtime share")
    for s in summary.steps:
        table.add_row(s.name, f"{s.mean_s:.0f}", f"{s.p95_s:.0f}", f"{s.downtime_share:.0%}")
    out.print(table)
    for a in summary.alerts:
        out.print(f"[yellow]{a.kind}[/] x{a.count}: {a.message}", markup=True,
                  highlight=False)
    for key, path in (outputs or {}).items():
        out.print(f"{key}: {path}")


def print_rehearsal(data: RehearsalResult) -> None:
    colour = {"recovered": "green", "rollback_failed": "red",
              "rollback_ineffective": "red"}[data.outcome]
    out.print(f"[bold]{data.scenario}[/] incident [bold]{data.incident}[/] "
              f"(seed {data.seed}, backend {data.backend}): "
              f"[{colour}]{data.outcome}[/]")
    out.print(f"breach at {data.breach_at_s:.0f}s, rollback took {data.rollback_s:.0f}s, "
              f"downtime {data.downtime_s:.0f}s, failed requests "
              f"{data.failed_requests:.0f}")
    restored = ("not restored" if data.restored_s is None
                else f"SLO restored {data.restored_s:.0f}s after the breach")
    out.print(f"error budget burn {data.budget_burn:.3%} ({data.bad_requests:.0f} bad "
              f"requests), full outage {data.outage_s:.0f}s, peak edge error rate "
              f"{data.peak_error_rate:.1%}; {restored}")
    table = Table("step", "status", "settings", "start s", "end s", "downtime s", "failed req")
    for s in data.steps:
        table.add_row(s.name, s.status, describe_settings(s.settings), f"{s.start_s:.0f}",
                      f"{s.end_s:.0f}", f"{s.downtime_s:.0f}", f"{s.failed_requests:.0f}")
    out.print(table)
    for a in data.alerts:
        style = "red" if a.severity == "critical" else "yellow"
        out.print(f"[{style}]{a.severity}[/] {a.kind}: {a.message}", highlight=False)


def print_train(result: TrainResult) -> None:
    champion = result.champion
    out.print(f"run {result.run_id} in {result.tracking_uri}")
    holder = (f"version {champion.champion_version}" if champion.champion_version
              else "none yet")
    out.print(f"registered {result.model} version {result.version}; champion: {holder} "
              f"({'promoted' if champion.promoted else 'kept'})")
    if champion.reason:
        out.print(f"  decision: {champion.reason}", markup=False)
    for who, share in champion.recovered.items():
        burn = champion.budget_burn.get(who)
        out.print(f"  {who:12s} recovered {share:.0%}"
                  + (f"  mean budget burn {burn:.3%}" if burn is not None else ""),
                  markup=False)
    if champion.test:
        p = "n/a" if champion.p_value is None else f"{champion.p_value:.4f}"
        out.print(f"  paired test on budget burn: {champion.test}, p = {p} "
                  f"(seeds {champion.seeds})", markup=False)
    out.print(f"held-out results (objective: {result.objective}):")
    for name, d in result.methods.items():
        burn = result.budget_burn.get(name)
        out.print(f"  {name:12s} downtime mean {d.mean:.0f}s p95 {d.p95:.0f}s"
                  + (f"  budget burn mean {burn.mean:.3%} p95 {burn.p95:.3%}"
                     if burn is not None else ""), markup=False)
    out.print(f"comparison: {result.comparison}")

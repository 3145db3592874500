"""How the commands show results: rich text and tables on stdout, one JSON object with
``--json``, progress bars and errors on stderr.

On a terminal, text and tables fit its width (a long name folds onto the next line, it is
never cut). Piped or redirected, nothing is cut or wrapped: every line of text and every
table row is one line, however long, so ``grep`` and logs see whole names and settings.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shadowrl.app.common import ProgressFn
from shadowrl.app.errors import UsageError
from shadowrl.app.export import ExportReport
from shadowrl.app.models import (
    AlertGroup,
    RehearsalResult,
    RehearsalSummary,
    ResultModel,
    TrainResult,
    ValidateResult,
)
from shadowrl.core.errors import BackendUnavailable, SnapshotUnsupported
from shadowrl.core.extras import MissingExtraError
from shadowrl.core.plan import describe_settings
from shadowrl.core.spec import Problem, SpecError
from shadowrl.rehearsal.verification import summary_line

err = Console(stderr=True, highlight=False, soft_wrap=True)

PIPE_WIDTH = 100_000
"""The width of stdout when it is not a terminal: wide enough that no table is wrapped."""


class _Stdout:
    """stdout's console, made for the stream stdout is when it prints (tests and callers may
    swap ``sys.stdout``): a terminal gets its width and colours; anything else gets plain
    text, each line whole (``soft_wrap``) and tables at their natural width."""

    def console(self) -> Console:
        if sys.stdout.isatty():
            return Console(highlight=False)
        return Console(highlight=False, width=PIPE_WIDTH, soft_wrap=True)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self.console().print(*objects, **kwargs)


out = _Stdout()


def table(*headers: str) -> Table:
    """A results table whose cells are never cut: on a narrow terminal a long value folds
    onto the next line instead of ending in an ellipsis (``disable-n…``), and the table
    stays within the terminal (a minimum column width would push columns off its edge)."""
    t = Table()
    for header in headers:
        t.add_column(header, overflow="fold")
    return t


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
    except SnapshotUnsupported as exc:  # a method the chosen backend cannot run
        fail(str(exc))
    except BackendUnavailable as exc:  # the machine, not the input: exit 1, no traceback
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(1) from None


@contextmanager
def progress_bars() -> Iterator[ProgressFn]:
    """An ``on_progress(done, total, label)`` callback drawing a transient bar on stderr when
    it is a terminal (nothing otherwise). The display starts with the first report, so a
    command that fails on its input shows nothing but the error.

    Only the bar of the latest label is shown (the use cases report their phases one after
    another), so the display is one line: a line written meanwhile, through ``sys.stderr``
    or straight to file descriptor 2 like rehearse's Ctrl-C acknowledgement, stays above it.
    A redraw of a taller display would move up into that line and erase it."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=err, transient=True)
    tasks: dict[str, Any] = {}
    shown: list[Any] = []  # the one task on screen

    def on_progress(done: int, total: int, label: str) -> None:
        if not err.is_terminal:  # a log file: no bar, and no blank line where it stood
            return
        if not tasks:
            bar.start()
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total)
        task = tasks[label]
        if shown and shown[0] != task:
            bar.update(shown[0], visible=False)
        shown[:] = [task]
        bar.update(task, completed=done, total=total, visible=True)

    try:
        yield on_progress
    finally:
        if tasks:
            bar.stop()


def emit_json(result: ResultModel) -> None:
    sys.stdout.write(json.dumps(result.model_dump(mode="json"), indent=2) + "\n")
    sys.stdout.flush()


def print_validation(result: ValidateResult, json_out: bool = False) -> None:
    """Problems on stderr, ``ok: FILE`` on stdout (not with ``--json``: its object says it)."""
    for check in result.files:
        for p in check.problems:
            sys.stderr.write(f"{p}\n")
        if check.ok and not json_out:
            out.print(f"ok: {check.path}", markup=False)


def print_export(result: ExportReport) -> None:
    """The exported text on stdout, or ``wrote FILE`` on stderr; then, for a policy source,
    what was exported in its place (stderr, so piped text stays the export alone)."""
    if result.written is None:
        sys.stdout.write(result.text)
        sys.stdout.flush()
    else:
        sys.stderr.write(f"wrote {result.written}\n")
    if result.policy is not None:
        sys.stderr.write(f"exported: {result.exported}\n")


def print_summary(summary: RehearsalSummary, outputs: dict[str, str] | None = None) -> None:
    o = summary.outcomes
    d = summary.downtime_s
    out.print(f"[bold]{escape(summary.scenario)}[/] policy [bold]{escape(summary.policy)}[/]: "
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
    steps = table("step", "mean s", "p95 s", "downtime share")
    for s in summary.steps:
        steps.add_row(escape(s.name), f"{s.mean_s:.0f}", f"{s.p95_s:.0f}",
                      f"{s.downtime_share:.0%}")
    out.print(steps)
    for a in summary.alerts:
        out.print(f"[yellow]{escape(a.kind)}[/]: {escape(alert_group_text(a, summary.runs))}")
    for key, path in (outputs or {}).items():
        out.print(f"{key}: {path}", markup=False)


def alert_group_text(group: AlertGroup, runs: int) -> str:
    """An alert group after its kind: the count labelled as alerts (a run can raise several,
    so the count may exceed the runs), where, in how many runs, and an example."""
    where = f" at step '{group.step}'" if group.step else ""
    alerts = "1 alert" if group.count == 1 else f"{group.count} alerts"
    return f"{alerts}{where} in {group.runs} of {runs} runs; e.g. {group.example}"


def print_rehearsal(data: RehearsalResult) -> None:
    colour = {"recovered": "green", "rollback_failed": "red",
              "rollback_ineffective": "red"}[data.outcome]
    out.print(f"[bold]{escape(data.scenario)}[/] incident [bold]{escape(data.incident)}[/] "
              f"(seed {data.seed}, backend {escape(data.backend)}): "
              f"[{colour}]{data.outcome}[/]")
    out.print(f"breach at {data.breach_at_s:.0f}s, rollback took {data.rollback_s:.0f}s, "
              f"downtime {data.downtime_s:.0f}s, failed requests "
              f"{data.failed_requests:.0f}")
    restored = ("not restored" if data.restored_s is None
                else f"SLO restored {data.restored_s:.0f}s after the breach")
    out.print(f"error budget burn {data.budget_burn:.3%} ({data.bad_requests:.0f} bad "
              f"requests), full outage {data.outage_s:.0f}s, peak edge error rate "
              f"{data.peak_error_rate:.1%}; {restored}")
    steps = table("step", "status", "settings", "start s", "end s", "downtime s", "failed req")
    for s in data.steps:
        steps.add_row(escape(s.name), s.status, escape(describe_settings(s.settings)),
                      f"{s.start_s:.0f}", f"{s.end_s:.0f}", f"{s.downtime_s:.0f}",
                      f"{s.failed_requests:.0f}")
    out.print(steps)
    for a in data.alerts:
        style = "red" if a.severity == "critical" else "yellow"
        out.print(f"[{style}]{a.severity}[/] {escape(a.kind)}: {escape(a.message)}")


def print_train(result: TrainResult) -> None:
    champion = result.champion
    out.print(f"run {result.run_id} in {result.tracking_uri}", markup=False)
    if result.resumed_from is not None:
        out.print(f"  resumed from the checkpoint at {result.resumed_from} timesteps",
                  markup=False)
    for stale in result.stale_runs:
        out.print(f"  marked FAILED (its process is gone): run {stale}", markup=False)
    holder = (f"version {champion.champion_version}" if champion.champion_version
              else "none yet")
    out.print(f"registered {result.model} version {result.version}; champion: {holder} "
              f"({'promoted' if champion.promoted else 'kept'})", markup=False)
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
    v = result.verification
    out.print(f"verification: {summary_line(v)}" if v is not None else
              "verification: none (the experiment names no real backend to verify on)",
              markup=False)
    out.print(f"held-out results (objective: {result.objective}):")
    for name, d in result.methods.items():
        burn = result.budget_burn.get(name)
        out.print(f"  {name:12s} downtime mean {d.mean:.0f}s p95 {d.p95:.0f}s"
                  + (f"  budget burn mean {burn.mean:.3%} p95 {burn.p95:.3%}"
                     if burn is not None else ""), markup=False)
    out.print(f"comparison: {result.comparison}", markup=False)

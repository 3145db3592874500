"""Many rehearsals in a row: progress, Ctrl-C safety, and the output folder.

Run ``i`` uses seed ``seed + i``, so two procedures rehearsed with the same seed face the same
incidents. An interrupted campaign keeps every finished run and writes consistent outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shadowrl.analysis.summary import summarize
from shadowrl.core.atomic import atomic_write_json
from shadowrl.core.plan import Plan
from shadowrl.core.spec import Procedure, Scenario
from shadowrl.rehearsal.alerts import Alert, dispatch, sinks_from_options
from shadowrl.rehearsal.deviation import DeviationSimulator, HistoryModel
from shadowrl.rehearsal.runner import Rehearsal, rehearse


@dataclass
class Campaign:
    runs: list[Rehearsal] = field(default_factory=list)
    interrupted: bool = False


def progress_bar(console: Console | None = None, disable: bool = False) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console or Console(stderr=True),
                    transient=True, disable=disable)


def run_campaign(scenario: Scenario, n_runs: int, seed: int = 0, *,
                 procedure: Procedure | None = None, plan: Plan | None = None,
                 history: HistoryModel | None = None, at: str = "now",
                 record_profile: bool = False, show_progress: bool = True,
                 rehearse_fn: Callable[..., Rehearsal] = rehearse) -> Campaign:
    """Rehearse ``n_runs`` incidents; Ctrl-C stops after the finished runs."""
    deviation = DeviationSimulator(scenario, history=history, at=at)  # type: ignore[arg-type]
    campaign = Campaign()
    with progress_bar(disable=not show_progress) as bar:
        task = bar.add_task(f"rehearsing {scenario.name}", total=n_runs)
        try:
            for i in range(n_runs):
                campaign.runs.append(rehearse_fn(scenario, seed + i, procedure=procedure,
                                                 plan=plan, deviation=deviation,
                                                 record_profile=record_profile))
                bar.advance(task)
        except KeyboardInterrupt:
            campaign.interrupted = True
    return campaign


def all_alerts(runs: Sequence[Rehearsal]) -> list[Alert]:
    out = []
    for k, r in enumerate(runs):
        for a in r.alerts:
            out.append(Alert(a.kind, a.severity, a.step, a.message, a.scenario, a.incident, k,
                             a.seed, a.value, a.at_s))
    return out


def send_alerts(alerts: Sequence[Alert], out_dir: Path | None,
                webhook: str | None) -> list[str]:
    """``alerts.json`` in the output folder (always, atomically), then the webhook if any.

    A failing webhook never loses alerts: without an output folder they go to
    ``shadowrl-alerts.json`` in the working directory.
    """
    if out_dir is not None:
        atomic_write_json(out_dir / "alerts.json", [a.to_record() for a in alerts])
    fallback = None if out_dir is not None else Path("shadowrl-alerts.json")
    return dispatch(list(alerts), sinks_from_options(webhook, None, False), fallback)


def write_outputs(out_dir: Path, scenario: Scenario, summary: dict[str, Any],
                  runs: Sequence[Rehearsal], command: str) -> dict[str, str]:
    """summary.json, profiles.parquet and report.html, each written atomically."""
    from shadowrl.analysis.profile import write_profiles
    from shadowrl.analysis.report import write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out_dir / "summary.json", "profiles": out_dir / "profiles.parquet",
             "report": out_dir / "report.html", "alerts": out_dir / "alerts.json"}
    write_profiles(paths["profiles"], runs)
    write_report(paths["report"], scenario, summary, runs, command)
    atomic_write_json(paths["summary"], summary)
    return {k: str(v) for k, v in paths.items()}


def summarize_campaign(scenario: Scenario, policy: str, campaign: Campaign) -> dict[str, Any]:
    summary = summarize(scenario.name, policy, campaign.runs)
    if campaign.interrupted:
        summary["interrupted"] = True
    return summary

"""Many rehearsals in a row: Ctrl-C safety and the output folder.

Run ``i`` uses seed ``seed + i``, so two procedures rehearsed with the same seed face the same
incidents. An interrupted campaign keeps every finished run and writes consistent outputs.
Progress goes to an ``on_run`` callback; drawing it is the caller's business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shadowrl.analysis.summary import RehearsalSummary, ResultModel
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


class OutputFiles(ResultModel):
    """The files of a rehearsal output folder."""

    summary: str
    profiles: str
    report: str
    alerts: str


def run_campaign(scenario: Scenario, n_runs: int, seed: int = 0, *,
                 procedure: Procedure | None = None, plan: Plan | None = None,
                 history: HistoryModel | None = None, at: str = "now",
                 record_profile: bool = False,
                 rehearse_fn: Callable[..., Rehearsal] = rehearse,
                 on_run: Callable[[int], None] | None = None) -> Campaign:
    """Rehearse ``n_runs`` incidents; Ctrl-C stops after the finished runs. ``on_run`` gets
    the number of finished runs after each one."""
    deviation = DeviationSimulator(scenario, history=history, at=at)  # type: ignore[arg-type]
    campaign = Campaign()
    try:
        for i in range(n_runs):
            campaign.runs.append(rehearse_fn(scenario, seed + i, procedure=procedure,
                                             plan=plan, deviation=deviation,
                                             record_profile=record_profile))
            if on_run is not None:
                on_run(i + 1)
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


def write_outputs(out_dir: Path, scenario: Scenario, summary: RehearsalSummary,
                  runs: Sequence[Rehearsal], command: str) -> OutputFiles:
    """summary.json, profiles.parquet and report.html, each written atomically (alerts.json
    is :func:`send_alerts`'s)."""
    from shadowrl.analysis.profile import write_profiles
    from shadowrl.analysis.report import write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out_dir / "summary.json", "profiles": out_dir / "profiles.parquet",
             "report": out_dir / "report.html", "alerts": out_dir / "alerts.json"}
    write_profiles(paths["profiles"], runs)
    write_report(paths["report"], scenario, summary, runs, command)
    atomic_write_json(paths["summary"], summary.model_dump(mode="json"))
    return OutputFiles(**{k: str(v) for k, v in paths.items()})


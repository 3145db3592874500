"""Use case ``rehearse``: many incidents with one procedure; profile, report and alert.

Ctrl-C during the runs keeps the finished ones: the summary says ``interrupted`` and the
output folder is consistent with it. Each run is written to ``--out`` as it finishes, so
memory holds only compact records (docs/rehearsal-outputs.md).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from shadowrl.analysis.summary import summarize
from shadowrl.app.common import (
    ProgressFn,
    counting,
    history_for,
    procedure_for,
    ray_context,
    with_params,
)
from shadowrl.app.errors import UsageError
from shadowrl.app.models import CampaignSummary
from shadowrl.core.errors import NoBreachError
from shadowrl.core.spec import Procedure, Scenario, load_scenario
from shadowrl.rehearsal import campaign as campaigns
from shadowrl.rehearsal.alerts import WEBHOOK_ENV, check_webhook_url, webhook_url_from
from shadowrl.rehearsal.deviation import HistoryModel

AT = ("now", "peak")
# where alerts go when a webhook fails and no output folder holds alerts.json
FALLBACK_ALERTS = Path("shadowrl-alerts.json")


class RehearseRequest(BaseModel):
    file: Path
    params: Path | None = None  # simulator parameters (--params); over simulator.params
    runs: int = Field(default=20, ge=1)  # run i uses seed + i
    seed: int = 0
    procedure: Path | None = None  # a file with a `procedure:` block; default: the scenario's
    out: Path | None = None  # report.html, profiles.parquet, alerts.json and summary.json
    history: Path | None = None  # Prometheus .json or .csv; overrides deviations.history
    at: str = "now"  # now | peak: place incidents at the forecast peak
    alert_webhook: str | None = None  # Alertmanager-style URL (or SHADOWRL_ALERT_WEBHOOK)
    replicas: int = Field(default=1, ge=1)  # parallel shadow replicas (Ray)
    ray_address: str | None = None  # a Ray cluster to join (default: RAY_ADDRESS or local)
    command: str | None = None  # shown in report.html; default: the equivalent command
    backend: Literal["sim", "docker"] = "sim"  # the shadow: simulated, or real containers


def rehearse(request: RehearseRequest, *,
             on_progress: ProgressFn | None = None) -> CampaignSummary:
    """Raises SpecError for a bad scenario or procedure file, UsageError for a bad ``at``,
    history file, ``--out`` folder (checked before any run), a scenario whose incidents
    never breach, or an output file that cannot be written (what was kept is named).

    Ctrl-C is handled here (see ``campaign.CtrlC``): the first press stops the runs and
    writes the finished ones, later presses cannot cut the writing short. Its notices are
    the only thing this use case writes itself (to stderr, from the signal handler, where
    no callback can safely run)."""
    if request.at not in AT:
        raise UsageError(f"--at must be 'now' or 'peak', not {request.at!r}")
    _check_webhook(request.alert_webhook)
    sc = with_params(load_scenario(request.file), request.params)
    proc = procedure_for(request.procedure, sc)
    hist = history_for(request.history, sc)
    folder = _open_out(request.out)
    with campaigns.CtrlC(request.out) as ctrl_c, folder or nullcontext():
        campaign = _run(request, sc, proc, hist, on_progress, folder, ctrl_c)
        return _finish(request, sc, hist, campaign, folder, ctrl_c)


def _open_out(out: Path | None) -> campaigns.OutputFolder | None:
    """The output folder, checked and created before any work (exit 2 naming --out)."""
    if out is None:
        return None
    try:
        return campaigns.OutputFolder.open(out)
    except campaigns.OutputError as exc:
        raise UsageError(f"--out {out}: {exc}") from None


def _finish(request: RehearseRequest, sc: Scenario, hist: HistoryModel | None,
            campaign: campaigns.Campaign, folder: campaigns.OutputFolder | None,
            ctrl_c: campaigns.CtrlC) -> CampaignSummary:
    """Alerts first (alerts.json, then the webhook), the other files, summary.json last.
    A file that cannot be written ends in UsageError after the alerts were delivered."""
    policy = "configured" if request.procedure is None else str(request.procedure)
    summary = CampaignSummary(**dict(summarize(sc.name, policy, campaign.runs)),
                              interrupted=campaign.interrupted,
                              history=hist.source if hist is not None else None)
    failure = campaign.failure
    if folder is not None and failure is None:
        command = request.command or f"shadowrl rehearse {request.file}"
        try:
            folder.finish(sc, summary, campaign.runs, command)
        except campaigns.OutputError as exc:
            failure = exc
    if folder is not None and failure is not None:
        folder.salvage()
    # without alerts.json in the folder, a failed webhook leaves them in the working directory
    fallback = None if folder is not None and folder.has("alerts") else FALLBACK_ALERTS
    if webhook_url_from(request.alert_webhook) is not None:
        summary.alert_errors = campaigns.deliver_alerts(
            campaigns.all_alerts(campaign.runs), request.alert_webhook, fallback)
    if folder is not None and failure is None:
        summary.interrupted = campaign.interrupted or ctrl_c.interrupted
        try:
            summary.outputs = folder.commit_summary(summary)
        except campaigns.OutputError as exc:
            failure = exc
    if failure is not None:
        assert folder is not None
        done = (f"stopped after {len(campaign.runs)} of {request.runs} runs"
                if campaign.failure is not None
                else f"{len(campaign.runs)} of {request.runs} runs finished")
        raise UsageError(f"--out {request.out}: {failure} ({done}; kept "
                         f"{', '.join(folder.kept)})")
    summary.interrupted = campaign.interrupted or ctrl_c.interrupted
    return summary


def _check_webhook(option: str | None) -> None:
    """A bad webhook URL is refused before any rehearsal runs, naming where it came from."""
    url = webhook_url_from(option)
    if url is None:
        return
    try:
        check_webhook_url(url)
    except ValueError as exc:
        where = "--alert-webhook" if option is not None else f"${WEBHOOK_ENV}"
        raise UsageError(f"{where}: {exc}") from None


def _run(request: RehearseRequest, sc: Scenario, proc: Procedure, hist: HistoryModel | None,
         on_progress: ProgressFn | None, folder: campaigns.OutputFolder | None,
         ctrl_c: campaigns.CtrlC) -> campaigns.Campaign:
    """The runs, fanned out over Ray replicas when asked (looked up on the module at call
    time, so a test can wrap ``run_campaign``)."""
    on_run = counting(on_progress, request.runs, f"rehearsing {sc.name}")
    try:
        with ray_context(request.replicas, request.ray_address):
            kwargs: dict[str, Any] = {}
            if request.replicas > 1:
                from shadowrl.integrations.ray import RayRehearseFn

                kwargs["rehearse_fn"] = RayRehearseFn(request.replicas,
                                                      stop=request.seed + request.runs)
            try:
                return campaigns.run_campaign(sc, request.runs, request.seed, procedure=proc,
                                              history=hist, at=request.at,
                                              record_profile=request.out is not None,
                                              on_run=on_run, output=folder, ctrl_c=ctrl_c,
                                              compact=True, backend=request.backend,
                                              **kwargs)
            finally:
                if "rehearse_fn" in kwargs:
                    kwargs["rehearse_fn"].cancel()  # runs fetched ahead and not needed
    except NoBreachError as exc:
        raise UsageError(f"{request.file}: {exc}") from None
    except KeyboardInterrupt:  # before the first run started (while Ray starts, say)
        ctrl_c.stopped()
        return campaigns.Campaign(interrupted=True)

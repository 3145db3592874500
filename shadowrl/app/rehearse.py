"""Use case ``rehearse``: many incidents with one procedure; profile, report and alert.

Ctrl-C during the runs keeps the finished ones: the summary says ``interrupted`` and the
output folder is consistent with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from shadowrl.analysis.summary import summarize
from shadowrl.app.common import (
    ProgressFn,
    counting,
    history_for,
    procedure_for,
    ray_context,
)
from shadowrl.app.errors import UsageError
from shadowrl.app.models import CampaignSummary
from shadowrl.core.errors import NoBreachError
from shadowrl.core.spec import Procedure, Scenario, load_scenario
from shadowrl.rehearsal import campaign as campaigns
from shadowrl.rehearsal.alerts import WEBHOOK_ENV, check_webhook_url, webhook_url_from
from shadowrl.rehearsal.deviation import HistoryModel

AT = ("now", "peak")


class RehearseRequest(BaseModel):
    file: Path
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


def rehearse(request: RehearseRequest, *,
             on_progress: ProgressFn | None = None) -> CampaignSummary:
    """Raises SpecError for a bad scenario or procedure file, UsageError for a bad ``at``,
    history file or a scenario whose incidents never breach."""
    if request.at not in AT:
        raise UsageError(f"--at must be 'now' or 'peak', not {request.at!r}")
    _check_webhook(request.alert_webhook)
    sc = load_scenario(request.file)
    proc = procedure_for(request.procedure, sc)
    hist = history_for(request.history, sc)
    campaign = _run(request, sc, proc, hist, on_progress)
    policy = "configured" if request.procedure is None else str(request.procedure)
    summary = CampaignSummary(**dict(summarize(sc.name, policy, campaign.runs)),
                              interrupted=campaign.interrupted,
                              history=hist.source if hist is not None else None)
    alerts = campaigns.all_alerts(campaign.runs)
    if request.out is not None:
        command = request.command or f"shadowrl rehearse {request.file}"
        summary.outputs = campaigns.write_outputs(request.out, sc, summary, campaign.runs,
                                                  command)
    summary.alert_errors = campaigns.send_alerts(alerts, request.out, request.alert_webhook)
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
         on_progress: ProgressFn | None) -> campaigns.Campaign:
    """The runs, fanned out over Ray replicas when asked (looked up on the module at call
    time, so a test can wrap ``run_campaign``)."""
    on_run = counting(on_progress, request.runs, f"rehearsing {sc.name}")
    try:
        with ray_context(request.replicas, request.ray_address):
            kwargs: dict[str, Any] = {}
            if request.replicas > 1:
                from shadowrl.integrations.ray import RayRehearseFn

                kwargs["rehearse_fn"] = RayRehearseFn(request.replicas,
                                                      window=max(request.runs, 1))
            return campaigns.run_campaign(sc, request.runs, request.seed, procedure=proc,
                                          history=hist, at=request.at,
                                          record_profile=request.out is not None,
                                          on_run=on_run, **kwargs)
    except NoBreachError as exc:
        raise UsageError(f"{request.file}: {exc}") from None

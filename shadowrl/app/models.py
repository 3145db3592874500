"""The typed results of the use cases: what the commands print with ``--json`` and what an
HTTP API would serve.

``model_dump(mode="json")`` of a result is exactly the JSON object the command prints (same
keys, same order, same rounding). The summaries the library computes are defined beside the
code that computes them and re-exported here, so the library never imports the app layer.
"""

from __future__ import annotations

from typing import Any, Literal

from shadowrl.analysis.summary import (
    AlertGroup,
    Cost,
    EvaluationSummary,
    Outcomes,
    RehearsalSummary,
    ResultModel,
    Stats,
    StepStats,
)
from shadowrl.core.results import StepStatus
from shadowrl.core.spec import Problem
from shadowrl.rehearsal.campaign import OutputFiles
from shadowrl.rehearsal.verification import Verification
from shadowrl.rl.results import OptimizeResult, OracleInfo, RlInfo, SearchInfo

__all__ = [
    "AlertGroup", "CampaignSummary", "Cost", "EvaluationSummary", "ExportResult", "FileCheck",
    "OptimizeResult", "OracleInfo", "Outcomes", "OutputFiles", "Promotion", "RayInfo",
    "RehearsalAlert", "RehearsalResult", "RehearsalStep", "RehearsalSummary", "ResultModel",
    "RlInfo", "SearchInfo", "Stats", "StepStats", "SweepResult", "SweepTrial", "TrainResult",
    "ValidateResult", "Verification",
]

Outcome = Literal["recovered", "rollback_failed", "rollback_ineffective"]


# --------------------------------------------------------------------------- validate


class FileCheck(ResultModel):
    """One scenario file: fine, or its problems (each names file, line and field)."""

    path: str
    problems: list[Problem] = []

    @property
    def ok(self) -> bool:
        return not self.problems


class ValidateResult(ResultModel):
    files: list[FileCheck]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)


# --------------------------------------------------------------------------- simulate


class RehearsalStep(ResultModel):
    name: str
    status: StepStatus
    settings: dict[str, Any]
    start_s: float
    end_s: float
    downtime_s: float
    failed_requests: float
    bad_requests: float


class RehearsalAlert(ResultModel):
    kind: str
    severity: Literal["critical", "warning"]
    step: str | None
    message: str


class RehearsalResult(ResultModel):
    """One incident rehearsed step by step (``simulate --json``)."""

    scenario: str
    backend: str
    incident: str
    seed: int
    outcome: Outcome
    breach_at_s: float
    rollback_s: float
    downtime_s: float
    failed_requests: float
    bad_requests: float  # failed or slower than the objective's latency threshold
    budget_burn: float  # share of the objective's window error budget
    outage_s: float  # seconds with the edge error rate at a full outage's level
    peak_error_rate: float  # the highest edge error rate after the breach
    restored_s: float | None  # seconds after the breach the SLO was restored for good
    steps: list[RehearsalStep]
    alerts: list[RehearsalAlert]


# --------------------------------------------------------------------------- rehearse


class CampaignSummary(RehearsalSummary):
    """Many incidents rehearsed (``rehearse --json``): the summary, whether Ctrl-C cut it
    short, the history it replayed, the files it wrote and the alert deliveries that failed."""

    omit_when_empty = frozenset({"interrupted", "history", "outputs", "alert_errors"})
    interrupted: bool = False
    history: str | None = None
    outputs: OutputFiles | None = None
    alert_errors: list[str] = []


# --------------------------------------------------------------------------- train


class RayInfo(ResultModel):
    address: str | None
    replicas: int


class SweepTrial(ResultModel):
    params: dict[str, Any]
    cost: float | None
    downtime: float | None


class SweepResult(ResultModel):
    """The Ray Tune search: the best trial's hyperparameters, scores and policy file."""

    params: dict[str, Any]
    cost: float
    downtime: float
    policy: str
    trials: list[SweepTrial]


class Promotion(ResultModel):
    """The champion decision (see ``integrations.mlflow.promote_if_better``): the candidate
    (``new``) against the champion (``old``) and the baselines (the configured procedure,
    ...) on the same held-out seeds: recovered shares, mean budget burns, the paired test on
    the burns and its p-value, and the reason for the decision (and, when the experiment
    names a real backend, the version's verification status: promotion requires passed)."""

    omit_when_empty = frozenset({"verified"})
    metric: str
    new: float
    old: float | None
    sources: dict[str, str]
    promoted: bool
    champion_version: str  # "" while no version is champion
    reason: str = ""
    recovered: dict[str, float] = {}  # recovered share per contender (new, old, configured)
    budget_burn: dict[str, float] = {}  # mean budget burn per contender
    test: str | None = None  # the paired test on per-seed burns (new vs old or configured)
    p_value: float | None = None
    seeds: str = ""  # "SEED+EPISODES": the held-out incidents compared
    verified: str | None = None  # passed | failed | none, when the experiment requires it


class TrainResult(ResultModel):
    """An experiment run (``train --json``): where it was tracked and registered, the champion
    decision, the held-out downtime and error-budget burn of every method it compared, the
    policy's verification on a real backend (``verified``: passed, failed or none) and
    (when they happened) the checkpoint it resumed and the stale runs it ended."""

    omit_when_empty = frozenset({"sweep", "resumed_from", "stale_runs", "verification"})
    experiment: str
    tracking_uri: str
    out: str
    ray: RayInfo
    sweep: SweepResult | None = None
    run_id: str
    model: str
    version: str
    champion: Promotion
    methods: dict[str, Stats]  # held-out downtime (s) per method
    budget_burn: dict[str, Stats] = {}  # held-out error-budget burn per method
    objective: str = "budget"  # what the policy and the search minimised
    comparison: str
    resumed_from: int | None = None  # timesteps of the checkpoint the training continued
    stale_runs: list[str] = []  # MLflow runs of dead processes this start ended as FAILED
    verified: str = "none"  # passed | failed | none: the policy on the experiment's verify
    verification: Verification | None = None  # that verification, when the experiment asks


# --------------------------------------------------------------------------- export


class ExportResult(ResultModel):
    """An exported procedure: its text, the warnings about it, and the file written (None:
    the caller prints ``text``)."""

    format: str
    text: str
    warnings: list[str]
    written: str | None

"""The service's config file (``kind: Service``): which deployments ``shadowrl serve`` keeps
rehearsed, on what schedules, who may call its API, and where its state lives.

The file is validated like a scenario (every problem names file, line and field), and every
scenario it names is loaded at start-up, so a bad deployment stops the service before it
serves anything. Paths are relative to the config file. The operator's file is the only
source of commands the service ever runs: the API can pick a configured deployment and a
few bounded numbers, never a file, a procedure or a command (docs/service.md, Security).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shadowrl.core.spec import (
    Duration,
    Name,
    Problem,
    SpecError,
    format_path,
    load_scenario,
    load_yaml_file,
    validate_model,
)

MAX_DEPLOYMENTS = 100
MAX_TOKENS = 100
MAX_RUNS = 1000  # rehearsal runs per job, by schedule or trigger
MAX_EPISODES = 1000
MIN_EVERY_S = 1.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Token(_Strict):
    """A bearer token: its value comes from an environment variable or a file (never the
    config itself), or only its SHA-256 is written here."""

    name: Name
    scope: Literal["read", "write"] = "read"
    env: str | None = None
    file: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _one_source(self) -> Token:
        given = [k for k in ("env", "file", "sha256") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of env, file or sha256")
        return self


class Auth(_Strict):
    tokens: list[Token] = Field(default_factory=list, max_length=MAX_TOKENS)
    public_metrics: bool = False  # /metrics without a token (Prometheus inside the cluster)


class Limits(_Strict):
    max_request_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    triggers_per_minute: float = Field(default=10.0, gt=0, le=10_000)  # per token
    trigger_burst: int = Field(default=5, ge=1, le=1000)
    max_running_jobs: int = Field(default=1, ge=1, le=64)
    max_queued_jobs: int = Field(default=100, ge=1, le=10_000)


class History(_Strict):
    """Where the deployment's load history comes from: a file (Prometheus ``query_range``
    JSON or CSV), or a Prometheus server queried before each rehearsal at the peak."""

    file: str | None = None
    prometheus: str | None = None  # base URL, e.g. http://prometheus:9090
    query: str | None = None  # PromQL of the deployment's request rate
    range: Duration = 7 * 86400.0
    step: Duration = 300.0

    @model_validator(mode="after")
    def _one_source(self) -> History:
        if (self.file is None) == (self.prometheus is None):
            raise ValueError("give exactly one of file or prometheus")
        if self.prometheus is not None and not self.query:
            raise ValueError("prometheus needs a query (the request rate, in PromQL)")
        if self.prometheus is not None and not self.prometheus.startswith(("http://",
                                                                            "https://")):
            raise ValueError("prometheus must be an http:// or https:// URL")
        return self


class RehearseSchedule(_Strict):
    every: Duration | None = 3600.0  # None: only on triggers and live changes
    runs: int = Field(default=20, ge=1, le=MAX_RUNS)
    at: Literal["now", "peak"] = "now"  # peak: at the history's forecast peak load
    on_change: bool = True  # when sync sees drift, or the scenario file changes


class OptimizeSchedule(_Strict):
    every: Duration | None = None
    on_change: bool = True  # when the deployment or its procedure changes
    method: Literal["search", "rl", "all"] = "search"
    episodes: int = Field(default=50, ge=1, le=MAX_EPISODES)
    trials: int = Field(default=60, ge=1, le=10_000)
    verify: Literal["none", "docker"] = "none"  # docker: verify on a real shadow first
    verify_runs: int = Field(default=3, ge=1, le=20)


class SyncSchedule(_Strict):
    source: str  # docker:PROJECT, compose:FILE, k8s:DIR or k8s-cluster:
    every: Duration = 60.0
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None


class Healthy(_Strict):
    """When a rehearsal verdict says healthy: every run recovered (by default), within the
    error budget share and downtime given, and no critical alert if asked."""

    min_recovered_share: float = Field(default=1.0, ge=0, le=1)
    max_budget_burn: float | None = Field(default=0.5, ge=0)  # mean share of the budget
    max_downtime_s: Duration | None = None  # mean
    no_critical_alerts: bool = False


class DeploymentConfig(_Strict):
    name: Name
    scenario: str
    backend: Literal["sim", "docker"] = "sim"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    replicas: int = Field(default=1, ge=1, le=64)  # Ray shadow replicas per job
    history: History | None = None
    rehearse: RehearseSchedule = Field(default_factory=RehearseSchedule)
    optimize: OptimizeSchedule = Field(default_factory=OptimizeSchedule)
    sync: SyncSchedule | None = None
    healthy: Healthy = Field(default_factory=Healthy)
    alert_webhook: str | None = None  # Alertmanager-style URL for the rehearsals' alerts


class Metadata(_Strict):
    name: Name = "shadowrl"


class ServiceConfig(_Strict):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=False)

    api_version: Literal["shadowrl/v1"] = Field(alias="apiVersion")
    kind: Literal["Service"]
    metadata: Metadata = Field(default_factory=Metadata)
    database: str | None = None  # SQLAlchemy URL; default sqlite:///<data>/shadowrl.db
    database_env: str | None = None  # or: the variable holding the URL (keeps passwords out)
    data: str = "shadowrl-data"  # job outputs (rehearsal reports, procedures)
    auth: Auth = Field(default_factory=Auth)
    limits: Limits = Field(default_factory=Limits)
    deployments: list[DeploymentConfig] = Field(min_length=1, max_length=MAX_DEPLOYMENTS)

    def path_of(self, value: str) -> Path:
        """A path from the file, relative to the config file's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base / path

    @property
    def base(self) -> Path:
        return self.__dict__.get("_base", Path("."))

    @property
    def data_dir(self) -> Path:
        return self.path_of(self.data)

    @property
    def database_url(self) -> str:
        if self.database_env is not None:
            return os.environ[self.database_env]
        if self.database is not None:
            return self.database
        return f"sqlite:///{(self.data_dir / 'shadowrl.db').resolve()}"

    def deployment(self, name: str) -> DeploymentConfig | None:
        return next((d for d in self.deployments if d.name == name), None)


PathKey = tuple[str | int, ...]


def load_service_config(path: str | Path) -> ServiceConfig:
    """Load and check a service config: its own fields, unique deployment names, every
    scenario and history file it names, and the token sources (an unset variable or an
    unreadable token file is named here, not at the first request)."""
    file = str(path)
    data, lines = load_yaml_file(path)
    cfg = validate_model(ServiceConfig, data, file, lines)
    cfg.__dict__["_base"] = Path(path).resolve().parent
    found = _deployment_problems(cfg) + _token_problems(cfg)
    if found:
        raise SpecError([Problem(file, lines.line(where), format_path(where), message)
                         for where, message in found])
    return cfg


def _deployment_problems(cfg: ServiceConfig) -> list[tuple[PathKey, str]]:
    from shadowrl.rehearsal.alerts import check_webhook_url

    out: list[tuple[PathKey, str]] = []
    seen: set[str] = set()
    for i, dep in enumerate(cfg.deployments):
        at: PathKey = ("deployments", i)
        if dep.name in seen:
            out.append(((*at, "name"), f"deployment {dep.name!r} is named twice"))
        seen.add(dep.name)
        try:
            load_scenario(cfg.path_of(dep.scenario))
        except SpecError as exc:
            out.append(((*at, "scenario"), f"{dep.scenario}: "
                        + "; ".join(str(p) for p in exc.problems[:3])))
        if dep.history is not None and dep.history.file is not None \
                and not cfg.path_of(dep.history.file).is_file():
            out.append(((*at, "history", "file"), f"no such file: {dep.history.file}"))
        if dep.alert_webhook is not None:
            try:
                check_webhook_url(dep.alert_webhook)
            except ValueError as exc:
                out.append(((*at, "alert_webhook"), str(exc)))
        if dep.rehearse.at == "peak" and not has_history(cfg, dep):
            out.append(((*at, "rehearse", "at"), "peak needs a history (this deployment's "
                        "history, or the scenario's deviations.history)"))
    return out


def _token_problems(cfg: ServiceConfig) -> list[tuple[PathKey, str]]:
    out: list[tuple[PathKey, str]] = []
    if cfg.database is not None and cfg.database_env is not None:
        out.append((("database_env",), "give database or database_env, not both"))
    if cfg.database_env is not None and not os.environ.get(cfg.database_env):
        out.append((("database_env",), f"environment variable {cfg.database_env} is not set "
                    "(or empty)"))
    names: set[str] = set()
    for i, token in enumerate(cfg.auth.tokens):
        at: PathKey = ("auth", "tokens", i)
        if token.name in names:
            out.append(((*at, "name"), f"token {token.name!r} is named twice"))
        names.add(token.name)
        if token.env is not None and not os.environ.get(token.env):
            out.append(((*at, "env"), f"environment variable {token.env} is not set "
                        "(or empty)"))
        if token.file is not None:
            try:
                if not cfg.path_of(token.file).read_text().strip():
                    out.append(((*at, "file"), f"{token.file} is empty"))
            except OSError as exc:
                out.append(((*at, "file"), f"{token.file}: cannot read: "
                            f"{exc.strerror or exc}"))
    return out


def has_history(cfg: ServiceConfig, dep: DeploymentConfig) -> bool:
    """Whether a peak can be forecast for ``dep``: its own history, or its scenario's."""
    if dep.history is not None:
        return True
    try:
        return load_scenario(cfg.path_of(dep.scenario)).deviations.history is not None
    except SpecError:
        return True  # a broken scenario is reported as such, not as a missing history

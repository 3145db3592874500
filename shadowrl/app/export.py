"""Use case ``export``: a procedure as shadowrl YAML, an Argo Workflow, a Chaos Toolkit
experiment or a shell script; steps without a Kubernetes command become flagged, failing
placeholders. MLflow sources (run ids, ``models:/``) are resolved here, export never imports
an integration.

A registered model is a policy, and a policy is adaptive: it cannot be written as a fixed
procedure yet. Exporting one exports the procedure logged with it (for a ``train`` run, the
best static procedure found while training), and the header and the result say so, with the
policy's own held-out numbers beside the procedure's.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from shadowrl.app.errors import UsageError
from shadowrl.app.models import ExportResult, ResultModel
from shadowrl.export.sources import ExportSource, PolicyStandIn


class ExportRequest(BaseModel):
    source: str  # procedure.yaml, runbook.yaml, scenario YAML, MLflow run id or models:/...
    format: str  # yaml | argo | chaostoolkit | shell
    out: Path | None = None  # written atomically; None: the caller prints the text
    scenario: Path | None = None  # checks a procedure file against this scenario
    image: str | None = None  # container image of the Argo steps


class ExportedPolicy(ResultModel):
    """The policy a source named, exported as the procedure logged with it."""

    name: str  # models:/NAME/VERSION, or "the policy of run RUN_ID"
    champion: bool
    evaluation: dict[str, Any] | None  # its own held-out evaluation


class ExportReport(ExportResult):
    """``export --json``: the result plus what was exported: the source, the procedure and
    scenario names, one line saying what the export holds, the procedure's recorded
    evaluation and, for a policy source, the policy and its own evaluation."""

    source: str
    procedure: str
    scenario: str | None
    exported: str  # what the export holds, in one line (for a policy: the header's line)
    evaluation: dict[str, Any] | None  # the exported procedure's, when recorded
    verification: dict[str, Any] | None = None  # its verification: status passed|none, ...
    policy: ExportedPolicy | None = None


def export_command(request: ExportRequest) -> str:
    """The command that reproduces this export, recorded in the exported file's header."""
    argv = ["shadowrl", "export", request.source, "--format", request.format]
    if request.scenario is not None:
        argv += ["--scenario", str(request.scenario)]
    if request.image is not None:
        argv += ["--image", request.image]
    if request.out is not None:
        argv += ["--out", str(request.out)]
    return shlex.join(argv)


def export(request: ExportRequest, *,
           on_warning: Callable[[str], None] | None = None) -> ExportReport:
    """Warnings go to ``on_warning`` as found, before anything is written (and into the
    result). Raises SpecError for a bad procedure or scenario file and for a procedure whose
    header says it failed verification on a real shadow (nothing is written), UsageError
    for an unknown format, a source that cannot be loaded or an output that cannot be
    written."""
    from shadowrl.core.atomic import atomic_write_text
    from shadowrl.export.renderers import DEFAULT_IMAGE, FORMATS, render
    from shadowrl.export.sources import SourceError, load_source, verification_refusal
    from shadowrl.integrations.sources import RESOLVERS, is_mlflow_source

    fmt = request.format
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r} (use {', '.join(FORMATS)})")
    try:
        src = load_source(request.source, request.scenario, RESOLVERS)
    except SourceError as exc:
        raise UsageError(_once(str(exc), request.source)) from None
    refusal = verification_refusal(src)
    if refusal is not None:
        raise refusal
    if not Path(request.source).exists() and is_mlflow_source(request.source):
        src.stand_in = policy_stand_in(request.source, src)
    text = render(src, fmt, command=export_command(request),
                  image=request.image or DEFAULT_IMAGE)
    warnings = list(src.warnings) + (_placeholders(src) if fmt != "yaml" else [])
    for warning in warnings:
        if on_warning is not None:
            on_warning(warning)
    written = None
    if request.out is not None:
        try:
            atomic_write_text(request.out, text)
            if fmt == "shell":
                os.chmod(request.out, 0o755)
        except OSError as exc:
            raise UsageError(f"{request.out}: cannot write: {exc.strerror or exc}") from None
        written = str(request.out)
    return _report(request, src, fmt, text, warnings, written)


def _placeholders(src: ExportSource) -> list[str]:
    """The steps to fill in before running the export (a runbook: in any branch)."""
    from shadowrl.export.commands import placeholders
    from shadowrl.export.runbook_renderers import runbook_placeholders

    return runbook_placeholders(src) if src.runbook is not None else placeholders(src)


def _report(request: ExportRequest, src: ExportSource, fmt: str, text: str,
            warnings: list[str], written: str | None) -> ExportReport:
    from shadowrl.export.renderers import exported_line

    stand = src.stand_in
    configured = src.scenario is not None and src.procedure is src.scenario.procedure
    if src.runbook is not None:
        from shadowrl.export.runbook_renderers import runbook_exported_line

        exported = runbook_exported_line(src)
    else:
        exported = exported_line(src) or (
            f"the configured procedure '{src.procedure.name}' of scenario {src.origin}"
            if configured else f"the procedure '{src.procedure.name}' in {src.origin}")
    policy = None if stand is None else ExportedPolicy(
        name=stand.policy, champion=stand.champion, evaluation=stand.evaluation)
    return ExportReport(format=fmt, text=text, warnings=warnings, written=written,
                        source=request.source, procedure=src.procedure.name,
                        scenario=src.scenario_name, exported=exported,
                        evaluation=src.evaluation, policy=policy,
                        verification=_verification(src))


def _verification(src: ExportSource) -> dict[str, Any]:
    """``export --json``'s ``verification``: what the header recorded (without where it
    stood), or ``{"status": "none"}``."""
    v = src.verification
    if v is None:
        return {"status": "none"}
    return {k: value for k, value in v.items() if k != "line"}


def _once(message: str, source: str) -> str:
    """``message`` with a doubled ``SOURCE: SOURCE:`` prefix said once (the MLflow resolver
    prefixes the source to errors that already name it)."""
    doubled = f"{source}: {source}: "
    return message[len(source) + 2:] if message.startswith(doubled) else message


def policy_stand_in(source: str, src: ExportSource) -> PolicyStandIn | None:
    """For an MLflow source that names a policy (a registered model version, or a ``train``
    run), which policy it is and its held-out evaluation (the run's ``eval_holdout_*``
    metrics, on the same incidents as the best static procedure it logged); None for a run
    that only logged a procedure.

    Where the loader had no evaluation of the procedure but the run's held-out metrics, it
    took the policy's numbers for the procedure's: those are dropped from the procedure's
    evaluation and kept as the policy's.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from shadowrl.integrations import mlflow as tracking

    uri = (mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set()
           else tracking.tracking_uri())
    client = MlflowClient(tracking_uri=uri)
    try:
        if source.startswith("models:/"):
            name, alias, version = tracking.parse_model_uri(source)
            mv = (client.get_model_version_by_alias(name, alias) if alias is not None
                  else client.get_model_version(name, str(version)))
            policy = f"models:/{mv.name}/{mv.version}"
            champion = tracking.CHAMPION in (getattr(mv, "aliases", None) or []) or (
                alias == tracking.CHAMPION)
            run = client.get_run(mv.run_id) if mv.run_id else None
        else:
            run = client.get_run(source)
            if "holdout_rl_downtime_mean" not in run.data.metrics:
                return None  # not a training run: the procedure is what it logged
            policy, champion = f"the policy of run {source}", False
    except Exception as exc:  # MLflow's errors: the source loaded a moment ago
        if type(exc).__module__.split(".")[0] != "mlflow":
            raise
        raise UsageError(f"{source}: {exc}") from None
    evaluation = _holdout(run.data.metrics) if run is not None else None
    if src.evaluation is not None and not {"policy", "text"} & src.evaluation.keys():
        src.evaluation = None  # the loader's fallback: the run's (the policy's) metrics
    found = (src.evaluation or {}).get("policy") == "best_static" or (
        (src.command or "").startswith("shadowrl train"))
    verification = None
    if run is not None and tracking.VERIFIED_TAG in run.data.tags:
        verification = (run.data.tags.get(tracking.VERIFICATION_TAG)
                        or run.data.tags[tracking.VERIFIED_TAG])
    return PolicyStandIn(policy=policy, champion=champion, found_while_training=found,
                         verification=verification,
                         evaluation=evaluation)


def _holdout(metrics: dict[str, float]) -> dict[str, Any] | None:
    """The policy's held-out evaluation from a training run's ``eval_holdout_*`` metrics."""
    from shadowrl.integrations.mlflow import HOLDOUT_PREFIX as p

    if f"{p}downtime_mean" not in metrics:
        return None
    out: dict[str, Any] = {"policy": "rl"}
    if f"{p}episodes" in metrics:
        out["runs"] = int(metrics[f"{p}episodes"])
    out["downtime_s"] = {"mean": metrics[f"{p}downtime_mean"]}
    if f"{p}downtime_p95" in metrics:
        out["downtime_s"]["p95"] = metrics[f"{p}downtime_p95"]
    if f"{p}budget_burn_mean" in metrics:
        out["budget_burn"] = {"mean": metrics[f"{p}budget_burn_mean"]}
    if f"{p}recovered_rate" in metrics and "runs" in out:
        out["outcomes"] = {"recovered": round(metrics[f"{p}recovered_rate"] * out["runs"])}
    return out

"""Use case ``export``: a procedure as shadowrl YAML, an Argo Workflow, a Chaos Toolkit
experiment or a shell script; steps without a Kubernetes command become flagged, failing
placeholders. MLflow sources (run ids, ``models:/``) are resolved here, export never imports
an integration."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from shadowrl.app.errors import UsageError
from shadowrl.app.models import ExportResult


class ExportRequest(BaseModel):
    source: str  # procedure.yaml, scenario YAML, MLflow run id or models:/NAME@ALIAS
    format: str  # yaml | argo | chaostoolkit | shell
    out: Path | None = None  # written atomically; None: the caller prints the text
    scenario: Path | None = None  # checks a procedure file against this scenario
    image: str | None = None  # container image of the Argo steps


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
           on_warning: Callable[[str], None] | None = None) -> ExportResult:
    """Warnings go to ``on_warning`` as found, before anything is written (and into the
    result). Raises SpecError for a bad procedure or scenario file, UsageError for an unknown
    format, a source that cannot be loaded or an output that cannot be written."""
    from shadowrl.core.atomic import atomic_write_text
    from shadowrl.export.commands import placeholders
    from shadowrl.export.renderers import DEFAULT_IMAGE, FORMATS, render
    from shadowrl.export.sources import SourceError, load_source
    from shadowrl.integrations.sources import RESOLVERS

    fmt = request.format
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r} (use {', '.join(FORMATS)})")
    try:
        src = load_source(request.source, request.scenario, RESOLVERS)
    except SourceError as exc:
        raise UsageError(str(exc)) from None
    text = render(src, fmt, command=export_command(request),
                  image=request.image or DEFAULT_IMAGE)
    warnings = list(src.warnings) + (placeholders(src) if fmt != "yaml" else [])
    for warning in warnings:
        if on_warning is not None:
            on_warning(warning)
    if request.out is None:
        return ExportResult(format=fmt, text=text, warnings=warnings, written=None)
    try:
        atomic_write_text(request.out, text)
        if fmt == "shell":
            os.chmod(request.out, 0o755)
    except OSError as exc:
        raise UsageError(f"{request.out}: cannot write: {exc.strerror or exc}") from None
    return ExportResult(format=fmt, text=text, warnings=warnings, written=str(request.out))

"""Use case ``validate``: check scenario files, every one of them, and report each."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from shadowrl.app.models import FileCheck, ValidateResult
from shadowrl.core.spec import SpecError, load_scenario


class ValidateRequest(BaseModel):
    files: list[Path]


def validate(request: ValidateRequest) -> ValidateResult:
    """A bad file does not stop the others: its problems are in the result, not raised."""
    checks = []
    for path in request.files:
        try:
            load_scenario(path)
        except SpecError as exc:
            checks.append(FileCheck(path=str(path), problems=exc.problems))
            continue
        checks.append(FileCheck(path=str(path)))
    return ValidateResult(files=checks)

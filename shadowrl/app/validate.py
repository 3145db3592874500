"""Use case ``validate``: check scenario files, every one of them, and report each."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, computed_field

from shadowrl.app.common import data_file_problems
from shadowrl.app.models import FileCheck, ValidateResult
from shadowrl.core.spec import SpecError, load_scenario


class ValidateRequest(BaseModel):
    files: list[Path]


class ScenarioCheck(FileCheck):
    """One file as ``validate --json`` reports it: also the name of the scenario a valid
    file describes, and ``valid``, so a script need not count problems."""

    scenario: str | None = None

    @computed_field
    @property
    def valid(self) -> bool:
        return self.ok


class ValidateReport(ValidateResult):
    """``validate --json``: every file's check and whether all of them are valid."""

    files: list[ScenarioCheck]

    @computed_field
    @property
    def valid(self) -> bool:
        return self.ok


def validate(request: ValidateRequest) -> ValidateReport:
    """A bad file does not stop the others: its problems are in the result, not raised."""
    checks = []
    for path in request.files:
        try:
            scenario = load_scenario(path)
        except SpecError as exc:
            checks.append(ScenarioCheck(path=str(path), problems=exc.problems))
            continue
        # valid means every command can use it: the data files it names are read too
        checks.append(ScenarioCheck(path=str(path), scenario=scenario.name,
                                    problems=data_file_problems(scenario)))
    return ValidateReport(files=checks)

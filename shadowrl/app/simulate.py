"""Use case ``simulate``: one incident, one rollback, step by step."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from shadowrl.app.common import check_data_files, procedure_for, with_params
from shadowrl.app.errors import UsageError
from shadowrl.app.models import RehearsalResult
from shadowrl.core.errors import NoBreachError
from shadowrl.core.spec import load_scenario


class SimulateRequest(BaseModel):
    file: Path
    params: Path | None = None  # simulator parameters (--params); over simulator.params
    incident: str | None = None  # default: drawn by weight
    seed: int = 0  # same seed, same incident and same timings
    # a procedure file, or a scenario file whose procedure is used; default: the scenario's
    procedure: Path | None = None
    backend: Literal["sim", "docker"] = "sim"  # the shadow: simulated, or real containers


def simulate(request: SimulateRequest) -> RehearsalResult:
    """Raises SpecError for a bad scenario, procedure or data file (or a scenario beyond the
    simulator's limits), UsageError for an unknown incident or a scenario whose incidents
    never breach."""
    from shadowrl.rehearsal.runner import rehearse

    sc = with_params(load_scenario(request.file), request.params)
    proc = procedure_for(request.procedure, sc)
    check_data_files(sc)
    known = [i.name for i in sc.incidents]
    if request.incident is not None and request.incident not in known:
        raise UsageError(f"{request.file}: unknown incident '{request.incident}' (known: "
                         f"{', '.join(known)})")
    try:
        result = rehearse(sc, request.seed, incident=request.incident, procedure=proc,
                          backend=request.backend)
    except NoBreachError as exc:
        raise UsageError(f"{request.file}: {exc}") from None
    return RehearsalResult.model_validate(result.to_json())

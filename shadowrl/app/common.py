"""What several use cases share: resolving input files, the history to replay, the callback
types, and a Ray session opened only when the work fans out."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from shadowrl.app.errors import UsageError
from shadowrl.core.extras import MissingExtraError
from shadowrl.core.spec import (
    CsvPattern,
    Problem,
    Procedure,
    Scenario,
    SpecError,
    data_files,
    load_procedure,
    scenario_problem,
)
from shadowrl.rehearsal.deviation import HistoryModel

ProgressFn = Callable[[int, int, str], None]
"""``on_progress(done, total, label)``: ``done`` of ``total`` units of the task ``label``."""

LogFn = Callable[[str], None]
"""``on_log(message)``: one line about what the use case is doing."""


OBJECTIVES = ("budget", "downtime")  # RollbackEnv's; here so the base install can check them


def check_objective(objective: str) -> None:
    """UsageError unless ``objective`` is one the optimizers know (budget or downtime)."""
    if objective not in OBJECTIVES:
        raise UsageError(f"--objective must be 'budget' or 'downtime', not {objective!r}")


REAL_BACKENDS = ("docker",)  # what a procedure is verified on (shadowrl.shadow.BACKENDS)


def check_verify(value: str) -> str | None:
    """``--verify``: the real backend to verify on, or None for ``none``; UsageError naming
    the flag otherwise."""
    if value == "none":
        return None
    if value not in REAL_BACKENDS:
        raise UsageError(f"--verify: must be {' or '.join(REAL_BACKENDS)} or none, got "
                         f"{value!r}")
    return value


def check_backend_ready(backend: str, scenario: Scenario, on_log: LogFn | None = None) -> None:
    """Fail now, before minutes of search or training, when ``backend`` cannot run
    ``scenario``: its extra is missing, the scenario is too big for it, or (Docker) no
    daemon answers and none can be started. Raises MissingExtraError or
    BackendUnavailable."""
    from shadowrl.shadow import make_backend

    with make_backend(backend, scenario):
        pass
    if backend == "docker":
        from shadowrl.shadow.docker.daemon import connect

        connect(start=True, on_progress=on_log)


def procedure_for(path: Path | None, scenario: Scenario) -> Procedure:
    """The procedure in ``path`` (checked against ``scenario``), else the scenario's own.

    ``path`` is a procedure file or a scenario file, whose ``procedure:`` is then used (the
    loader accepts both, so ``--procedure envs/checkout.yaml`` rehearses checkout's runbook)."""
    return scenario.procedure if path is None else load_procedure(path, scenario)


def data_file_problems(scenario: Scenario, *, agent: bool = True) -> list[Problem]:
    """The problems of the data files a loaded scenario names (CSV traffic pattern,
    ``deviations.history``, simulator parameters, ``optimizer.agent``), read as the simulator,
    ``rehearse`` and ``optimize`` read them, each on the line of the field naming the file.
    (That they exist is checked by the loader.) ``agent=False`` leaves the agent config
    unread: only training needs it, and reading it imports the RL stack (torch)."""
    from shadowrl.traffic.history import HistoryError, load_pattern, load_series

    problems: list[Problem] = []
    pattern = scenario.deployment.traffic.pattern
    history = scenario.deviations.history
    for field_path, path in data_files(scenario):
        try:
            if field_path[0] == "optimizer":
                if not agent:
                    continue
                try:
                    from shadowrl.rl.agents import load_agent_config
                except MissingExtraError:  # without the rl extra nothing trains it
                    continue
                load_agent_config(path)
            elif field_path[0] == "simulator":
                from shadowrl.shadow.sim.params import SimParams

                SimParams.load(path).check_against(scenario, str(path))
            elif field_path[0] == "deployment" and isinstance(pattern, CsvPattern):
                load_pattern(load_series(path, "csv", column=pattern.column))
            elif field_path[:3] == ("deployment", "traffic", "replay"):
                from shadowrl.traffic.recording import load_recording

                replay = scenario.deployment.traffic.replay
                assert replay is not None
                load_recording(path, replay.format, percent=replay.percent)
            elif history is not None:
                load_series(path, history.format, column=history.column)
        except HistoryError as exc:
            problems += scenario_problem(scenario, field_path, str(exc)).problems
        except SpecError as exc:  # a parameter or agent file: its own file and line
            problems += exc.problems
    return problems


def check_data_files(scenario: Scenario) -> None:
    """Raise :class:`SpecError` for the first unusable data file (see
    :func:`data_file_problems`): a use case about to simulate fails on its input, with
    file:line, rather than part-way."""
    problems = data_file_problems(scenario, agent=False)
    if problems:
        raise SpecError(problems)


def with_params(scenario: Scenario, path: Path | None) -> Scenario:
    """``scenario`` with the simulator parameters of ``path`` (``--params``), which override
    the file its ``simulator.params`` names; unchanged without ``path``. Raises SpecError
    naming the parameter file's line for a bad file or an unknown component."""
    if path is None:
        return scenario
    from shadowrl.shadow.sim.params import SimParams, attach_params

    if not path.is_file():
        raise UsageError(f"--params: no such file: {path}")
    params = SimParams.load(path)
    params.check_against(scenario, str(path))
    return attach_params(scenario, params)


def history_for(path: Path | None, scenario: Scenario) -> HistoryModel | None:
    """``path`` (its format from the extension) overrides the scenario's
    ``deviations.history``; None when neither names one."""
    from shadowrl.rehearsal.deviation import load_history
    from shadowrl.traffic.history import HistoryError

    spec = scenario.deviations.history
    if path is None and spec is None:
        return None
    if path is not None:
        fmt = {".json": "prometheus", ".csv": "csv"}.get(path.suffix.lower())
        if fmt is None:
            raise UsageError(f"{path}: --history needs a .json (Prometheus) or .csv file")
        source, column = path, "value"
    else:
        assert spec is not None
        base = getattr(scenario, "_source", Path(".")).parent
        source, fmt, column = base / spec.file, spec.format, spec.column
    try:
        return load_history(source, fmt, column=column)
    except FileNotFoundError:
        raise UsageError(f"{source}: no such history file") from None
    except HistoryError as exc:
        raise UsageError(str(exc)) from None


def ray_context(replicas: int, address: str | None = None) -> AbstractContextManager[Any]:
    """A Ray session (``address``, else RAY_ADDRESS, else a private local Ray) when the work
    fans out over several replicas or a cluster is named; otherwise nothing, and Ray is not
    even imported."""
    if replicas <= 1 and address is None:
        return contextlib.nullcontext()
    from shadowrl.integrations.ray import ray_session

    return ray_session(address)


def counting(on_progress: ProgressFn | None, total: int,
             label: str) -> Callable[[int], None] | None:
    """A per-item callback (its argument, an item index, is ignored: parallel items finish
    in any order) that reports how many items are done so far."""
    if on_progress is None:
        return None
    done = 0

    def tick(_index: int) -> None:
        nonlocal done
        done += 1
        on_progress(done, total, label)

    return tick

"""Fuzzing procedure files (``--procedure FILE``, ``--policy FILE.yaml``): every input is
either a procedure checked against the scenario or bad input naming the file and a line.

The sources are the shipped scenarios' procedures written as procedure files
(``kind: Procedure``, what ``optimize`` writes) and the scenario files themselves, which are
accepted as procedure sources (their ``procedure:``). They are mutated as in
``test_fuzz_scenarios.py`` and read through the app layer (``procedure_for``, the policy
resolution of ``evaluate``, ``simulate --procedure``) and through the real CLI, against their
own scenario and against another one. Hypothesis runs derandomized.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowrl.app.common import procedure_for
from shadowrl.app.errors import UsageError
from shadowrl.app.simulate import SimulateRequest, simulate
from shadowrl.core.spec import (
    Procedure,
    Scenario,
    SpecError,
    load_scenario,
    procedure_file_data,
)
from tests.fuzz.conftest import (
    ENVS,
    EXTREMES,
    FUZZ,
    ODD_KEYS,
    TEXT_MUTATIONS,
    CpuTimer,
    assert_bad_input_contract,
    check_problems,
    delete_at,
    leaf_paths,
    mutate_text,
    rename_at,
    run_cli_bounded,
    set_at,
)

CPU_S = 5.0
SCENARIOS: dict[str, Scenario] = {p.stem: load_scenario(p) for p in ENVS}
ENVS_BY_NAME = {p.stem: p for p in ENVS}
# (scenario name, source kind) -> the source's text: a procedure file or the scenario itself
SOURCES: dict[tuple[str, str], str] = {}
for _path in ENVS:
    _sc = SCENARIOS[_path.stem]
    SOURCES[(_path.stem, "procedure")] = yaml.safe_dump(
        procedure_file_data(_sc.procedure, _sc.name), sort_keys=False)
    SOURCES[(_path.stem, "scenario")] = _path.read_text(encoding="utf-8")
PARSED = {key: yaml.safe_load(text) for key, text in SOURCES.items()}
# where, in each source, the procedure is: mutations go there mostly
PROCEDURE_PATHS = {key: [p for p in leaf_paths(data) if p[:1] == ("procedure",)]
                   for key, data in PARSED.items()}
VALID_SETTINGS: dict[str, list[Any]] = {
    "duration": ["0s", "1d", 86400], "drain": ["0s", "1h"], "batch": [1],
    "surge": [0], "timeout": ["1ms", "1d"], "hold": ["0s"], "downtime": ["0s", "1d"],
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-procedures")


@st.composite
def mutated_sources(draw: st.DrawFn) -> tuple[str, bytes]:
    """(the scenario it belongs to, a damaged procedure source)."""
    key = draw(st.sampled_from(sorted(SOURCES)))
    if draw(st.integers(0, 4)) == 0:
        return key[0], mutate_text(SOURCES[key], draw(st.sampled_from(TEXT_MUTATIONS)),
                                   draw(st.integers(0, 10**6)))
    data = copy.deepcopy(PARSED[key])
    for _ in range(draw(st.integers(1, 3))):
        if not isinstance(data, dict):
            break
        inside = [p for p in PROCEDURE_PATHS[key] if _exists(data, p)]
        paths = inside if inside and draw(st.integers(0, 4)) else list(leaf_paths(data))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "valid", "delete", "rename"]))
        if op == "replace":
            data = set_at(data, path, draw(st.sampled_from(EXTREMES)))
        elif op == "valid" and path and path[-1] in VALID_SETTINGS:
            data = set_at(data, path, draw(st.sampled_from(VALID_SETTINGS[path[-1]])))
        elif op == "delete":
            data = delete_at(data, path)
        elif op == "rename":
            data = rename_at(data, path, draw(st.sampled_from(ODD_KEYS)))
    return key[0], yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode("utf-8")


def _exists(data: Any, path: tuple[Any, ...]) -> bool:
    node = data
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    return True


def _load_in_process(path: Path, data: bytes, scenario: Scenario) -> Procedure | None:
    """The procedure through the app layer, or None after checking its problems."""
    with CpuTimer() as timer:
        try:
            proc = procedure_for(path, scenario)
        except SpecError as exc:
            check_problems(exc.problems, path, data)
            proc = None
    assert timer.seconds < CPU_S, f"loading took {timer.seconds:.1f} CPU s"
    return proc


# --------------------------------------------------------------------------- in process


@settings(FUZZ, max_examples=200)
@given(case=mutated_sources(), other=st.sampled_from(sorted(SCENARIOS)), run=st.integers(0, 5))
def test_mutated_procedures_load_or_name_file_and_line(workdir: Path, case: tuple[str, bytes],
                                                       other: str, run: int) -> None:
    owner, data = case
    path = workdir / "procedure.yaml"
    path.write_bytes(data)
    proc = _load_in_process(path, data, SCENARIOS[owner])
    # against another scenario: its own problems (targets, incidents), still file:line
    _load_in_process(path, data, SCENARIOS[other])
    if proc is not None and run == 0:
        with CpuTimer() as timer:
            try:
                result = simulate(SimulateRequest(file=ENVS_BY_NAME[owner], procedure=path))
            except SpecError as exc:  # the simulator's limits
                assert exc.problems and exc.problems[0].line >= 1
            except UsageError as exc:
                assert str(exc).startswith(f"{ENVS_BY_NAME[owner]}: "), str(exc)
            else:  # the file's procedure ran, every step of it
                assert {s.name for s in result.steps} == {s.name for s in proc.steps}
        assert timer.seconds < CPU_S, f"simulate took {timer.seconds:.1f} CPU s"


@settings(FUZZ, max_examples=40)
@given(case=mutated_sources())
def test_policy_files_resolve_or_name_file_and_line(workdir: Path,
                                                    case: tuple[str, bytes]) -> None:
    pytest.importorskip("gymnasium")
    from shadowrl.app.evaluate import resolve_policy

    owner, data = case
    path = workdir / "policy.yaml"
    path.write_bytes(data)
    with CpuTimer() as timer:
        try:
            policy, proc = resolve_policy(str(path), SCENARIOS[owner])
        except SpecError as exc:
            check_problems(exc.problems, path, data)
        else:
            assert proc is not None and policy.name == str(path)
    assert timer.seconds < CPU_S


# --------------------------------------------------------------------------- the CLI


@settings(FUZZ, max_examples=6)
@given(case=mutated_sources())
def test_cli_simulate_with_mutated_procedures(workdir: Path, case: tuple[str, bytes]) -> None:
    owner, data = case
    path = workdir / "cli-procedure.yaml"
    path.write_bytes(data)
    run = run_cli_bounded(["simulate", ENVS_BY_NAME[owner], "--procedure", path],
                          timeout=CPU_S, mem_mb=500)
    assert_bad_input_contract(run, path, ENVS_BY_NAME[owner], cpu_s=CPU_S)


# --------------------------------------------------------------------------- the issues


def test_a_scenario_file_is_a_procedure_source() -> None:
    """``--procedure envs/checkout.yaml`` rehearses checkout's own procedure."""
    checkout = ENVS_BY_NAME["checkout"]
    own = simulate(SimulateRequest(file=checkout, seed=3))
    given_as_file = simulate(SimulateRequest(file=checkout, seed=3, procedure=checkout))
    assert given_as_file.model_dump() == own.model_dump()


def test_another_scenarios_procedure_is_checked_against_this_one() -> None:
    with pytest.raises(SpecError) as info:
        simulate(SimulateRequest(file=ENVS_BY_NAME["payments"],
                                 procedure=ENVS_BY_NAME["checkout"]))
    problems = [str(p) for p in info.value.problems]
    assert f"{ENVS_BY_NAME['checkout']}:125: procedure.steps[0].target: unknown component " \
           f"'web'" in problems
    assert all(p.startswith(f"{ENVS_BY_NAME['checkout']}:") for p in problems)


def test_a_scenario_file_as_policy_is_its_configured_procedure() -> None:
    pytest.importorskip("gymnasium")
    from shadowrl.app.evaluate import resolve_policy
    from shadowrl.core.plan import configured_plan

    checkout = ENVS_BY_NAME["checkout"]
    policy, proc = resolve_policy(str(checkout), SCENARIOS["checkout"])
    assert proc == SCENARIOS["checkout"].procedure
    assert policy.plan == configured_plan(SCENARIOS["checkout"].procedure)


def test_cli_procedure_from_a_scenario_file() -> None:
    checkout = ENVS_BY_NAME["checkout"]
    run = run_cli_bounded(["simulate", checkout, "--procedure", checkout, "--seed", "3"],
                          timeout=CPU_S, mem_mb=500)
    assert_bad_input_contract(run, checkout, cpu_s=CPU_S)
    assert run.returncode == 0 and "unknown field" not in run.output

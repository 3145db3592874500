"""Fuzzing scenario files: every input either loads or is bad input with file:line.

Mutated copies of the shipped scenarios (``envs/*.yaml``, ``tests/scenarios/*.yaml``): values
replaced by extremes (1e308, -1, 0, nan, inf, huge integers, long strings, lists, deep
nesting), keys deleted, renamed or added, wrong types, and text-level damage (duplicate keys,
non-UTF-8 bytes, very long lines, truncation). Loading and validating them, in process through
the app layer and through the real CLI (``validate``, ``simulate``), must give success or the
format's errors naming the file and a line, exit 2 on the command line, no traceback, within
5 CPU seconds and 500 MB. Valid scenarios at the format's bounds must simulate within 5 CPU
seconds too (docs/scenario-format.md, Bounds). Hypothesis runs derandomized: the same examples
on every run.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowrl.app.errors import UsageError
from shadowrl.app.simulate import SimulateRequest, simulate
from shadowrl.app.validate import ValidateRequest, validate
from shadowrl.core.spec import SpecError
from tests.fuzz.conftest import (
    ENVS,
    EXTREMES,
    FUZZ,
    ODD_KEYS,
    ROOT,
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
SOURCES = [*ENVS, *sorted((ROOT / "tests" / "scenarios").glob("*.yaml"))]
TEXTS = {p.name: p.read_text(encoding="utf-8") for p in SOURCES}
PARSED = {name: yaml.safe_load(text) for name, text in TEXTS.items()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-scenarios")


# --------------------------------------------------------------------------- strategies


@st.composite
def mutated_data(draw: st.DrawFn, base: Any) -> Any:
    """``base`` after one to three edits of parsed data."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        if not isinstance(data, (dict, list)):
            break
        path = draw(st.sampled_from(list(leaf_paths(data))))
        op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "rename",
                                   "add-key", "wrap"]))
        if op == "replace":
            data = set_at(data, path, draw(st.sampled_from(EXTREMES)))
        elif op == "delete":
            data = delete_at(data, path)
        elif op == "rename":
            data = rename_at(data, path, draw(st.sampled_from(ODD_KEYS)))
        elif op == "add-key":
            node = data
            for part in path:
                node = node[part]
            if isinstance(node, dict):
                node = dict(node)
                node[draw(st.sampled_from(ODD_KEYS))] = draw(st.sampled_from(EXTREMES))
                data = set_at(data, path, node)
        else:  # a wrong type: the value inside a list, or a list inside a mapping
            node = data
            for part in path:
                node = node[part]
            data = set_at(data, path, [node] if not isinstance(node, list) else {"v": node})
    return data


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A shipped scenario, damaged as text (one in four) or as parsed data."""
    name = draw(st.sampled_from(sorted(TEXTS)))
    if draw(st.integers(0, 3)) == 0:
        return mutate_text(TEXTS[name], draw(st.sampled_from(TEXT_MUTATIONS)),
                           draw(st.integers(0, 10**6)))
    data = draw(mutated_data(PARSED[name]))
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode("utf-8")


# Valid values at the bounds, by YAML key (docs/scenario-format.md, Bounds): a scenario with
# any of them must load, and simulate within the CPU budget.
AT_BOUNDS: dict[str, list[Any]] = {
    "rps": [0.001, 10_000_000], "capacity_rps": [0.001, 10_000_000],
    "capacity_qps": [0.001, 10_000_000], "write_fraction": [0, 1], "hit_ratio": [0, 1],
    "startup": ["0s", "1h"], "inflight_time": ["0s", "1h"], "latency": ["0s", "1m"],
    "concurrency": [1, 1_000_000], "max_surge": [10_000], "online_factor": [1, 100],
    "warmup": ["0s", "1d"], "interval": ["1ms", "1h"], "for": ["0s", "1d"],
    "weight": [1e-300, 1_000_000], "factor": [1e-6, 1_000_000], "ramp": ["0s", "6h"],
    "magnitude": [[0, 0], [100, 100], [0, 100]], "onset": [["0s", "0s"], ["6h", "6h"]],
    "load": [[0, 0], [100, 100], [0.01, 100]], "downtime": ["0s", "1d"],
    "verify": [{"hold": "0s", "timeout": "1ms"}, {"hold": "1d", "timeout": "1d"}],
    "window": ["1ms", "366d"],
    "replicas": [10_000], "duration": ["0s", "1d"], "drain": ["0s", "1h"],
    "timeout": ["1ms", "1d"],
}


@st.composite
def at_bounds(draw: st.DrawFn) -> bytes:
    """A shipped scenario with one to six values set at the format's bounds."""
    name = draw(st.sampled_from(sorted(TEXTS)))
    data = copy.deepcopy(PARSED[name])
    candidates = [p for p in leaf_paths(data) if p and p[-1] in AT_BOUNDS
                  and not (p[-1] == "timeout" and "verify" in p)
                  and not (p[-1] == "replicas" and "settings" in p)]
    for _ in range(draw(st.integers(1, 6))):
        path = draw(st.sampled_from(candidates))
        data = set_at(data, path, draw(st.sampled_from(AT_BOUNDS[path[-1]])))
    return yaml.safe_dump(data, sort_keys=False).encode("utf-8")


# --------------------------------------------------------------------------- in process


def _validate_in_process(path: Path, data: bytes) -> bool:
    """Validate through the app layer within the CPU budget; whether the file is valid."""
    with CpuTimer() as timer:
        report = validate(ValidateRequest(files=[path]))
    assert timer.seconds < CPU_S, f"validate took {timer.seconds:.1f} CPU s"
    (check,) = report.files
    if check.problems:
        check_problems(check.problems, path, data)
    return not check.problems


def _simulate_in_process(path: Path, data: bytes, **request: Any) -> None:
    """Simulate through the app layer: a result, or bad input naming the file, within the
    CPU budget."""
    with CpuTimer() as timer:
        try:
            result = simulate(SimulateRequest(file=path, **request))
        except SpecError as exc:
            check_problems(exc.problems, path, data)
        except UsageError as exc:  # e.g. incidents that never breach at these numbers
            assert str(exc).startswith(f"{path}: "), str(exc)
        else:
            assert result.outcome in ("recovered", "rollback_failed", "rollback_ineffective")
    assert timer.seconds < CPU_S, f"simulate took {timer.seconds:.1f} CPU s"


@settings(FUZZ, max_examples=300)
@given(data=mutated_files(), seed=st.integers(0, 3))
def test_mutated_scenarios_load_or_name_file_and_line(workdir: Path, data: bytes,
                                                      seed: int) -> None:
    path = workdir / "scenario.yaml"
    path.write_bytes(data)
    if _validate_in_process(path, data) and seed == 0:
        _simulate_in_process(path, data, seed=seed)


@settings(FUZZ, max_examples=30)
@given(data=at_bounds(), seed=st.integers(0, 100))
def test_scenarios_at_the_bounds_are_valid_and_simulate_quickly(workdir: Path, data: bytes,
                                                                seed: int) -> None:
    path = workdir / "bounds.yaml"
    path.write_bytes(data)
    assert _validate_in_process(path, data), "a scenario within the bounds is invalid"
    _simulate_in_process(path, data, seed=seed)


# --------------------------------------------------------------------------- the CLI


@settings(FUZZ, max_examples=10)
@given(data=mutated_files())
def test_cli_validate_on_mutated_scenarios(workdir: Path, data: bytes) -> None:
    path = workdir / "cli-validate.yaml"
    path.write_bytes(data)
    run = run_cli_bounded(["validate", path], timeout=CPU_S, mem_mb=500)
    assert_bad_input_contract(run, path, cpu_s=CPU_S)
    assert (run.returncode == 0) == (f"ok: {path}" in run.stdout)


@settings(FUZZ, max_examples=6)
@given(data=st.one_of(mutated_files(), at_bounds()))
def test_cli_simulate_on_mutated_scenarios(workdir: Path, data: bytes) -> None:
    path = workdir / "cli-simulate.yaml"
    path.write_bytes(data)
    run = run_cli_bounded(["simulate", path, "--json"], timeout=CPU_S, mem_mb=500)
    assert_bad_input_contract(run, path, cpu_s=CPU_S)


# --------------------------------------------------------------------------- the issues


def _edit(name: str, old: str, new: str) -> str:
    text = TEXTS[name]
    assert text.count(old) == 1, old
    return text.replace(old, new)


ISSUES = [
    # (id, scenario text, the problem it must report: line and message)
    ("onset-1e12", _edit("checkout.yaml", "onset: [1m, 10m]", "onset: [1m, 1000000000000]"),
     ":115: deviations.onset[1]: must be at most 6h"),
    ("startup-1e9", _edit("checkout.yaml", "startup: 20s ", "startup: 1000000000 "),
     ":45: deployment.services[0].startup: must be at most 1h"),
    ("weight-1e308", _edit("checkout.yaml", "weight: 3\n", "weight: 1.0e+308\n"),
     ":90: incidents[0].weight: must be at most 1000000, got 1e+308"),
    ("wait-1e9", _edit("checkout.yaml", "settings: {flag: new-checkout}",
                       "settings: {flag: new-checkout}\n"
                       "    - {name: pause, action: wait, settings: {duration: 1000000000}}"),
     ":127: procedure.steps[1].settings.duration: must be at most 1d"),
    ("batch-over-replicas", _edit("checkout.yaml", "batch: {choices: [1, 2, 4], default: 1}",
                                  "batch: {choices: [1, 2, 7], default: 1}"),
     ":143: procedure.steps[3].settings.batch: batch 7 exceeds the 4 replicas of 'orders'"),
    ("batch-over-scaled", _edit("checkout.yaml", "choices: [1, 2, 3, 6], default: 1}",
                                "choices: [1, 2, 3, 6, 13], default: 1}"),
     ":135: procedure.steps[2].settings.batch: batch 13 exceeds the 6 replicas of 'web' (at "
     "most 12 after its scale step)"),
    ("scale-to-0", _edit("checkout.yaml", "choices: [6, 9, 12], default: 9",
                         "choices: [0, 6, 9, 12], default: 9"),
     ":130: procedure.steps[1].settings.replicas.choices: must be >= 1, got 0"),
    ("python-name", _edit("checkout.yaml", "above: 0.01, for: 30s}", "above: 0.01, for_: 30s}"),
     ":81: slo.rules[0].for_: unknown field"),
    ("missing-csv", _edit("checkout.yaml", "pattern: constant", "pattern: {csv: gone.csv}"),
     ":38: deployment.traffic.pattern.csv: no such file: "),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in ISSUES],
                         ids=[c[0] for c in ISSUES])
def test_reported_inputs_are_bad_input(workdir: Path, text: str, expected: str) -> None:
    path = workdir / "issue.yaml"
    path.write_text(text, encoding="utf-8")
    assert not _validate_in_process(path, text.encode())
    with pytest.raises(SpecError) as info:
        simulate(SimulateRequest(file=path))
    assert any(expected in str(p) for p in info.value.problems), info.value


def test_a_bad_csv_pattern_fails_validate_not_simulate_later(workdir: Path) -> None:
    (workdir / "rps.csv").write_text("timestamp,value\n2024-01-01T00:00:00Z,5\nnoon,6\n")
    path = workdir / "csv.yaml"
    path.write_text(_edit("checkout.yaml", "pattern: constant", "pattern: {csv: rps.csv}"))
    report = validate(ValidateRequest(files=[path]))
    (problem,) = report.files[0].problems
    assert str(problem).startswith(f"{path}:38: deployment.traffic.pattern.csv: "
                                   f"{workdir / 'rps.csv'}:")
    run = run_cli_bounded(["simulate", path], timeout=CPU_S, mem_mb=500)
    assert run.returncode == 2 and not run.traceback
    assert f"{path}:38: deployment.traffic.pattern.csv: " in run.stderr

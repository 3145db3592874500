"""Runbooks (``kind: Runbook``): which procedure to run, decided by what is seen at the breach.

A runbook is an ordered list of branches and a default. Each branch has conditions on what
an engineer (or a probe) can observe when the SLO breaches, and a procedure; the first
branch whose conditions all hold is run, else the default's procedure. Observables:

- ``{rule: NAME, firing: true|false}``: whether the SLO rule is violated;
- ``{component: NAME, metric: error_rate|latency_ratio|cpu|load_ratio, above: X}`` (or
  ``at_most: X``): a component's error rate (0..1), p99 latency over its healthy p99, CPU
  utilisation (0..1 of its replicas' capacity) or request rate over its healthy rate
  (``edge`` is the entry point as users see it);
- ``{step: NAME, ran: true|false}``: whether a step of the procedure already ran (at the
  breach none has; this matters when a runbook is consulted part-way).

Each procedure is a ``procedure:`` block as in a scenario (steps in order, settings as
defaults, optional steps left out to skip them). ``shadowrl optimize``/``train`` distill
runbooks from the RL policy (docs/runbooks.md); people can write and edit them too.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from shadowrl.core.spec import (
    API_VERSION,
    MAX_ITEMS,
    LineMap,
    Name,
    PathKey,
    Problem,
    Problems,
    Procedure,
    Scenario,
    SpecError,
    Strict,
    check_procedure,
    load_yaml_file,
    procedure_to_data,
    pydantic_problems,
)

MAX_BRANCHES = 64
MAX_CONDITIONS = 16
METRICS = ("error_rate", "latency_ratio", "cpu", "load_ratio")
EDGE = "edge"


class Condition(Strict):
    """One test on an observable; exactly one kind (rule, component metric, step)."""

    rule: Name | None = None
    firing: bool | None = None
    component: Name | None = None
    metric: Literal["error_rate", "latency_ratio", "cpu", "load_ratio"] | None = None
    above: float | None = Field(default=None, ge=0)
    at_most: float | None = Field(default=None, ge=0)
    step: Name | None = None
    ran: bool | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Condition:
        kinds = [k for k, keys in (("rule", ("rule", "firing")),
                                   ("component", ("component", "metric", "above", "at_most")),
                                   ("step", ("step", "ran")))
                 if any(getattr(self, key) is not None for key in keys)]
        if len(kinds) != 1:
            raise ValueError("a condition tests one thing: {rule, firing}, {component, "
                             "metric, above|at_most} or {step, ran}")
        if kinds == ["rule"] and (self.rule is None or self.firing is None):
            raise ValueError("a rule condition needs rule and firing")
        if kinds == ["step"] and (self.step is None or self.ran is None):
            raise ValueError("a step condition needs step and ran")
        if kinds == ["component"]:
            if self.component is None or self.metric is None:
                raise ValueError("a component condition needs component and metric")
            if (self.above is None) == (self.at_most is None):
                raise ValueError("a component condition needs exactly one of above or "
                                 "at_most")
        return self

    def holds(self, seen: Observation) -> bool:
        if self.rule is not None:
            return (self.rule in seen.firing) == self.firing
        if self.step is not None:
            return (self.step in seen.ran) == self.ran
        assert self.component is not None and self.metric is not None
        values = seen.metric(self.metric)
        value = float(values.get(self.component, 0.0))
        return value > self.above if self.above is not None else value <= float(self.at_most
                                                                               or 0.0)

    def text(self) -> str:
        """As people read it: ``web error_rate > 0.05``, ``rule errors firing``."""
        if self.rule is not None:
            return f"rule {self.rule} {'firing' if self.firing else 'not firing'}"
        if self.step is not None:
            return f"step {self.step} {'ran' if self.ran else 'not run'}"
        op, value = (">", self.above) if self.above is not None else ("<=", self.at_most)
        return f"{self.component} {self.metric} {op} {value:g}"

    def to_data(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class Branch(Strict):
    name: Name
    when: list[Condition] = Field(min_length=1, max_length=MAX_CONDITIONS)
    procedure: Procedure


class Default(Strict):
    procedure: Procedure


class RunbookMetadata(Strict):
    name: Name
    scenario: Name | None = None  # the scenario it was made for
    description: str | None = Field(default=None, max_length=2000)


class Runbook(Strict):
    api_version: Literal["shadowrl/v1"] = Field(alias="apiVersion")
    kind: Literal["Runbook"]
    metadata: RunbookMetadata
    branches: list[Branch] = Field(default_factory=list, max_length=MAX_BRANCHES)
    default: Default

    @property
    def name(self) -> str:
        return self.metadata.name

    def choose(self, seen: Observation) -> tuple[str, Procedure]:
        """The first branch whose conditions all hold (its name, its procedure), else
        ``("default", ...)``."""
        for branch in self.branches:
            if all(c.holds(seen) for c in branch.when):
                return branch.name, branch.procedure
        return "default", self.default.procedure

    def procedures(self) -> dict[str, Procedure]:
        """Every branch's procedure by branch name, the default's last."""
        return {**{b.name: b.procedure for b in self.branches},
                "default": self.default.procedure}


@dataclass(frozen=True)
class Observation:
    """What is seen when a runbook decides: rules firing, each component's error rate,
    latency ratio, CPU and load ratio (``edge`` included), and the steps that already ran."""

    firing: Set[str] = frozenset()
    error_rate: Mapping[str, float] = field(default_factory=dict)
    latency_ratio: Mapping[str, float] = field(default_factory=dict)
    ran: Set[str] = frozenset()
    cpu: Mapping[str, float] = field(default_factory=dict)
    load_ratio: Mapping[str, float] = field(default_factory=dict)

    def metric(self, name: str) -> Mapping[str, float]:
        """Every component's value of one metric (one of :data:`METRICS`)."""
        return {"error_rate": self.error_rate, "latency_ratio": self.latency_ratio,
                "cpu": self.cpu, "load_ratio": self.load_ratio}[name]


# --------------------------------------------------------------------------- files


def check_runbook(book: Runbook, scenario: Scenario | None = None) -> Problems:
    """Names unique; each procedure checked like a procedure file (with ``scenario``: its
    targets too); conditions name the scenario's rules, components and steps."""
    problems: Problems = []
    names: set[str] = set()
    parts: list[tuple[PathKey, Procedure]] = []
    for i, branch in enumerate(book.branches):
        if branch.name in names or branch.name == "default":
            problems.append((("branches", i, "name"), f"branch '{branch.name}' is named twice"
                             if branch.name in names else "'default' is the default's name"))
        names.add(branch.name)
        parts.append((("branches", i), branch.procedure))
    parts.append((("default",), book.default.procedure))
    for where, proc in parts:
        problems += [((*where, *path), message)
                     for path, message in check_procedure(proc, scenario)]
    if scenario is None:
        return problems
    rules = {r.name for r in scenario.slo.rules}
    components = {*scenario.components(), EDGE}
    steps = {s.name for s in scenario.procedure.steps}
    for i, branch in enumerate(book.branches):
        for j, cond in enumerate(branch.when):
            at: PathKey = ("branches", i, "when", j)
            if cond.rule is not None and cond.rule not in rules:
                problems.append(((*at, "rule"), f"unknown SLO rule '{cond.rule}' (the "
                                 f"scenario's: {', '.join(sorted(rules))})"))
            if cond.component is not None and cond.component not in components:
                problems.append(((*at, "component"), f"unknown component '{cond.component}'"))
            if cond.step is not None and cond.step not in steps:
                problems.append(((*at, "step"), f"unknown step '{cond.step}'"))
    for where, proc in parts:
        missing = [s.name for s in scenario.procedure.steps
                   if not s.optional and s.name not in {t.name for t in proc.steps}]
        if missing:
            problems.append(((*where, "procedure", "steps"), "leaves out required steps "
                             f"{missing} of scenario '{scenario.name}'"))
    return problems


def runbook_from_data(data: Any, file: str, lines: LineMap | None = None,
                      scenario: Scenario | None = None) -> Runbook:
    lines = lines or LineMap()
    if not isinstance(data, dict):
        raise SpecError([Problem(file, lines.line(()), "", "expected a mapping (apiVersion, "
                                 "kind: Runbook, metadata, branches, default)")])
    try:
        book = Runbook.model_validate(data)
    except ValidationError as exc:
        raise SpecError(pydantic_problems(exc, file, lines, model=Runbook)) from None
    problems = check_runbook(book, scenario)
    if problems:
        raise SpecError.at_paths(file, lines, problems)
    return book


def load_runbook(path: str | Path, scenario: Scenario | None = None) -> Runbook:
    """Load and check a runbook file; raises :class:`SpecError` naming file:line: field."""
    data, lines = load_yaml_file(path)
    return runbook_from_data(data, str(path), lines, scenario)


def is_runbook_file(path: str | Path) -> bool:
    """Whether a YAML file says ``kind: Runbook`` (read cheaply, without validating)."""
    try:
        data, _ = load_yaml_file(path)
    except SpecError:
        return False
    return isinstance(data, dict) and data.get("kind") == "Runbook"


def runbook_to_data(book: Runbook) -> dict[str, Any]:
    """A runbook as plain data in the file format (durations as strings)."""
    meta: dict[str, Any] = {"name": book.metadata.name}
    if book.metadata.scenario:
        meta["scenario"] = book.metadata.scenario
    if book.metadata.description:
        meta["description"] = book.metadata.description
    return {"apiVersion": API_VERSION, "kind": "Runbook", "metadata": meta,
            "branches": [{"name": b.name, "when": [c.to_data() for c in b.when],
                          "procedure": procedure_to_data(b.procedure)}
                         for b in book.branches],
            "default": {"procedure": procedure_to_data(book.default.procedure)}}


__all__ = ["EDGE", "MAX_BRANCHES", "MAX_CONDITIONS", "METRICS", "MAX_ITEMS", "Branch",
           "Condition", "Default", "Observation", "Runbook", "RunbookMetadata",
           "check_runbook", "is_runbook_file", "load_runbook", "runbook_from_data",
           "runbook_to_data"]

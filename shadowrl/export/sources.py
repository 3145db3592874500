"""What an export starts from: a procedure file, a scenario file, a runbook file, or a source
that a caller's
:class:`SourceResolver` loads (the CLI passes :data:`shadowrl.integrations.sources.RESOLVERS`
for MLflow runs and registered models), and what a file's header says about its procedure.

A procedure file is checked like a ``--procedure`` file: against ``--scenario`` when given,
else on its own (types, settings, step names, ``after``); a runbook file (``kind: Runbook``)
likewise, like ``evaluate --policy RUNBOOK.yaml``. Export never imports an
integration: sources it cannot read as files come only through the resolvers it is handed.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from shadowrl.core.runbook import Runbook, runbook_from_data
from shadowrl.core.spec import (
    LineMap,
    PathKey,
    Problem,
    Procedure,
    Scenario,
    SpecError,
    check_procedure,
    format_path,
    load_scenario,
    load_yaml,
    procedure_from_data,
    scenario_from_data,
)
from shadowrl.rehearsal.verification import read_header_lines


class SourceError(ValueError):
    """A source that cannot be exported (not a file problem with a line number)."""


@dataclass
class PolicyStandIn:
    """A source that names a policy (a registered model version, a training run): a policy is
    adaptive, it chooses each step from what it observes, and cannot be exported as a fixed
    procedure yet, so the procedure logged with it is exported in its place. Which policy,
    and its own held-out evaluation, so an export says plainly what it holds and how that
    compares."""

    policy: str  # e.g. "models:/checkout-rollback/3"
    champion: bool = False  # the policy holds the registry's champion alias
    found_while_training: bool = False  # the exported procedure is the best static one found
    evaluation: dict[str, Any] | None = None  # the policy's, shaped like ExportSource's
    verification: str | None = None  # the policy's verification on a real shadow, in words


@dataclass
class ExportSource:
    """A procedure to export and what is known about where it came from."""

    procedure: Procedure
    scenario: Scenario | None
    name: str
    origin: str  # the file path or model URI it was read from
    evaluation: dict[str, Any] | None = None  # a `summarize`-shaped dict and/or {"text": ...}
    command: str | None = None  # the command that produced the procedure, if known
    scenario_name: str | None = None
    warnings: list[str] = field(default_factory=list)
    lines: LineMap | None = None  # field path -> line of ``origin``, when read from a file
    stand_in: PolicyStandIn | None = None  # set when the source names a policy, not a procedure
    verification: dict[str, Any] | None = None  # read_header's: passed, failed or none
    runbook: Runbook | None = None  # a runbook file's; ``procedure`` is then its default's

    def __post_init__(self) -> None:
        if self.scenario_name is None and self.scenario is not None:
            self.scenario_name = self.scenario.name


@dataclass(frozen=True)
class SourceResolver:
    """A kind of source that is not a file, recognised by its form alone (no import of the
    integration that loads it), and how to load one.

    ``load`` raises :class:`SourceError` for a source it cannot load.
    """

    forms: str  # what the sources look like, for messages: "an MLflow run id or models:/..."
    matches: Callable[[str], bool]
    load: Callable[[str], ExportSource]


def load_source(source: str, scenario_path: Path | None = None,
                resolvers: Sequence[SourceResolver] = ()) -> ExportSource:
    """Resolve SOURCE to a procedure; raises :class:`SpecError` or :class:`SourceError`.

    A path that does not exist goes to the first of ``resolvers`` that matches its form.
    ``scenario_path`` checks a procedure file (or a resolved procedure) against that scenario
    with the same rules as ``--procedure`` files; without it a procedure file is validated on
    its own and its targets are not checked.
    """
    scenario = load_scenario(scenario_path) if scenario_path is not None else None
    path = Path(source)
    if not path.exists():
        for resolver in resolvers:
            if resolver.matches(source):
                return _resolved(resolver, source, scenario)
        forms = ["a procedure.yaml", "a scenario YAML", *(r.forms for r in resolvers)]
        raise SourceError(f"{source}: no such file (give "
                          f"{', '.join(forms) if resolvers else ' or '.join(forms)})")
    if path.is_dir():
        if not (path / "procedure.yaml").is_file():
            raise SourceError(f"{source}: is a directory without a procedure.yaml")
        path = path / "procedure.yaml"
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{file}: cannot read: {exc.strerror or exc}") from None
    data, lines = load_yaml(raw, file)
    if isinstance(data, dict) and (data.get("kind") == "Scenario" or "deployment" in data):
        if scenario is not None:
            raise SourceError(f"{file}: is a scenario; --scenario applies to procedure files")
        sc = scenario_from_data(data, file, lines)
        sc.__dict__["_source"] = path
        return ExportSource(procedure=sc.procedure, scenario=sc, name=sc.procedure.name,
                            origin=file, lines=lines)
    is_runbook = isinstance(data, dict) and data.get("kind") == "Runbook"
    if not isinstance(data, dict) or ("procedure" not in data and not is_runbook):
        raise SpecError([Problem(file, 1, "", "expected a scenario (kind: Scenario), a "
                                             "procedure file (a mapping with 'procedure:') "
                                             "or a runbook (kind: Runbook)")])
    meta = data.get("metadata")
    named = meta.get("scenario") if isinstance(meta, dict) else None
    named = named if isinstance(named, str) else None
    book = runbook_from_data(data, file, lines, scenario) if is_runbook else None
    proc = book.default.procedure if book else procedure_from_data(data, file, lines, scenario)
    if scenario is None:
        warnings = [f"{file}: not checked against a scenario (targets, flags and previous "
                    f"configs unknown); give --scenario FILE to check it"]
    elif named and named != scenario.name:
        warnings = [f"{file} was written for scenario '{named}' but is checked against "
                    f"'{scenario.name}'"]
    else:
        warnings = []
    header = read_header(raw.decode("utf-8", errors="replace"))
    return ExportSource(procedure=proc, scenario=scenario, name=proc.name, origin=file,
                        evaluation=header.evaluation, command=header.command,
                        scenario_name=scenario.name if scenario else named, warnings=warnings,
                        lines=lines, verification=header.verification, runbook=book)


def export_error(src: ExportSource, path: PathKey, message: str) -> SpecError:
    """A value of ``src`` that an export cannot represent, as ``file:line: field: message``
    (line 1 when the source was not read from a file)."""
    line = src.lines.line(path) if src.lines is not None else 1
    return SpecError([Problem(src.origin, line, format_path(path), message)])


def _resolved(resolver: SourceResolver, source: str, scenario: Scenario | None) -> ExportSource:
    """A resolver's source, its procedure checked like a procedure file's."""
    src = resolver.load(source)
    proc = src.procedure.model_copy(deep=True)
    problems = check_procedure(proc, scenario)
    if problems:
        raise SpecError([Problem(source, 1, format_path(p), m) for p, m in problems])
    src.procedure = proc
    if scenario is not None:
        src.scenario, src.scenario_name = scenario, scenario.name
    return src


# --------------------------------------------------------------------------- header

_FOUND_BY = re.compile(r"(?:found|produced) by:? `(?P<cmd>.+)`")
_EVAL = re.compile(r"^(?:evaluation: )?(?P<text>(?:held-out )?evaluation \(.*)$")
_EVAL_LINE = re.compile(r"^evaluation: (?P<text>.+)$")


class Header(NamedTuple):
    """What a file's leading ``#`` lines say about its procedure."""

    command: str | None  # the command that produced it
    evaluation: dict[str, Any] | None  # its held-out evaluation (parse_evaluation)
    verification: dict[str, Any] | None  # verification.read_header_lines: passed/failed/none


def read_header(text: str) -> Header:
    """The producing command, evaluation summary and verification from a file's leading
    ``#`` lines.

    Understands the header ``optimize`` writes (``found by `CMD```, ``held-out evaluation (N
    incidents): downtime mean Xs p95 Ys; outcomes recovered N, ...``, or the older ``outcomes
    {...}``, and the ``verification: ...`` lines) and the one export writes.
    """
    command: str | None = None
    evaluation: dict[str, Any] | None = None
    verification_lines: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        if body.startswith(("verification:", "verification,")):
            verification_lines.append((number, body))
            continue
        match = _FOUND_BY.search(body)
        if match and command is None:
            command = match.group("cmd")
            continue
        match = _EVAL.match(body) or _EVAL_LINE.match(body)
        if match and evaluation is None and not body.startswith("evaluation: none"):
            evaluation = parse_evaluation(match.group("text"))
    return Header(command, evaluation, read_header_lines(verification_lines))


def verification_refusal(src: ExportSource) -> SpecError | None:
    """Why ``src`` must not be exported: its header says it failed verification on a real
    shadow (``file:line: verification: ...``); None otherwise."""
    v = src.verification
    if v is None or v.get("status") != "failed":
        return None
    why = "; ".join(v.get("reasons") or []) or "see its header"
    backend = v.get("backend", "a real shadow")
    return SpecError([Problem(src.origin, int(v.get("line") or 1), "verification",
                              f"this procedure failed verification on the real shadow "
                              f"({backend}): {why}; export refuses it (change it, then "
                              f"verify it again: shadowrl optimize SCENARIO --verify "
                              f"{backend})")])


_OUTCOMES_DICT = re.compile(r"outcomes (\{[^}]*\})")
_OUTCOMES_LIST = re.compile(r"outcomes ((?:[a-z_]+ \d+)(?:, [a-z_]+ \d+)*)")


def parse_evaluation(text: str) -> dict[str, Any]:
    """``{"text": ...}`` plus whatever of runs / downtime / budget burn / outcomes the line
    states. Outcomes read either way headers have written them, ``outcomes recovered 50,
    rollback_failed 0`` or (older files) a Python dict; ``text`` always has the first, as
    it is shown to people again."""
    out: dict[str, Any] = {"text": text}
    runs = re.search(r"(\d+) incidents?\b", text)
    if runs:
        out["runs"] = int(runs.group(1))
    down = re.search(r"downtime mean (\d+(?:\.\d+)?)s p95 (\d+(?:\.\d+)?)s", text)
    if down:
        out["downtime_s"] = {"mean": float(down.group(1)), "p95": float(down.group(2))}
    burn = re.search(r"error budget burn mean (\d+(?:\.\d+)?)%", text)
    if burn:
        out["budget_burn"] = {"mean": float(burn.group(1)) / 100}
    outcomes = _outcomes_of(text)
    if outcomes is not None:
        out["outcomes"] = outcomes
        old = _OUTCOMES_DICT.search(text)
        if old:
            out["text"] = text[:old.start()] + outcomes_text(outcomes) + text[old.end():]
    return out


def _outcomes_of(text: str) -> dict[str, Any] | None:
    old = _OUTCOMES_DICT.search(text)
    if old:
        try:
            value = ast.literal_eval(old.group(1))
        except (ValueError, SyntaxError):
            return None
        return value if isinstance(value, dict) else None
    new = _OUTCOMES_LIST.search(text)
    if new is None:
        return None
    pairs = (item.split(" ") for item in new.group(1).split(", "))
    return {name: int(count) for name, count in pairs}


def outcomes_text(outcomes: dict[str, Any]) -> str:
    """Outcome counts as people read them: ``outcomes recovered 50, rollback_failed 0``."""
    return "outcomes " + ", ".join(f"{k} {v}" for k, v in outcomes.items())

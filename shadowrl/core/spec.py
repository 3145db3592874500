"""Scenario format ``shadowrl/v1``: pydantic models and a YAML loader that keeps line numbers.

The scenario is a public contract (docs/scenario-format.md). Every validation error names the
file, the line and the field path, e.g.
``envs/x.yaml:41: procedure.steps[2].after: unknown step 'revert-api'``.
"""

from __future__ import annotations

import math
import os
import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

API_VERSION = "shadowrl/v1"
RESERVED_SCOPE = "edge"  # ``scope: edge`` is the edge view, so no component may be called so
ModelT = TypeVar("ModelT", bound=BaseModel)
MAX_FILE_BYTES = 8 * 2**20
MAX_NODES = 200_000
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]*")  # used with fullmatch: no trailing "\n"
MAX_NAME_LENGTH = 63  # a Kubernetes label value: names end up in exported commands

# Bounds of the format (docs/scenario-format.md, Bounds). They keep every valid scenario's
# rehearsal small: the simulator integrates from launch to the end of verification, so each
# duration is time it simulates, and each count or rate a number its physics must stay
# finite with.
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
MAX_RATE = 10_000_000.0  # requests/s (traffic, service capacity) or queries/s (datastore)
MAX_REPLICAS = 10_000  # a service's replicas, max_surge, and scale/batch/surge settings
MAX_CONCURRENCY = 1_000_000
MAX_LATENCY_S = MINUTE  # a component's own mean service time
MAX_STARTUP_S = HOUR  # startup, inflight_time and a rollout's drain
MAX_SLOW_S = DAY  # anything else that takes time: migrations, warm-up, waits, commands
MAX_ONSET_S = 6 * HOUR  # the shadow runs from launch to the onset, up to 25 redraws
MAX_RAMP_S = 6 * HOUR  # ramps are integrated in 5 s quanta
MAX_VERIFY_S = DAY  # verify.hold and verify.timeout, step timeouts, rule `for`
MAX_WINDOW_S = 366 * DAY  # the error budget's window
MIN_INTERVAL_S = 0.001  # slo.interval: ticks are counted in floating point
MAX_INTERVAL_S = HOUR
MAX_ONLINE_FACTOR = 100.0
MAX_WEIGHT = 1_000_000.0
MAX_EFFECT = 1_000_000.0  # |add| (ms of latency, shares) and factor
MAX_MAGNITUDE = 100.0
MAX_LOAD = 100.0
MAX_COMPONENTS = 50  # services, datastores and caches, each: a breach search that
# never breaches simulates 25 draws of the whole deployment
MAX_TIME_COMPRESSION = 1000.0  # the real shadow's scenario seconds per wall second
MAX_ITEMS = 200  # rules, incidents, effects, steps, calls, flags, choices, ...
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


# --------------------------------------------------------------------------- durations


def parse_duration(value: Any) -> float:
    """Seconds from ``500ms``/``30s``/``5m``/``1h`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '30s', got {shown(value)}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if not match:
            raise ValueError(f"cannot parse duration {value!r} (use e.g. 500ms, 30s, 5m, 1h)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"expected a duration like '30s', got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration must be a finite number >= 0, got {shown(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """Inverse of :func:`parse_duration` for writing procedures back as YAML."""
    if seconds == int(seconds):
        s = int(seconds)
        if s and s % 3600 == 0:
            return f"{s // 3600}h"
        if s and s % 60 == 0:
            return f"{s // 60}m"
        return f"{s}s"
    return f"{round(seconds * 1000)}ms"


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _check_name(value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        shown = value if not isinstance(value, str) or len(value) <= 80 else value[:80] + "..."
        raise ValueError(f"invalid name {shown!r}: use lowercase letters, digits and '-'")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"name too long ({len(value)} characters; at most "
                         f"{MAX_NAME_LENGTH})")
    return value


Name = Annotated[str, BeforeValidator(_check_name)]


class Strict(BaseModel):
    """Base for all scenario models: unknown keys are errors. Fields are read by their YAML
    names only (``for``, ``schema``, ``apiVersion``): accepting the Python names too would
    let ``for_:`` validate in a file."""

    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


# --------------------------------------------------------------------------- deployment


class CsvPattern(Strict):
    csv: str
    column: str = "value"


def _parse_scale(value: Any) -> Any:
    """``2x`` as 2.0 (a number is taken as is): how many times faster a replay plays."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*[xX]\s*", value)
        if m:
            return float(m.group(1))
    return value


class Replay(Strict):
    """Recorded traffic instead of synthetic requests (docs/replay.md)."""

    file: str = Field(min_length=1)
    format: Literal["auto", "mirror", "nginx", "json"] = "auto"
    scale: Annotated[float, BeforeValidator(_parse_scale)] = Field(default=1.0, gt=0,
                                                                    le=MAX_LOAD)
    loop: bool = True
    percent: float | None = Field(default=None, gt=0, le=100)


class Traffic(Strict):
    rps: float = Field(gt=0, le=MAX_RATE)
    write_fraction: float = Field(default=0.1, ge=0, le=1)
    pattern: Literal["constant", "diurnal"] | CsvPattern = "constant"
    replay: Replay | None = None


class Versioned(Strict):
    live: str | int
    previous: str | int


class Runtime(Strict):
    """A service's own images on the real shadow, instead of the reference app: what a user
    with real images runs. The simulator ignores it."""

    image: Versioned = Field(description="The live and previous image references.")
    port: int = Field(default=8080, ge=1, le=65535, description="The port the app serves on.")
    health: str = Field(default="/healthz", pattern=r"^/[^\s]*$", max_length=200,
                        description="The readiness path: ready once it answers 2xx.")
    env: dict[str, str] = Field(default_factory=dict, max_length=MAX_ITEMS,
                                description="Environment variables for every replica.")


class Service(Strict):
    name: Name
    edge: bool = False
    replicas: int = Field(ge=1, le=MAX_REPLICAS)
    capacity_rps: float = Field(gt=0, le=MAX_RATE)
    latency: Duration = Field(default=0.02, le=MAX_LATENCY_S)
    concurrency: int | None = Field(
        default=None, ge=1, le=MAX_CONCURRENCY,
        description="Requests one replica serves at once; default ceil(capacity_rps x "
                    "latency), at least 1.",
    )
    startup: Duration = Field(default=20.0, le=MAX_STARTUP_S)
    inflight_time: Duration = Field(
        default=10.0, le=MAX_STARTUP_S,
        description="How long in-flight requests need to finish; a shorter drain drops some.",
    )
    max_surge: int = Field(
        default=0, ge=0, le=MAX_REPLICAS,
        description="Extra replicas a rollout may start beside the current ones (room for "
                    "maxSurge); 0: none.",
    )
    calls: list[Name] = Field(default_factory=list, max_length=MAX_ITEMS)
    version: Versioned | None = None
    config: Versioned | None = None
    flags: list[Name] = Field(default_factory=list, max_length=MAX_ITEMS)
    runtime: Runtime | None = None


class Migration(Strict):
    duration: Duration = Field(le=MAX_SLOW_S)
    online_factor: float = Field(default=4.0, ge=1, le=MAX_ONLINE_FACTOR)
    reversible: bool = True
    backward_compatible: bool = True


class Datastore(Strict):
    name: Name
    capacity_qps: float = Field(gt=0, le=MAX_RATE)
    latency: Duration = Field(default=0.005, le=MAX_LATENCY_S)
    concurrency: int | None = Field(
        default=None, ge=1, le=MAX_CONCURRENCY,
        description="Queries the store serves at once; default ceil(capacity_qps x latency), "
                    "at least 1.",
    )
    schema_: Versioned | None = Field(default=None, alias="schema")
    migration: Migration | None = None


class Cache(Strict):
    name: Name
    hit_ratio: float = Field(ge=0, le=1)
    warmup: Duration = Field(default=120.0, le=MAX_SLOW_S)
    latency: Duration = Field(default=0.001, le=MAX_LATENCY_S)
    fronts: list[Name] | None = Field(
        default=None, max_length=MAX_ITEMS,
        description="Datastores this cache sits in front of; default: those its callers call.",
    )


class Deployment(Strict):
    traffic: Traffic
    services: list[Service] = Field(min_length=1, max_length=MAX_COMPONENTS)
    datastores: list[Datastore] = Field(default_factory=list, max_length=MAX_COMPONENTS)
    caches: list[Cache] = Field(default_factory=list, max_length=MAX_COMPONENTS)


# --------------------------------------------------------------------------- SLO


class Rule(Strict):
    name: Name
    metric: Literal["error_rate", "latency_p50_ms", "latency_p99_ms", "cpu", "memory", "rps"]
    scope: str = "edge"
    above: float | None = None
    below: float | None = None
    for_: Duration = Field(default=0.0, alias="for", le=MAX_VERIFY_S)

    @model_validator(mode="after")
    def _one_bound(self) -> Rule:
        if (self.above is None) == (self.below is None):
            raise ValueError("exactly one of 'above' or 'below' is required")
        return self

    def violated(self, value: float) -> bool:
        if self.above is not None:
            return value > self.above
        return value < self.below  # type: ignore[operator]


class Objective(Strict):
    """The error-budget objective: a request is bad when it fails or is slower than
    ``latency_threshold``; ``1 - target`` of the window's requests may be bad."""

    target: float = Field(default=0.999, gt=0, lt=1)
    window: Duration = Field(default=30 * 86400.0, gt=0, le=MAX_WINDOW_S)
    latency_threshold: Duration | None = Field(default=None, gt=0, le=HOUR)


class Slo(Strict):
    interval: Duration = Field(default=10.0, ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)
    rules: list[Rule] = Field(min_length=1, max_length=MAX_ITEMS)
    objective: Objective = Field(default_factory=Objective)

    def latency_threshold_ms(self) -> float | None:
        """The objective's latency threshold in milliseconds: ``objective.latency_threshold``,
        else the smallest ``above`` of the edge ``latency_p99_ms`` rules, else None (then
        only failed requests are bad)."""
        if self.objective.latency_threshold is not None:
            return self.objective.latency_threshold * 1000.0
        bounds = [r.above for r in self.rules
                  if r.scope == "edge" and r.metric == "latency_p99_ms" and r.above is not None]
        return min(bounds) if bounds else None


# --------------------------------------------------------------------------- incidents


class Cause(Strict):
    kind: Literal["version", "config", "schema", "flag", "external"]
    target: Name | None = None
    flag: Name | None = None


class Effect(Strict):
    metric: Literal["error_rate", "latency", "cpu", "memory"]
    target: Name
    add: float | None = Field(default=None, ge=-MAX_EFFECT, le=MAX_EFFECT)
    factor: float | None = Field(default=None, gt=0, le=MAX_EFFECT)
    ramp: Duration = Field(default=0.0, le=MAX_RAMP_S)

    @model_validator(mode="after")
    def _one_change(self) -> Effect:
        if self.add is None and self.factor is None:
            raise ValueError("an effect needs 'add' or 'factor'")
        if self.metric == "error_rate" and self.factor is not None:
            raise ValueError("error_rate effects use 'add' (a share of requests)")
        if self.metric == "error_rate" and not (0 <= (self.add or 0) <= 1):
            raise ValueError("error_rate 'add' must be between 0 and 1")
        if self.metric == "latency" and (self.add or 0) < 0:
            raise ValueError("latency 'add' must be >= 0 (milliseconds added; use 'factor' "
                             "below 1 to speed a component up)")
        return self


class Incident(Strict):
    name: Name
    weight: float = Field(default=1.0, gt=0, le=MAX_WEIGHT)
    cause: Cause
    effects: list[Effect] = Field(default_factory=list, max_length=MAX_ITEMS)


class History(Strict):
    file: str
    format: Literal["prometheus", "csv"] | None = None
    column: str = "value"


Magnitude = Annotated[float, Field(le=MAX_MAGNITUDE)]
Onset = Annotated[float, BeforeValidator(parse_duration), Field(le=MAX_ONSET_S)]
LoadMultiplier = Annotated[float, Field(le=MAX_LOAD)]


class Deviations(Strict):
    magnitude: tuple[Magnitude, Magnitude] = (1.0, 1.0)
    onset: tuple[Onset, Onset] = (60.0, 60.0)
    load: tuple[LoadMultiplier, LoadMultiplier] = (1.0, 1.0)
    history: History | None = None

    @field_validator("magnitude", "onset", "load")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"range [{value[0]}, {value[1]}] must be [low, high]")
        if value[0] < 0:
            raise ValueError("range values must be >= 0")
        return value


# --------------------------------------------------------------------------- procedure

Scalar = bool | int | float | str


class Tunable(Strict):
    """A step setting: one of ``choices``; the optimizer may pick any, ``default`` is configured."""

    choices: list[Scalar] = Field(min_length=1, max_length=MAX_ITEMS)
    default: Scalar | None = None

    @property
    def tunable(self) -> bool:
        return len(self.choices) > 1


class SimCommand(Strict):
    duration: Duration = Field(default=10.0, le=MAX_SLOW_S)
    fixes: list[Name] = Field(default_factory=list, max_length=MAX_ITEMS)
    effects: list[Effect] = Field(default_factory=list, max_length=MAX_ITEMS)


class Step(Strict):
    name: Name
    action: Literal[
        "scale", "rollback_version", "revert_config", "migrate_down", "disable_flag",
        "flush_cache", "warm_cache", "wait", "command",
    ]
    target: Name | None = None
    settings: dict[str, Tunable | Scalar] = Field(default_factory=dict)
    after: list[Name] = Field(default_factory=list, max_length=MAX_ITEMS)
    optional: bool = False
    run: list[str] | None = None
    sim: SimCommand | None = None
    # stopped part-way past this (shadow time from its start): the rollback fails
    timeout: Duration | None = Field(default=None, gt=0, le=MAX_VERIFY_S)

    def tunables(self) -> dict[str, Tunable]:
        """Settings normalised to :class:`Tunable` (validated and coerced by the loader)."""
        return {k: v if isinstance(v, Tunable) else Tunable(choices=[v], default=v)
                for k, v in self.settings.items()}

    def default_settings(self) -> dict[str, Scalar]:
        return {k: t.default for k, t in self.tunables().items()}  # type: ignore[misc]


class Verify(Strict):
    hold: Duration = Field(default=120.0, le=MAX_VERIFY_S)
    timeout: Duration = Field(default=1800.0, gt=0, le=MAX_VERIFY_S)

    @model_validator(mode="after")
    def _hold_fits(self) -> Verify:
        if self.hold > self.timeout:
            raise ValueError(f"hold {format_duration(self.hold)} is longer than timeout "
                             f"{format_duration(self.timeout)}: the SLO could never be seen "
                             f"restored in time")
        return self


class Budget(Strict):
    downtime: Duration | None = Field(default=None, le=MAX_VERIFY_S)


class Procedure(Strict):
    name: Name
    steps: list[Step] = Field(min_length=1, max_length=MAX_ITEMS)
    verify: Verify = Field(default_factory=Verify)
    budget: Budget = Field(default_factory=Budget)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


class ShadowSettings(Strict):
    """How the real (Docker) shadow runs the scenario; the simulator ignores these."""

    time_compression: float = Field(
        default=10.0, ge=1, le=MAX_TIME_COMPRESSION,
        description="Scenario seconds per wall second: startups, drains, migrations, ramps "
                    "and the SLO's durations run this many times faster (outputs stay in "
                    "scenario seconds; request latencies are not compressed).")
    sample_fraction: float = Field(
        default=0.1, gt=0, le=1,
        description="The share of the scenario's traffic the load generator sends; "
                    "capacities scale with it, so utilisations match the scenario's.")


class SimulatorSettings(Strict):
    """What the simulated shadow loads beside the scenario; the real shadow ignores these."""

    params: str | None = Field(
        default=None, min_length=1,
        description="A simulator parameter file (YAML or JSON, e.g. one `shadowrl calibrate` "
                    "wrote), relative to this scenario file: the simulator's constants and "
                    "per-component overrides fitted on the real shadow.")


class OptimizerSettings(Strict):
    """What ``shadowrl optimize`` uses for this scenario when its flags do not say."""

    agent: str | None = Field(
        default=None, min_length=1,
        description="An agent config (YAML), relative to this scenario file, that `optimize "
                    "--method rl|all` trains when no --agent is given: one tuned for this "
                    "scenario (a warm start, its own hyperparameters).")


class Metadata(Strict):
    name: Name
    description: str = ""
    annotations: dict[str, str] = Field(
        default_factory=dict, max_length=MAX_ITEMS,
        description="Free key/value notes for tools, e.g. where `shadowrl sync` read the "
                    "deployment from (shadowrl.io/synced-from); nothing in shadowrl's "
                    "rehearsals reads them.")


class Scenario(Strict):
    api_version: Literal["shadowrl/v1"] = Field(alias="apiVersion")
    kind: Literal["Scenario"]
    metadata: Metadata
    deployment: Deployment
    slo: Slo
    incidents: list[Incident] = Field(min_length=1, max_length=MAX_ITEMS)
    deviations: Deviations = Field(default_factory=Deviations)
    procedure: Procedure
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def edge(self) -> Service:
        for service in self.deployment.services:
            if service.edge:
                return service
        return self.deployment.services[0]

    def components(self) -> dict[str, Service | Datastore | Cache]:
        d = self.deployment
        return {c.name: c for c in [*d.services, *d.datastores, *d.caches]}

    def incident(self, name: str) -> Incident:
        for incident in self.incidents:
            if incident.name == name:
                return incident
        known = ", ".join(i.name for i in self.incidents)
        raise KeyError(f"unknown incident {name!r} (known: {known})")


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(ValueError):
    """One or more validation problems, each naming file, line and field path."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    @classmethod
    def at_paths(cls, file: str, lines: LineMap, problems: Problems) -> SpecError:
        """From (field path, message) pairs, each placed on its line of ``file``."""
        return cls([Problem(file, lines.line(p), format_path(p), m) for p, m in problems])


# --------------------------------------------------------------------------- YAML with lines

PathKey = tuple[str | int, ...]
Problems = list[tuple[PathKey, str]]  # (field path, message): placed on lines by SpecError


class LineMap:
    """Field path -> line number, for mapping pydantic errors back to the file."""

    def __init__(self) -> None:
        self.lines: dict[PathKey, int] = {}

    def line(self, path: Iterable[str | int]) -> int:
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get((), 1)


def format_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _construct(node: yaml.Node, path: PathKey, lines: LineMap, file: str,
               counter: list[int], loader: yaml.SafeLoader) -> Any:
    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise SpecError([Problem(file, node.start_mark.line + 1, format_path(path),
                                 f"document too large (more than {MAX_NODES} nodes)")])
    lines.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise SpecError([Problem(file, key_node.start_mark.line + 1, format_path(path),
                                         "YAML merge keys ('<<') are not supported")])
            key = _construct(key_node, path, lines, file, counter, loader)
            if isinstance(key, (dict, list)) or key is None:
                raise SpecError([Problem(file, key_node.start_mark.line + 1, format_path(path),
                                         "mapping keys must be plain strings")])
            key = str(key) if not isinstance(key, str) else key
            if key in out:
                raise SpecError([Problem(file, key_node.start_mark.line + 1,
                                         format_path((*path, key)), "duplicate key")])
            child = (*path, key)
            lines.lines[child] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, child, lines, file, counter, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), lines, file, counter, loader)
                for i, item in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, KeyError, AttributeError, TypeError, OverflowError,
            yaml.YAMLError) as exc:
        text = str(getattr(exc, "problem", None) or exc).splitlines()[0][:120]
        raise SpecError([Problem(file, node.start_mark.line + 1, format_path(path),
                                 f"cannot read value {node.value[:40]!r}: {text}")]) from None


def _check_size(text: str, file: str, loader: Any) -> None:
    """Count parser events (cheap, in C) and stop before composing a huge document."""
    for n, event in enumerate(yaml.parse(text, Loader=loader)):
        if n > 2 * MAX_NODES:
            raise SpecError([Problem(file, event.start_mark.line + 1, "",
                                     f"document too large (more than {MAX_NODES} nodes)")])


def load_yaml(text: str | bytes, file: str) -> tuple[Any, LineMap]:
    """Parse one YAML document, returning plain data and a path->line map."""
    if isinstance(text, bytes):
        if len(text) > MAX_FILE_BYTES:
            raise SpecError([Problem(file, 1, "", f"file too large ({len(text)} bytes; the "
                                                  f"limit is {MAX_FILE_BYTES})")])
        if b"\x00" in text:
            raise SpecError([Problem(file, 1, "", "not a text file (contains NUL bytes)")])
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = text[: exc.start].count(b"\n") + 1
            raise SpecError([Problem(file, line, "", "not UTF-8 text")]) from None
    if not text.strip():
        raise SpecError([Problem(file, 1, "", "file is empty")])
    fast_loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        _check_size(text, file, fast_loader)
        nodes = list(yaml.compose_all(text, Loader=fast_loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise SpecError([Problem(file, line, "", f"YAML syntax error: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(file, 1, "", f"YAML error: {exc}")]) from None
    except RecursionError:
        raise SpecError([Problem(file, 1, "", "YAML nesting too deep")]) from None
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise SpecError([Problem(file, 1, "", "file is empty")])
    if len(nodes) > 1:
        raise SpecError([Problem(file, nodes[1].start_mark.line + 1, "",
                                 "expected one YAML document, found several")])
    lines = LineMap()
    # A loader per file resolves scalars (already tagged by the composer) with YAML 1.1's safe
    # types; it remembers what it built, so it must not outlive the load.
    loader = yaml.SafeLoader("")
    try:
        data = _construct(nodes[0], (), lines, file, [0], loader)
    except RecursionError:
        raise SpecError([Problem(file, 1, "", "YAML nesting too deep")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecError([Problem(file, mark.line + 1 if mark else 1, "",
                                 f"YAML error: {getattr(exc, 'problem', exc)}")]) from None
    return data, lines


# --------------------------------------------------------------------------- settings

_SETTING_KINDS: dict[str, dict[str, str]] = {
    "scale": {"replicas": "positive"},
    "rollback_version": {"batch": "positive", "drain": "duration", "surge": "count"},
    "revert_config": {"batch": "positive", "drain": "duration", "surge": "count"},
    "migrate_down": {"online": "bool"},
    "disable_flag": {"flag": "name"},
    "flush_cache": {},
    "warm_cache": {},
    "wait": {"duration": "duration"},
    "command": {},
}
_SETTING_DEFAULTS: dict[str, dict[str, Scalar]] = {
    "rollback_version": {"batch": 1, "drain": 30.0},
    "revert_config": {"batch": 1, "drain": 30.0},
    "migrate_down": {"online": False},
}
_REQUIRED_SETTINGS = {"scale": ("replicas",), "disable_flag": ("flag",), "wait": ("duration",)}
# upper bounds of numeric settings (docs/scenario-format.md, Bounds): replica counts like a
# service's, a drain like a startup, a wait like any slow action
_SETTING_MAX: dict[str, float] = {"replicas": MAX_REPLICAS, "batch": MAX_REPLICAS,
                                  "surge": MAX_REPLICAS, "drain": MAX_STARTUP_S,
                                  "duration": MAX_SLOW_S}
_ZERO_HINTS = {"replicas": " (a scale step keeps a serving service running: at least 1 "
                           "replica)"}


def _coerce_setting(kind: str, value: Any, key: str = "") -> Scalar:
    """One setting value as its kind's type, within its bounds; ValueError otherwise."""
    limit = _SETTING_MAX.get(key)
    if kind in ("count", "positive"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {_shown(value)}")
        low = 1 if kind == "positive" else 0
        if value < low:
            raise ValueError(f"must be >= {low}, got {value}{_ZERO_HINTS.get(key, '')}")
        if limit is not None and value > limit:
            raise ValueError(f"must be at most {_number_text(limit)}, got {value}")
        return value
    if kind == "duration":
        seconds = parse_duration(value)
        if limit is not None and seconds > limit:
            raise ValueError(f"must be at most {_duration_text(limit)}, got {_shown(value)}")
        return seconds
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_shown(value)}")
        return value
    return _check_name(value)


def _normalise_settings(step: Step, path: PathKey) -> Problems:
    """Coerce settings to typed :class:`Tunable` values; return problems."""
    problems: Problems = []
    kinds = _SETTING_KINDS[step.action]
    normalised: dict[str, Tunable | Scalar] = {}
    for key, raw in step.settings.items():
        spath = (*path, "settings", key)
        if key not in kinds:
            allowed = ", ".join(kinds) or "none"
            problems.append((spath, f"unknown setting for action '{step.action}' "
                                    f"(allowed: {allowed})"))
            continue
        tunable = raw if isinstance(raw, Tunable) else Tunable(choices=[raw], default=raw)
        try:
            choices = [_coerce_setting(kinds[key], c, key) for c in tunable.choices]
        except ValueError as exc:
            problems.append(((*spath, "choices") if isinstance(raw, Tunable) else spath,
                             str(exc)))
            continue
        if len(set(map(repr, choices))) != len(choices):
            problems.append(((*spath, "choices"), "choices must be distinct"))
            continue
        default: Scalar = choices[0]
        if isinstance(raw, Tunable) and raw.default is not None:
            try:
                default = _coerce_setting(kinds[key], raw.default, key)
            except ValueError as exc:
                problems.append(((*spath, "default"), str(exc)))
                continue
            if default not in choices:
                problems.append(((*spath, "default"), f"default {shown(raw.default)} is not "
                                                     f"among the choices {shown(raw.choices)}"))
                continue
        normalised[key] = Tunable(choices=choices, default=default)
    for key, value in _SETTING_DEFAULTS.get(step.action, {}).items():
        normalised.setdefault(key, Tunable(choices=[value], default=value))
    for key in _REQUIRED_SETTINGS.get(step.action, ()):
        if key not in step.settings:
            problems.append(((*path, "settings"), f"action '{step.action}' needs setting "
                                                  f"'{key}'"))
    step.settings = normalised
    return problems


# --------------------------------------------------------------------------- references


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """Return one cycle in a directed graph as a list of nodes, or None.

    Depth-first without recursion: a long chain of calls or ``after`` must not overflow
    Python's stack."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in graph:
        if state.get(root):
            continue
        path: list[str] = [root]
        todo: list[list[str]] = [list(graph.get(root, []))]
        state[root] = 1
        while path:
            if not todo[-1]:
                state[path.pop()] = 2
                todo.pop()
                continue
            nxt = todo[-1].pop(0)
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt in graph and not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                todo.append(list(graph.get(nxt, [])))
    return None


def _check_replay(sc: Scenario) -> Problems:
    """A replay sets the load pattern: no other pattern or history may set it too."""
    if sc.deployment.traffic.replay is None:
        return []
    problems: Problems = []
    if sc.deployment.traffic.pattern != "constant":
        problems.append((("deployment", "traffic", "pattern"), "a replay sets the load "
                         "pattern: leave 'pattern' out (or drop the replay)"))
    if sc.deviations.history is not None:
        problems.append((("deviations", "history"), "deployment.traffic.replay sets the load "
                         "pattern: a history cannot set it too (drop one of them)"))
    return problems


def _check_references(sc: Scenario) -> Problems:
    """Cross-references a field-by-field validation cannot see, in file order."""
    problems, components = _check_components(sc.deployment)
    problems = _check_replay(sc) + problems
    problems += _check_slo(sc.slo, components)
    problems += _check_incidents(sc)
    problems += check_procedure(sc.procedure, sc)
    return problems


def _check_components(dep: Deployment) -> tuple[Problems, set[str]]:
    """Unique component names, one edge, calls to known components without cycles, caches in
    front of datastores; also returns the component names."""
    problems: Problems = []
    seen: dict[str, PathKey] = {}
    for group, items in (("services", dep.services), ("datastores", dep.datastores),
                         ("caches", dep.caches)):
        for i, comp in enumerate(items):
            path: PathKey = ("deployment", group, i, "name")
            if comp.name == RESERVED_SCOPE:
                problems.append((path, f"the name '{RESERVED_SCOPE}' is reserved: a rule's "
                                       f"'scope: {RESERVED_SCOPE}' means the edge view; "
                                       f"rename the component"))
            if comp.name in seen:
                problems.append((path, f"duplicate component name '{comp.name}' "
                                       f"(first at {format_path(seen[comp.name])})"))
            else:
                seen[comp.name] = path
    components = set(seen)
    edges = [i for i, s in enumerate(dep.services) if s.edge]
    if len(edges) > 1:
        problems.append((("deployment", "services", edges[1], "edge"),
                         "only one service may have edge: true"))
    for i, svc in enumerate(dep.services):
        for j, callee in enumerate(svc.calls):
            if callee not in components:
                problems.append((("deployment", "services", i, "calls", j),
                                 f"unknown component '{callee}'"))
            elif callee == svc.name:
                problems.append((("deployment", "services", i, "calls", j),
                                 "a service cannot call itself"))
    services = {s.name for s in dep.services}
    cycle = _find_cycle({s.name: [c for c in s.calls if c in services] for s in dep.services})
    if cycle:
        idx = next(i for i, s in enumerate(dep.services) if s.name == cycle[0])
        problems.append((("deployment", "services", idx, "calls"),
                         "call cycle: " + " -> ".join(cycle)))
    datastores = {d.name for d in dep.datastores}
    for i, cache in enumerate(dep.caches):
        for j, target in enumerate(cache.fronts or []):
            if target not in datastores:
                problems.append((("deployment", "caches", i, "fronts", j),
                                 f"'{target}' is not a datastore"))
    return problems, components


def _check_slo(slo: Slo, components: set[str]) -> Problems:
    problems: Problems = []
    for i, rule in enumerate(slo.rules):
        if rule.scope != "edge" and rule.scope not in components:
            problems.append((("slo", "rules", i, "scope"),
                             f"unknown scope '{rule.scope}' (use 'edge' or a component)"))
    names: set[str] = set()
    for i, rule in enumerate(slo.rules):
        if rule.name in names:
            problems.append((("slo", "rules", i, "name"), f"duplicate rule '{rule.name}'"))
        names.add(rule.name)
    return problems


def _check_incidents(sc: Scenario) -> Problems:
    problems: Problems = []
    services = {s.name: s for s in sc.deployment.services}
    datastores = {d.name: d for d in sc.deployment.datastores}
    components = sc.components()
    names: set[str] = set()
    for i, inc in enumerate(sc.incidents):
        ipath: PathKey = ("incidents", i)
        if inc.name in names:
            problems.append(((*ipath, "name"), f"duplicate incident '{inc.name}'"))
        names.add(inc.name)
        problems += _check_cause(inc.cause, (*ipath, "cause"), services, datastores)
        for j, eff in enumerate(inc.effects):
            if eff.target not in components:
                problems.append(((*ipath, "effects", j, "target"),
                                 f"unknown component '{eff.target}'"))
    return problems


def _check_cause(cause: Cause, path: PathKey, services: dict[str, Service],
                 datastores: dict[str, Datastore]) -> Problems:
    if cause.kind == "external":
        return []
    if cause.target is None:
        return [(path, f"a '{cause.kind}' cause needs a 'target'")]
    tpath = (*path, "target")
    if cause.kind == "schema":
        ds = datastores.get(cause.target)
        if ds is None:
            return [(tpath, f"'{cause.target}' is not a datastore")]
        if ds.migration is None:
            return [(tpath, f"datastore '{cause.target}' has no migration to revert")]
        return []
    svc = services.get(cause.target)
    if svc is None:
        return [(tpath, f"'{cause.target}' is not a service")]
    if cause.kind == "version" and svc.version is None:
        return [(tpath, f"service '{cause.target}' has no 'version' (live/previous)")]
    if cause.kind == "config" and svc.config is None:
        return [(tpath, f"service '{cause.target}' has no 'config' (live/previous)")]
    if cause.kind == "flag":
        if not svc.flags:
            return [(tpath, f"service '{cause.target}' serves no flags")]
        if cause.flag is None:
            if len(svc.flags) > 1:
                return [((*path, "flag"), "the target serves several flags; name one")]
            cause.flag = svc.flags[0]
        elif cause.flag not in svc.flags:
            return [((*path, "flag"), f"'{cause.flag}' is not one of {svc.flags}")]
    return []


_ACTION_TARGET_KIND = {
    "scale": "service", "rollback_version": "service", "revert_config": "service",
    "disable_flag": "service", "migrate_down": "datastore", "flush_cache": "cache",
    "warm_cache": "cache",
}


def check_procedure(proc: Procedure, scenario: Scenario | None = None) -> Problems:
    """The problems of a procedure, as (field path, message) pairs; normalises its settings.

    Its own rules always (step names, settings, ``after`` references and cycles); with
    ``scenario`` also what refers to the scenario (targets, flags, incidents), so a
    procedure file is checked exactly like a scenario's own procedure
    (docs/scenario-format.md, Cross-field checks).
    """
    problems: Problems = []
    root: PathKey = ("procedure",)
    step_names: dict[str, int] = {}
    scaled: dict[str, int] = {}  # service -> most replicas a scale step may give it
    for i, step in enumerate(proc.steps):
        if step.name in step_names:
            problems.append(((*root, "steps", i, "name"), f"duplicate step '{step.name}'"))
        step_names[step.name] = i
    normalised: list[Problems] = []
    for i, step in enumerate(proc.steps):
        path: PathKey = (*root, "steps", i)
        found = _check_target(scenario, step, path) if scenario is not None else []
        found += _normalise_settings(step, path)
        normalised.append(found)
        if step.action == "scale" and step.target and "replicas" in step.settings:
            most = max((c for c in step.tunables()["replicas"].choices if isinstance(c, int)),
                       default=0)
            scaled[step.target] = max(scaled.get(step.target, 0), most)
    for i, step in enumerate(proc.steps):
        path = (*root, "steps", i)
        problems += normalised[i]
        if scenario is not None:
            problems += _check_step_refs(scenario, step, path, scaled)
        for j, dep in enumerate(step.after):
            if dep not in step_names:
                problems.append(((*path, "after", j), f"unknown step '{dep}'"))
            elif dep == step.name:
                problems.append(((*path, "after", j), "a step cannot come after itself"))
    cycle = _find_cycle({s.name: [d for d in s.after if d in step_names] for s in proc.steps})
    if cycle:
        problems.append(((*root, "steps", step_names[cycle[0]], "after"),
                         "'after' cycle: " + " -> ".join(cycle)))
    return problems


def _check_target(sc: Scenario, step: Step, path: PathKey) -> Problems:
    """The step's target exists and is the kind of component its action needs."""
    comps = sc.components()
    want = _ACTION_TARGET_KIND.get(step.action)
    if not want:
        if step.target is not None and step.target not in comps:
            return [((*path, "target"), f"unknown component '{step.target}'")]
        return []
    if step.target is None:
        return [((*path, "target"), f"action '{step.action}' needs a {want}")]
    if step.target not in comps:
        return [((*path, "target"), f"unknown component '{step.target}'")]
    kind = _component_kind(comps[step.target])
    if kind != want:
        return [((*path, "target"), f"action '{step.action}' needs a {want}, "
                                    f"'{step.target}' is a {kind}")]
    return _check_target_fit(step, comps[step.target], path)


def _component_kind(comp: Service | Datastore | Cache) -> str:
    return {Service: "service", Datastore: "datastore", Cache: "cache"}[type(comp)]


def _check_step_refs(sc: Scenario, step: Step, path: PathKey,
                     scaled: dict[str, int] | None = None) -> Problems:
    """The flags a ``disable_flag`` step may choose, a rollout's ``batch`` and ``surge``
    against the target's replicas and ``max_surge``, and the incidents and components its
    ``sim`` block names. ``scaled``: per service, the most replicas a scale step of the
    procedure may give it (a batch may use them)."""
    problems: Problems = []
    comps = sc.components()
    svc = comps.get(step.target or "")
    if step.action == "disable_flag" and isinstance(svc, Service) and "flag" in step.settings:
        for flag in step.tunables()["flag"].choices:
            if flag not in svc.flags:
                problems.append(((*path, "settings", "flag"),
                                 f"'{flag}' is not a flag of '{step.target}' "
                                 f"(flags: {svc.flags})"))
    if step.action in ("rollback_version", "revert_config") and isinstance(svc, Service) \
            and "surge" in step.settings:
        for surge in step.tunables()["surge"].choices:
            if isinstance(surge, int) and surge > svc.max_surge:
                problems.append(((*path, "settings", "surge"),
                                 f"surge {surge} exceeds max_surge {svc.max_surge} of "
                                 f"'{step.target}' (room for at most {svc.max_surge} extra "
                                 f"replicas)"))
                break
    if step.action in ("rollback_version", "revert_config") and isinstance(svc, Service) \
            and "batch" in step.settings:
        most = max(svc.replicas, (scaled or {}).get(svc.name, 0))
        for batch in step.tunables()["batch"].choices:
            if isinstance(batch, int) and batch > most:
                more = (f" (at most {most} after its scale step)" if most > svc.replicas
                        else "")
                problems.append(((*path, "settings", "batch"),
                                 f"batch {batch} exceeds the {svc.replicas} replicas of "
                                 f"'{step.target}'{more}: a round cannot replace more "
                                 f"replicas than run"))
                break
    if step.sim is not None:
        incidents = {inc.name for inc in sc.incidents}
        for j, fix in enumerate(step.sim.fixes):
            if fix not in incidents:
                problems.append(((*path, "sim", "fixes", j), f"unknown incident '{fix}'"))
        for j, eff in enumerate(step.sim.effects):
            if eff.target not in comps:
                problems.append(((*path, "sim", "effects", j, "target"),
                                 f"unknown component '{eff.target}'"))
    return problems


def _check_target_fit(step: Step, comp: Any, path: PathKey) -> Problems:
    if step.action == "rollback_version" and comp.version is None:
        return [((*path, "target"), f"service '{comp.name}' has no 'version' to roll back")]
    if step.action == "revert_config" and comp.config is None:
        return [((*path, "target"), f"service '{comp.name}' has no 'config' to revert")]
    if step.action == "migrate_down" and comp.migration is None:
        return [((*path, "target"), f"datastore '{comp.name}' has no 'migration'")]
    if step.action == "disable_flag" and not comp.flags:
        return [((*path, "target"), f"service '{comp.name}' serves no flags")]
    return []


# --------------------------------------------------------------------------- loading


_BOUND_WORDS = {"less_than_equal": ("le", "at most"), "less_than": ("lt", "less than"),
                "greater_than_equal": ("ge", "at least"),
                "greater_than": ("gt", "greater than")}


def shown(value: Any, limit: int = 40) -> str:
    """A value for a user's message, spelled as in YAML (``true``, ``[10s, 30s]``, not
    Python's ``True``): short, whatever it is."""
    if isinstance(value, (bool, list, dict)) or value is None:
        try:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6,
                                  allow_unicode=True).strip().removesuffix("...").strip()
        except yaml.YAMLError:
            text = repr(value)
    else:  # strings keep their quotes, numbers their written form
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


_shown = shown


def _bound_message(err: Any, model: type[BaseModel] | None, loc: PathKey) -> str | None:
    """``must be at most 1h (the format's bound), got '2d'`` for a range error, the bound
    written as a duration for duration fields; None for other errors."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind in _BOUND_WORDS:
        key, words = _BOUND_WORDS[kind]
        bound = ctx.get(key)
        if not isinstance(bound, (int, float)):
            return None
        duration = model is not None and _is_duration_field(model, loc)
        text = _duration_text(bound) if duration and bound > 0 else _number_text(bound)
        given = err.get("input")
        if duration and isinstance(given, float) and given >= 0.001 \
                and (given * 1000).is_integer():
            got = _duration_text(given)  # the parsed value: '2d' was read as 172800.0
        else:
            got = _shown(given)
        return f"must be {words} {text}, got {got}"
    if kind == "too_long" and "max_length" in ctx:
        return f"at most {ctx['max_length']} entries, got {ctx.get('actual_length', 'more')}"
    return None


def _number_text(value: float) -> str:
    """``10000000`` rather than ``1e+07``: a bound as the documentation writes it."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}"


def _duration_text(seconds: float) -> str:
    """A duration bound as the documentation writes it (``6h``, ``1d``, ``366d``)."""
    if seconds >= DAY and (seconds / DAY).is_integer():
        return f"{int(seconds // DAY)}d"
    if seconds >= DAY:
        return f"{seconds:.0f}s"
    return format_duration(seconds)


def _is_duration_field(model: type[BaseModel], loc: PathKey) -> bool:
    """Whether ``loc`` (a pydantic error location from ``model``) is a duration field, so
    its bound reads as ``1h`` rather than ``3600``."""
    info: Any = None
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return False
        info = next((f for n, f in current.model_fields.items() if (f.alias or n) == part),
                    None)
        if info is None:
            return False
        current = next((t for t in _annotation_parts(info.annotation)
                        if isinstance(t, type) and issubclass(t, BaseModel)), None)
    return info is not None and any(
        getattr(m, "func", None) is parse_duration
        for m in [*info.metadata, *_annotation_parts(info.annotation, metadata=True)])


def _annotation_parts(annotation: Any, metadata: bool = False) -> list[Any]:
    """The types inside an annotation (union members, container arguments), or with
    ``metadata`` the ``Annotated`` metadata found on the way."""
    out: list[Any] = []
    stack = [annotation]
    while stack:
        tp = stack.pop()
        args = typing.get_args(tp)
        if typing.get_origin(tp) is Annotated:
            stack.append(args[0])
            if metadata:
                out += list(args[1:])
        elif args:
            stack += [a for a in args if a is not Ellipsis]
        elif not metadata:
            out.append(tp)
    return out


def pydantic_problems(exc: ValidationError, file: str, lines: LineMap,
                       prefix: PathKey = (), model: type[BaseModel] | None = None,
                       ) -> list[Problem]:
    """Problems from a pydantic error, placed on lines. With ``model`` (the scenario format's
    model validated) range errors read ``must be at most 1h, got '2d'``, a duration's bound
    written as a duration; without, pydantic's own messages are kept."""
    problems = []
    seen = set()
    for err in exc.errors():
        loc = _clean_loc(err["loc"])
        full = (*prefix, *loc)
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "field required"
        elif model is not None:
            msg = _bound_message(err, model, loc) or msg
        key = (full, msg)
        if key in seen:
            continue
        seen.add(key)
        problems.append(Problem(file, lines.line(full), format_path(full), msg))
    return _drop_union_noise(problems)


_UNION_TAGS = {"Tunable", "CsvPattern", "str", "int", "float", "bool"}


def _clean_loc(loc: tuple[Any, ...]) -> PathKey:
    """Drop pydantic's union-branch markers, which appear only under union-typed fields:
    a step setting (``Tunable | scalar``) and ``traffic.pattern`` (``literal | CsvPattern``)."""
    out: list[str | int] = []
    for part in loc:
        in_setting = len(out) >= 2 and out[-2] == "settings"
        in_pattern = bool(out) and out[-1] == "pattern"
        if (in_setting or in_pattern) and isinstance(part, str) and (
                part in _UNION_TAGS or part.startswith(("literal[", "function-"))):
            continue
        out.append(part)
    return tuple(out)


def _drop_union_noise(problems: list[Problem]) -> list[Problem]:
    """A union (e.g. setting = Tunable | scalar) reports each branch; keep one per path."""
    by_path: dict[str, Problem] = {}
    for p in problems:
        by_path.setdefault(p.path, p)
    return list(by_path.values())


def validate_model(model: type[ModelT], data: Any, file: str,
                   lines: LineMap | None = None) -> ModelT:
    """Validate ``data`` (from :func:`load_yaml`) against any pydantic model, with problems
    naming file, line and field like the scenario's."""
    lines = lines or LineMap()
    if not isinstance(data, dict):
        raise SpecError([Problem(file, lines.line(()), "", "the top level must be a mapping, "
                                 f"got a {_kind(data)}")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(pydantic_problems(exc, file, lines)) from None


def scenario_from_data(data: Any, file: str, lines: LineMap | None = None) -> Scenario:
    lines = lines or LineMap()
    if data is None:
        raise SpecError([Problem(file, 1, "", "file is empty")])
    if not isinstance(data, dict):
        raise SpecError([Problem(file, lines.line(()), "", "the top level must be a mapping "
                                 f"(apiVersion, kind, ...), got a {_kind(data)}")])
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as exc:
        raise SpecError(pydantic_problems(exc, file, lines, model=Scenario)) from None
    problems = _check_references(sc)
    if problems:
        raise SpecError.at_paths(file, lines, problems)
    return sc


def _kind(data: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number",
            bool: "boolean"}.get(type(data), type(data).__name__)


def load_yaml_file(path: str | Path) -> tuple[Any, LineMap]:
    """Read and parse a YAML file; an unreadable file is a :class:`SpecError` like bad YAML."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise SpecError([Problem(file, 1, "", "no such file")]) from None
    except IsADirectoryError:
        raise SpecError([Problem(file, 1, "", "is a directory, not a file")]) from None
    except OSError as exc:
        raise SpecError([Problem(file, 1, "", f"cannot read: {exc.strerror or exc}")]) from None
    return load_yaml(raw, file)


def load_scenario(path: str | Path) -> Scenario:
    """Load and validate a scenario file; raises :class:`SpecError` on any problem,
    including a data file it names (a CSV pattern, a history) that cannot be read."""
    file = str(path)
    data, lines = load_yaml_file(path)
    sc = scenario_from_data(data, file, lines)
    sc.__dict__["_source"] = Path(path)
    sc.__dict__["_lines"] = lines
    problems = check_data_files(sc)
    if problems:
        raise SpecError.at_paths(file, lines, problems)
    return sc


def data_files(sc: Scenario) -> list[tuple[PathKey, Path]]:
    """The data files a scenario names, as (field path, path resolved against the scenario
    file's directory): its CSV traffic pattern, replay recording, ``deviations.history``,
    simulator parameters and ``optimizer.agent``."""
    base = getattr(sc, "_source", None)
    folder = base.parent if isinstance(base, Path) else Path(".")
    out: list[tuple[PathKey, Path]] = []
    pattern = sc.deployment.traffic.pattern
    if isinstance(pattern, CsvPattern):
        out.append((("deployment", "traffic", "pattern", "csv"), folder / pattern.csv))
    if sc.deployment.traffic.replay is not None:
        out.append((("deployment", "traffic", "replay", "file"),
                    folder / sc.deployment.traffic.replay.file))
    if sc.deviations.history is not None:
        out.append((("deviations", "history", "file"), folder / sc.deviations.history.file))
    if sc.simulator.params is not None:
        out.append((("simulator", "params"), folder / sc.simulator.params))
    if sc.optimizer.agent is not None:
        out.append((("optimizer", "agent"), folder / sc.optimizer.agent))
    return out


def scenario_agent(sc: Scenario) -> Path | None:
    """The agent config ``optimizer.agent`` names, resolved against the scenario file's
    directory; None when the scenario names none."""
    for field_path, path in data_files(sc):
        if field_path == ("optimizer", "agent"):
            return path.resolve()
    return None


def check_data_files(sc: Scenario) -> Problems:
    """Each data file the scenario names exists and can be read (its content is checked by
    whoever parses it: ``shadowrl validate`` and the simulator)."""
    problems: Problems = []
    for field_path, path in data_files(sc):
        try:
            if not path.exists():
                problems.append((field_path, f"no such file: {path}"))
            elif not path.is_file():
                problems.append((field_path, f"not a file: {path}"))
            elif not os.access(path, os.R_OK):
                problems.append((field_path, f"cannot read {path}: permission denied"))
        except (OSError, ValueError) as exc:  # e.g. a name too long or with a NUL byte
            problems.append((field_path, f"cannot read {path}: {exc}"))
    return problems


def scenario_problem(sc: Scenario, field_path: PathKey, message: str) -> SpecError:
    """A :class:`SpecError` about one field of a loaded scenario, on its line of the file
    (line 1 for a scenario built in memory): for problems found after loading, such as a
    data file whose content is bad."""
    source = getattr(sc, "_source", None)
    lines = getattr(sc, "_lines", None)
    file = str(source) if source is not None else f"<scenario {sc.name}>"
    line = lines.line(field_path) if isinstance(lines, LineMap) else 1
    return SpecError([Problem(file, line, format_path(field_path), message)])


def as_scenario(scenario: str | Path | Scenario) -> Scenario:
    """``scenario`` itself, or the scenario file it names, loaded and validated."""
    return scenario if isinstance(scenario, Scenario) else load_scenario(scenario)


def load_procedure(path: str | Path, scenario: Scenario | None = None) -> Procedure:
    """Load a procedure file (a mapping with a ``procedure:`` key); see
    :func:`procedure_from_data`."""
    data, lines = load_yaml_file(path)
    return procedure_from_data(data, str(path), lines, scenario)


PROCEDURE_FILE_KEYS = ("apiVersion", "kind", "metadata", "procedure")
# top-level keys only a scenario has: a file with them and no kind is a scenario
_SCENARIO_ONLY_KEYS = {"deployment", "slo", "incidents", "deviations"}


def procedure_from_data(data: Any, file: str, lines: LineMap,
                        scenario: Scenario | None = None) -> Procedure:
    """Validate a procedure file's data; raises :class:`SpecError` naming file:line: field.

    A scenario file (``kind: Scenario``) is accepted too and means its ``procedure:``: the
    same block, read the same way (the rest of the scenario is not used, so it is not
    checked). With ``scenario`` the procedure is checked against it like the scenario's
    own; without, on its own (types, settings, step names, ``after``), its targets
    unchecked.
    """
    if data is None:
        raise SpecError([Problem(file, 1, "", "file is empty")])
    if not isinstance(data, dict):
        raise SpecError([Problem(file, lines.line(()), "", "expected a mapping with a "
                                 f"'procedure:' key, got a {_kind(data)}")])
    kind = data.get("kind")
    is_scenario = kind == "Scenario" or (kind is None and bool(set(data) & _SCENARIO_ONLY_KEYS))
    if "procedure" not in data:
        what = ("a scenario without a 'procedure:' block" if is_scenario
                else "expected a mapping with a 'procedure:' key")
        raise SpecError([Problem(file, lines.line(()), "", what)])
    if kind is not None and kind not in ("Procedure", "Scenario"):
        raise SpecError([Problem(file, lines.line(("kind",)), "kind",
                                 f"expected 'Procedure' (a procedure file) or 'Scenario' (its "
                                 f"procedure is used), got {_shown(kind)}")])
    if not is_scenario:
        extra = [k for k in data if k not in PROCEDURE_FILE_KEYS]
        if extra:
            raise SpecError([Problem(file, lines.line((extra[0],)), str(extra[0]),
                                     "unknown field (a procedure file has only procedure, "
                                     "apiVersion, kind and metadata)")])
    try:
        proc = Procedure.model_validate(data["procedure"])
    except ValidationError as exc:
        raise SpecError(pydantic_problems(exc, file, lines, ("procedure",),
                                          model=Procedure)) from None
    problems = check_procedure(proc, scenario)
    if problems:
        raise SpecError.at_paths(file, lines, problems)
    return proc


def procedure_file_data(proc: Procedure, scenario_name: str | None = None) -> dict[str, Any]:
    """A procedure file (``kind: Procedure``, what ``--procedure`` reads) as plain data."""
    metadata: dict[str, Any] = {"name": proc.name}
    if scenario_name:
        metadata["scenario"] = scenario_name
    return {"apiVersion": API_VERSION, "kind": "Procedure", "metadata": metadata,
            "procedure": procedure_to_data(proc)}


def procedure_to_data(proc: Procedure) -> dict[str, Any]:
    """A procedure as plain data in the scenario format (durations as strings)."""
    steps = []
    for step in proc.steps:
        item: dict[str, Any] = {"name": step.name, "action": step.action}
        if step.target:
            item["target"] = step.target
        settings: dict[str, Any] = {}
        for key, tun in step.tunables().items():
            kind = _SETTING_KINDS[step.action].get(key)
            conv = (lambda v: format_duration(float(v))) if kind == "duration" else (lambda v: v)
            if tun.tunable:
                settings[key] = {"choices": [conv(c) for c in tun.choices],
                                 "default": conv(tun.default)}
            else:
                settings[key] = conv(tun.default)
        if settings:
            item["settings"] = settings
        if step.after:
            item["after"] = list(step.after)
        if step.optional:
            item["optional"] = True
        if step.run:
            item["run"] = list(step.run)
        if step.timeout is not None:
            item["timeout"] = format_duration(step.timeout)
        if step.sim:
            item["sim"] = step.sim.model_dump(exclude_defaults=True)
            if "duration" in item["sim"]:
                item["sim"]["duration"] = format_duration(step.sim.duration)
        steps.append(item)
    out: dict[str, Any] = {"name": proc.name, "steps": steps,
                           "verify": {"hold": format_duration(proc.verify.hold),
                                      "timeout": format_duration(proc.verify.timeout)}}
    if proc.budget.downtime is not None:
        out["budget"] = {"downtime": format_duration(proc.budget.downtime)}
    return out


def setting_kind(action: str, key: str) -> str | None:
    return _SETTING_KINDS.get(action, {}).get(key)

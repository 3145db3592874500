"""The simulator's calibratable constants and curve parameters, in one validated model.

Defaults are the values the simulator was built and tested with; a calibration writes a YAML
(or JSON) file with the fields it changes, and :meth:`SimParams.load` reads it with the
scenario loader's ``file:line: field: message`` errors. Every physics formula that needs one
of these takes a :class:`SimParams` (see :mod:`shadowrl.shadow.sim.topology`), so the
simulator and the bottleneck analysis can never disagree about them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator

from shadowrl.core.spec import (
    Cache,
    Datastore,
    Duration,
    LineMap,
    Problem,
    Scenario,
    Service,
    SpecError,
    load_yaml_file,
    validate_model,
)

# which override applies to which kind of component (the scenario's own field names)
_FIELDS: dict[type, tuple[str, ...]] = {
    Service: ("latency", "concurrency", "capacity", "startup", "inflight_time"),
    Datastore: ("latency", "concurrency", "capacity", "migration_duration", "online_factor"),
    Cache: ("latency", "warmup", "hit_ratio"),
}


class ComponentParams(BaseModel):
    """What a calibration measured for one component, overriding the scenario's value in the
    simulator (the real shadow keeps running the scenario as written). Unset: the scenario's.
    ``capacity`` is a service's ``capacity_rps`` or a datastore's ``capacity_qps``;
    ``migration_duration`` and ``online_factor`` a datastore's ``migration``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    latency: Duration | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, ge=1)
    capacity: float | None = Field(default=None, gt=0)
    startup: Duration | None = Field(default=None, ge=0)
    inflight_time: Duration | None = Field(default=None, ge=0)
    warmup: Duration | None = Field(default=None, ge=0)
    hit_ratio: float | None = Field(default=None, ge=0, le=1)
    migration_duration: Duration | None = Field(default=None, ge=0)
    online_factor: float | None = Field(default=None, ge=1)

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class SimParams(BaseModel):
    """Every tunable number of the simulated shadow (times in seconds; ``30s``/``2m`` work)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # time discretisation
    block_s: Duration = Field(
        default=60.0, gt=0,
        description="Seconds over which load (pattern x noise) is constant.")
    quantum_s: Duration = Field(
        default=5.0, gt=0,
        description="Seconds per step of effect ramps, replayed shapes and cache warm-up.")

    # randomness
    noise_sigma: float = Field(
        default=0.03, ge=0,
        description="Sigma of the log-normal per-block traffic noise (mean 1).")
    noise_blocks: int = Field(
        default=720, ge=1,
        description="Distinct noise draws per launch; the sequence repeats after them.")
    jitter_sigma: float = Field(
        default=0.12, ge=0,
        description="Sigma of the log-normal multiplier (mean 1) of startup, migration, flag "
                    "and command durations.")

    # traffic
    diurnal_amplitude: float = Field(
        default=0.35, ge=0, le=1,
        description="Relative swing of the diurnal pattern around its mean (0.35: +-35 %).")
    diurnal_peak_s: Duration = Field(
        default=72000.0,
        description="Time of day of the diurnal peak, seconds after midnight (20:00).")
    diurnal_period_s: Duration = Field(
        default=86400.0, gt=0,
        description="Period of the diurnal pattern in seconds (one day).")

    # queueing (M/M/c per component, see topology.sojourn)
    queue_timeout_s: Duration = Field(
        default=2.0, gt=0,
        description="Seconds a request may wait in a component's queue: the latency of what "
                    "an overloaded component (utilisation >= 1) still serves, and the cap on "
                    "the waiting part of any latency quantile.")

    service_time_share: float = Field(
        default=0.0, ge=0, le=1,
        description="Share of an incident's added latency that is service time (a worker "
                    "kept busy) rather than waiting: a component slowed by a factor f serves "
                    "1 + share x (f - 1) times fewer requests/s, so a slow service can "
                    "overload. 0 (the default): latency effects never cost capacity; "
                    "calibrations fit it.")

    observed_share: float = Field(
        default=0.0, ge=0,
        description="Requests per SLO sample, as a share of the scenario's requests/s, of an "
                    "instrument that counts requests (a real shadow sampling sample_fraction "
                    "of the traffic each wall second): downtime then counts an error-rate rule "
                    "violated only in the share of samples whose few requests show it (a "
                    "0.1 % threshold cannot be seen in 25 requests without a failure). 0 (the "
                    "default): the exact rates. Calibration sets it to compare with a real "
                    "shadow, and leaves it out of the parameters it writes.")

    # resource use
    memory_base: float = Field(
        default=0.35, ge=0, le=1,
        description="Memory use (share of the limit) of an idle component.")
    memory_slope: float = Field(
        default=0.3, ge=0,
        description="Memory use added per unit of utilisation (utilisation capped at 1).")

    # rollout and step mechanics
    stop_s: Duration = Field(
        default=2.0,
        description="Seconds to stop a replica once its drain ends.")
    drop_impulse_s: Duration = Field(
        default=1.0,
        description="Seconds of the stop during which dropped in-flight requests fail; at "
                    "most stop_s.")
    online_migration_load: float = Field(
        default=0.35, ge=0, lt=1,
        description="Share of a datastore's capacity an online migration consumes.")
    warm_speedup: float = Field(
        default=4.0, gt=0,
        description="How many times faster warm_cache refills a cache than traffic does.")
    action_s: Duration = Field(
        default=1.0,
        description="Seconds of an immediate action: scaling down, flushing a cache, a step "
                    "with nothing to do, a command without a sim block; also the shortest "
                    "warm_cache.")
    flag_toggle_s: Duration = Field(
        default=5.0,
        description="Seconds for disable_flag to take effect (before jitter).")
    incompatible_share: float = Field(
        default=1.0, ge=0, le=1,
        description="Share of the requests of a replica running against a schema it cannot "
                    "use that fail (1: every request touches the schema; less when reads "
                    "served from a cache never do).")
    failed_migration_s: Duration = Field(
        default=5.0,
        description="Seconds until migrate_down fails on an irreversible migration.")

    # per component, what a calibration measured (see ComponentParams)
    components: dict[str, ComponentParams] = Field(
        default_factory=dict,
        description="Per component (by name), values that override the scenario's in the "
                    "simulator: latency, concurrency, capacity, startup, inflight_time, "
                    "warmup, hit_ratio, migration_duration, online_factor.")

    _lines: LineMap | None = PrivateAttr(default=None)

    @field_validator("drop_impulse_s")
    @classmethod
    def _impulse_within_stop(cls, value: float, info: ValidationInfo) -> float:
        stop = info.data.get("stop_s")
        if stop is not None and value > stop:
            raise ValueError(f"must not exceed stop_s ({stop:g}): the failing second is part "
                             f"of the stop")
        return value

    @classmethod
    def load(cls, path: str | Path) -> SimParams:
        """Read a YAML or JSON file of parameters; unset fields keep their defaults.

        Raises :class:`~shadowrl.core.spec.SpecError` naming file, line and field."""
        data, lines = load_yaml_file(path)
        if data is None:
            raise SpecError([Problem(str(path), 1, "", "file is empty")])
        params = validate_model(cls, data, str(path), lines)
        params._lines = lines
        return params

    def check_against(self, scenario: Scenario, file: str) -> None:
        """SpecError (this file's lines) for an override of a component the scenario does
        not have, or of a field that kind of component has not."""
        lines = self._lines or LineMap()
        components = scenario.components()
        problems: list[Problem] = []
        for name, comp in self.components.items():
            where = ("components", name)
            if name not in components:
                problems.append(Problem(file, lines.line(where), f"components.{name}",
                                        f"scenario '{scenario.name}' has no component "
                                        f"'{name}' (it has {', '.join(components)})"))
                continue
            target = components[name]
            allowed = _FIELDS[type(target)]
            for key in comp.overrides():
                if key not in allowed:
                    problems.append(Problem(
                        file, lines.line((*where, key)), f"components.{name}.{key}",
                        f"a {type(target).__name__.lower()} has no {key} (it takes "
                        f"{', '.join(allowed)})"))
                elif key in ("migration_duration", "online_factor") and (
                        not isinstance(target, Datastore) or target.migration is None):
                    problems.append(Problem(
                        file, lines.line((*where, key)), f"components.{name}.{key}",
                        f"datastore '{name}' has no migration"))
        if problems:
            raise SpecError(problems)

    def apply(self, scenario: Scenario) -> Scenario:
        """``scenario`` as the simulator should run it: every component override in place
        (a copy; the scenario itself is left alone). Unknown names are ignored here: they
        are reported by :meth:`check_against` when the file is loaded."""
        if not self.components:
            return scenario
        dep = scenario.deployment

        def patched(comp: Any) -> Any:
            over = self.components.get(comp.name)
            if over is None:
                return comp
            update = over.overrides()
            if "capacity" in update:
                key = "capacity_rps" if isinstance(comp, Service) else "capacity_qps"
                update[key] = update.pop("capacity")
            migration: dict[str, Any] = {}
            if "migration_duration" in update:
                migration["duration"] = update.pop("migration_duration")
            if "online_factor" in update:
                migration["online_factor"] = update.pop("online_factor")
            if migration and getattr(comp, "migration", None) is not None:
                update["migration"] = comp.migration.model_copy(update=migration)
            update = {k: v for k, v in update.items() if k in type(comp).model_fields}
            return comp.model_copy(update=update)

        new_dep = dep.model_copy(update={
            "services": [patched(c) for c in dep.services],
            "datastores": [patched(c) for c in dep.datastores],
            "caches": [patched(c) for c in dep.caches]})
        return scenario.model_copy(update={"deployment": new_dep})


def attach_params(scenario: Scenario, params: SimParams) -> Scenario:
    """A copy of ``scenario`` the simulator runs with ``params`` (``--params``)."""
    out = scenario.model_copy()
    out.__dict__["_sim_params"] = params
    return out


def params_of(scenario: Scenario) -> SimParams:
    """The simulator parameters of ``scenario``: those attached with ``--params``, else the
    file its ``simulator.params`` names (relative to the scenario file), else the defaults."""
    attached = scenario.__dict__.get("_sim_params")
    if attached is not None:
        return attached
    if scenario.simulator.params is None:
        return DEFAULT
    source = scenario.__dict__.get("_source")
    folder = source.parent if isinstance(source, Path) else Path(".")
    params = SimParams.load(folder / scenario.simulator.params)
    scenario.__dict__["_sim_params"] = params
    return params


DEFAULT = SimParams()

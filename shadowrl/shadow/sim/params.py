"""The simulator's calibratable constants and curve parameters, in one validated model.

Defaults are the values the simulator was built and tested with; a calibration writes a YAML
(or JSON) file with the fields it changes, and :meth:`SimParams.load` reads it with the
scenario loader's ``file:line: field: message`` errors. Every physics formula that needs one
of these takes a :class:`SimParams` (see :mod:`shadowrl.shadow.sim.topology`), so the
simulator and the bottleneck analysis can never disagree about them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from shadowrl.core.spec import Duration, Problem, SpecError, load_yaml_file, validate_model


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
    failed_migration_s: Duration = Field(
        default=5.0,
        description="Seconds until migrate_down fails on an irreversible migration.")

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
        return validate_model(cls, data, str(path), lines)

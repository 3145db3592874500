"""SimParams: the simulator's constants in one validated model, loadable from a file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from shadowrl.core.plan import configured_plan
from shadowrl.core.spec import Scenario, SpecError, load_scenario
from shadowrl.rehearsal.runner import rehearse
from shadowrl.shadow.sim.engine import SimShadow
from shadowrl.shadow.sim.params import SimParams

ROOT = Path(__file__).resolve().parents[2]

# The defaults: the values the simulator had as module constants and literals before
# SimParams, except the old latency curve (queue_cap, queue_power, p99_base, p99_slope,
# p99_rho_cap), which M/M/c queueing replaced; its one parameter is the queue timeout.
DEFAULTS = {
    "block_s": 60.0, "quantum_s": 5.0, "noise_sigma": 0.03, "noise_blocks": 720,
    "jitter_sigma": 0.12, "diurnal_amplitude": 0.35, "diurnal_peak_s": 72000.0,
    "diurnal_period_s": 86400.0, "queue_timeout_s": 2.0, "memory_base": 0.35,
    "memory_slope": 0.3, "stop_s": 2.0, "drop_impulse_s": 1.0, "online_migration_load": 0.35,
    "warm_speedup": 4.0, "action_s": 1.0, "flag_toggle_s": 5.0, "failed_migration_s": 5.0,
}


@pytest.fixture(scope="module")
def checkout() -> Scenario:
    return load_scenario(ROOT / "envs" / "checkout.yaml")


def write(tmp_path: Path, text: str, name: str = "params.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults() -> None:
    assert SimParams().model_dump() == DEFAULTS


def test_every_field_is_described() -> None:
    for name, info in SimParams.model_fields.items():
        assert info.description, name


def test_params_are_frozen() -> None:
    with pytest.raises(ValidationError):
        SimParams().stop_s = 3.0  # type: ignore[misc]


def test_load_yaml_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = write(tmp_path, "# calibrated on staging\nstop_s: 3s\nnoise_sigma: 0.05\n"
                           "queue_timeout_s: 500ms\n")
    params = SimParams.load(path)
    assert (params.stop_s, params.noise_sigma, params.queue_timeout_s) == (3.0, 0.05, 0.5)
    assert params.model_dump() == {**DEFAULTS, "stop_s": 3.0, "noise_sigma": 0.05,
                                   "queue_timeout_s": 0.5}


def test_load_json(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps({"warm_speedup": 2.5, "block_s": 30}), "params.json")
    params = SimParams.load(path)
    assert params.warm_speedup == 2.5 and params.block_s == 30.0


def test_unknown_key_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "stop_s: 2s\njitter_sigma: 0.1\nstop_time: 3s\n")
    with pytest.raises(SpecError) as err:
        SimParams.load(path)
    assert str(err.value) == f"{path}:3: stop_time: unknown field"


@pytest.mark.parametrize(("text", "line", "field", "message"), [
    ("block_s: 60s\nstop_s: -1\n", 2, "stop_s", ">= 0"),
    ("noise_sigma: -0.01\n", 1, "noise_sigma", "greater than or equal to 0"),
    ("stop_s: 2s\n\ndrop_impulse_s: 3s\n", 3, "drop_impulse_s", "must not exceed stop_s"),
    ("queue_timeout_s: 0s\n", 1, "queue_timeout_s", "greater than 0"),
    ("queue_cap: 0.9\n", 1, "queue_cap", "unknown field"),  # the old curve is gone
    ("quantum_s: 0s\n", 1, "quantum_s", "greater than 0"),
])
def test_bad_value_names_file_line_and_field(tmp_path: Path, text: str, line: int, field: str,
                                             message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        SimParams.load(path)
    (problem,) = err.value.problems
    assert (problem.file, problem.line, problem.path) == (str(path), line, field)
    assert message in problem.message
    assert str(err.value).startswith(f"{path}:{line}: {field}: ")


def test_load_rejects_a_non_mapping_and_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"params.yaml:1: the top level must be a mapping"):
        SimParams.load(write(tmp_path, "- stop_s\n"))
    with pytest.raises(SpecError, match=r"nope.yaml:1: no such file"):
        SimParams.load(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- the simulator


def revert_web(checkout: Scenario, params: SimParams | None) -> float:
    """Seconds of the configured web rollback (batch 1 of 6 replicas) on a fixed seed."""
    r = rehearse(checkout, 3, backend_factory=lambda sc: SimShadow(sc, params=params))
    step = next(s for s in r.steps if s.name == "revert-web")
    assert step.status == "ok"
    return step.end_s - step.start_s


def test_a_longer_stop_lengthens_a_rollback_by_one_stop_per_batch(checkout: Scenario) -> None:
    base = revert_web(checkout, None)
    assert revert_web(checkout, SimParams()) == base
    longer = revert_web(checkout, SimParams(stop_s=12.0))
    # the configured plan scales web up first, then replaces it batch by batch; each batch
    # stops for 10 s longer (the jitter is common to both runs)
    settings = dict(configured_plan(checkout.procedure))
    batches = math.ceil(settings["scale-web"]["replicas"] / settings["revert-web"]["batch"])
    assert batches == 9
    assert longer - base == pytest.approx(batches * 10.0)


def test_no_jitter_makes_durations_exact(checkout: Scenario) -> None:
    sim = SimShadow(checkout, params=SimParams(jitter_sigma=0.0))
    sim.launch(7)
    assert {sim.jitter(k, i) for k in ("a", "b") for i in range(3)} == {1.0}
    jittered = SimShadow(checkout)
    jittered.launch(7)
    assert jittered.jitter("a") != 1.0


def test_louder_noise_changes_the_load(checkout: Scenario) -> None:
    def edge_rps(params: SimParams) -> list[float]:
        sim = SimShadow(checkout, params=params)
        sim.launch(1)
        out = []
        for _ in range(5):
            sim.advance(params.block_s)
            out.append(sim.rates().edge_rps)
        return out

    quiet = edge_rps(SimParams(noise_sigma=0.0))
    assert quiet == [checkout.deployment.traffic.rps] * 5
    assert edge_rps(SimParams()) != quiet
    loud = edge_rps(SimParams(noise_sigma=0.3))
    assert max(abs(x - 400.0) for x in loud) > max(abs(x - 400.0) for x in edge_rps(SimParams()))


def test_diurnal_parameters_move_the_peak(checkout: Scenario) -> None:
    diurnal = checkout.model_copy(deep=True)
    diurnal.deployment.traffic.pattern = "diurnal"
    for peak in (72000.0, 36000.0):
        params = SimParams(noise_sigma=0.0, diurnal_peak_s=peak)
        sim = SimShadow(diurnal, params=params)
        sim.launch(1)
        loads = []
        for _hour in range(24):
            loads.append(sim.rates().edge_rps)
            sim.advance(3600.0)
        assert loads.index(max(loads)) == int(peak // 3600)
        assert max(loads) == pytest.approx(400.0 * (1 + params.diurnal_amplitude), rel=1e-3)

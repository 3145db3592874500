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
    "incompatible_share": 1.0, "service_time_share": 0.0, "observed_share": 0.0,
    "components": {},
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


# --------------------------------------------------------------------------- per component


def test_component_overrides_change_the_simulated_rollback_only(checkout: Scenario,
                                                                tmp_path: Path) -> None:
    """A calibrated startup of web lengthens the scale and web rollback steps; the scenario
    object itself is left as written."""
    from shadowrl.shadow.sim.params import ComponentParams, attach_params

    slow = attach_params(checkout, SimParams(components={"web": ComponentParams(startup=60)}))
    base = {s.name: s.end_s - s.start_s for s in rehearse(checkout, 1).steps}
    calibrated = {s.name: s.end_s - s.start_s for s in rehearse(slow, 1).steps}
    assert calibrated["scale-web"] > 2.5 * base["scale-web"]
    assert calibrated["revert-web"] > base["revert-web"] + 100
    assert calibrated["revert-orders"] == pytest.approx(base["revert-orders"])
    assert checkout.deployment.services[0].startup == 20.0


def test_apply_maps_capacity_and_migration_fields(checkout: Scenario) -> None:
    from shadowrl.shadow.sim.params import ComponentParams

    params = SimParams(components={
        "web": ComponentParams(capacity=120, latency=0.05, concurrency=3),
        "db": ComponentParams(capacity=300, migration_duration=100, online_factor=2),
        "cache": ComponentParams(warmup=30, hit_ratio=0.9)})
    sc = params.apply(checkout)
    web, db, cache = sc.deployment.services[0], sc.deployment.datastores[0], sc.deployment.caches[0]
    assert (web.capacity_rps, web.latency, web.concurrency) == (120, 0.05, 3)
    assert (db.capacity_qps, db.migration.duration, db.migration.online_factor) == (300, 100, 2)
    assert (cache.warmup, cache.hit_ratio) == (30, 0.9)


def test_an_override_of_a_missing_component_or_field_names_file_and_line(
        checkout: Scenario, tmp_path: Path) -> None:
    path = write(tmp_path, "stop_s: 1\ncomponents:\n  web: {startup: 30s}\n"
                           "  nope: {latency: 10ms}\n  db:\n    warmup: 10s\n")
    params = SimParams.load(path)
    with pytest.raises(SpecError) as info:
        params.check_against(checkout, str(path))
    text = str(info.value)
    assert f"{path}:4: components.nope: scenario 'checkout' has no component 'nope'" in text
    assert f"{path}:6: components.db.warmup: a datastore has no warmup" in text


def test_a_scenario_loads_the_params_file_it_names(checkout: Scenario, tmp_path: Path) -> None:
    import yaml

    from shadowrl.shadow.sim.params import params_of

    write(tmp_path, "components:\n  web: {startup: 60s}\n", "fitted.yaml")
    data = yaml.safe_load((ROOT / "envs" / "checkout.yaml").read_text())
    data["simulator"] = {"params": "fitted.yaml"}
    (tmp_path / "sc.yaml").write_text(yaml.safe_dump(data))
    sc = load_scenario(tmp_path / "sc.yaml")
    assert params_of(sc).components["web"].startup == 60
    assert SimShadow(sc).scenario.deployment.services[0].startup == 60
    data["simulator"] = {"params": "missing.yaml"}
    (tmp_path / "sc.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"simulator.params: no such file"):
        load_scenario(tmp_path / "sc.yaml")


def test_params_flag_on_the_command_line(tmp_path: Path) -> None:
    """--params changes what simulate reports; a bad file exits 2 naming its line."""
    import subprocess
    import sys

    def simulate(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shadowrl", "simulate",
                               str(ROOT / "envs" / "checkout.yaml"), "--seed", "1", "--json",
                               *extra], capture_output=True, text=True, cwd=ROOT)

    good = write(tmp_path, "components:\n  web: {startup: 60s}\n")
    plain, fitted = simulate(), simulate("--params", str(good))
    assert plain.returncode == fitted.returncode == 0, fitted.stderr
    steps = {s["name"]: s["end_s"] - s["start_s"] for s in json.loads(fitted.stdout)["steps"]}
    base = {s["name"]: s["end_s"] - s["start_s"] for s in json.loads(plain.stdout)["steps"]}
    assert steps["scale-web"] > 2.5 * base["scale-web"]
    bad = write(tmp_path, "components:\n  web:\n    warmup: 3s\n", "bad.yaml")
    failed = simulate("--params", str(bad))
    assert failed.returncode == 2
    assert f"{bad}:3: components.web.warmup: a service has no warmup" in failed.stderr
    assert "Traceback" not in failed.stderr
    missing = simulate("--params", str(tmp_path / "none.yaml"))
    assert missing.returncode == 2 and "--params: no such file" in missing.stderr


def test_attached_params_travel_with_the_scenario_to_other_processes(
        checkout: Scenario) -> None:
    """Ray replicas and workers get the scenario pickled: --params must go with it."""
    import pickle

    from shadowrl.shadow.sim.params import ComponentParams, attach_params, params_of

    params = SimParams(stop_s=3.0, components={"web": ComponentParams(startup=60)})
    copy = pickle.loads(pickle.dumps(attach_params(checkout, params)))
    assert params_of(copy) == params
    assert SimShadow(copy).scenario.deployment.services[0].startup == 60


def test_a_slowdown_costs_capacity_only_with_a_service_time_share() -> None:
    """fraud-model-v9 triples fraud-check's latency: as pure waiting (share 0, the default)
    it costs no capacity; as service time (share 1) the four replicas serve a third as much
    and shed, as the real shadow's fraud-check does; half of it as service time in between."""
    from shadowrl.rehearsal.deviation import DeviationSimulator

    payments = load_scenario(ROOT / "envs" / "payments.yaml")
    injection = DeviationSimulator(payments).draw(3, "fraud-model-v9")

    def fraud_check(share: float) -> tuple[float, float]:
        sim = SimShadow(payments, params=SimParams(noise_sigma=0.0,
                                                   service_time_share=share))
        sim.launch(3)
        sim.inject(injection)
        sim.advance(injection.onset_s + 600.0)
        m = sim.sample().components["fraud-check"]
        return m.error_rate, m.latency_p50_ms

    waiting, half, busy = fraud_check(0.0), fraud_check(0.5), fraud_check(1.0)
    assert waiting[0] == pytest.approx(0.008 * injection.magnitude, rel=0.05)  # the effect
    assert waiting[0] < half[0] < busy[0]
    assert busy[0] > 0.3  # overloaded: it sheds
    assert waiting[1] < half[1] <= busy[1]


def test_an_observed_share_counts_downtime_as_sparse_samples_see_it() -> None:
    """bad-api-config fails ~2 % of payments: exact rates violate the 0.1 % rule all along,
    but a sample of 25 requests (a real shadow's 10 % of 250 rps) shows a failure in only
    about 1 - exp(-25 x 2 %) of its samples; a huge sample sees everything."""
    from shadowrl.rehearsal.deviation import DeviationSimulator
    from shadowrl.shadow.sim.topology import poisson_cdf

    payments = load_scenario(ROOT / "envs" / "payments.yaml")
    injection = DeviationSimulator(payments).draw(1, "bad-api-config")

    def downtime(share: float) -> float:
        sim = SimShadow(payments, params=SimParams(noise_sigma=0.0, observed_share=share))
        sim.launch(1)
        sim.inject(injection)
        sim.advance(injection.onset_s + 60.0)  # past the 20 s ramp
        return sim.advance(600.0).downtime_s

    exact = downtime(0.0)
    assert exact == pytest.approx(600.0)
    assert downtime(1e4) == pytest.approx(exact)
    sparse = downtime(0.1)
    assert 0.2 * exact < sparse < 0.8 * exact
    assert poisson_cdf(0, 0.5) == pytest.approx(math.exp(-0.5))
    assert poisson_cdf(2, 1.0) == pytest.approx(2.5 * math.exp(-1.0))
    assert poisson_cdf(-1, 1.0) == 0.0

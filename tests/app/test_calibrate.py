"""The calibrate use case's checks and its resumable experiment store (the real runs are
in tests/shadow/docker/test_calibrate.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shadowrl.app.calibrate import CalibrateRequest, Experiments, _plans, verdict
from shadowrl.app.errors import UsageError
from shadowrl.core.plan import configured_plan
from shadowrl.core.spec import load_scenario

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shadowrl", "calibrate", *args],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize(("args", "message"), [
    (["--backend", "sim"], "--backend: calibration fits the simulator to a real shadow"),
    (["--levels", "1"], "--levels: at least two load levels"),
    (["--levels", "a,b"], "--levels: a comma-separated list"),
    (["--levels", "0,1"], "--levels: each load level must be in (0, 5]"),
])
def test_bad_flags_exit_2_before_any_work(tmp_path: Path, args: list[str],
                                           message: str) -> None:
    done = run(str(CHECKOUT), "--out", str(tmp_path / "o"), *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_a_bad_scenario_names_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CHECKOUT.read_text().replace("rps: 400", "rps: -1"))
    done = run(str(bad), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert f"{bad}:" in done.stderr and "deployment.traffic.rps" in done.stderr


def test_experiments_are_saved_once_and_reused(tmp_path: Path) -> None:
    calls: list[int] = []

    def make() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    store = Experiments(tmp_path, {"a": 1})
    assert store.get("x", make) == {"n": 1}
    again = Experiments(tmp_path, {"a": 1})
    assert again.get("x", make) == {"n": 1} and len(calls) == 1
    assert (again.run, again.reused) == (0, 1)
    assert json.loads((tmp_path / "experiments" / "x.json").read_text()) == {"n": 1}
    with pytest.raises(UsageError, match="holds a calibration with other settings"):
        Experiments(tmp_path, {"a": 2})
    # more (or fewer) rehearsals of a kind: the same calibration, extended
    more = Experiments(tmp_path, {"a": 1, "fit_runs": 10, "heldout_runs": 8})
    assert more.get("x", make) == {"n": 1} and len(calls) == 1
    assert json.loads((tmp_path / "calibration.json").read_text())["fit_runs"] == 10


def test_more_rehearsals_keep_the_first_ones() -> None:
    """Growing --fit-runs or --heldout-runs in the same --out reuses the finished runs:
    the first plans and seeds of each kind do not depend on how many there are."""
    sc = load_scenario(CHECKOUT)
    few = _plans(sc, CalibrateRequest(file=CHECKOUT, fit_runs=3, heldout_runs=2, aa_runs=1))
    many = _plans(sc, CalibrateRequest(file=CHECKOUT, fit_runs=8, heldout_runs=6,
                                       aa_runs=2))
    assert {name: many[name] for name in few} == few
    assert len(many) == 8 + 6 + 2


def test_held_out_rehearsals_never_reuse_a_fitting_seed_and_aa_repeats_them() -> None:
    sc = load_scenario(CHECKOUT)
    plans = _plans(sc, CalibrateRequest(file=CHECKOUT, fit_runs=6, heldout_runs=4,
                                        aa_runs=2))
    fit_seeds = {seed for name, (seed, _) in plans.items() if name.startswith("fit-")}
    held = {name: p for name, p in plans.items() if name.startswith("heldout-")}
    assert len(fit_seeds) == 6 and not fit_seeds & {seed for seed, _ in held.values()}
    assert held["heldout-0"][1] == configured_plan(sc.procedure)  # the runbook as written
    assert held["heldout-1"][1] != configured_plan(sc.procedure)
    assert plans["aa-0"] == held["heldout-0"] and plans["aa-1"] == held["heldout-1"]


def test_the_verdict_allows_the_larger_of_15_percent_and_the_aa_noise() -> None:
    error = {"measures": {
        "downtime_s": {"error_after": 0.14, "aa_noise": 0.05},
        "bad_requests": {"error_after": 0.25, "aa_noise": 0.3}}}
    v = verdict(error)
    assert v["within"] and v["measures"]["bad_requests"]["allowed"] == 0.3
    error["measures"]["downtime_s"]["error_after"] = 0.16
    assert not verdict(error)["within"]


def test_the_calibrated_copy_keeps_every_file_the_scenario_names(tmp_path: Path) -> None:
    """calibrate's scenario.yaml lives in another folder: each path the original names
    relative to itself (the agent of search's optimizer.agent included) still resolves."""
    from shadowrl.app.calibrate import _scenario_yaml
    from shadowrl.core.spec import data_files, scenario_agent

    for source in (ROOT / "envs" / "search.yaml", CHECKOUT):
        (tmp_path / "params.yaml").write_text("components: {}\n")
        copy = tmp_path / "scenario.yaml"
        copy.write_text(_scenario_yaml(source, "params.yaml"))
        original, calibrated = load_scenario(source), load_scenario(copy)
        named = {f: p.resolve() for f, p in data_files(original)}
        kept = {f: p.resolve() for f, p in data_files(calibrated)}
        assert kept.pop(("simulator", "params")) == tmp_path / "params.yaml"
        assert kept == named
    assert scenario_agent(load_scenario(ROOT / "envs" / "search.yaml")) is not None

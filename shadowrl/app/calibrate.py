"""Use case ``calibrate``: identify the simulator from experiments on the real shadow, and
measure how far the simulator is from it before and after (DESIGN.md section 11).

Every real experiment is saved to ``OUT/experiments/`` as soon as it ends, under a name
that says what it is; a calibration run again with the same settings and ``--out`` skips
what is there, so an interrupted calibration resumes where it stopped. The fit and the
report are recomputed from the saved experiments each time (seconds on the simulator).

Outputs: ``params.yaml`` (the fitted simulator parameters), ``scenario.yaml`` (the scenario
with ``simulator.params: params.yaml``, which every command's simulator then loads),
``report.json`` and ``report.html``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, Field

from shadowrl.app.common import LogFn, ProgressFn
from shadowrl.app.errors import UsageError
from shadowrl.core.atomic import atomic_write_json, atomic_write_text
from shadowrl.core.plan import configured_plan
from shadowrl.core.spec import Scenario, data_files, load_scenario

DEFAULT_LEVELS = (0.4, 0.7, 1.0, 1.3, 1.8)  # of the scenario's load; the last overloads
TOLERANCE = 0.15  # the simulator's mean within 15 % of the real shadow's (or its A/A noise)


class CalibrateRequest(BaseModel):
    file: Path
    backend: str = "docker"
    out: Path = Path("out/calibrate")
    seed: int = 0
    fit_runs: int = Field(default=6, ge=0)  # rehearsals of random procedures to fit on
    heldout_runs: int = Field(default=4, ge=1)  # rehearsals never fitted on
    aa_runs: int = Field(default=2, ge=0)  # held-out rehearsals repeated (the A/A noise)
    levels: tuple[float, ...] = DEFAULT_LEVELS
    time_compression: float | None = Field(default=None, ge=1)
    sample_fraction: float | None = Field(default=None, gt=0, le=1)
    command: str | None = None


class CalibrateResult(BaseModel):
    out: Path
    params: Path
    scenario: Path
    report_html: Path
    report_json: Path
    experiments_run: int
    experiments_reused: int
    verdict: dict[str, Any]
    error: dict[str, Any]


# how many rehearsals of each kind: growing them in the same --out reuses what is there
# (each kind's seeds and plans come from its own stream, so the first runs stay the same)
COUNTS = ("fit_runs", "heldout_runs", "aa_runs")


def _settings(request: CalibrateRequest, sc: Scenario) -> dict[str, Any]:
    """What makes two calibrations the same experiment (resuming needs all of it but
    :data:`COUNTS` equal)."""
    text = Path(request.file).read_bytes()
    return {"scenario": sc.name, "scenario_sha256": hashlib.sha256(text).hexdigest()[:16],
            "backend": request.backend, "seed": request.seed, "fit_runs": request.fit_runs,
            "heldout_runs": request.heldout_runs, "aa_runs": request.aa_runs,
            "levels": list(request.levels),
            "time_compression": sc.shadow.time_compression,
            "sample_fraction": sc.shadow.sample_fraction}


def _identity(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in COUNTS}


class Experiments:
    """The saved experiments of one calibration folder: each a JSON file, written
    atomically when it ends and read back instead of being run again."""

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        self.folder = out / "experiments"
        manifest = out / "calibration.json"
        if manifest.exists():
            try:
                old = json.loads(manifest.read_text())
            except ValueError:
                old = None
            if not isinstance(old, dict) or _identity(old) != _identity(settings):
                raise UsageError(
                    f"--out {out}: holds a calibration with other settings (see "
                    f"{manifest}); use another --out, or remove the folder to start over")
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(manifest, settings)
        self.run = self.reused = 0

    def get(self, name: str, make: Callable[[], Any]) -> Any:
        path = self.folder / f"{name}.json"
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except ValueError:
                pass  # not a file this wrote (those are whole): run the experiment again
            else:
                self.reused += 1
                return saved
        value = make()
        atomic_write_json(path, value)
        self.run += 1
        return value


def _plans(sc: Scenario, request: CalibrateRequest) -> dict[str, tuple[int, Any]]:
    """Every rehearsal the calibration runs: name -> (seed, plan). Fitting rehearsals use
    random procedures; held-out ones alternate the configured procedure and random
    procedures of another stream, on seeds the fit never saw; A/A repeats held-out ones."""
    from shadowrl.calibration.experiments import random_plan

    fit_rng = np.random.default_rng([request.seed, 1])
    held_rng = np.random.default_rng([request.seed, 2])
    plans: dict[str, tuple[int, Any]] = {}
    for i in range(request.fit_runs):
        plans[f"fit-{i}"] = (request.seed + i, random_plan(sc.procedure, fit_rng))
    for j in range(request.heldout_runs):
        plan = configured_plan(sc.procedure) if j % 2 == 0 else random_plan(sc.procedure,
                                                                            held_rng)
        plans[f"heldout-{j}"] = (request.seed + 1000 + j, plan)
    for j in range(min(request.aa_runs, request.heldout_runs)):
        plans[f"aa-{j}"] = plans[f"heldout-{j}"]
    return plans


def calibrate(request: CalibrateRequest, *, on_progress: ProgressFn | None = None,
              on_log: LogFn | None = None) -> CalibrateResult:
    """Run (or resume) the experiments, fit, and write the outputs. Raises SpecError for a
    bad scenario, UsageError for a backend that cannot be calibrated against or an --out
    holding another calibration."""
    from shadowrl.calibration import fit
    from shadowrl.calibration.experiments import load_sweep, rehearsal_record
    from shadowrl.calibration.report import write_report

    log = on_log or (lambda _m: None)
    if request.backend != "docker":
        raise UsageError(f"--backend: calibration fits the simulator to a real shadow; "
                         f"'{request.backend}' is not one (use docker)")
    if any(not (0 < level <= 5) for level in request.levels):
        raise UsageError("--levels: each load level must be in (0, 5]")
    sc = _with_shadow(load_scenario(request.file), request)
    exps = Experiments(request.out, _settings(request, sc))
    plans = _plans(sc, request)
    total = 1 + len(plans)
    done = 0

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total, label)

    if on_progress is not None:
        on_progress(0, total, "calibrating on the real shadow")

    def sweep() -> list[dict[str, Any]]:
        from shadowrl.shadow import make_backend

        log(f"load sweep at {', '.join(f'{x:g}' for x in request.levels)} x the load")
        with make_backend(request.backend, sc) as shadow:
            shadow.launch(request.seed)
            return load_sweep(shadow, sc, request.levels, settle_s=fit.SWEEP_SETTLE_S,
                              windows=fit.SWEEP_WINDOWS)

    real_sweep = exps.get("sweep", sweep)
    tick("load sweep")
    records: dict[str, dict[str, Any]] = {}
    for name, (seed, plan) in plans.items():
        def one(seed: int = seed, plan: Any = plan, name: str = name) -> dict[str, Any]:
            log(f"{name}: rehearsing seed {seed} on the real shadow")
            return rehearsal_record(sc, seed, plan, request.backend)
        records[name] = exps.get(name, one)
        tick(name)
    log("fitting the simulator")
    result = _fit_and_report(sc, request, real_sweep, records, log)
    result["experiments"] = {"run": exps.run, "reused": exps.reused}
    out = request.out
    params_path = out / "params.yaml"
    atomic_write_text(params_path, _params_yaml(sc, result["params"], request))
    scenario_path = out / "scenario.yaml"
    atomic_write_text(scenario_path, _scenario_yaml(request.file, params_path.name))
    report_json = atomic_write_json(out / "report.json", result)
    report_html = write_report(out / "report.html", result)
    return CalibrateResult(out=out, params=params_path, scenario=scenario_path,
                           report_html=report_html, report_json=report_json,
                           experiments_run=exps.run, experiments_reused=exps.reused,
                           verdict=result["verdict"], error=result["error"])


def _with_shadow(sc: Scenario, request: CalibrateRequest) -> Scenario:
    update = {}
    if request.time_compression is not None:
        update["time_compression"] = request.time_compression
    if request.sample_fraction is not None:
        update["sample_fraction"] = request.sample_fraction
    if not update:
        return sc
    return sc.model_copy(update={"shadow": sc.shadow.model_copy(update=update)})


def _fit_and_report(sc: Scenario, request: CalibrateRequest,
                    real_sweep: list[dict[str, Any]], records: dict[str, dict[str, Any]],
                    log: LogFn) -> dict[str, Any]:
    from shadowrl.calibration import fit
    from shadowrl.shadow.sim.params import SimParams

    fitting = [r for n, r in records.items() if n.startswith("fit-")]
    heldout = [r for n, r in records.items() if n.startswith("heldout-")]
    aa = {n: r for n, r in records.items() if n.startswith("aa-")}
    default = SimParams()
    params, queueing = fit.fit_queueing(sc, real_sweep, default,
                                        on_component=lambda c: log(f"  queueing: {c}"))
    params, mechanics = fit.fit_mechanics(sc, [*fitting], params)
    _, sims_for_warm = fit.rehearsal_error(sc, params, fitting)
    speedup = fit.warm_speedup(fitting, sims_for_warm, params)
    if speedup is not None:
        params = params.model_copy(update={"warm_speedup": speedup})
        mechanics["applied"]["warm_speedup"] = speedup
    log("  rehearsals: searching what only whole rollbacks show")
    params, rehearsal_fit = fit.fit_rehearsals(sc, params, fitting)
    _, before = fit.rehearsal_error(sc, default, heldout)
    _, after = fit.rehearsal_error(sc, params, heldout)
    _, fit_before = fit.rehearsal_error(sc, default, fitting)
    _, fit_after = fit.rehearsal_error(sc, params, fitting)
    levels = sorted({r["load"] for r in real_sweep})
    error = heldout_error(heldout, before, after, aa, records)
    return {
        "scenario": sc.name, "backend": request.backend, "command": request.command,
        "settings": _settings(request, sc),
        "params": params.model_dump(mode="json", exclude_defaults=True),
        "sweep": {"real": real_sweep, "sim_before": fit.sim_sweep(sc, default, levels),
                  "sim_after": fit.sim_sweep(sc, params, levels)},
        "queueing": queueing, "mechanics": mechanics, "rehearsal_fit": rehearsal_fit,
        "rehearsals": {
            "fit": [_pair(r, b, a) for r, b, a in zip(fitting, fit_before, fit_after)],
            "heldout": [_pair(r, b, a) for r, b, a in zip(heldout, before, after)],
            "aa": [{"name": n, "repeat": _facts(r),
                    "original": _facts(records[n.replace("aa-", "heldout-")])}
                   for n, r in aa.items()]},
        "error": error,
        "verdict": verdict(error),
    }


def _facts(rec: dict[str, Any]) -> dict[str, Any]:
    f = rec["facts"]
    return {"seed": rec["seed"], "incident": f["incident"], "outcome": f["outcome"],
            "downtime_s": f["downtime_s"], "bad_requests": f["bad_requests"],
            "rollback_s": f["rollback_s"], "steps": f["steps"]}


def _pair(real: dict[str, Any], sim_before: dict[str, Any],
          sim_after: dict[str, Any]) -> dict[str, Any]:
    return {"seed": real["seed"], "plan": real["plan"], "real": _facts(real),
            "sim_before": _facts(sim_before), "sim_after": _facts(sim_after)}


MEASURES = ("downtime_s", "bad_requests")


def _mean(recs: Sequence[dict[str, Any]], measure: str) -> float:
    return float(np.mean([r["facts"][measure] for r in recs])) if recs else math.nan


def _rel(a: float, b: float) -> float | None:
    """|a - b| / b, None when b is 0 (and a too: no error)."""
    if b == 0:
        return 0.0 if a == 0 else None
    return round(abs(a - b) / abs(b), 4)


def heldout_error(real: Sequence[dict[str, Any]], before: Sequence[dict[str, Any]],
                  after: Sequence[dict[str, Any]], aa: dict[str, dict[str, Any]],
                  records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per measure, the relative error of the simulator's mean against the real mean on
    the held-out rehearsals, before and after calibration, and the real shadow's A/A noise
    (the relative difference of the mean of repeated rehearsals against the originals)."""
    out: dict[str, Any] = {"runs": len(real), "measures": {}}
    originals = [records[n.replace("aa-", "heldout-")] for n in aa]
    repeats = list(aa.values())
    for m in MEASURES:
        real_mean = _mean(real, m)
        out["measures"][m] = {
            "real_mean": round(real_mean, 2),
            "sim_before_mean": round(_mean(before, m), 2),
            "sim_after_mean": round(_mean(after, m), 2),
            "error_before": _rel(_mean(before, m), real_mean),
            "error_after": _rel(_mean(after, m), real_mean),
            "aa_noise": _rel(_mean(repeats, m), _mean(originals, m)) if repeats else None,
        }
    steps_before, steps_after = [], []
    for r, b, a in zip(real, before, after):
        for step, secs in r["facts"]["steps"].items():
            if step in b["facts"]["steps"]:
                steps_before.append(abs(b["facts"]["steps"][step] - secs))
            if step in a["facts"]["steps"]:
                steps_after.append(abs(a["facts"]["steps"][step] - secs))
    out["step_mae_s"] = {"before": round(float(np.mean(steps_before)), 2) if steps_before
                         else None,
                         "after": round(float(np.mean(steps_after)), 2) if steps_after
                         else None}
    return out


def verdict(error: dict[str, Any]) -> dict[str, Any]:
    """Whether each measure is within :data:`TOLERANCE`, or within the A/A noise where that
    is larger, after calibration."""
    out: dict[str, Any] = {"tolerance": TOLERANCE, "measures": {}}
    ok_all = True
    for m, e in error["measures"].items():
        allowed = max(TOLERANCE, e["aa_noise"] or 0.0)
        ok = e["error_after"] is not None and e["error_after"] <= allowed
        ok_all &= ok
        out["measures"][m] = {"allowed": round(allowed, 4), "error_after": e["error_after"],
                              "within": ok}
    out["within"] = ok_all
    return out


def _params_yaml(sc: Scenario, params: dict[str, Any], request: CalibrateRequest) -> str:
    head = (f"# Simulator parameters of '{sc.name}', fitted on the real ({request.backend}) "
            f"shadow at time_compression {sc.shadow.time_compression:g}, sample_fraction "
            f"{sc.shadow.sample_fraction:g}\n"
            f"# by `{request.command or 'shadowrl calibrate ' + str(request.file)}`; see "
            f"report.html beside this file.\n"
            f"# Load with --params, or from a scenario's `simulator: {{params: FILE}}`.\n")
    return head + yaml.safe_dump(params, sort_keys=False)


def _scenario_yaml(source: Path, params_name: str) -> str:
    """The scenario file as written, with ``simulator.params`` naming the fitted file
    (every data file it names made absolute, since the copy lives elsewhere)."""
    data = yaml.safe_load(Path(source).read_text())
    for field_path, path in data_files(load_scenario(source)):
        node = data
        for key in field_path[:-1]:
            node = node[key]
        node[field_path[-1]] = str(path.resolve())
    data["simulator"] = {"params": params_name}
    head = (f"# {source} calibrated: the simulator loads {params_name} (fitted on the real "
            f"shadow); the real shadow runs the scenario as written.\n")
    return head + yaml.safe_dump(data, sort_keys=False)

"""Fit the simulator's parameters to what the real shadow measured.

Three stages, each reported with how well it fits:

1. **Queueing** (:func:`fit_queueing`): per service and datastore, the mean service time
   (``latency``) and servers per replica (``concurrency``) of the simulator's M/M/c model,
   by least squares on log p50 and log p99 over the healthy levels of the load sweep. The
   model is the simulator itself (its latencies include the callees'), so components are
   fitted callees first. Confidence intervals are profile intervals: the values whose
   residual sum of squares stays within the F-test bound of the best.
2. **Mechanics** (:func:`fit_mechanics`): replica startup per service (mean, spread and
   quantiles of every timed startup), replica stop, offline and online migration,
   flag toggles, cache flushes and warm-ups, from the real shadow's own timings and steps.
3. **Rehearsals** (:func:`fit_rehearsals`): what only whole rollbacks show (requests
   dropped by a short drain, the latency of an overloaded component) by coordinate search
   over a few knobs, minimising the sim-vs-real error of downtime and bad requests over
   the rehearsals of random procedures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shadowrl.calibration.experiments import load_sweep, rehearsal_record
from shadowrl.core.spec import Datastore, Scenario, Service
from shadowrl.shadow.sim.engine import SimShadow
from shadowrl.shadow.sim.params import ComponentParams, SimParams, attach_params
from shadowrl.shadow.sim.topology import compile_topology, default_concurrency

HEALTHY_ERROR = 0.02  # sweep levels above this error rate show overload: not M/M/c data
SWEEP_SETTLE_S = 60.0
SWEEP_WINDOWS = 10  # one sample window each: 10 wall seconds per level on a real shadow


# --------------------------------------------------------------------------- helpers


def with_components(params: SimParams, name: str, **values: Any) -> SimParams:
    """``params`` with component ``name``'s overrides updated by ``values``."""
    comps = dict(params.components)
    base = comps.get(name, ComponentParams()).model_dump()
    comps[name] = ComponentParams(**{**base, **values})
    return params.model_copy(update={"components": comps})


def sim_sweep(scenario: Scenario, params: SimParams, levels: Sequence[float],
              seed: int = 0) -> list[dict[str, Any]]:
    """The load sweep on the simulator with ``params``."""
    shadow = SimShadow(scenario, params=params)
    with shadow:
        shadow.launch(seed)
        return load_sweep(shadow, scenario, levels, settle_s=SWEEP_SETTLE_S,
                          windows=SWEEP_WINDOWS)


def _index(rows: Sequence[dict[str, Any]]) -> dict[tuple[float, str], dict[str, Any]]:
    return {(r["load"], r["component"]): r for r in rows}


def _log_residuals(sim: dict[str, Any], real: dict[str, Any]) -> list[float]:
    out = []
    for key in ("p50_ms", "p99_ms"):
        s, r = sim[key], real[key]
        if r > 0 and s > 0 and math.isfinite(s):
            out.append(math.log(s) - math.log(r))
        else:
            out.append(5.0)  # the model saturates where the real shadow did not
    return out


# --------------------------------------------------------------------------- queueing


def healthy_levels(real_rows: Sequence[dict[str, Any]], edge: str) -> list[float]:
    """The sweep levels at which the real edge served cleanly (the M/M/c fit's data)."""
    return sorted({r["load"] for r in real_rows
                   if r["component"] == edge and r["error_rate"] <= HEALTHY_ERROR
                   and r["rps"] > 0})


def fit_queueing(scenario: Scenario, real_rows: Sequence[dict[str, Any]],
                 params: SimParams | None = None,
                 on_component: Callable[[str], None] | None = None
                 ) -> tuple[SimParams, dict[str, Any]]:
    """Fit ``latency`` and ``concurrency`` of every service and datastore; the parameters
    and, per component, the fit (values, profile intervals, residuals, RSS)."""
    params = params or SimParams()
    levels = healthy_levels(real_rows, scenario.edge.name)
    real = _index(real_rows)
    topo = compile_topology(scenario)
    comps = scenario.components()
    report: dict[str, Any] = {"levels": levels, "components": {}}
    if len(levels) < 2:
        report["skipped"] = "fewer than two healthy sweep levels"
        return params, report
    # callees first (datastores, then services callers last): a caller's latency
    # includes its callees'
    order = [d.name for d in scenario.deployment.datastores]
    order += [topo.names[i] for i in reversed(topo.order)]
    for name in order:
        comp = comps[name]
        if not isinstance(comp, Service | Datastore):
            continue
        if on_component is not None:
            on_component(name)
        params, fit = _fit_component(scenario, params, comp, levels, real)
        report["components"][name] = fit
    return params, report


def _fit_component(scenario: Scenario, params: SimParams, comp: Service | Datastore,
                   levels: list[float], real: dict[tuple[float, str], dict[str, Any]]
                   ) -> tuple[SimParams, dict[str, Any]]:
    name = comp.name
    capacity = comp.capacity_rps if isinstance(comp, Service) else comp.capacity_qps
    c0 = comp.concurrency or default_concurrency(capacity, comp.latency)
    grid_c = sorted({max(1, round(c0 * f)) for f in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)})
    lat0 = comp.latency
    grid_l = lat0 * np.exp(np.linspace(math.log(0.25), math.log(4.0), 25))

    def rss(latency: float, conc: int) -> tuple[float, list[float]]:
        trial = with_components(params, name, latency=float(latency), concurrency=int(conc),
                                capacity=float(capacity))
        rows = _index(sim_sweep(scenario, trial, levels))
        res: list[float] = []
        for level in levels:
            res += _log_residuals(rows[(level, name)], real[(level, name)])
        return float(sum(r * r for r in res)), res

    surface = {(float(lat), c): rss(lat, c)[0] for c in grid_c for lat in grid_l}
    (best_l, best_c), best = min(surface.items(), key=lambda kv: kv[1])
    # refine the latency around the best grid point
    fine = best_l * np.exp(np.linspace(-0.12, 0.12, 13))
    for lat in fine:
        surface[(float(lat), best_c)] = rss(lat, best_c)[0]
    (best_l, best_c), best = min(surface.items(), key=lambda kv: kv[1])
    best_rss, residuals = rss(best_l, best_c)
    n, p = 2 * len(levels), 2
    bound = _profile_bound(best_rss, n, p)
    # the interval to the grid's resolution: out to the first grid point beyond the bound
    lats = sorted((lat, v) for (lat, c), v in surface.items() if c == best_c)
    inside = [i for i, (_lat, v) in enumerate(lats) if v <= bound]
    lat_ok = [lats[max(inside[0] - 1, 0)][0], lats[min(inside[-1] + 1, len(lats) - 1)][0]]
    conc_ok = sorted({c for (lat, c), v in surface.items() if v <= bound})
    fitted = with_components(params, name, latency=float(best_l), concurrency=int(best_c),
                             capacity=float(capacity))
    return fitted, {
        "kind": "service" if isinstance(comp, Service) else "datastore",
        "scenario": {"latency_s": lat0, "concurrency": c0},
        "fitted": {"latency_s": round(best_l, 6), "concurrency": int(best_c)},
        "ci95": {"latency_s": [round(min(lat_ok), 6), round(max(lat_ok), 6)],
                 "concurrency": [conc_ok[0], conc_ok[-1]]},
        "rss": round(best_rss, 6), "points": n,
        "residuals_log": [round(r, 4) for r in residuals],
        "rss_at_scenario": round(rss(lat0, c0)[0], 6),
    }


def _profile_bound(rss: float, n: int, p: int) -> float:
    """RSS bound of the 95 % profile interval: ``rss (1 + F(0.95; 1, n - p) / (n - p))``."""
    dof = max(n - p, 1)
    try:
        from scipy.stats import f as fisher

        q = float(fisher.ppf(0.95, 1, dof))
    except ImportError:  # pragma: no cover - scipy is a dependency
        q = 4.0
    return rss * (1.0 + q / dof) + 1e-12


# --------------------------------------------------------------------------- mechanics


def _stats(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"n": 0}
    out = {"n": int(v.size), "mean": round(float(v.mean()), 3),
           "sd": round(float(v.std(ddof=1)) if v.size > 1 else 0.0, 3),
           "p10": round(float(np.percentile(v, 10)), 3),
           "p50": round(float(np.percentile(v, 50)), 3),
           "p90": round(float(np.percentile(v, 90)), 3),
           "values": [round(float(x), 2) for x in v]}
    if v.size > 1 and (v > 0).all():
        out["log_sd"] = round(float(np.log(v).std(ddof=1)), 4)
    return out


def fit_mechanics(scenario: Scenario, records: Sequence[dict[str, Any]],
                  params: SimParams) -> tuple[SimParams, dict[str, Any]]:
    """Startup, stop, migration, flag, flush and warm-up times from real rehearsals."""
    timings: dict[tuple[str, str], list[float]] = {}
    for rec in records:
        for kind, comp, seconds in rec.get("timings", []):
            timings.setdefault((kind, comp), []).append(float(seconds))
    steps: dict[str, list[float]] = {}
    for rec in records:
        for s in rec["steps"]:
            if s["status"] == "ok":
                steps.setdefault(s["action"], []).append(float(s["seconds"]))
    report: dict[str, Any] = {"timings": {f"{k}:{c}": _stats(v)
                                          for (k, c), v in sorted(timings.items())},
                              "steps": {a: _stats(v) for a, v in sorted(steps.items())}}
    update: dict[str, Any] = {}
    log_sds = []
    for (kind, comp), values in timings.items():
        mean = float(np.mean(values))
        if kind == "startup":
            params = with_components(params, comp, startup=round(mean, 3))
            st = _stats(values)
            if "log_sd" in st:
                log_sds.append(st["log_sd"])
    stops = [v for (kind, _c), vals in timings.items() if kind == "stop" for v in vals]
    if stops:
        stop = round(float(np.mean(stops)), 3)
        update["stop_s"] = max(stop, 0.01)
        update["drop_impulse_s"] = min(params.drop_impulse_s, update["stop_s"])
    if log_sds:
        update["jitter_sigma"] = round(float(np.mean(log_sds)), 4)
    params = _fit_migrations(scenario, timings, params)
    if steps.get("disable_flag"):
        update["flag_toggle_s"] = max(round(float(np.mean(steps["disable_flag"])), 3), 0.01)
    if steps.get("flush_cache"):
        update["action_s"] = max(round(float(np.mean(steps["flush_cache"])), 3), 0.01)
    params = params.model_copy(update=update)
    report["applied"] = {**update, "components": {
        n: c.overrides() for n, c in params.components.items()}}
    return params, report


def _fit_migrations(scenario: Scenario, timings: dict[tuple[str, str], list[float]],
                    params: SimParams) -> SimParams:
    """Each datastore's offline migration time, and the online one's factor over it."""
    for store in scenario.deployment.datastores:
        off = timings.get(("migration_offline", store.name))
        on = timings.get(("migration_online", store.name))
        if off:
            params = with_components(params, store.name,
                                     migration_duration=round(float(np.mean(off)), 3))
        if off and on:
            params = with_components(params, store.name, online_factor=max(
                1.0, round(float(np.mean(on)) / float(np.mean(off)), 3)))
    return params


def warm_speedup(records: Sequence[dict[str, Any]], sim_records: Sequence[dict[str, Any]],
                 params: SimParams) -> float | None:
    """``warm_speedup`` scaled by how much faster the real warm_cache was than the
    simulated one on the same rehearsals (None when no rehearsal warmed a cache)."""
    real = [s["seconds"] for r in records for s in r["steps"]
            if s["action"] == "warm_cache" and s["status"] == "ok"]
    sim = [s["seconds"] for r in sim_records for s in r["steps"]
           if s["action"] == "warm_cache" and s["status"] == "ok"]
    if not real or not sim or min(np.mean(real), np.mean(sim)) <= 0:
        return None
    return round(params.warm_speedup * float(np.mean(sim)) / float(np.mean(real)), 3)


# --------------------------------------------------------------------------- rehearsals

MEASURE_FLOORS = {"downtime_s": 60.0, "bad_requests": 2000.0}
STEP_FLOOR_S = 10.0  # a step's duration error is relative to at least this


def record_error(sim: dict[str, Any], real: dict[str, Any]) -> float:
    """One rehearsal's squared relative errors: downtime, bad requests and the mean over
    the steps both ran (each relative to the larger value, or a floor)."""
    total = 0.0
    for measure, floor in MEASURE_FLOORS.items():
        s, r = sim["facts"][measure], real["facts"][measure]
        total += ((s - r) / max(abs(r), abs(s), floor)) ** 2
    steps = [((sim["facts"]["steps"][n] - secs) / max(secs, sim["facts"]["steps"][n],
                                                      STEP_FLOOR_S)) ** 2
             for n, secs in real["facts"]["steps"].items() if n in sim["facts"]["steps"]]
    if steps:
        total += float(np.mean(steps))
    return total


REAL_WINDOW_S = 1.0  # wall seconds of requests a real (Docker) shadow's sample holds


def observed_share(scenario: Scenario) -> float:
    """Requests per sample of the real shadow, as a share of the scenario's requests/s
    (:attr:`SimParams.observed_share`): it sends ``sample_fraction`` of them each wall
    second."""
    return scenario.shadow.sample_fraction * REAL_WINDOW_S


def rehearsal_error(scenario: Scenario, params: SimParams,
                    records: Sequence[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """The mean :func:`record_error` of the simulator (with ``params``) against
    ``records`` (the real rehearsals: same seeds, same draws, same plans), and the simulated
    records. The simulator's downtime is counted as the real shadow's samples see it
    (:func:`observed_share`)."""
    from shadowrl.calibration.experiments import attempt_of, plan_from_json

    # judged as the real shadow judges: by the few requests its samples hold
    sc = attach_params(scenario, params.model_copy(
        update={"observed_share": observed_share(scenario)}))
    total, sims = 0.0, []
    for rec in records:
        sim = rehearsal_record(sc, rec["seed"], plan_from_json(rec["plan"]), "sim",
                               first_attempt=attempt_of(scenario, rec))
        sims.append(sim)
        total += record_error(sim, rec)
    return total / max(len(records), 1), sims


def _scale_components(params: SimParams, field: str, base: dict[str, float],
                      value: float) -> SimParams:
    out = params
    for name, seconds in base.items():
        out = with_components(out, name, **{field: round(seconds * value, 3)})
    return out


Knob = Callable[[Scenario, SimParams, SimParams, float], SimParams]
"""``knob(scenario, start, params, value)``: ``params`` with the knob at ``value``;
``start`` holds the values the scales apply to (what the direct measurements gave)."""


def _startups(scenario: Scenario, start: SimParams) -> dict[str, float]:
    """Each service's startup as ``start`` has it (measured), else as the scenario has it."""
    out = {}
    for svc in scenario.deployment.services:
        measured = start.components.get(svc.name, ComponentParams()).startup
        out[svc.name] = measured if measured is not None else svc.startup
    return out


KNOBS: dict[str, tuple[Sequence[float], Knob]] = {
    # mismatched app and schema: which share of a replica's requests fail
    "incompatible_share": ((0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0), lambda sc, st, p, v:
                           p.model_copy(update={"incompatible_share": v})),
    # what an overloaded component's answers take
    "queue_timeout_s": ((0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0), lambda sc, st, p, v:
                        p.model_copy(update={"queue_timeout_s": v})),
    # whether an incident's slowdown keeps workers busy (and so overloads), or only waits
    "service_time_share": ((0.0, 0.25, 0.5, 0.75, 1.0), lambda sc, st, p, v:
                           p.model_copy(update={"service_time_share": v})),
    # how long requests stay in flight (what a short drain drops)
    "inflight_scale": ((0.0, 0.25, 1.0), lambda sc, st, p, v: _scale_components(
        p, "inflight_time", {s.name: s.inflight_time for s in sc.deployment.services},
        v)),
    # startups measured one at a time and in parallel: which mean rollouts see
    "startup_scale": ((0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25), lambda sc, st, p, v:
                      _scale_components(p, "startup", _startups(sc, st), v)),
    "stop_scale": ((0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0), lambda sc, st, p, v:
                   p.model_copy(update={
        "stop_s": round(st.stop_s * v, 3),
        "drop_impulse_s": min(p.drop_impulse_s, round(st.stop_s * v, 3))})),
}
START = {"incompatible_share": None, "queue_timeout_s": None, "service_time_share": None,
         "inflight_scale": 1.0,
         "startup_scale": 1.0, "stop_scale": 1.0}


def _apply(scenario: Scenario, start: SimParams, chosen: dict[str, float]) -> SimParams:
    out = start
    for knob, value in chosen.items():
        out = KNOBS[knob][1](scenario, start, out, value)
    return out


def fit_rehearsals(scenario: Scenario, params: SimParams, records: Sequence[dict[str, Any]]
                   ) -> tuple[SimParams, dict[str, Any]]:
    """A grid over the two error knobs (they trade off: fewer failing requests of
    mismatched replicas look like faster overload answers), then coordinate search over
    every knob of :data:`KNOBS` (two passes), on the rehearsal error."""
    if not records:
        return params, {"skipped": "no rehearsals"}
    start_err, _ = rehearsal_error(scenario, params, records)
    chosen = {k: (v if v is not None else getattr(params, k)) for k, v in START.items()}
    best_err = start_err
    trials: list[dict[str, Any]] = []

    def better(trial: dict[str, float]) -> bool:
        """Whether ``trial`` beats the best so far (it then becomes the best)."""
        nonlocal best_err
        err, _ = rehearsal_error(scenario, _apply(scenario, params, trial), records)
        trials.append({**trial, "error": round(err, 5)})
        if err < best_err - 1e-9:
            best_err = err
            return True
        return False

    grid_best = chosen
    for share in KNOBS["incompatible_share"][0]:
        for timeout in KNOBS["queue_timeout_s"][0]:
            trial = dict(chosen, incompatible_share=share, queue_timeout_s=timeout)
            if better(trial):
                grid_best = trial
    chosen = grid_best
    for _ in range(2):
        for knob, (values, _fn) in KNOBS.items():
            for value in values:
                trial = dict(chosen, **{knob: value})
                if value != chosen[knob] and better(trial):
                    chosen = trial
    return _apply(scenario, params, chosen), {
        "error_before": round(start_err, 5), "error_after": round(best_err, 5),
        "chosen": chosen, "trials": trials}

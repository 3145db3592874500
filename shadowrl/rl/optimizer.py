"""Rollback Optimization Engine: every method measured on the same held-out incidents.

``optimize`` analyses the configured procedure's bottlenecks, runs the baselines (configured,
random, greedy), searches the best static procedure, trains an RL policy, bounds them all with
the per-incident oracle, and writes ``procedure.yaml``, ``policy.zip``, ``bottlenecks.json``,
``comparison.md``, ``episodes.json`` (every method's per-incident outcomes, downtimes and
budget burns, for paired comparisons) and ``summary.json``. With ``verify_backend`` the
procedure.yaml procedure is first verified on that real backend against the configured one
(:mod:`shadowrl.rehearsal.verification`), and ``verification.json`` and procedure.yaml's
header record the result; without it the header says it was not verified.

Every method minimises the same objective, the :class:`RollbackEnv`'s: the error budget burned
(``objective="budget"``, the default) or downtime (``"downtime"``), plus an optional
``full_outage_penalty`` per second of full outage.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from shadowrl.analysis.summary import EvaluationSummary, RehearsalSummary, summarize, with_cost
from shadowrl.core.atomic import atomic_write_json, atomic_write_text
from shadowrl.core.plan import Plan, configured_plan, describe_settings, validate_plan
from shadowrl.core.spec import Procedure, Scenario, procedure_file_data, scenario_agent
from shadowrl.rehearsal.verification import (
    Verification,
    not_verified_line,
    seeds_text,
    summary_line,
    verify_procedures,
)
from shadowrl.rehearsal.verification import header_lines as verification_header
from shadowrl.rl.env import RollbackEnv, objective_kwargs, replica_kwargs
from shadowrl.rl.evaluate import Episode, evaluate
from shadowrl.rl.policy import Policy, RandomPolicy, StaticPolicy, configured_policy
from shadowrl.rl.results import ORACLE_NODES, OptimizeResult, OracleInfo, RlInfo, SearchInfo
from shadowrl.rl.search import (
    GreedyPolicy,
    OraclePolicy,
    best_static,
    noop_steps,
    plan_cost,
    plan_to_procedure,
)

SEARCH_METHODS = ("configured", "random", "greedy", "best_static", "oracle")
RL_METHODS = ("configured", "rl")
TRAIN_SEED_BASE = 1_000_000  # search/training incidents never overlap the held-out ones


@dataclass
class MethodResult:
    name: str
    episodes: list[Episode]
    summary: EvaluationSummary
    seconds: float
    train_s: float = 0.0  # search or training time before the evaluation
    info: SearchInfo | RlInfo | OracleInfo | None = None  # what the method reports

    @property
    def costs(self) -> np.ndarray:
        return np.array([e.cost for e in self.episodes])

    @property
    def downtimes(self) -> np.ndarray:
        return np.array([e.rehearsal.downtime_s for e in self.episodes])

    @property
    def burns(self) -> np.ndarray:
        return np.array([e.rehearsal.budget_burn for e in self.episodes])

    def per_seed(self, seed: int) -> dict[str, Any]:
        """The per-incident results on seeds ``seed, seed+1, ...`` (``episodes.json``)."""
        out = per_seed_record([e.rehearsal for e in self.episodes], seed,
                              [e.cost for e in self.episodes])
        if self.episodes and all("nodes" in e.extra for e in self.episodes):
            # a search per incident (the oracle): whether it proved its optimum, the nodes
            # it took, and the lower bound it proved
            out["search"] = {"exact": [bool(e.extra.get("exact")) for e in self.episodes],
                             "nodes": [int(e.extra["nodes"]) for e in self.episodes],
                             "bound": [float(e.extra.get("bound", 0.0))
                                       for e in self.episodes]}
        return out


def per_seed_record(runs: Sequence[Any], seed: int,
                    costs: Sequence[float] | None = None) -> dict[str, Any]:
    """Per-incident outcomes, budget burns, downtimes (and costs) of runs on seeds ``seed +
    i``: what a paired comparison of two policies needs (MLflow promotion reads it)."""
    out: dict[str, Any] = {
        "seed": int(seed), "episodes": len(runs),
        "outcomes": [r.outcome for r in runs],
        "budget_burn": [float(r.budget_burn) for r in runs],
        "downtime_s": [round(float(r.downtime_s), 3) for r in runs],
        "peak_error_rate": [round(float(r.peak_error_rate), 6) for r in runs]}
    if costs is not None:
        out["cost"] = [float(c) for c in costs]
    return out


def methods_for(method: str) -> tuple[str, ...]:
    if method == "search":
        return SEARCH_METHODS
    if method == "rl":
        return RL_METHODS
    if method == "all":
        return ("configured", "random", "greedy", "best_static", "rl", "oracle")
    if method == "search_rl":  # what an experiment compares: cheap, and what users deploy
        return ("configured", "best_static", "rl")
    raise ValueError(f"unknown method {method!r} (search, rl or all)")


def measure(env: RollbackEnv, policy: Policy | str, episodes: int, seed: int,
            tick: Callable[[int], None] | None = None, replicas: int = 1,
            name: str | None = None) -> MethodResult:
    """Evaluate on seeds ``seed..seed+episodes-1``; with ``replicas`` > 1 as Ray tasks
    (``policy`` may then be a saved ``.zip`` path, shipped to the tasks by value)."""
    start = time.perf_counter()
    if replicas > 1:
        from shadowrl.integrations.ray import parallel_evaluate

        eps = parallel_evaluate(env.scenario, policy, episodes, seed, replicas,
                                env_kwargs=replica_kwargs(env),
                                on_episode=tick)
    else:
        if isinstance(policy, str):
            from shadowrl.rl.agents import load_policy

            policy = load_policy(policy, name=name or "rl")
        eps = evaluate(env, policy, episodes, seed, tick)
    label = name or getattr(policy, "name", str(policy))
    summary = with_cost(summarize(env.scenario.name, label, [e.rehearsal for e in eps]),
                        round(float(np.mean([e.cost for e in eps])), 4))
    return MethodResult(label, eps, summary, time.perf_counter() - start)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % normal confidence interval."""
    arr = np.asarray(values, dtype=float)
    if arr.size < 2:
        return float(arr.mean()) if arr.size else 0.0, 0.0
    return float(arr.mean()), float(1.96 * arr.std(ddof=1) / math.sqrt(arr.size))


# --------------------------------------------------------------------------- outputs


def outcomes_text(summary: RehearsalSummary) -> str:
    """Outcome counts as people read them (and export parses them back):
    ``outcomes recovered 19, rollback_failed 0, rollback_ineffective 1``."""
    return "outcomes " + ", ".join(f"{k} {v}" for k, v in summary.outcomes.model_dump().items())


def written_procedure(scenario: Scenario, plan: Plan, *,
                      omitted: Mapping[str, str] | None = None,
                      searched: bool = True) -> Procedure:
    """The procedure ``procedure.yaml`` holds: the plan without the steps in ``omitted``,
    named ``-optimized`` when a search found it (``searched=False``: the configured
    procedure's name)."""
    return plan_to_procedure(scenario.procedure, plan, omit=dict(omitted or {}),
                             name=None if searched else scenario.procedure.name)


VERIFY_FLAG = re.compile(r"(?<!\S)--verify(?:=|\s+)\S+")


def verify_hint(command: str) -> str:
    """The command that would verify what ``command`` wrote: itself with ``--verify docker``
    (an ``optimize``), else the generic ``shadowrl optimize SCENARIO --verify docker``."""
    if not command.startswith("shadowrl optimize "):
        return "shadowrl optimize SCENARIO --verify docker"
    return " ".join(VERIFY_FLAG.sub("", command).split() + ["--verify", "docker"])


def procedure_yaml(scenario: Scenario, plan: Plan, summary: RehearsalSummary,
                   command: str, *, omitted: Mapping[str, str] | None = None,
                   searched: bool = True, verification: Verification | None = None) -> str:
    """``procedure.yaml``: the plan as a procedure file, without the steps in ``omitted``
    (name -> why it changes nothing), under a header saying where it came from, how it
    did on the held-out incidents (``searched=False``: the configured procedure itself) and
    its verification on a real shadow, or in plain words that it has none."""
    omitted = dict(omitted or {})
    proc = written_procedure(scenario, plan, omitted=omitted, searched=searched)
    if searched:
        origin = f"# best static order and settings found by `{command}`\n"
    else:
        origin = (f"# the configured procedure as written, produced by `{command}` "
                  f"(no static search ran)\n")
    verified = (verification_header(verification) if verification is not None
                else [not_verified_line(verify_hint(command))])
    d = summary.downtime_s
    header = (f"# shadowrl {'optimized ' if searched else ''}procedure '{proc.name}' for "
              f"scenario '{scenario.name}'\n" + origin
              + f"# held-out evaluation ({summary.runs} incidents): downtime mean "
              f"{d.mean:.0f}s p95 {d.p95:.0f}s; {outcomes_text(summary)}; "
              f"error budget burn mean {summary.budget_burn.mean:.3%}\n"
              + "".join(f"# {line}\n" for line in verified)
              + "".join(f"# left out, changes nothing: {name} ({why})\n"
                        for name, why in omitted.items())
              + "# use it with: shadowrl rehearse SCENARIO --procedure THIS_FILE\n")
    body = yaml.safe_dump(procedure_file_data(proc, scenario.name), sort_keys=False,
                          default_flow_style=None)
    return header + body


def noop_reasons(scenario: Scenario, plan: Plan) -> dict[str, str]:
    """The plan's no-op steps (:func:`~shadowrl.rl.search.noop_steps`) and why each is one."""
    out = {}
    for name in noop_steps(scenario, plan):
        step = scenario.procedure.step(name)
        replicas = dict(plan)[name] or {}
        out[name] = f"{step.target} already runs {replicas.get('replicas')} replicas there"
    return out


def describe_changes(configured: Plan, best: Plan, per_step: dict[str, tuple[float, float]],
                     findings: list[dict[str, Any]], *, procedure: Procedure | None = None,
                     omitted: Mapping[str, str] | None = None) -> list[str]:
    """Plain-language differences between the configured plan and the optimized one.

    Steps in ``omitted`` (no-ops, name -> why) are reported as left out and otherwise not
    compared; ``findings`` (the configured procedure's bottlenecks, ``bottlenecks.json``
    shaped) say why, without their advice: advice belongs to the procedure it was made for.
    Settings are spelled as the scenario format writes them.
    """
    omitted = dict(omitted or {})
    actions = {s.name: s.action for s in procedure.steps} if procedure is not None else {}
    lines: list[str] = []
    conf = dict(configured)
    kept = [n for n, s in best if s is not None and n not in omitted]
    conf_order = [n for n, s in configured if s is not None and n in kept]
    if conf_order != kept:
        lines.append(f"Order: {' -> '.join(conf_order)}  became  {' -> '.join(kept)}.")
    for name, why in omitted.items():
        old = conf.get(name)
        was = (f" (the configured procedure runs it with "
               f"{describe_settings(old, actions.get(name))})" if old else "")
        lines.append(f"`{name}` is left out: {why}, so it changes nothing{was}.")
    for name, settings in best:
        old = conf.get(name)
        if name in omitted:
            continue
        if settings is None and old is not None:
            lines.append(f"Skip optional step `{name}`.")
        elif settings is not None and old is not None:
            changed = [k for k, v in settings.items() if old.get(k) != v]
            if changed:
                before = describe_settings({k: old.get(k) for k in changed}, actions.get(name))
                after = describe_settings({k: settings[k] for k in changed}, actions.get(name))
                lines.append(f"`{name}`: {before} -> {after}.")
    for name, (before_s, after_s) in per_step.items():
        if name not in omitted and abs(before_s - after_s) >= 1.0:
            lines.append(f"`{name}` causes {after_s:.0f}s of downtime on average instead of "
                         f"{before_s:.0f}s.")
    for f in findings[:3]:
        step = f" at `{f['step']}`" if f.get("step") else ""
        lines.append(f"Why: in the configured procedure, {f['kind']}{step} caused "
                     f"{f['share_of_downtime']:.0%} of the downtime.")
    return lines


def finding_lines(findings: Sequence[Mapping[str, Any]], limit: int = 5) -> list[str]:
    """The top findings of ``bottlenecks.json`` as list items, with their advice."""
    out = []
    for f in findings[:limit]:
        step = f" at `{f['step']}`" if f.get("step") else ""
        runs = f["runs_affected"]["count"]
        out.append(f"**{f['kind']}**{step} ({f['share_of_downtime']:.0%} of the downtime, "
                   f"{runs} run{'s' if runs != 1 else ''}): {f['suggestion']}")
    return out


def cost_unit(objective: str) -> str:
    return "% of error budget" if objective == "budget" else "min"


def objective_text(objective: str, full_outage_penalty: float) -> str:
    """What the cost column measures, in words."""
    if objective == "budget":
        text = ("the error budget burned, in percent of the SLO objective's budget for its "
                "window (bad requests: failed or slower than its latency threshold)")
    else:
        text = "downtime plus weighted failed requests, in minutes"
    if full_outage_penalty > 0:
        text += (f", plus {full_outage_penalty:g} per second of full outage (edge error rate "
                 f">= 99 %)")
    return text


def per_step_downtime(episodes: Sequence[Episode]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for e in episodes:
        for s in e.rehearsal.steps:
            totals[s.name] = totals.get(s.name, 0.0) + s.span.downtime_s
    n = max(1, len(episodes))
    return {k: v / n for k, v in totals.items()}


def comparison_markdown(scenario: Scenario, results: dict[str, MethodResult],
                        changes: list[str], episodes: int, seed: int,
                        extra: dict[str, Any], objective: str = "budget",
                        full_outage_penalty: float = 0.0, *,
                        findings: Sequence[str] = (), described: str = "best_static",
                        notes: Sequence[str] = ()) -> str:
    """``comparison.md``: every method's numbers, then what ``procedure.yaml`` (the
    ``described`` method's procedure) changes from the configured one and its remaining
    bottlenecks (``findings``, already written as list items), then notes."""
    unit = cost_unit(objective)
    rows = ["| method | mean downtime (s) ± 95% CI | p95 downtime (s) | mean failed requests "
            f"± 95% CI | p95 failed requests | recovered | cost ({unit}) | time (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        dm, dci = mean_ci(r.downtimes)
        fails = [e.rehearsal.failed_requests for e in r.episodes]
        fm, fci = mean_ci(fails)
        rows.append(f"| {name} | {dm:.1f} ± {dci:.1f} | {np.percentile(r.downtimes, 95):.1f} | "
                    f"{fm:.0f} ± {fci:.0f} | {np.percentile(fails, 95):.0f} | "
                    f"{r.summary.outcomes.recovered}/{len(r.episodes)} | "
                    f"{r.costs.mean():.3f} | {r.seconds + r.train_s:.1f} |")
    budget = ["| method | budget burn mean ± 95% CI | p50 | p95 | max | bad requests mean | "
              "p50 | p95 | max | full outage mean (s) | worst edge error rate |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        bm, bci = mean_ci(r.burns)
        b, bad, peak = r.summary.budget_burn, r.summary.bad_requests, r.summary.peak_error_rate
        budget.append(f"| {name} | {bm:.3%} ± {bci:.3%} | {b.p50:.3%} | {b.p95:.3%} | "
                      f"{b.max:.3%} | {bad.mean:.0f} | {bad.p50:.0f} | {bad.p95:.0f} | "
                      f"{bad.max:.0f} | {r.summary.outage_s.mean:.1f} | {peak.max:.1%} |")
    lines: list[str] = []
    oracle = results["oracle"].info if "oracle" in results else None
    if isinstance(oracle, OracleInfo):
        rest = (f"; the others are the best found within {oracle.max_nodes} nodes, within "
                f"{oracle.mean_gap:.1%} of a proven lower bound on average "
                f"({oracle.max_gap:.1%} at most)" if oracle.exact < episodes else "")
        lines.append(f"The oracle searched each incident by branch and bound: {oracle.exact} of "
                     f"{episodes} searches finished (exact optimum){rest}; they took "
                     f"{oracle.median_nodes:.0f} nodes at the median and {oracle.most_nodes} at "
                     f"most, of a budget of {oracle.max_nodes} per incident (episodes.json has "
                     f"each incident's).")
    if "rl" in results and "best_static" in results:
        rl, bs = results["rl"], results["best_static"]
        wins = int(np.sum(rl.costs < bs.costs - 1e-9))
        losses = int(np.sum(rl.costs > bs.costs + 1e-9))
        lines.append(f"RL vs best_static per incident: RL better on {wins}, worse on {losses}, "
                     f"equal on {episodes - wins - losses}.")
    for key, value in extra.items():
        lines.append(f"{key}: {value}")
    notes_all = [*lines, *notes]
    obj = scenario.slo.objective
    what = ("the best static procedure" if described == "best_static"
            else "the configured procedure")
    return (f"# Rollback optimization: {scenario.name}\n\n"
            f"Every method faced the same {episodes} held-out incidents (seeds {seed}.."
            f"{seed + episodes - 1}) and minimised the same objective. Downtime: seconds from "
            f"the breach to the end of verification with any SLO rule violated. Cost: the "
            f"objective ({objective_text(objective, full_outage_penalty)}).\n\n"
            + "\n".join(rows) + "\n\n"
            + f"## Error budget\n\nBudget burn: the share of the error budget of the SLO "
              f"objective ({obj.target:.2%} over {obj.window / 86400:g} days at "
              f"{scenario.deployment.traffic.rps:g} rps) each incident and its rollback used, "
              f"from the breach to the end of verification. Full outage: seconds with the edge "
              f"error rate >= 99 %. Worst edge error rate: the highest over all incidents."
              f"\n\n" + "\n".join(budget) + "\n\n"
            + (f"## What {what} (procedure.yaml) changes from the configured one\n\n"
               + "\n".join(f"- {c}" for c in changes) + "\n\n" if changes else "")
            + (f"## Bottlenecks of {what} (procedure.yaml, bottlenecks.json)\n\n"
               + "\n".join(f"- {f}" for f in findings) + "\n\n" if findings else "")
            + ("## Notes\n\n" + "\n".join(f"- {n}" for n in notes_all) + "\n"
               if notes_all else ""))


# --------------------------------------------------------------------------- the engine


@dataclass
class OptimizeOptions:
    method: str = "all"
    agent: Path | None = None
    timesteps: int | None = None
    replicas: int = 1
    seed: int = 0
    episodes: int = 100
    eval_seed: int = 10000
    search_trials: int = 150
    search_incidents: int = 24
    oracle_nodes: int = ORACLE_NODES
    ray_address: str | None = None
    policy: Path | None = None  # a trained policy.zip: measured instead of training one
    vec_env_factory: Callable[..., Any] | None = None  # e.g. Ray replicas for training
    objective: str = "budget"  # budget | downtime: what every method minimises
    full_outage_penalty: float = 0.0  # extra cost per second of full outage
    notes: tuple[str, ...] = ()  # added to comparison.md's notes (e.g. what a caller registers)
    verify_backend: str | None = None  # a real backend to verify procedure.yaml on first
    verify_runs: int = 3  # its incidents: the first held-out seeds


ProgressFn = Callable[[int, int, str], None]  # (done, total, label)


def optimize(scenario: Scenario, out_dir: Path, opts: OptimizeOptions, command: str,
             log: Callable[[str], None] = lambda _m: None,
             progress: ProgressFn | None = None) -> OptimizeResult:
    from shadowrl.analysis.bottlenecks import analyze

    out_dir.mkdir(parents=True, exist_ok=True)
    methods = methods_for(opts.method)
    env = RollbackEnv(scenario, objective=opts.objective,
                      full_outage_penalty=opts.full_outage_penalty)
    results: dict[str, MethodResult] = {}
    n, s0, rep = opts.episodes, opts.eval_seed, opts.replicas

    def tick(name: str) -> Callable[[int], None]:
        return lambda i: progress(i + 1, n, name) if progress else None

    phases = _Phases()
    log("evaluating the configured procedure")
    results["configured"] = measure(env, configured_policy(env), n, s0, tick("configured"), rep)
    configured_report = analyze(scenario, [e.rehearsal for e in results["configured"].episodes])
    if "random" in methods:
        results["random"] = measure(env, RandomPolicy(opts.seed), n, s0, tick("random"), rep)
    if "greedy" in methods:
        results["greedy"] = measure(env, GreedyPolicy(), n, s0, tick("greedy"), rep)
    phases.mark("baselines")
    best_plan: Plan = configured_plan(scenario.procedure)
    search: _Search | None = None
    omitted: dict[str, str] = {}
    if "best_static" in methods:
        log("searching the best static procedure")
        search = _best_static(env, opts, tick("best_static"), progress)
        log("measuring the bottleneck advice against the best static procedure")
        bottlenecks = _advised(env, opts, search, tick("best_static"))
        assert search.result is not None
        results["best_static"], best_plan, omitted = search.result, search.plan, search.omitted
    else:  # procedure.yaml is the configured procedure: so is what the advice describes
        bottlenecks = analyze(scenario, [e.rehearsal for e in results["configured"].episodes],
                              procedure=plan_to_procedure(scenario.procedure, best_plan,
                                                          name=scenario.procedure.name)
                              ).to_json()
        bottlenecks["method"] = "configured"
    phases.mark("best_static")
    policy_path = out_dir / "policy.zip"
    oracle_job: _Background | None = None
    if "oracle" in methods:
        incumbents = [configured_plan(scenario.procedure)]
        if "best_static" in methods:
            incumbents.append(best_plan)
        if rep > 1 and "rl" in methods:
            # the searches are Ray tasks: they run while the driver trains
            log("searching each incident's optimum (oracle), beside the training")
            oracle_job = _Background(lambda: _oracle(env, opts, incumbents, tick("oracle")))
    if "rl" in methods:
        # a failed or interrupted training leaves a running search behind: a daemon thread
        # whose Ray tasks end with the Ray session
        results["rl"] = _rl(env, opts, out_dir, tick("rl"), log, progress is not None)
        phases.mark("rl")
    if "oracle" in methods:
        if oracle_job is not None:
            results["oracle"] = oracle_job.result()
        else:
            log("searching each incident's optimum (oracle)")
            results["oracle"] = _oracle(env, opts, incumbents, tick("oracle"))
        phases.mark("oracle")  # beside the training: only what it took after it
    described = "best_static" if search is not None else "configured"
    verification = _verify(scenario, opts, best_plan, omitted, search is not None, log,
                           progress)
    atomic_write_json(out_dir / "bottlenecks.json", bottlenecks)
    changes = describe_changes(configured_plan(scenario.procedure), best_plan,
                               _per_step_change(scenario, results),
                               configured_report.to_json()["findings"],
                               procedure=scenario.procedure, omitted=omitted)
    if search is not None:
        changes += [f"Adopted from the bottleneck advice on {a}." for a in search.adopted]
    summaries = {name: r.summary for name, r in results.items()}
    procedure_file = out_dir / "procedure.yaml"
    verification_file = out_dir / "verification.json"
    if verification is not None:
        atomic_write_json(verification_file, verification.model_dump(mode="json"))
    else:  # an earlier run's record would stand beside a procedure it did not verify
        verification_file.unlink(missing_ok=True)
    atomic_write_text(procedure_file, procedure_yaml(
        scenario, best_plan, summaries[described], command, omitted=omitted,
        searched=search is not None, verification=verification))
    phases.mark("verify")
    runbook = _runbook(env, opts, results, best_plan, out_dir, command, log)
    phases.mark("runbook")
    atomic_write_text(out_dir / "comparison.md", comparison_markdown(
        scenario, results, changes, n, s0, {}, opts.objective, opts.full_outage_penalty,
        findings=finding_lines(bottlenecks["findings"]), described=described,
        notes=(*opts.notes, *verification_notes(verification))))
    episodes_file = out_dir / "episodes.json"
    atomic_write_json(episodes_file, {
        "scenario": scenario.name, "eval_seed": s0, "episodes": n, "objective": opts.objective,
        "full_outage_penalty": opts.full_outage_penalty,
        "methods": {name: r.per_seed(s0) for name, r in results.items()}})
    infos = {name: r.info for name, r in results.items() if name in ("best_static", "rl",
                                                                       "oracle")}
    out = OptimizeResult(
        scenario=scenario.name,
        episodes=n,
        eval_seed=s0,
        methods=summaries,
        procedure=str(procedure_file),
        policy=str(policy_path) if "rl" in results else None,
        bottlenecks=str(out_dir / "bottlenecks.json"),
        comparison=str(out_dir / "comparison.md"),
        episodes_file=str(episodes_file),
        objective=opts.objective,
        timing_s={name: round(r.seconds + r.train_s, 3) for name, r in results.items()},
        search=infos.get("best_static"),
        rl=infos.get("rl"),
        oracle=infos.get("oracle"),
        verification=verification,
        verification_file=str(verification_file) if verification is not None else None,
        runbook=str(out_dir / "runbook.yaml"),
        runbook_summary=runbook,
        phases_s=phases.done(),
    )
    atomic_write_json(out_dir / "summary.json", out.model_dump(mode="json"))
    return out


def _runbook(env: RollbackEnv, opts: OptimizeOptions, results: dict[str, MethodResult],
             best_plan: Plan, out_dir: Path, command: str,
             log: Callable[[str], None]) -> dict[str, Any]:
    """runbook.yaml (and runbook.json): the RL policy distilled into a decision tree when it
    beats the best static procedure, else procedure.yaml's procedure alone."""
    from shadowrl.rl.distill import runbook_of_run, runbook_yaml
    from shadowrl.rl.policy import actions_to_plan

    policy: Policy | None = None
    plans = None
    if "rl" in results:
        from shadowrl.rl.agents import load_policy

        policy = load_policy(out_dir / "policy.zip")
        plans = [actions_to_plan(env, e.actions) for e in results["rl"].episodes]
    costs = {k: results[k].costs.tolist() for k in ("rl", "best_static", "oracle",
                                                     "configured") if k in results}
    distilled = runbook_of_run(env, policy=policy, best_plan=best_plan,
                               eval_seed=opts.eval_seed, costs=costs, policy_plans=plans,
                               replicas=opts.replicas, log=log)
    atomic_write_text(out_dir / "runbook.yaml", runbook_yaml(distilled, env.scenario, command))
    report = distilled.report()
    atomic_write_json(out_dir / "runbook.json", report)
    return {k: v for k, v in report.items() if k != "heldout"} | {
        "heldout": {k: v for k, v in report["heldout"].items() if k != "per_incident_cost"}}


def _verify(scenario: Scenario, opts: OptimizeOptions, plan: Plan, omitted: dict[str, str],
            searched: bool, log: Callable[[str], None],
            progress: ProgressFn | None) -> Verification | None:
    """procedure.yaml's procedure and the configured one on the real backend, on the first
    ``verify_runs`` held-out seeds (incidents the comparison also measured), before
    anything is written."""
    if opts.verify_backend is None:
        return None
    winner = written_procedure(scenario, plan, omitted=omitted, searched=searched)
    seeds = range(opts.eval_seed, opts.eval_seed + opts.verify_runs)
    log(f"verifying procedure.yaml against the configured procedure on {opts.verify_backend}: "
        f"{seeds_text(seeds)} (held out), each a real rehearsal of minutes")
    verification = verify_procedures(scenario, winner, scenario.procedure, seeds,
                                     backend=opts.verify_backend, objective=opts.objective,
                                     on_log=log, on_progress=progress)
    log(f"verification: {summary_line(verification)}")
    return verification


def verification_notes(verification: Verification | None) -> list[str]:
    """comparison.md's notes about the verification: its header lines, or that there is
    none."""
    if verification is None:
        return ["procedure.yaml was not verified on a real shadow (`--verify docker` "
                "rehearses it and the configured procedure there before writing it)."]
    return [f"{line}." for line in verification_header(verification)]


ADVICE_ROUNDS = 3  # times the advice may improve the searched plan before it is final


@dataclass
class _Search:
    """The best static search: the plan found (and its cost on the search incidents), the
    search incidents, the plan's no-op steps (left out of procedure.yaml), its held-out
    result, and the bottleneck advice adopted into it."""

    plan: Plan
    train_cost: float
    train_seeds: list[int]
    method: str
    evaluated: int
    search_s: float
    advice_plans: int = 0  # plans measured to check the advice (not part of the search)
    omitted: dict[str, str] = field(default_factory=dict)
    result: MethodResult | None = None
    adopted: list[str] = field(default_factory=list)


def _best_static(env: RollbackEnv, opts: OptimizeOptions, tick: Callable[[int], None],
                 progress: ProgressFn | None) -> _Search:
    """Search the best static plan on training incidents, then measure it held out."""
    train_seeds = [TRAIN_SEED_BASE + opts.seed * 10_000 + k
                   for k in range(opts.search_incidents)]
    start = time.perf_counter()
    found = best_static(env, train_seeds, trials=opts.search_trials, seed=opts.seed,
                        on_trial=(lambda i, total: progress(i, total, "best_static search"))
                        if progress else None)
    search = _Search(found.plan, found.train_cost, train_seeds, found.method, found.evaluated,
                     time.perf_counter() - start)
    _measure_search(env, opts, search, tick)
    return search


def _measure_search(env: RollbackEnv, opts: OptimizeOptions, search: _Search,
                    tick: Callable[[int], None]) -> None:
    """Measure the searched plan on the held-out incidents as ``procedure.yaml`` has it:
    without its no-op steps."""
    search.omitted = noop_reasons(env.scenario, search.plan)
    measured_env, plan = env, search.plan
    if search.omitted:
        proc = plan_to_procedure(env.scenario.procedure, search.plan, omit=search.omitted)
        measured_env = RollbackEnv(env.scenario, procedure=proc, **objective_kwargs(env))
        plan = configured_plan(proc)
    res = measure(measured_env, StaticPolicy(plan, name="best_static"), opts.episodes,
                  opts.eval_seed, tick, opts.replicas)
    res.train_s = search.search_s
    res.info = SearchInfo(train_s=search.search_s, search=search.method,
                          plans=search.evaluated, train_cost=search.train_cost,
                          advice_plans=search.advice_plans)
    search.result = res


def _advised(env: RollbackEnv, opts: OptimizeOptions, search: _Search,
             tick: Callable[[int], None]) -> dict[str, Any]:
    """``bottlenecks.json`` for the searched procedure, its advice measured against it.

    The analysis reads the held-out rehearsals of procedure.yaml; each finding's proposal is
    applied to the plan and measured on the search incidents (:func:`check_advice`). When
    one is cheaper there, the search missed it: the plan takes the cheapest, is measured
    again, and the advice is analysed again (at most :data:`ADVICE_ROUNDS` times), so what
    stands beside procedure.yaml is advice about procedure.yaml that it already follows or
    that the measurement rejected.
    """
    from shadowrl.analysis.bottlenecks import analyze

    for round_ in range(ADVICE_ROUNDS + 1):
        assert search.result is not None
        # left-out no-op steps stay in the analysed procedure (never run: 0 runs), still
        # among the choices advice may use ("scale web to 12 (scale-web) first")
        analysed = plan_to_procedure(env.scenario.procedure, search.plan)
        doc = analyze(env.scenario, [e.rehearsal for e in search.result.episodes],
                      procedure=analysed).to_json()
        doc["method"] = "best_static"
        better = check_advice(env, search, doc["findings"], opts.objective)
        if better is None or round_ == ADVICE_ROUNDS:
            assert isinstance(search.result.info, SearchInfo)
            search.result.info.advice_plans = search.advice_plans
            return doc
        finding, plan, cost = better
        where = f" at `{finding['step']}`" if finding.get("step") else ""
        search.adopted.append(
            f"{finding['kind']}{where}: {_cost_text(cost, opts.objective)} instead of "
            f"{_cost_text(search.train_cost, opts.objective)} on the "
            f"{len(search.train_seeds)} search incidents")
        search.plan, search.train_cost = plan, cost
        search.method = search.method if search.method.endswith("+advice") else \
            search.method + "+advice"
        _measure_search(env, opts, search, tick)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns


def apply_proposal(procedure: Procedure, plan: Plan,
                   proposal: Mapping[str, Any]) -> list[tuple[str, dict[str, Any] | None]] | None:
    """``plan`` changed as a bottleneck finding's ``proposal`` says (settings, steps to skip,
    steps to run earlier); None when it cannot be applied (an unknown step, a required step
    to skip, an order its ``after`` forbids) or changes nothing."""
    out = [(name, dict(settings) if settings is not None else None) for name, settings in plan]
    names = [name for name, _ in out]
    for name in proposal.get("skip") or ():
        if name not in names or not procedure.step(name).optional:
            return None
        out[names.index(name)] = (name, None)
    for name, values in (proposal.get("settings") or {}).items():
        if name not in names:
            return None
        k = names.index(name)
        current = out[k][1]
        merged = {**(current if current is not None else procedure.step(name)
                     .default_settings()), **values}
        out[k] = (name, merged)
    for first, second in proposal.get("before") or ():
        order = [name for name, _ in out]
        if first not in order or second not in order:
            return None
        i, j = order.index(first), order.index(second)
        if i > j:
            out.insert(j, out.pop(i))
    try:
        validate_plan(procedure, out)
    except ValueError:
        return None
    same = [(n, s) for n, s in out] == [(n, s) for n, s in plan]
    return None if same else out


def _cost_text(cost: float, objective: str) -> str:
    return f"{cost:.3f} % of the error budget" if objective == "budget" else f"{cost:.3f} min"


def check_advice(env: RollbackEnv, search: _Search, findings: list[dict[str, Any]],
                 objective: str) -> tuple[dict[str, Any], Plan, float] | None:
    """Measure each finding's proposed change to the best static plan on the search
    incidents, and say in its suggestion (and ``checked``) whether it is better. Returns
    the finding whose change is cheapest there, its plan and cost, when one beats the plan.

    The capacity model behind the advice is a rule of thumb (utilisation under 0.8); the
    search measured the objective. A change it would not adopt is marked as such instead of
    standing beside procedure.yaml as if procedure.yaml were wrong.
    """
    n = len(search.train_seeds)
    best: tuple[dict[str, Any], Plan, float] | None = None
    for f in findings:
        plan = apply_proposal(env.procedure, search.plan, f.get("proposal") or {})
        if plan is None:
            continue
        cost = plan_cost(env, plan, search.train_seeds, env.deviation)
        search.advice_plans += 1
        better = cost < search.train_cost - 1e-9
        if better and (best is None or cost < best[2]):
            best = (f, plan, cost)
        f["checked"] = {"incidents": n, "cost": round(cost, 6),
                        "procedure_cost": round(search.train_cost, 6), "better": better}
        measured = (f"on the optimizer's {n} search incidents it costs "
                    f"{_cost_text(cost, objective)} against "
                    f"{_cost_text(search.train_cost, objective)}")
        if better:
            f["suggestion"] += (f" Measured: {measured} for procedure.yaml, which the search "
                                f"missed; rehearse it (shadowrl rehearse --procedure) before "
                                f"adopting it.")
        else:
            f["suggestion"] += (f" Not adopted: {measured} for procedure.yaml as it is"
                                f"{_as_it_is(env.procedure, search.plan, f['proposal'])}.")
    return best


def _as_it_is(procedure: Procedure, plan: Plan, proposal: Mapping[str, Any]) -> str:
    """What procedure.yaml does instead of the proposal's settings, as a user writes it."""
    settings = dict(plan)
    parts = []
    for name, values in (proposal.get("settings") or {}).items():
        current = settings.get(name)
        if current is None:
            parts.append(f"{name} skipped")
            continue
        keys = [k for k in values if k in current]
        if keys:
            text = describe_settings({k: current[k] for k in keys}, procedure.step(name).action)
            parts.append(f"{name} {text}")
    return f" ({'; '.join(parts)})" if parts else ""


def _rl(env: RollbackEnv, opts: OptimizeOptions, out_dir: Path, tick: Callable[[int], None],
        log: Callable[[str], None], show_progress: bool) -> MethodResult:
    """Train a policy (or take ``opts.policy``), copy it to ``out_dir``, measure it."""
    from shadowrl.rl.agents import load_agent_config, read_sidecar, train

    if opts.policy is not None:
        _copy_policy(opts.policy, out_dir)
        info = RlInfo(policy=str(opts.policy))
    else:
        agent = agent_for(env.scenario, opts.agent)
        config = load_agent_config(agent)
        # the policy learns the objective every other method is measured on
        config.env = {**config.env, **objective_kwargs(env)}
        log(f"training {config.algorithm} for {opts.timesteps or config.timesteps} timesteps "
            f"(objective: {env.objective})")
        trained = train(env.scenario, config, out_dir / "rl", seed=opts.seed,
                        timesteps=opts.timesteps, progress=show_progress,
                        vec_env_factory=opts.vec_env_factory)
        # the best checkpoint by the training's own evaluation (other seeds than the
        # held-out ones measured below), which includes the final policy: a late PPO update
        # that made the policy worse is not what a user should deploy
        chosen = trained.best_model_path or Path(trained.model_path)
        _copy_policy(chosen, out_dir)
        meta = read_sidecar(chosen)
        info = RlInfo(agent=str(agent), train_s=trained.wall_s, timesteps=trained.timesteps,
                      algorithm=config.algorithm,
                      policy_timesteps=meta.get("timesteps", trained.timesteps),
                      validation_cost=meta.get("mean_cost"))
        log(f"kept the policy at {info.policy_timesteps} of {trained.timesteps} timesteps"
            + (f" (evaluation mean cost {info.validation_cost:.4f})"
               if info.validation_cost is not None else ""))
    res = measure(env, str(out_dir / "policy.zip"), opts.episodes, opts.eval_seed, tick,
                  opts.replicas, name="rl")
    res.train_s = info.train_s or 0.0
    res.info = info
    return res


class _Phases:
    """Wall seconds of each phase of a run, in order, and the whole run (``total``)."""

    def __init__(self) -> None:
        self._start = self._last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now

    def done(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self._start, 3)}


class _Background:
    """One call run in a daemon thread (its work in Ray tasks, so the GIL is free): the driver
    goes on meanwhile. ``result()`` returns what the call returned or raises what it raised."""

    def __init__(self, call: Callable[[], MethodResult]) -> None:
        self._call = call
        self._value: MethodResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="shadowrl-oracle", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as exc:  # handed to the driver by result()
            self._error = exc

    def result(self) -> MethodResult:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def _oracle(env: RollbackEnv, opts: OptimizeOptions, incumbents: list[Plan],
            tick: Callable[[int], None]) -> MethodResult:
    """Each held-out incident's optimum, by branch and bound from the incumbents."""
    oracle = OraclePolicy(opts.oracle_nodes, incumbents)
    res = measure(env, oracle, opts.episodes, opts.eval_seed, tick, opts.replicas)
    gaps = [oracle_gap(e.extra) for e in res.episodes if not e.extra.get("exact")]
    nodes = [int(e.extra.get("nodes", 0)) for e in res.episodes]
    res.info = OracleInfo(exact=sum(bool(e.extra.get("exact")) for e in res.episodes),
                          max_nodes=opts.oracle_nodes,
                          mean_nodes=float(np.mean(nodes)),
                          median_nodes=float(np.median(nodes)),
                          most_nodes=max(nodes),
                          mean_gap=round(float(np.mean(gaps)), 4) if gaps else 0.0,
                          max_gap=round(float(np.max(gaps)), 4) if gaps else 0.0)
    return res


def oracle_gap(extra: Mapping[str, Any]) -> float:
    """How far from proven optimal an unfinished search's best is: (best - bound) / best."""
    cost, bound = float(extra.get("cost", 0.0)), float(extra.get("bound", 0.0))
    return (cost - bound) / cost if cost > 0 else 0.0


def _per_step_change(scenario: Scenario,
                     results: dict[str, MethodResult]) -> dict[str, tuple[float, float]]:
    """Each step's mean downtime under the configured and the best static procedure."""
    if "best_static" not in results:
        return {}
    before = per_step_downtime(results["configured"].episodes)
    after = per_step_downtime(results["best_static"].episodes)
    return {s.name: (before.get(s.name, 0.0), after.get(s.name, 0.0))
            for s in scenario.procedure.steps}


def default_agent_path() -> Path:
    """``agents/maskable_ppo.yaml`` beside the package (a source checkout)."""
    return Path(__file__).resolve().parents[2] / "agents" / "maskable_ppo.yaml"


def agent_for(scenario: Scenario, agent: Path | None) -> Path:
    """The agent config RL trains: ``agent`` (``--agent``), else the one the scenario names
    (``optimizer.agent``), else :func:`default_agent_path`."""
    return agent or scenario_agent(scenario) or default_agent_path()


def _copy_policy(model_path: Path, out_dir: Path) -> None:
    from shadowrl.core.atomic import atomic_write_bytes
    from shadowrl.rl.agents import sidecar_path

    target = out_dir / "policy.zip"
    atomic_write_bytes(target, model_path.read_bytes())
    sidecar = sidecar_path(model_path)
    if sidecar.exists():
        atomic_write_bytes(sidecar_path(target), sidecar.read_bytes())

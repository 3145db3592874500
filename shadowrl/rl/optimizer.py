"""Rollback Optimization Engine: every method measured on the same held-out incidents.

``optimize`` analyses the configured procedure's bottlenecks, runs the baselines (configured,
random, greedy), searches the best static procedure, trains an RL policy, bounds them all with
the per-incident oracle, and writes ``procedure.yaml``, ``policy.zip``, ``bottlenecks.json``,
``comparison.md``, ``episodes.json`` (every method's per-incident outcomes, downtimes and
budget burns, for paired comparisons) and ``summary.json``.

Every method minimises the same objective, the :class:`RollbackEnv`'s: the error budget burned
(``objective="budget"``, the default) or downtime (``"downtime"``), plus an optional
``full_outage_penalty`` per second of full outage.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from shadowrl.analysis.summary import EvaluationSummary, RehearsalSummary, summarize, with_cost
from shadowrl.core.atomic import atomic_write_json, atomic_write_text
from shadowrl.core.plan import Plan, configured_plan
from shadowrl.core.spec import Scenario, procedure_file_data
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.evaluate import Episode, evaluate
from shadowrl.rl.policy import Policy, RandomPolicy, StaticPolicy, configured_policy
from shadowrl.rl.results import OptimizeResult, OracleInfo, RlInfo, SearchInfo
from shadowrl.rl.search import GreedyPolicy, OraclePolicy, best_static, plan_to_procedure

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
        return per_seed_record([e.rehearsal for e in self.episodes], seed,
                               [e.cost for e in self.episodes])


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


def objective_kwargs(env: RollbackEnv) -> dict[str, Any]:
    """The env's objective as :class:`RollbackEnv` keyword arguments."""
    return {"objective": env.objective, "full_outage_penalty": env.full_outage_penalty}


def measure(env: RollbackEnv, policy: Policy | str, episodes: int, seed: int,
            tick: Callable[[int], None] | None = None, replicas: int = 1,
            name: str | None = None) -> MethodResult:
    """Evaluate on seeds ``seed..seed+episodes-1``; with ``replicas`` > 1 as Ray tasks
    (``policy`` may then be a saved ``.zip`` path, shipped to the tasks by value)."""
    start = time.perf_counter()
    if replicas > 1:
        from shadowrl.integrations.ray import parallel_evaluate

        eps = parallel_evaluate(env.scenario, policy, episodes, seed, replicas,
                                env_kwargs={"procedure": env.procedure, **objective_kwargs(env)},
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


def procedure_yaml(scenario: Scenario, plan: Plan, summary: RehearsalSummary,
                   command: str) -> str:
    proc = plan_to_procedure(scenario.procedure, plan)
    d = summary.downtime_s
    header = (f"# shadowrl optimized procedure '{proc.name}' for scenario '{scenario.name}'\n"
              f"# best static order and settings found by `{command}`\n"
              f"# held-out evaluation ({summary.runs} incidents): downtime mean "
              f"{d.mean:.0f}s p95 {d.p95:.0f}s; outcomes {summary.outcomes.model_dump()}; "
              f"error budget burn mean {summary.budget_burn.mean:.3%}\n"
              f"# use it with: shadowrl rehearse SCENARIO --procedure THIS_FILE\n")
    body = yaml.safe_dump(procedure_file_data(proc, scenario.name), sort_keys=False,
                          default_flow_style=None)
    return header + body


def describe_changes(configured: Plan, best: Plan, per_step: dict[str, tuple[float, float]],
                     findings: list[dict[str, Any]]) -> list[str]:
    """Plain-language differences between the configured plan and the optimized one."""
    lines: list[str] = []
    conf_order = [n for n, s in configured if s is not None]
    best_order = [n for n, s in best if s is not None]
    if conf_order != best_order:
        lines.append(f"Order: {' -> '.join(conf_order)}  became  {' -> '.join(best_order)}.")
    conf = dict(configured)
    for name, settings in best:
        old = conf.get(name)
        if settings is None and old is not None:
            lines.append(f"Skip optional step `{name}`.")
        elif settings is not None and old is not None:
            changed = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            if changed:
                text = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items())
                lines.append(f"`{name}`: {text}.")
    for name, (before, after) in per_step.items():
        if abs(before - after) >= 1.0:
            lines.append(f"`{name}` causes {after:.0f}s of downtime on average instead of "
                         f"{before:.0f}s.")
    for f in findings[:3]:
        step = f" at `{f['step']}`" if f.get("step") else ""
        lines.append(f"Bottleneck of the configured procedure: {f['kind']}{step} "
                     f"({f['share_of_downtime']:.0%} of its downtime): {f['suggestion']}")
    return lines


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
                        full_outage_penalty: float = 0.0) -> str:
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
    notes = []
    oracle = results["oracle"].info if "oracle" in results else None
    if isinstance(oracle, OracleInfo):
        rest = (f"; the others are the best found within {oracle.max_nodes} nodes"
                if oracle.exact < episodes else "")
        notes.append(f"The oracle searched each incident by branch and bound: {oracle.exact} of "
                     f"{episodes} searches finished (exact optimum){rest}.")
    if "rl" in results and "best_static" in results:
        rl, bs = results["rl"], results["best_static"]
        wins = int(np.sum(rl.costs < bs.costs - 1e-9))
        losses = int(np.sum(rl.costs > bs.costs + 1e-9))
        notes.append(f"RL vs best_static per incident: RL better on {wins}, worse on {losses}, "
                     f"equal on {episodes - wins - losses}.")
    for key, value in extra.items():
        notes.append(f"{key}: {value}")
    obj = scenario.slo.objective
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
            + ("## What changed from the configured procedure\n\n"
               + "\n".join(f"- {c}" for c in changes) + "\n\n" if changes else "")
            + ("## Notes\n\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else ""))


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
    oracle_nodes: int = 5000
    ray_address: str | None = None
    policy: Path | None = None  # a trained policy.zip: measured instead of training one
    vec_env_factory: Callable[..., Any] | None = None  # e.g. Ray replicas for training
    objective: str = "budget"  # budget | downtime: what every method minimises
    full_outage_penalty: float = 0.0  # extra cost per second of full outage


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

    log("evaluating the configured procedure")
    results["configured"] = measure(env, configured_policy(env), n, s0, tick("configured"), rep)
    report = analyze(scenario, [e.rehearsal for e in results["configured"].episodes])
    bottlenecks = report.to_json()
    atomic_write_json(out_dir / "bottlenecks.json", bottlenecks)
    if "random" in methods:
        results["random"] = measure(env, RandomPolicy(opts.seed), n, s0, tick("random"), rep)
    if "greedy" in methods:
        results["greedy"] = measure(env, GreedyPolicy(), n, s0, tick("greedy"), rep)
    best_plan: Plan = configured_plan(scenario.procedure)
    if "best_static" in methods:
        log("searching the best static procedure")
        results["best_static"], best_plan = _best_static(env, opts, tick("best_static"),
                                                         progress)
    policy_path = out_dir / "policy.zip"
    if "rl" in methods:
        results["rl"] = _rl(env, opts, out_dir, tick("rl"), log, progress is not None)
    if "oracle" in methods:
        log("searching each incident's optimum (oracle)")
        incumbents = [configured_plan(scenario.procedure)]
        if "best_static" in methods:
            incumbents.append(best_plan)
        results["oracle"] = _oracle(env, opts, incumbents, tick("oracle"))

    changes = describe_changes(configured_plan(scenario.procedure), best_plan,
                               _per_step_change(scenario, results),
                               bottlenecks.get("findings", []))
    summaries = {name: r.summary for name, r in results.items()}
    procedure_file = out_dir / "procedure.yaml"
    atomic_write_text(procedure_file, procedure_yaml(
        scenario, best_plan, summaries.get("best_static", summaries["configured"]), command))
    atomic_write_text(out_dir / "comparison.md", comparison_markdown(
        scenario, results, changes, n, s0, {}, opts.objective, opts.full_outage_penalty))
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
    )
    atomic_write_json(out_dir / "summary.json", out.model_dump(mode="json"))
    return out


def _best_static(env: RollbackEnv, opts: OptimizeOptions, tick: Callable[[int], None],
                 progress: ProgressFn | None) -> tuple[MethodResult, Plan]:
    """Search the best static plan on training incidents, then measure it held out."""
    train_seeds = [TRAIN_SEED_BASE + opts.seed * 10_000 + k
                   for k in range(opts.search_incidents)]
    start = time.perf_counter()
    found = best_static(env, train_seeds, trials=opts.search_trials, seed=opts.seed,
                        on_trial=(lambda i, total: progress(i, total, "best_static search"))
                        if progress else None)
    search_s = time.perf_counter() - start
    res = measure(env, StaticPolicy(found.plan, name="best_static"), opts.episodes,
                  opts.eval_seed, tick, opts.replicas)
    res.train_s = search_s
    res.info = SearchInfo(train_s=search_s, search=found.method, plans=found.evaluated,
                          train_cost=found.train_cost)
    return res, found.plan


def _rl(env: RollbackEnv, opts: OptimizeOptions, out_dir: Path, tick: Callable[[int], None],
        log: Callable[[str], None], show_progress: bool) -> MethodResult:
    """Train a policy (or take ``opts.policy``), copy it to ``out_dir``, measure it."""
    from shadowrl.rl.agents import load_agent_config, train

    if opts.policy is not None:
        _copy_policy(opts.policy, out_dir)
        info = RlInfo(policy=str(opts.policy))
    else:
        config = load_agent_config(opts.agent or default_agent_path())
        # the policy learns the objective every other method is measured on
        config.env = {**config.env, **objective_kwargs(env)}
        log(f"training {config.algorithm} for {opts.timesteps or config.timesteps} timesteps "
            f"(objective: {env.objective})")
        trained = train(env.scenario, config, out_dir / "rl", seed=opts.seed,
                        timesteps=opts.timesteps, progress=show_progress,
                        vec_env_factory=opts.vec_env_factory)
        _copy_policy(Path(trained.model_path), out_dir)
        info = RlInfo(train_s=trained.wall_s, timesteps=trained.timesteps,
                      algorithm=config.algorithm)
    res = measure(env, str(out_dir / "policy.zip"), opts.episodes, opts.eval_seed, tick,
                  opts.replicas, name="rl")
    res.train_s = info.train_s or 0.0
    res.info = info
    return res


def _oracle(env: RollbackEnv, opts: OptimizeOptions, incumbents: list[Plan],
            tick: Callable[[int], None]) -> MethodResult:
    """Each held-out incident's optimum, by branch and bound from the incumbents."""
    oracle = OraclePolicy(opts.oracle_nodes, incumbents)
    res = measure(env, oracle, opts.episodes, opts.eval_seed, tick, opts.replicas)
    res.info = OracleInfo(exact=sum(bool(e.extra.get("exact")) for e in res.episodes),
                          max_nodes=opts.oracle_nodes,
                          mean_nodes=float(np.mean([e.extra.get("nodes", 0)
                                                    for e in res.episodes])))
    return res


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


def _copy_policy(model_path: Path, out_dir: Path) -> None:
    from shadowrl.core.atomic import atomic_write_bytes
    from shadowrl.rl.agents import sidecar_path

    target = out_dir / "policy.zip"
    atomic_write_bytes(target, model_path.read_bytes())
    sidecar = sidecar_path(model_path)
    if sidecar.exists():
        atomic_write_bytes(sidecar_path(target), sidecar.read_bytes())

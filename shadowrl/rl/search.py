"""Search baselines and bounds: greedy lookahead, the best static procedure, and the oracle.

- ``greedy``: at each decision, try every valid action from a snapshot and take the one whose
  own cost (under the env's objective: the error budget it burns, or its downtime and failed
  requests) is lowest; myopic by design.
- ``best_static``: the single order and settings minimising the mean cost over sampled
  training incidents: exhaustive where the plan space is small, Optuna's TPE otherwise.

Every method minimises the :class:`RollbackEnv`'s objective (``objective``,
``full_outage_penalty``), so switching it switches them all.
- ``oracle``: per incident, the best sequence by depth-first branch and bound over the
  deterministic simulator (snapshot/restore). Costs only accumulate, so a partial sequence
  whose cost plus the backend's floor of what must still come costs at least the best
  complete one is pruned; with its node budget not exhausted the result is exact: a lower
  bound no policy can beat on that incident.

Greedy and the oracle branch from snapshots, so they need a backend with the
:class:`~shadowrl.shadow.base.Snapshotting` capability and refuse any other with
:class:`~shadowrl.core.errors.SnapshotUnsupported`; ``best_static`` only replays rehearsals.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from shadowrl.core.errors import SnapshotUnsupported
from shadowrl.core.plan import (
    Plan,
    configured_plan,
    linear_extensions,
    order_steps,
    setting_combinations,
    validate_plan,
)
from shadowrl.core.spec import Procedure, Scenario, Step
from shadowrl.rehearsal.deviation import DeviationSimulator
from shadowrl.rehearsal.runner import Rehearsal, rehearse
from shadowrl.rl.env import RollbackEnv
from shadowrl.rl.results import ORACLE_NODES
from shadowrl.shadow.base import CostCapping, CostCapReached, CostFloor, Snapshotting

# --------------------------------------------------------------------------- env snapshots


def require_snapshots(env: RollbackEnv, method: str) -> None:
    """:class:`SnapshotUnsupported`, naming the backend and ``method``, unless the env's
    shadow is :class:`Snapshotting`. Search methods check once on entry, not per branch."""
    shadow = env.shadow
    if not isinstance(shadow, Snapshotting):
        raise SnapshotUnsupported(
            f"{method} branches from snapshots, and the '{shadow.name}' backend cannot take "
            f"them (it lacks the Snapshotting capability); use a backend that can (sim), or a "
            f"method that only replays rehearsals (configured, random, best static, RL)")


def env_snapshot(env: RollbackEnv) -> tuple[Any, ...]:
    """The env's whole state; the shadow must be :class:`Snapshotting`
    (:func:`require_snapshots`)."""
    return (cast(Snapshotting, env.shadow).snapshot(), env.status.copy(), list(env.results),
            env.failed, env.n_actions, env.rehearsal)


def env_restore(env: RollbackEnv, snap: tuple[Any, ...]) -> None:
    shadow, status, results, failed, n_actions, rehearsal = snap
    cast(Snapshotting, env.shadow).restore(shadow)
    env.status = status.copy()
    env.results = list(results)
    env.failed = failed
    env.n_actions = n_actions
    env.rehearsal = rehearsal


@contextmanager
def searching(env: RollbackEnv) -> Iterator[None]:
    """Steps inside the block return zero observations: a search branches through thousands
    of steps and reads only their costs, and observing is a tenth of a step's time."""
    before = env.observing
    env.observing = False
    try:
        yield
    finally:
        env.observing = before


# a cap this far above a search's bound: floating-point sums never prune a branch the bound
# alone would keep
CAP_SLACK = 1e-6


CostCaps = Callable[[float], AbstractContextManager[None]]


def cost_caps(env: RollbackEnv) -> CostCaps:
    """``caps(bound)``: a block whose steps raise :class:`CostCapReached` once they cost more
    than ``bound`` (the env's objective), on a backend that can stop there
    (:class:`CostCapping`); elsewhere a block that lets every step run to its end. A search
    that prunes branches costing at least ``bound`` prunes the same ones either way. Made
    once per search: the capability check costs as much as a small step's bookkeeping."""
    shadow = env.shadow
    if not isinstance(shadow, CostCapping):
        return lambda bound: nullcontext()
    weights = env.cost_weights()

    def caps(bound: float) -> AbstractContextManager[None]:
        if not math.isfinite(bound):
            return nullcontext()
        return shadow.cost_cap(weights, bound + CAP_SLACK * (1.0 + abs(bound)))

    return caps


def episode_cost(r: Rehearsal, env: RollbackEnv) -> float:
    """The env's objective for a finished rehearsal: minus the episode return."""
    return env.rehearsal_cost(r)


# --------------------------------------------------------------------------- greedy


class GreedyPolicy:
    """One-step lookahead with snapshot/restore."""

    name = "greedy"

    def reset(self, env: RollbackEnv) -> None:
        pass

    def act(self, env: RollbackEnv, obs: np.ndarray) -> int:
        require_snapshots(env, "greedy")
        snap = env_snapshot(env)
        best, best_cost = -1, math.inf
        capped = cost_caps(env)
        with searching(env):
            for a in np.flatnonzero(env.action_masks()):
                try:
                    with capped(best_cost):
                        _, reward, *_ = env.step(int(a))
                except CostCapReached:
                    continue  # dearer than the best so far: not taken
                finally:
                    env_restore(env, snap)
                if -reward < best_cost - 1e-12:
                    best, best_cost = int(a), -reward
        return best


# --------------------------------------------------------------------------- oracle


@dataclass
class OracleResult:
    cost: float
    actions: list[int]
    nodes: int
    exact: bool  # False when the node budget ran out: then the best found, not the optimum
    bound: float = 0.0  # a proven lower bound of the optimum (== cost when exact)


def rollout(env: RollbackEnv, actions: Sequence[int]) -> float:
    """Cost of playing ``actions`` from the env's current state (the state is not restored)."""
    cost = 0.0
    for a in actions:
        _, reward, term, trunc, _ = env.step(int(a))
        cost -= reward
        if term or trunc:
            return cost
    return math.inf  # the sequence did not finish the procedure


def greedy_rollout(env: RollbackEnv, cost: float = 0.0,
                   give_up_at: float = math.inf) -> tuple[list[int], float]:
    """Greedy lookahead from the env's current state to the episode's end (the state is not
    restored): the actions it took and ``cost`` plus what they cost. It gives up, with an
    infinite cost, once the cost reaches ``give_up_at`` before the end."""
    greedy = GreedyPolicy()
    actions: list[int] = []
    while env.rehearsal is None and not env.failed:
        if cost >= give_up_at:
            return actions, math.inf
        a = greedy.act(env, None)  # type: ignore[arg-type]
        actions.append(a)
        _, reward, term, trunc, _ = env.step(a)
        cost -= reward
        if term or trunc:
            break
    return actions, cost


def branch_and_bound(env: RollbackEnv, max_nodes: int = ORACLE_NODES,
                     incumbents: Sequence[Sequence[int]] = ()) -> OracleResult:
    """Best action sequence from the env's current state (just after reset).

    The greedy rollout and any ``incumbents`` (e.g. the configured and best static plans)
    seed the bound, so the result is never worse than them even when the budget runs out.
    The search stops as soon as the tree is exhausted: ``max_nodes`` is a cap, not a cost.
    """
    require_snapshots(env, "the oracle")
    with searching(env):
        return _branch_and_bound(env, max_nodes, incumbents)


def _branch_and_bound(env: RollbackEnv, max_nodes: int,
                      incumbents: Sequence[Sequence[int]]) -> OracleResult:
    """Best-first (A*) search over (state, next action) edges.

    Costs only accumulate, so the cost of reaching a state plus the floor of what the rest
    of the episode must cost (:func:`cost_floor`: 0 unless the backend proves more) is a
    lower bound of every completion through it: edges are taken lowest bound first, each
    simulated only when taken, and the search ends when the lowest bound left is at least the
    best complete sequence (proven optimal). Taken in that order, a state is almost always
    first reached at its least cost, so, unlike a depth-first search, it is rarely expanded
    twice; and when the node budget runs out the lowest bound left is the bound the search
    proved.
    """
    root = env_snapshot(env)
    capped = cost_caps(env)
    floor = cost_floor(env)
    greedy, greedy_cost = greedy_rollout(env)
    best = OracleResult(greedy_cost, greedy, 0, True)
    for candidate in incumbents:
        env_restore(env, root)
        try:
            with capped(best.cost):
                c = rollout(env, candidate)
        except CostCapReached:
            continue
        if c < best.cost:
            best.cost, best.actions = c, list(candidate)
    env_restore(env, root)
    # Transpositions: two nodes with the same steps done, the same shadow state and the same
    # shadow time have the same future (the simulator is deterministic and its load a
    # function of time), so the costlier one is pruned. Exact: a node reached at another
    # time is never pruned by this, since its load, and so its future, may differ.
    seen: dict[tuple[Any, ...], float] = {}
    tie = itertools.count()
    # (lower bound: the parent's cost plus its floor, tie-break, parent snapshot, parent key,
    # path, action, the parent's cost)
    Edge = tuple[float, int, tuple[Any, ...], tuple[Any, ...] | None, list[int], int, float]
    heap: list[Edge] = []

    def expand(cost: float, bound: float, key: tuple[Any, ...] | None,
               path: list[int]) -> None:
        snap = env_snapshot(env)
        for a in np.flatnonzero(env.action_masks()):
            heapq.heappush(heap, (bound, next(tie), snap, key, path, int(a), cost))

    expand(0.0, floor(env.shadow.now()), None, [])
    nodes = 0
    while heap and heap[0][0] < best.cost - 1e-9:
        if nodes >= max_nodes:
            best.exact = False
            break
        _, _, snap, key, path, a, cost = heapq.heappop(heap)
        if key is not None and seen[key] < cost - 1e-12:
            continue  # its state was reached more cheaply since: that copy is expanded
        env_restore(env, snap)
        nodes += 1
        try:
            # past best - cost the edge is pruned below whatever it costs: stop it there
            with capped(best.cost - cost):
                _, reward, term, _, _ = env.step(a)
        except CostCapReached:
            continue
        c = cost - reward
        if term:
            if c < best.cost - 1e-9:
                best.cost, best.actions = c, [*path, a]
            continue
        bound = c + floor(env.shadow.now())
        if bound >= best.cost - 1e-9:
            continue
        child = (state_key(env), round(env.shadow.now(), 6))
        known = seen.get(child)
        if known is not None and known <= c + 1e-12:
            continue
        seen[child] = c
        expand(c, bound, child, [*path, a])
    bound = best.cost if best.exact else min(best.cost, heap[0][0])
    if not best.exact:
        # best-first proves bounds but completes few sequences before its budget runs out:
        # complete the cheapest open edges greedily, so what it reports is a good sequence
        # (steps beyond the budget, at most DIVES greedy completions: not counted in nodes)
        _dive(env, heap, best)
    env_restore(env, root)
    best.nodes = nodes
    best.bound = min(bound, best.cost)
    return best


def cost_floor(env: RollbackEnv) -> Callable[[float], float]:
    """``floor(t)``: a lower bound of what the env's episode still costs from shadow time
    ``t`` (steps and verification, under its objective), from a backend that can prove one
    (:class:`CostFloor`); 0 elsewhere. Made once per search, at its root."""
    shadow = env.shadow
    if not isinstance(shadow, CostFloor) or env.breach is None:
        return lambda t: 0.0
    end_s = env.breach.at_s + env.procedure.verify.timeout
    return shadow.cost_floor(env.cost_weights(), env.procedure.steps, end_s)


DIVES = 8  # open edges an unfinished search completes greedily


def _dive(env: RollbackEnv, heap: list[Any], best: OracleResult) -> None:
    """Complete up to :data:`DIVES` of the open edges of lowest bound by greedy lookahead,
    keeping any sequence cheaper than ``best``."""
    for bound, _, snap, _, path, a, cost in heapq.nsmallest(DIVES, heap):
        if bound >= best.cost - 1e-9:
            break
        env_restore(env, snap)
        _, reward, term, _, _ = env.step(a)
        c, rest = cost - reward, []
        if not term:
            rest, c = greedy_rollout(env, c, give_up_at=best.cost - 1e-9)
        if env.rehearsal is not None and c < best.cost - 1e-9:
            best.cost, best.actions = c, [*path, a, *rest]


def state_key(env: RollbackEnv) -> tuple[Any, ...]:
    """Steps done plus the shadow's :meth:`~Snapshotting.state_key` (time left out)."""
    return (env.status.tobytes(), cast(Snapshotting, env.shadow).state_key())


RECENT_OPTIMA = 8  # earlier incidents' optima the oracle tries first on each incident


class OraclePolicy:
    """Replays, per incident, the branch-and-bound optimum found at reset."""

    name = "oracle"

    def __init__(self, max_nodes: int = ORACLE_NODES,
                 incumbent_plans: Sequence[Plan] = (), remember: bool = True) -> None:
        self.max_nodes = max_nodes
        self.incumbent_plans = list(incumbent_plans)
        # False: each incident searched as if alone, so a search the budget cuts short finds
        # the same plan whichever incidents came before it (in whichever Ray task)
        self.remember = remember
        self.results: list[OracleResult] = []
        self.last_info: dict[str, Any] = {}
        self._queue: list[int] = []
        self._recent: list[list[int]] = []

    def reset(self, env: RollbackEnv) -> None:
        from shadowrl.rl.policy import plan_actions

        incumbents = [plan_actions(env, p) for p in self.incumbent_plans]
        # the optima of earlier incidents often suit this one: as incumbents (upper bounds
        # only, so the search stays exact) they prune from the first node on
        if self.remember:
            incumbents += self._recent
        result = branch_and_bound(env, self.max_nodes, incumbents)
        if self.remember and result.actions not in self._recent:
            self._recent = [list(result.actions), *self._recent][:RECENT_OPTIMA]
        self.results.append(result)
        self.last_info = {"exact": result.exact, "nodes": result.nodes,
                          "bound": result.bound, "cost": result.cost}
        self._queue = list(result.actions)

    def act(self, env: RollbackEnv, obs: np.ndarray) -> int:
        return self._queue.pop(0)


# --------------------------------------------------------------------------- static plans


def plan_space_size(procedure: Procedure, limit: int = 10**9) -> int:
    """Number of static plans (orders x settings of the kept steps, per choice of optional
    steps), capped at ``limit``."""
    spaces = {s.name: len(setting_combinations(s)) for s in procedure.steps}
    total = 0
    for subset in _optional_subsets(procedure):
        kept = [s for s in procedure.steps if s.name in subset]
        settings = math.prod(spaces[s.name] for s in kept)
        for _ in linear_extensions(kept):
            total += settings
            if total > limit:
                return limit
    return total


def _optional_subsets(procedure: Procedure) -> Iterator[set[str]]:
    required = {s.name for s in procedure.steps if not s.optional}
    optional = [s.name for s in procedure.steps if s.optional]
    for mask in itertools.product([True, False], repeat=len(optional)):
        yield required | {n for n, keep in zip(optional, mask) if keep}


def all_plans(procedure: Procedure) -> Iterator[list[tuple[str, dict[str, Any] | None]]]:
    spaces = {s.name: setting_combinations(s) for s in procedure.steps}
    for subset in _optional_subsets(procedure):
        kept = [s for s in procedure.steps if s.name in subset]
        skipped = [(s.name, None) for s in procedure.steps if s.name not in subset]
        for order in linear_extensions(kept):
            for combo in itertools.product(*(spaces[n] for n in order)):
                yield [*zip(order, combo), *skipped]


@dataclass
class StaticSearchResult:
    plan: list[tuple[str, dict[str, Any] | None]]
    train_cost: float
    evaluated: int
    method: str  # exhaustive | optuna


def plan_cost(env: RollbackEnv, plan: Plan, seeds: Sequence[int],
              deviation: DeviationSimulator) -> float:
    costs = [episode_cost(rehearse(env.scenario, s, procedure=env.procedure, plan=plan,
                                   deviation=deviation), env) for s in seeds]
    return float(np.mean(costs))


MAX_TRIALS = 10_000  # best_static's budget: plans evaluated (optimize --trials)


def best_static(env: RollbackEnv, train_seeds: Sequence[int], *, trials: int = 150,
                exhaustive_limit: int = 400, seed: int = 0,
                on_trial: Callable[[int, int], None] | None = None) -> StaticSearchResult:
    """The static plan with the lowest mean cost over ``train_seeds``, from at most
    ``trials`` evaluated plans (exhaustive when the plan space fits in that budget)."""
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS:
        raise ValueError(f"trials must be a whole number in [1, {MAX_TRIALS}], got {trials!r}")
    proc = env.procedure
    deviation = env.deviation
    size = plan_space_size(proc, limit=exhaustive_limit + 1)
    configured = configured_plan(proc)
    if size <= exhaustive_limit and size < trials:  # + the configured plan, costed first
        best_plan, best_cost, n = configured, plan_cost(env, configured, train_seeds,
                                                        deviation), 0
        for plan in all_plans(proc):
            n += 1
            c = plan_cost(env, plan, train_seeds, deviation)
            if c < best_cost - 1e-12:
                best_plan, best_cost = plan, c
            if on_trial:
                on_trial(n, size)
        return StaticSearchResult(best_plan, best_cost, n, "exhaustive")
    found = _optuna_search(env, train_seeds, trials, seed, configured, on_trial)
    return local_search(env, train_seeds, found, max_evaluations=trials - found.evaluated)


def _neighbours(procedure: Procedure,
                plan: list[tuple[str, dict[str, Any] | None]]) -> Iterator[list[Any]]:
    """Plans one change away: another setting for one step, one step moved, one optional
    step kept or skipped. Only orders that respect ``after`` are produced."""
    spaces = {s.name: setting_combinations(s) for s in procedure.steps}
    for k, (name, settings) in enumerate(plan):
        if settings is None:
            continue
        for other in spaces[name]:
            if other != settings:
                yield [*plan[:k], (name, other), *plan[k + 1:]]
    kept = [(n, st) for n, st in plan if st is not None]
    skipped = [(n, st) for n, st in plan if st is None]
    for i in range(len(kept)):
        for j in range(len(kept)):
            if i == j:
                continue
            order = kept[:i] + kept[i + 1:]
            order.insert(j, kept[i])
            candidate = [*order, *skipped]
            try:
                validate_plan(procedure, candidate)
            except ValueError:
                continue
            yield candidate
    for k, (name, settings) in enumerate(plan):
        if procedure.step(name).optional:
            flipped = (name, None) if settings is not None else (name, spaces[name][0])
            candidate = [*plan[:k], *plan[k + 1:]]
            candidate = ([*candidate, flipped] if flipped[1] is None
                         else [flipped, *candidate])
            try:
                validate_plan(procedure, candidate)
            except ValueError:
                continue
            yield candidate


def local_search(env: RollbackEnv, train_seeds: Sequence[int], start: StaticSearchResult,
                 max_moves: int = 40, max_evaluations: int | None = None) -> StaticSearchResult:
    """First-improvement hill climbing from a search result over :func:`_neighbours`, until
    no neighbour is better (a local optimum), ``max_moves`` improvements were made or
    ``max_evaluations`` plans (None: no limit) were evaluated."""
    best_plan, best_cost = list(start.plan), start.train_cost
    evaluated = start.evaluated
    budget = start.evaluated + max_evaluations if max_evaluations is not None else None
    for _ in range(max_moves):
        improved = False
        for candidate in _neighbours(env.procedure, best_plan):
            if budget is not None and evaluated >= budget:
                break
            evaluated += 1
            cost = plan_cost(env, candidate, train_seeds, env.deviation)
            if cost < best_cost - 1e-9:
                best_plan, best_cost, improved = candidate, cost, True
                break
        if not improved:
            break
    return StaticSearchResult(best_plan, best_cost, evaluated, start.method + "+local")


def _optuna_search(env: RollbackEnv, train_seeds: Sequence[int], trials: int, seed: int,
                   configured: list[tuple[str, dict[str, Any] | None]],
                   on_trial: Callable[[int, int], None] | None) -> StaticSearchResult:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    proc = env.procedure
    spaces = {s.name: setting_combinations(s) for s in proc.steps}
    cache: dict[str, float] = {}

    def decode(params: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
        kept = [s for s in proc.steps if not s.optional or params.get(f"keep:{s.name}", True)]
        order = _priority_order(kept, {s.name: params[f"pos:{s.name}"] for s in kept})
        plan: list[tuple[str, dict[str, Any] | None]] = [
            (n, spaces[n][params[f"set:{n}"]]) for n in order]
        plan += [(s.name, None) for s in proc.steps if s not in kept]
        return plan

    def objective(trial: optuna.Trial) -> float:
        params: dict[str, Any] = {}
        for i, s in enumerate(proc.steps):
            params[f"pos:{s.name}"] = trial.suggest_float(f"pos:{s.name}", 0.0, 1.0)
            params[f"set:{s.name}"] = trial.suggest_categorical(
                f"set:{s.name}", list(range(len(spaces[s.name]))))
            if s.optional:
                params[f"keep:{s.name}"] = trial.suggest_categorical(f"keep:{s.name}",
                                                                     [True, False])
            del i
        plan = decode(params)
        key = repr(plan)
        if key not in cache:
            cache[key] = plan_cost(env, plan, train_seeds, env.deviation)
        trial.set_user_attr("plan", key)
        if on_trial:
            on_trial(trial.number + 1, trials)
        return cache[key]

    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    # start from the configured runbook, so the search can only improve on it
    first: dict[str, Any] = {}
    for k, (name, settings) in enumerate(configured):
        first[f"pos:{name}"] = k / max(1, len(configured) - 1)
        first[f"set:{name}"] = next(i for i, s in enumerate(spaces[name]) if s == settings)
        if proc.step(name).optional:
            first[f"keep:{name}"] = True
    study.enqueue_trial(first)
    study.optimize(objective, n_trials=trials)
    best_params = {**study.best_trial.params}
    return StaticSearchResult(decode(best_params), float(study.best_value), len(cache),
                              "optuna")


def _priority_order(steps: Sequence[Step], priority: dict[str, float]) -> list[str]:
    """Steps by ascending priority, a step waiting until its ``after`` steps are placed."""
    by_priority = sorted(steps, key=lambda s: (priority[s.name], s.name))
    return [s.name for s in order_steps(by_priority)]


def noop_steps(scenario: Scenario, plan: Plan, procedure: Procedure | None = None) -> list[str]:
    """The plan's steps that change nothing where they run: a ``scale`` to the replicas its
    service already has at that point (the deployment's count, or what an earlier scale step
    set; rollbacks put back every replica they take out). Shown as a step, such a step reads
    as a change that is none."""
    proc = procedure or scenario.procedure
    replicas = {s.name: s.replicas for s in scenario.deployment.services}
    out = []
    for name, settings in plan:
        if settings is None:
            continue
        step = proc.step(name)
        if step.action != "scale" or step.target not in replicas:
            continue
        wanted = int(settings.get("replicas", step.default_settings().get("replicas", 0)))
        if wanted == replicas[step.target]:
            out.append(name)
        replicas[step.target] = wanted
    return out


def plan_to_procedure(procedure: Procedure, plan: Plan, *, omit: Collection[str] = (),
                      name: str | None = None) -> Procedure:
    """A procedure listing the plan's steps in order with its settings as defaults, named
    ``name`` (default: the procedure's name + ``-optimized``).

    Skipped optional steps are left out (and dropped from other steps' ``after``); so are
    the steps in ``omit`` (e.g. :func:`noop_steps`), whose own ``after`` pass to the steps
    that came after them, so the order constraints still hold. Tunable choices are kept so
    the result can be optimised again.
    """
    skipped = {n for n, settings in plan if settings is None}
    omitted = set(omit)

    def inherited(deps: Sequence[str]) -> list[str]:
        out: list[str] = []
        for d in deps:
            for e in (inherited(procedure.step(d).after) if d in omitted else [d]):
                if e not in skipped and e not in out:
                    out.append(e)
        return out

    steps = []
    for step_name, settings in plan:
        if settings is None or step_name in omitted:
            continue
        step = procedure.step(step_name).model_copy(deep=True)
        new_settings = {}
        for key, tun in step.tunables().items():
            value = settings.get(key, tun.default)
            new_settings[key] = tun.model_copy(update={"default": value}) if tun.tunable \
                else tun.default
        step.settings = new_settings  # type: ignore[assignment]
        step.after = inherited(step.after)
        steps.append(step)
    return procedure.model_copy(update={
        "steps": steps, "name": name if name is not None else procedure.name + "-optimized"})


BUILTIN_POLICIES = ("configured", "random", "greedy", "oracle")


def builtin_policy(name: str, procedure: Procedure) -> Any:
    """The policies every command knows by name."""
    from shadowrl.rl.policy import RandomPolicy, StaticPolicy

    if name == "configured":
        return StaticPolicy(configured_plan(procedure), name="configured")
    if name == "random":
        return RandomPolicy(0)
    if name == "greedy":
        return GreedyPolicy()
    if name == "oracle":
        return OraclePolicy(incumbent_plans=[configured_plan(procedure)])
    raise KeyError(f"unknown policy {name!r} (built in: {', '.join(BUILTIN_POLICIES)})")

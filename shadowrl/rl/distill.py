"""Distillation: what the RL policy learned, as a runbook a person can read.

The RL policy is adaptive: it recognises the incident from what it sees and picks an order
and settings for it. A runbook keeps that adaptivity in a form engineers can read and
deployment tools can run: a shallow decision tree over what is observable at the breach
(rules firing, components' error rates, latency ratios, CPU and load ratios), whose leaves
are plans.

How (docs/runbooks.md, Distillation):

1. On training incidents (seeds apart from the held-out ones), observe the breach and
   record the plan the policy played; the oracle's per-incident optima on some of them and
   the best static plan are extra teachers. The distinct plans are the candidate leaves.
2. Every candidate is played on every training incident: a cost matrix.
3. A cost-sensitive tree is grown greedily (each leaf takes the plan with the least total
   cost on its incidents; a split is kept when it lowers that cost), for each depth up to
   ``max_depth``; the depth with the least 5-fold cross-validated cost wins (depth 0 is the
   single best plan among them), and is grown again on every incident.
4. The tree becomes a runbook: each leaf a branch whose conditions are its path, the last
   leaf the default.

The runbook is then measured on the held-out incidents against the policy, the best static
plan and the oracle, and its fidelity (agreement with the policy's plan) is reported. When
the policy does not beat the best static plan by more than its confidence interval, the
runbook is the best static procedure alone, and says so.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shadowrl.core.plan import Plan
from shadowrl.core.runbook import (
    EDGE,
    METRICS,
    Branch,
    Condition,
    Default,
    Runbook,
    RunbookMetadata,
)
from shadowrl.core.spec import Procedure, Scenario
from shadowrl.rl.env import RollbackEnv, replica_kwargs
from shadowrl.rl.evaluate import run_episode
from shadowrl.rl.policy import Policy, StaticPolicy, actions_to_plan, plan_actions
from shadowrl.rl.runbook_policy import RunbookPolicy, observe, procedure_plan
from shadowrl.rl.search import plan_to_procedure

TRAIN_OFFSET = 200_000  # training incidents are seeds eval_seed + this + i
MIN_LEAF = 4
MAX_LEAVES = 8
MAX_THRESHOLDS = 24
MAX_CANDIDATES = 16
FOLDS = 5


@dataclass(frozen=True)
class Feature:
    """One observable: a rule firing (0/1) or a component's metric."""

    kind: str  # rule, or one of the runbook's METRICS
    name: str  # rule or component name

    def condition(self, threshold: float, above: bool) -> Condition:
        if self.kind == "rule":
            return Condition(rule=self.name, firing=above)
        return Condition(component=self.name, metric=self.kind,  # type: ignore[arg-type]
                         **({"above": threshold} if above else {"at_most": threshold}))


def features_of(scenario: Scenario) -> list[Feature]:
    comps = [*scenario.components(), EDGE]
    return ([Feature("rule", r.name) for r in scenario.slo.rules]
            + [Feature(metric, c) for metric in METRICS for c in comps])


def feature_row(env: RollbackEnv, features: Sequence[Feature]) -> list[float]:
    seen = observe(env)
    row = []
    for f in features:
        if f.kind == "rule":
            row.append(1.0 if f.name in seen.firing else 0.0)
        else:
            row.append(float(seen.metric(f.kind).get(f.name, 0.0)))
    return row


# --------------------------------------------------------------------------- the tree


@dataclass
class Node:
    plan: int  # the leaf plan (also kept on inner nodes: their best single plan)
    cost: float  # total cost of ``plan`` on the node's incidents
    feature: int | None = None
    threshold: float = 0.0
    left: Node | None = None  # feature <= threshold
    right: Node | None = None  # feature > threshold

    def leaves(self) -> int:
        if self.left is None or self.right is None:
            return 1
        return self.left.leaves() + self.right.leaves()

    def depth(self) -> int:
        if self.left is None or self.right is None:
            return 0
        return 1 + max(self.left.depth(), self.right.depth())

    def choose(self, row: Sequence[float]) -> int:
        node = self
        while node.left is not None and node.right is not None and node.feature is not None:
            node = node.left if row[node.feature] <= node.threshold else node.right
        return node.plan


def _leaf(costs: np.ndarray) -> tuple[int, float]:
    totals = costs.sum(axis=0)
    best = int(np.argmin(totals))
    return best, float(totals[best])


def _thresholds(values: np.ndarray) -> list[float]:
    uniq = np.unique(values)
    if uniq.size < 2:
        return []
    mids = (uniq[:-1] + uniq[1:]) / 2.0
    if mids.size > MAX_THRESHOLDS:
        mids = np.quantile(mids, np.linspace(0, 1, MAX_THRESHOLDS))
    return sorted({_round(float(m)) for m in mids})


def _round(x: float) -> float:
    """Thresholds with 3 significant digits: what a person would write in a runbook."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, 2 - int(math.floor(math.log10(abs(x)))))


def grow(x: np.ndarray, costs: np.ndarray, max_depth: int, min_leaf: int = MIN_LEAF,
         max_leaves: int = MAX_LEAVES) -> Node:
    """A cost-sensitive tree: greedy best split per node, leaves = least-cost plans."""
    plan, cost = _leaf(costs)
    root = Node(plan, cost)
    frontier = [(root, np.arange(len(x)), 0)]
    while frontier:
        # split the node whose best split saves most first, so max_leaves keeps the best ones
        best: tuple[float, int, int, float, np.ndarray] | None = None
        for k, (node, idx, depth) in enumerate(frontier):
            if depth >= max_depth or len(idx) < 2 * min_leaf:
                continue
            found = _best_split(x[idx], costs[idx], node.cost, min_leaf)
            if found is not None and (best is None or found[0] > best[0]):
                best = (found[0], k, found[1], found[2], idx)
        if best is None or root.leaves() >= max_leaves:
            break
        _gain, k, feat, thr, idx = best
        node, _, depth = frontier.pop(k)
        mask = x[idx, feat] <= thr
        node.feature, node.threshold = feat, thr
        lp, lc = _leaf(costs[idx[mask]])
        rp, rc = _leaf(costs[idx[~mask]])
        node.left, node.right = Node(lp, lc), Node(rp, rc)
        frontier += [(node.left, idx[mask], depth + 1), (node.right, idx[~mask], depth + 1)]
    return _pruned(root)


def _best_split(x: np.ndarray, costs: np.ndarray, parent: float,
                min_leaf: int) -> tuple[float, int, float] | None:
    best: tuple[float, int, float] | None = None
    for f in range(x.shape[1]):
        for thr in _thresholds(x[:, f]):
            mask = x[:, f] <= thr
            n = int(mask.sum())
            if n < min_leaf or len(mask) - n < min_leaf:
                continue
            gain = parent - _leaf(costs[mask])[1] - _leaf(costs[~mask])[1]
            if gain > 1e-9 * max(1.0, abs(parent)) and (best is None or gain > best[0]):
                best = (gain, f, thr)
    return best


def _pruned(node: Node) -> Node:
    """Splits whose two sides play the same plan are no split."""
    if node.left is None or node.right is None:
        return node
    node.left, node.right = _pruned(node.left), _pruned(node.right)
    if (node.left.left is None and node.right.left is None
            and node.left.plan == node.right.plan):
        node.plan, node.feature, node.left, node.right = node.left.plan, None, None, None
    return node


# --------------------------------------------------------------------------- distillation


@dataclass
class Distilled:
    """The runbook and how it was chosen and how it did."""

    runbook: Runbook
    tree: Node
    depth: int
    leaves: int
    fallback: str | None  # why the runbook is the best static procedure alone, or None
    candidates: int
    train_incidents: int
    validation_cost: dict[int, float]  # mean cross-validated cost per depth tried
    heldout: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {"runbook": self.runbook.name, "depth": self.depth, "leaves": self.leaves,
                "branches": len(self.runbook.branches), "fallback": self.fallback,
                "candidates": self.candidates, "train_incidents": self.train_incidents,
                "cv_cost_by_depth": {str(k): round(v, 4)
                                     for k, v in self.validation_cost.items()},
                "heldout": self.heldout}


@dataclass
class Teachers:
    """What the runbook learns from: the RL policy (None: no RL), the best static plan, and
    the oracle's node budget for per-incident optima on some training incidents (0: none)."""

    policy: Policy | None
    best_static: Plan
    oracle_nodes: int = 300
    oracle_incidents: int = 24
    replicas: int = 1  # > 1: the oracle's searches and the cost matrix run as Ray tasks


def _plan_key(plan: Plan) -> tuple[Any, ...]:
    return tuple((name, None if s is None else tuple(sorted(s.items()))) for name, s in plan)


def collect(env: RollbackEnv, teachers: Teachers, seeds: Sequence[int],
            features: Sequence[Feature], tick: Callable[[], None] | None = None
            ) -> tuple[np.ndarray, list[Plan], list[int]]:
    """Breach observations, the candidate plans, and the policy's plan (an index into the
    candidates) per incident (-1 without a policy)."""
    rows: list[list[float]] = []
    plans: dict[tuple[Any, ...], Plan] = {}
    played: list[tuple[Any, ...] | None] = []
    counts: Counter[tuple[Any, ...]] = Counter()
    optima = oracle_plans(env, teachers, seeds[:teachers.oracle_incidents]
                          if teachers.oracle_nodes > 0 else [])
    for k, seed in enumerate(seeds):
        env.reset(seed=seed)
        rows.append(feature_row(env, features))
        if teachers.policy is not None:
            episode = run_episode(env, teachers.policy, seed)
            plan = actions_to_plan(env, episode.actions)
            key = _plan_key(plan)
            plans.setdefault(key, plan)
            counts[key] += 1
            played.append(key)
        else:
            played.append(None)
        if k < len(optima):
            plans.setdefault(_plan_key(optima[k]), optima[k])
            counts[_plan_key(optima[k])] += 0  # known, ranked after the policy's plans
        if tick is not None:
            tick()
    static_key = _plan_key(teachers.best_static)
    ranked = [static_key] + [k for k, _ in counts.most_common() if k != static_key]
    ranked += [k for k in plans if k not in ranked]
    plans.setdefault(static_key, list(teachers.best_static))
    keep = ranked[:MAX_CANDIDATES]
    index = {key: i for i, key in enumerate(keep)}
    return (np.asarray(rows, dtype=float), [plans[k] for k in keep],
            [index.get(p, -1) if p is not None else -1 for p in played])


def _contiguous(seeds: Sequence[int]) -> bool:
    """Ray's helpers take a first seed and a count."""
    return list(seeds) == list(range(seeds[0], seeds[0] + len(seeds)))


def oracle_plans(env: RollbackEnv, teachers: Teachers, seeds: Sequence[int]) -> list[Plan]:
    """The oracle's plan on each of ``seeds``, each searched alone from the best static
    plan within ``teachers.oracle_nodes`` nodes; as Ray tasks when ``teachers.replicas`` > 1
    and the seeds are contiguous (the same plans: each search is deterministic)."""
    from shadowrl.rl.search import OraclePolicy

    if not seeds:
        return []
    oracle = OraclePolicy(teachers.oracle_nodes, [teachers.best_static], remember=False)
    if teachers.replicas > 1 and _contiguous(seeds):
        from shadowrl.integrations.ray import parallel_evaluate

        episodes = parallel_evaluate(env.scenario, oracle, len(seeds), seeds[0],
                                     teachers.replicas, env_kwargs=replica_kwargs(env))
    else:
        episodes = [run_episode(env, oracle, seed) for seed in seeds]
    return [actions_to_plan(env, episode.actions) for episode in episodes]


def cost_matrix(env: RollbackEnv, plans: Sequence[Plan], seeds: Sequence[int],
                tick: Callable[[], None] | None = None, replicas: int = 1) -> np.ndarray:
    """Each plan's cost (columns) on each incident (rows), as Ray tasks when ``replicas`` > 1
    and the seeds are contiguous."""
    if replicas > 1 and seeds and _contiguous(seeds):
        from shadowrl.integrations.ray import parallel_plan_costs

        return np.array(parallel_plan_costs(env.scenario, plans, len(seeds), seeds[0],
                                            replicas, env_kwargs=replica_kwargs(env)),
                        dtype=float).reshape(len(seeds), len(plans))
    out = np.zeros((len(seeds), len(plans)))
    for j, plan in enumerate(plans):
        policy = StaticPolicy(plan, name=f"candidate-{j}")
        for i, seed in enumerate(seeds):
            out[i, j] = run_episode(env, policy, seed).cost
        if tick is not None:
            tick()
    return out


def distill(env: RollbackEnv, teachers: Teachers, *, eval_seed: int, train: int = 240,
            validation: int = 80, max_depth: int = 3, name: str | None = None,
            fallback: str | None = None,
            log: Callable[[str], None] = lambda _m: None) -> Distilled:
    """The runbook for ``env``'s scenario (see the module docstring). ``fallback`` (a
    reason) skips the tree: the runbook is the best static procedure alone."""
    scenario = env.scenario
    features = features_of(scenario)
    base = eval_seed + TRAIN_OFFSET
    train_seeds = list(range(base, base + train))
    val_seeds = list(range(base + train, base + train + validation))
    if fallback is not None:
        tree = Node(0, 0.0)
        book = to_runbook(scenario, env.procedure, tree, features, [teachers.best_static],
                          name=name, note=fallback)
        return Distilled(book, tree, 0, 1, fallback, 1, 0, {})
    log(f"distilling a runbook: observing {train + validation} incidents")
    x, plans, _played = collect(env, teachers, train_seeds + val_seeds, features)
    log(f"distilling a runbook: {len(plans)} candidate plans on {train + validation} "
        f"incidents")
    costs = cost_matrix(env, plans, train_seeds + val_seeds, replicas=teachers.replicas)
    by_depth = {depth: cross_validated(x, costs, depth) for depth in range(max_depth + 1)}
    best_depth = min(by_depth, key=lambda d: (round(by_depth[d], 9), d))
    # refit the chosen depth on every incident
    tree = grow(x, costs, best_depth)
    book = to_runbook(scenario, env.procedure, tree, features, plans, name=name)
    return Distilled(book, tree, tree.depth(), tree.leaves(), None, len(plans), len(x),
                     by_depth)


def cross_validated(x: np.ndarray, costs: np.ndarray, depth: int, folds: int = FOLDS) -> float:
    """Mean cost of trees of ``depth`` on incidents they were not grown on (k-fold): one
    held-out split of a few dozen incidents is too noisy to choose a depth by, incidents'
    costs vary far more than the plans' differences on them."""
    index = np.arange(len(x))
    chosen = np.zeros(len(x))
    for k in range(folds):
        test = index[k::folds]
        tree = grow(x[np.setdiff1d(index, test)], costs[np.setdiff1d(index, test)], depth)
        for i in test:
            chosen[i] = costs[i, tree.choose(x[i])]
    return float(chosen.mean())


# --------------------------------------------------------------------------- to a runbook


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "branch"


def _branch_name(cond: Condition) -> str:
    if cond.rule is not None:
        return _slug(f"{cond.rule}-{'firing' if cond.firing else 'quiet'}")
    metric = {"error_rate": "errors", "latency_ratio": "slow", "cpu": "cpu",
              "load_ratio": "load"}[str(cond.metric)]
    level = "high" if cond.above is not None else "low"
    return _slug(f"{cond.component}-{metric}-{level}")


def to_runbook(scenario: Scenario, procedure: Procedure, tree: Node,
               features: Sequence[Feature], plans: Sequence[Plan], *,
               name: str | None = None, note: str | None = None) -> Runbook:
    """Each leaf (left first) a branch with its path as conditions; the last the default."""
    paths: list[tuple[list[Condition], int]] = []

    def walk(node: Node, path: list[Condition]) -> None:
        if node.left is None or node.right is None or node.feature is None:
            paths.append((path, node.plan))
            return
        f = features[node.feature]
        walk(node.left, [*path, f.condition(node.threshold, above=False)])
        walk(node.right, [*path, f.condition(node.threshold, above=True)])

    walk(tree, [])
    book_name = name or f"{scenario.name}-runbook"
    branches: list[Branch] = []
    used: set[str] = set()
    for conds, plan_index in paths[:-1]:
        bname = _branch_name(conds[-1])
        k = 2
        while bname in used or bname == "default":
            bname, k = f"{_branch_name(conds[-1])}-{k}", k + 1
        used.add(bname)
        branches.append(Branch(name=bname, when=conds,
                               procedure=_procedure(scenario, procedure, plans[plan_index],
                                                    f"{book_name}-{bname}")))
    default = Default(procedure=_procedure(scenario, procedure, plans[paths[-1][1]],
                                           f"{book_name}-default"))
    description = note or (f"distilled from the RL policy: a decision tree of depth "
                           f"{tree.depth()} with {tree.leaves()} leaves")
    return Runbook.model_validate({
        "apiVersion": "shadowrl/v1", "kind": "Runbook",
        "metadata": RunbookMetadata(name=_slug(book_name)[:63], scenario=scenario.name,
                                    description=description).model_dump(exclude_none=True),
        "branches": [b.model_dump(by_alias=True) for b in branches],
        "default": default.model_dump(by_alias=True)})


def _procedure(scenario: Scenario, procedure: Procedure, plan: Plan, name: str) -> Procedure:
    return plan_to_procedure(procedure, plan, name=_slug(name)[:63])


# --------------------------------------------------------------------------- measuring


def heldout(env: RollbackEnv, book: Runbook, seeds: Sequence[int],
            policy_plans: Sequence[Plan] | None,
            costs: dict[str, Sequence[float]]) -> dict[str, Any]:
    """The runbook on the held-out incidents: its mean cost beside the others' (``costs``:
    method -> per-incident costs on the same seeds), the share of the policy's advantage
    over the best static plan it keeps, and its fidelity (same plan as the policy's)."""
    runbook = RunbookPolicy(book)
    mine: list[float] = []
    agree: list[bool] = []
    same_order: list[bool] = []
    branches: Counter[str] = Counter()
    for i, seed in enumerate(seeds):
        episode = run_episode(env, runbook, seed)
        mine.append(episode.cost)
        branches[runbook.branch] += 1
        if policy_plans is not None:
            chosen = procedure_plan(env.procedure, book.procedures()[runbook.branch])
            agree.append(plan_actions(env, chosen) == plan_actions(env, policy_plans[i]))
            same_order.append(_order(chosen) == _order(policy_plans[i]))
    out: dict[str, Any] = {"incidents": len(seeds),
                           "cost": {"runbook": round(float(np.mean(mine)), 4),
                                    **{k: round(float(np.mean(v)), 4)
                                       for k, v in costs.items()}},
                           "branches": dict(branches)}
    if policy_plans is not None:
        out["fidelity"] = round(float(np.mean(agree)), 4)
        out["order_fidelity"] = round(float(np.mean(same_order)), 4)
    if "rl" in costs and "best_static" in costs:
        adv = np.asarray(costs["best_static"]) - np.asarray(costs["rl"])
        mean, half = float(adv.mean()), _half_width(adv)
        out["rl_advantage"] = {"mean": round(mean, 4), "ci95": round(half, 4),
                               "significant": bool(mean - half > 0)}
        kept = np.asarray(costs["best_static"]) - np.asarray(mine)
        out["kept_share"] = round(float(kept.mean()) / mean, 4) if mean > 0 else None
    out["per_incident_cost"] = [round(c, 4) for c in mine]
    return out


def _order(plan: Plan) -> list[str]:
    """The steps a plan runs, in order (settings and skipped steps left out)."""
    return [name for name, settings in plan if settings is not None]


def _half_width(values: np.ndarray) -> float:
    if values.size < 2:
        return 0.0
    return float(1.96 * values.std(ddof=1) / math.sqrt(values.size))


def rl_beats_static(rl: Sequence[float], static: Sequence[float]) -> tuple[bool, str]:
    """Whether the policy beats the best static plan by more than the 95 % confidence
    interval of the paired difference, and the sentence that says so."""
    adv = np.asarray(static, dtype=float) - np.asarray(rl, dtype=float)
    mean, half = float(adv.mean()), _half_width(adv)
    if mean - half > 0:
        return True, (f"the RL policy beats the best static procedure by {mean:.4g} "
                      f"(95 % CI ±{half:.4g}) on {adv.size} held-out incidents")
    return False, (f"the RL policy does not beat the best static procedure by more than its "
                   f"confidence interval ({mean:.4g} ±{half:.4g} on {adv.size} held-out "
                   f"incidents): the runbook is the best static procedure alone")


# --------------------------------------------------------------------------- a run's runbook


def runbook_of_run(env: RollbackEnv, *, policy: Policy | None, best_plan: Plan,
                   eval_seed: int, costs: dict[str, Sequence[float]],
                   policy_plans: Sequence[Plan] | None, oracle_nodes: int = 300,
                   replicas: int = 1,
                   log: Callable[[str], None] = lambda _m: None) -> Distilled:
    """What ``optimize`` and ``train`` write as runbook.yaml: distilled from ``policy`` when
    it beats the best static plan (``costs``: method -> held-out per-incident costs), else
    the best static procedure alone; then measured on the same held-out incidents."""
    seeds = range(eval_seed, eval_seed + len(next(iter(costs.values()))))
    if policy is None:
        reason = "no RL policy in this run: the runbook is procedure.yaml's procedure alone"
    elif "rl" not in costs or "best_static" not in costs:
        reason = "no best static procedure to compare the RL policy with"
    else:
        beats, sentence = rl_beats_static(costs["rl"], costs["best_static"])
        reason = None if beats else sentence
        log(sentence)
    # as many training incidents as the evaluation is big (3x its held-out ones), within
    # 60..360: a short test run distills in seconds, a full one on enough incidents
    train = min(360, max(60, 3 * len(seeds)))
    result = distill(env, Teachers(policy, best_plan, oracle_nodes=oracle_nodes,
                                   replicas=replicas),
                     eval_seed=eval_seed, train=train, validation=train // 3,
                     fallback=reason, log=log)
    result.heldout = heldout(env, result.runbook, list(seeds), policy_plans, costs)
    return result


def runbook_yaml(result: Distilled, scenario: Scenario, command: str) -> str:
    """runbook.yaml: a header saying how it was made and how it did, then the runbook."""
    import yaml

    from shadowrl.core.runbook import runbook_to_data

    h = result.heldout
    cost = h.get("cost", {})
    others = ", ".join(f"{k} {v:g}" for k, v in cost.items() if k != "runbook")
    lines = [f"# shadowrl runbook '{result.runbook.name}' for scenario '{scenario.name}'",
             f"# made by `{command}`"]
    if result.fallback:
        lines.append(f"# {result.fallback}")
    else:
        lines.append(f"# distilled from the RL policy: a decision tree of depth {result.depth} "
                     f"with {result.leaves} leaves over {result.candidates} candidate plans, "
                     f"chosen by 5-fold cross-validated cost")
    if cost:
        lines.append(f"# held-out evaluation ({h['incidents']} incidents): mean cost runbook "
                     f"{cost['runbook']:g}; {others}")
    if h.get("fidelity") is not None:
        lines.append(f"# fidelity to the RL policy: the same plan on {h['fidelity']:.0%} of "
                     f"the incidents, the same steps in the same order on "
                     f"{h['order_fidelity']:.0%}")
    if h.get("kept_share") is not None:
        lines.append(f"# keeps {h['kept_share']:.0%} of the RL policy's advantage over the "
                     "best static procedure")
    lines.append("# use it with: shadowrl evaluate SCENARIO --policy THIS_FILE; export it with "
                 "shadowrl export THIS_FILE --format argo|shell|chaostoolkit|yaml")
    body = yaml.safe_dump(runbook_to_data(result.runbook), sort_keys=False,
                          default_flow_style=None, width=100)
    return "\n".join(lines) + "\n" + body

"""What the Rollback Optimization Engine reports (``optimize --json`` and its
``summary.json``), as typed models; importable without the RL dependencies."""

from __future__ import annotations

from typing import Any

from shadowrl.analysis.summary import EvaluationSummary, ResultModel
from shadowrl.rehearsal.verification import Verification


class SearchInfo(ResultModel):
    """How the best static procedure was found: the search (``+advice`` when a change the
    bottleneck advice proposed measured better and was adopted), the plans it evaluated
    (at most ``--trials``), their best cost on the search incidents, and the plans measured
    to check the bottleneck advice (outside that budget)."""

    omit_when_empty = frozenset({"advice_plans"})
    train_s: float
    search: str  # exhaustive | optuna, maybe +local, maybe +advice
    plans: int
    train_cost: float
    advice_plans: int = 0


class RlInfo(ResultModel):
    """The RL policy: a given ``policy`` file, or the training that produced one."""

    omit_when_empty = frozenset({"policy", "agent", "train_s", "timesteps", "algorithm",
                                 "policy_timesteps", "validation_cost"})
    policy: str | None = None
    agent: str | None = None  # the agent config the policy was trained with
    train_s: float | None = None
    timesteps: int | None = None
    algorithm: str | None = None
    # the training's best evaluated checkpoint (the final one included) is the policy kept:
    # its timesteps and mean cost on the training's own evaluation seeds
    policy_timesteps: int | None = None
    validation_cost: float | None = None


ORACLE_NODES = 20_000  # the oracle's default node budget per incident (optimize --oracle-nodes)


class OracleInfo(ResultModel):
    """The per-incident branch-and-bound searches."""

    exact: int  # incidents whose search proved its optimum (episodes.json: which ones)
    max_nodes: int  # the node budget per incident
    mean_nodes: float
    median_nodes: float = 0.0
    most_nodes: int = 0  # the most one incident's search took
    # over the incidents it could not finish: the mean proven lower bound's gap to the best
    # found, as a share of the best found (0: every search finished)
    mean_gap: float = 0.0
    max_gap: float = 0.0


class OptimizeResult(ResultModel):
    """What ``optimize`` returns and writes to ``summary.json`` (``optimize --json``)."""

    omit_when_empty = frozenset({"search", "rl", "oracle", "verification",
                                 "verification_file", "runbook", "runbook_summary"})
    scenario: str
    episodes: int
    eval_seed: int
    methods: dict[str, EvaluationSummary]
    procedure: str
    policy: str | None
    bottlenecks: str
    comparison: str
    episodes_file: str  # episodes.json: every method's per-incident results
    objective: str  # budget | downtime: what every method minimised
    timing_s: dict[str, float]  # per method: its search or training plus its evaluation
    # wall seconds per phase in order (baselines, best_static, rl, oracle: after the training
    # when it ran beside it, verify, runbook) and the whole run up to summary.json (total)
    phases_s: dict[str, float] = {}
    search: SearchInfo | None = None
    rl: RlInfo | None = None
    oracle: OracleInfo | None = None
    verification: Verification | None = None  # procedure.yaml on a real backend (--verify)
    verification_file: str | None = None  # verification.json
    runbook: str | None = None  # runbook.yaml: the policy distilled (docs/runbooks.md)
    runbook_summary: dict[str, Any] | None = None  # how it was made and did (runbook.json)

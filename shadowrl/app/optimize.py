"""Use case ``optimize``: find better rollback procedures and compare every method on the same
held-out incidents (the engine is ``shadowrl.rl.optimizer``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from shadowrl.app.common import (
    LogFn,
    ProgressFn,
    check_backend_ready,
    check_objective,
    check_verify,
    ray_context,
    with_params,
)
from shadowrl.app.errors import UsageError
from shadowrl.core.spec import load_scenario
from shadowrl.rehearsal.verification import MAX_VERIFY_RUNS
from shadowrl.rl.results import ORACLE_NODES, OptimizeResult


class OptimizeRequest(BaseModel):
    file: Path
    params: Path | None = None  # simulator parameters (--params); over simulator.params
    method: str = "all"  # search | rl | all
    agent: Path | None = None  # agent config YAML; default the scenario's optimizer.agent,
    # else agents/maskable_ppo.yaml
    timesteps: int | None = Field(default=None, ge=1)  # RL training timesteps
    replicas: int = Field(default=1, ge=1)  # parallel shadow replicas (Ray)
    ray_address: str | None = None  # a Ray cluster to join (default: RAY_ADDRESS or local)
    seed: int = 0  # for search and training
    out: Path = Path("out/optimize")
    episodes: int = Field(default=100, ge=1)  # held-out incidents per method
    eval_seed: int = 10000  # first held-out seed
    trials: int = Field(default=150, ge=1)  # best-static search trials
    oracle_nodes: int = Field(default=ORACLE_NODES, ge=1)  # oracle node budget per incident
    objective: str = "budget"  # budget | downtime: what every method minimises
    full_outage_penalty: float = Field(default=0.0, ge=0)  # cost per second of full outage
    command: str | None = None  # recorded in procedure.yaml; default: the equivalent command
    verify: str = "none"  # docker | none: verify procedure.yaml on a real shadow first
    verify_runs: int = Field(default=3, ge=1, le=MAX_VERIFY_RUNS)  # its held-out incidents


def optimize(request: OptimizeRequest, *, on_progress: ProgressFn | None = None,
             on_log: LogFn | None = None) -> OptimizeResult:
    """Writes procedure.yaml, policy.zip (with RL), bottlenecks.json, comparison.md,
    episodes.json, summary.json (and with ``verify``, verification.json) to ``request.out``.
    Raises SpecError for a bad scenario or agent file, UsageError for an unknown method or
    verify backend, BackendUnavailable (before any search) when the verify backend cannot
    run. A verification that fails is no error: the result records it (``passed``)."""
    from shadowrl.rl.optimizer import OptimizeOptions, agent_for, methods_for
    from shadowrl.rl.optimizer import optimize as run_optimizer

    check_objective(request.objective)
    backend = check_verify(request.verify)
    if backend is not None and request.verify_runs > request.episodes:
        raise UsageError(f"--verify-runs {request.verify_runs} is more than --episodes "
                         f"{request.episodes}: the verification rehearses the first held-out "
                         f"incidents, which the comparison also measured")
    sc = with_params(load_scenario(request.file), request.params)
    try:
        methods = methods_for(request.method)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if "rl" in methods:  # the agent config RL will train, checked before any work
        from shadowrl.rl.agents import load_agent_config

        load_agent_config(agent_for(sc, request.agent))
    if backend is not None:
        check_backend_ready(backend, sc, on_log)
    opts = OptimizeOptions(method=request.method, agent=request.agent,
                           timesteps=request.timesteps, replicas=request.replicas,
                           seed=request.seed, episodes=request.episodes,
                           eval_seed=request.eval_seed, search_trials=request.trials,
                           oracle_nodes=request.oracle_nodes, ray_address=request.ray_address,
                           objective=request.objective,
                           full_outage_penalty=request.full_outage_penalty,
                           verify_backend=backend, verify_runs=request.verify_runs)
    command = request.command or f"shadowrl optimize {request.file}"
    with ray_context(request.replicas, request.ray_address):
        return run_optimizer(sc, request.out, opts, command, log=on_log or (lambda _m: None),
                             progress=on_progress)

"""Use case ``evaluate``: measure a policy on fixed incidents. Episode ``i`` uses seed
``seed + i``, so every policy evaluated with the same seed faces the same incidents."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from shadowrl.analysis.summary import EvaluationSummary, summarize, with_cost
from shadowrl.app.common import (
    ProgressFn,
    check_objective,
    counting,
    procedure_for,
    ray_context,
    with_params,
)
from shadowrl.app.errors import UsageError
from shadowrl.core.errors import naming
from shadowrl.core.spec import Procedure, Scenario, load_scenario

POLICY_HELP = ("configured, random, greedy, oracle, a procedure .yaml, a policy .zip or "
               "models:/NAME@ALIAS")


class EvaluateRequest(BaseModel):
    file: Path
    params: Path | None = None  # simulator parameters (--params); over simulator.params
    policy: str  # configured | random | greedy | oracle | PROC.yaml | RUNBOOK.yaml | POLICY.zip
    #              | models:/...
    episodes: int = Field(default=100, ge=1)
    seed: int = 10000
    replicas: int = Field(default=1, ge=1)  # parallel shadow replicas (Ray)
    ray_address: str | None = None  # a Ray cluster to join (default: RAY_ADDRESS or local)
    objective: str = "budget"  # budget | downtime: what the reported cost measures
    full_outage_penalty: float = Field(default=0.0, ge=0)  # cost per second of full outage
    backend: Literal["sim", "docker"] = "sim"  # the shadow: simulated, or real containers


def resolve_policy(spec: str, scenario: Scenario) -> tuple[Any, Procedure | None]:
    """The policy ``spec`` names, and the procedure it brings (a procedure file's).

    A YAML file is a procedure file or a scenario file; either way the policy runs its
    procedure as configured (a scenario file's is its ``procedure:``, so ``--policy
    envs/checkout.yaml`` on checkout is ``--policy configured``), checked against ``scenario``
    with file:line errors.

    A runbook file (``kind: Runbook``, docs/runbooks.md) is checked against ``scenario`` the
    same way and plays as a :class:`RunbookPolicy`: the branch is chosen from what is seen
    at the breach, then its procedure runs. It brings no procedure: the environment keeps
    the scenario's, whose steps every branch's procedure orders, sets or skips (so the
    scenario's ``verify`` and ``budget`` apply)."""
    from shadowrl.rl.search import BUILTIN_POLICIES, builtin_policy

    if spec in BUILTIN_POLICIES:
        return builtin_policy(spec, scenario.procedure), None
    if spec.startswith("models:/"):
        from shadowrl.integrations.mlflow import load_registered_policy

        try:
            return load_registered_policy(spec), None
        except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; all are bad input
            raise UsageError(naming(spec, exc)) from None
    path = Path(spec)
    if not path.exists():
        raise UsageError(f"{spec}: no such policy (use {POLICY_HELP})")
    if path.suffix == ".zip":
        from shadowrl.rl.agents import load_policy

        try:
            return load_policy(path, name=path.name), None
        except Exception as exc:  # noqa: BLE001 - any load failure is a bad input file
            raise UsageError(f"{path}: cannot load policy: {exc}") from None
    from shadowrl.core.runbook import is_runbook_file

    if is_runbook_file(path):
        from shadowrl.core.runbook import load_runbook
        from shadowrl.rl.runbook_policy import RunbookPolicy

        return RunbookPolicy(load_runbook(path, scenario), name=str(path)), None
    from shadowrl.core.plan import configured_plan
    from shadowrl.rl.policy import StaticPolicy

    proc = procedure_for(path, scenario)
    return StaticPolicy(configured_plan(proc), name=str(path)), proc


def evaluate(request: EvaluateRequest, *,
             on_progress: ProgressFn | None = None) -> EvaluationSummary:
    """Raises SpecError for a bad scenario or procedure file, UsageError for a policy that
    cannot be found, loaded or run on this scenario."""
    from shadowrl.rl.env import RollbackEnv

    check_objective(request.objective)
    sc = with_params(load_scenario(request.file), request.params)
    policy, proc = resolve_policy(request.policy, sc)
    objective = {"objective": request.objective,
                 "full_outage_penalty": request.full_outage_penalty}
    env = RollbackEnv(sc, procedure=proc, backend=request.backend, **objective)
    on_episode = counting(on_progress, request.episodes, f"evaluating {policy.name}")
    try:
        with ray_context(request.replicas, request.ray_address):
            if request.replicas > 1:
                episodes = _fanned_out(request, sc, policy, proc, on_episode, objective)
            else:
                from shadowrl.rl.evaluate import evaluate as run_episodes

                episodes = run_episodes(env, policy, request.episodes, request.seed,
                                        on_episode)
    except (KeyError, ValueError) as exc:
        raise UsageError(f"{request.policy}: does not fit {request.file}: {exc}") from None
    summary = summarize(sc.name, request.policy, [e.rehearsal for e in episodes])
    return with_cost(summary, round(sum(e.cost for e in episodes) / len(episodes), 4))


def _fanned_out(request: EvaluateRequest, sc: Scenario, policy: Any, proc: Procedure | None,
                on_episode: Callable[[int], None] | None,
                objective: dict[str, Any]) -> list[Any]:
    """The episodes as Ray tasks; built-in names and ``.zip`` files travel as the spec, so
    each task builds or loads its own policy."""
    from shadowrl.integrations.ray import parallel_evaluate
    from shadowrl.rl.search import BUILTIN_POLICIES

    spec = request.policy
    shipped = spec if (spec in BUILTIN_POLICIES or spec.endswith(".zip")) else policy
    return parallel_evaluate(sc, shipped, request.episodes, request.seed, request.replicas,
                             env_kwargs={**({"procedure": proc} if proc else {}),
                                         "backend": request.backend, **objective},
                             on_episode=on_episode)

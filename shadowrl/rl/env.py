"""RollbackEnv: choosing rollback steps and settings as a Gymnasium environment."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from shadowrl.core.extras import missing_extra

try:
    import gymnasium as gym
    from gymnasium import spaces
except ImportError as exc:  # every RL module builds on this env: name the extra once, here
    raise missing_extra("rl", exc) from exc

from shadowrl.core.injection import Injection
from shadowrl.core.plan import describe_settings, setting_combinations
from shadowrl.core.results import Breach, Metrics, Span, StepResult
from shadowrl.core.spec import Procedure, Scenario, Step, as_scenario
from shadowrl.rehearsal.deviation import DeviationSimulator
from shadowrl.rehearsal.runner import Rehearsal, error_budget, finish, start_incident
from shadowrl.shadow import make_backend
from shadowrl.shadow.base import CostWeights

OBS_CAP = 10.0
OBJECTIVES = ("budget", "downtime")


class RollbackEnv(gym.Env[np.ndarray, int]):
    """
    ## Description

    One episode is one incident in a shadow of the deployment. ``reset`` launches the shadow,
    injects an incident drawn by the deviation simulator and runs until an SLO rule breaches.
    Each action then runs the next rollback step, with chosen settings, inside the shadow.
    The episode ends when every required step has run (optional ones run or skipped) and
    verification has passed or timed out, or early when a step fails.

    ## Action Space

    ``Discrete(n)`` over (step, settings) pairs: every combination of each step's tunable
    setting choices, plus one "skip" action per optional step. :meth:`action_masks` marks the
    valid ones (step not yet done, its ``after`` steps done); MaskablePPO uses it. A masked
    action is not executed: it costs ``invalid_penalty`` and the state does not change.

    ## Observation Space

    ``Box(0, 10, (d,), float32)``: for each component its error rate, p99 latency relative to
    healthy, CPU and load relative to healthy; the same for the edge; which SLO rules are
    failing; the incident's visible signature (error rate and latency ratio per component at
    the breach); which steps are done or skipped; time since the breach over the timeout. The
    hidden cause of the incident is never observed.

    ## Rewards

    Minus the cost each step caused; the last step also pays for the verification period. The
    ``objective`` says what a cost is:

    - ``budget`` (default): the error budget the step burned, in percent of the SLO
      objective's budget for its window (``slo.objective``: bad requests, i.e. failed or
      slower than the latency threshold, over ``(1 - target)`` x the window's requests). A
      second of full outage costs as much as the share of users it fails, so a partial
      degradation is cheaper than taking everything down at once.
    - ``downtime``: minutes of downtime (any SLO rule violated) plus
      ``failed_request_weight`` x failed requests / healthy edge rps (as minutes of full
      outage).

    ``full_outage_penalty`` adds that much cost (in the objective's unit) per second in which
    the edge error rate is at a full outage's level (>= 99 %): a team's extra dislike of total
    outages. A failed step costs ``failed_step_penalty`` more. Costs only accumulate.

    ## Episode End

    Terminated when all steps are done or skipped (after verification), or when a step
    fails. Truncated after ``max_actions`` actions (only reachable by repeated masked actions).

    ## Arguments

    ``scenario`` (path or :class:`Scenario`), ``procedure`` (default: the scenario's),
    ``backend`` (``"sim"``), ``incident`` (fix the incident; default drawn by weight),
    ``objective`` (``"budget"`` or ``"downtime"``), ``full_outage_penalty`` (0.0 per second),
    ``failed_request_weight`` (0.5, downtime objective), ``failed_step_penalty`` (10.0),
    ``invalid_penalty`` (1.0), ``history`` (a deviation history model), ``at`` (``now``/``peak``),
    ``record_profile`` (attach per-second profiles to the terminal ``info["rehearsal"]``).
    ``reset(seed=s)`` makes episode seed ``s``: the same incident as ``shadowrl simulate
    --seed s``.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, scenario: str | Path | Scenario, procedure: Procedure | None = None,
                 backend: str = "sim", incident: str | None = None,
                 failed_request_weight: float = 0.5, failed_step_penalty: float = 10.0,
                 invalid_penalty: float = 1.0, history: Any = None, at: str = "now",
                 render_mode: str | None = None, record_profile: bool = False,
                 objective: str = "budget", full_outage_penalty: float = 0.0) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got "
                             f"{objective!r}")
        if not (math.isfinite(full_outage_penalty) and full_outage_penalty >= 0):
            raise ValueError(f"full_outage_penalty must be a number >= 0, got "
                             f"{full_outage_penalty!r}")
        self.objective = objective
        self.full_outage_penalty = float(full_outage_penalty)
        self.scenario = as_scenario(scenario)
        self.error_budget = error_budget(self.scenario)
        self.procedure = procedure or self.scenario.procedure
        self.deviation = DeviationSimulator(self.scenario, history=history, at=at)  # type: ignore[arg-type]
        self.record_profile = record_profile
        self.shadow = make_backend(backend, self.scenario, pattern=self.deviation.load_pattern(),
                                   record_profile=record_profile)
        self.incident = incident
        self.failed_request_weight = failed_request_weight
        self.failed_step_penalty = failed_step_penalty
        self.invalid_penalty = invalid_penalty
        self.render_mode = render_mode
        self.steps: list[Step] = list(self.procedure.steps)
        self.step_index = {s.name: i for i, s in enumerate(self.steps)}
        self.actions: list[tuple[int, dict[str, Any] | None]] = []
        for i, step in enumerate(self.steps):
            self.actions += [(i, settings) for settings in setting_combinations(step)]
            if step.optional:
                self.actions.append((i, None))
        self._after = [[self.step_index[d] for d in s.after] for s in self.steps]
        self._action_step = np.array([i for i, _ in self.actions])
        self.action_space = spaces.Discrete(len(self.actions))
        n_comp = len(self.shadow.topo.names)  # type: ignore[attr-defined]
        n_obs = 4 * n_comp + 4 + len(self.scenario.slo.rules) + 2 * n_comp + 2 * len(
            self.steps) + 1
        self.observation_space = spaces.Box(0.0, OBS_CAP, (n_obs,), np.float32)
        self.max_actions = 4 * len(self.steps) + 4
        self._healthy: Metrics | None = None
        self._healthy_rps = 1.0
        self._mask_cache: dict[tuple[Any, ...], np.ndarray] = {}
        self._obs_ref: tuple[Any, ...] | None = None  # healthy yardsticks, flattened
        self._sig_clean: tuple[np.ndarray, list[float]] | None = None
        # search methods branch through thousands of steps whose observations nobody reads:
        # they turn this off (see :meth:`searching`) and steps return a zero observation
        self.observing = True
        self._reset_state()
        self.healthy_metrics()  # the yardstick of observations and of the cost

    # ------------------------------------------------------------------ helpers

    def _reset_state(self) -> None:
        self.status = np.zeros(len(self.steps), dtype=np.int8)  # 0 todo, 1 done, 2 skipped
        self.results: list[StepResult] = []
        self.injection: Injection | None = None
        self.breach: Breach | None = None
        self.signature = np.zeros(0, dtype=np.float32)
        self.n_actions = 0
        self.failed = False
        self.rehearsal: Rehearsal | None = None

    def healthy_metrics(self) -> Metrics:
        """Metrics of the healthy deployment at nominal load: the yardstick of observations,
        of the cost and of incident signatures (the MLflow model matches against it)."""
        if self._healthy is None:
            self.shadow.launch(0)
            self._healthy = self.shadow.sample()
            self._healthy_rps = max(self._healthy.edge.rps, 1e-6)
        return self._healthy

    def action_masks(self) -> np.ndarray:
        """Valid actions: step not done, its ``after`` steps done or skipped."""
        return self._mask().copy()

    def _mask(self) -> np.ndarray:
        """:meth:`action_masks` without the copy, memoised by the step statuses (do not
        modify the returned array)."""
        key = (*self.status.tolist(), self.failed or self.rehearsal is not None)
        mask = self._mask_cache.get(key)
        if mask is None:
            if key[-1]:
                mask = np.zeros(len(self.actions), dtype=bool)
            else:
                status = key[:-1]
                open_steps = np.array([status[i] == 0 and all(status[d] for d in after)
                                       for i, after in enumerate(self._after)], dtype=bool)
                mask = open_steps[self._action_step]
            if len(self._mask_cache) >= 4096:
                self._mask_cache.clear()
            self._mask_cache[key] = mask
        return mask

    def describe(self, action: int) -> str:
        i, settings = self.actions[action]
        if settings is None:
            return f"skip {self.steps[i].name}"
        return f"{self.steps[i].name}({describe_settings(settings)})"

    def _observe(self) -> np.ndarray:
        if not self.observing:
            return np.zeros(self.observation_space.shape, dtype=np.float32)
        return self._observation()

    def _observation(self) -> np.ndarray:
        # Same values as clip(nan_to_num(float32(parts), nan=0, posinf=CAP), 0, CAP), with the
        # clamp done on Python floats (NaN and negatives -> 0, above CAP and +inf -> CAP):
        # clamping before or after the float32 cast gives the same float32.
        healthy = self.healthy_metrics()
        ref = self._obs_ref
        if ref is None or ref[0] is not healthy:
            ref = self._obs_ref = (healthy, {name: (h.latency_p99_ms, h.rps) for name, h in
                                             healthy.components.items()},
                                   [r.name for r in self.scenario.slo.rules])
        m = self.shadow.sample()
        href = ref[1]
        parts: list[float] = []
        for name, c in m.components.items():
            h_p99, h_rps = href[name]
            parts += (c.error_rate, healthy_ratio(c.latency_p99_ms, h_p99), c.cpu,
                      healthy_ratio(c.rps, h_rps))
        e = m.edge
        parts += (e.error_rate, healthy_ratio(e.latency_p99_ms, healthy.edge.latency_p99_ms),
                  e.cpu, healthy_ratio(e.rps, healthy.edge.rps))
        failing = m.failing_rules
        parts += [1.0 if name in failing else 0.0 for name in ref[2]]
        sig = self._sig_clean
        if sig is None or sig[0] is not self.signature:
            sig = self._sig_clean = (self.signature, _clamp(self.signature.tolist()))
        parts += sig[1]
        status = self.status.tolist()
        parts += [1.0 if s == 1 else 0.0 for s in status]
        parts += [1.0 if s == 2 else 0.0 for s in status]
        parts.append(self._elapsed())
        return np.array(_clamp(parts), dtype=np.float32)

    def _elapsed(self) -> float:
        if self.breach is None:
            return 0.0
        return (self.shadow.now() - self.breach.at_s) / self.procedure.verify.timeout

    def _signature(self) -> np.ndarray:
        healthy = self.healthy_metrics()
        m = self.shadow.sample()
        sig: list[float] = []
        for name, c in m.components.items():
            sig += [c.error_rate, healthy_ratio(c.latency_p99_ms,
                                                healthy.components[name].latency_p99_ms)]
        return np.asarray(sig, dtype=np.float32)

    def _cost(self, span: Span) -> float:
        return self.cost(span.downtime_s, span.failed_requests, span.bad, span.outage_s)

    def cost(self, downtime_s: float, failed_requests: float, bad_requests: float,
             outage_s: float = 0.0) -> float:
        """The objective (see Rewards): percent of the error budget ``bad_requests`` burn, or
        :meth:`cost_of` in minutes; plus ``full_outage_penalty`` x ``outage_s``."""
        if self.objective == "budget":
            base = 100.0 * bad_requests / self.error_budget if self.error_budget > 0 else 0.0
        else:
            base = self.cost_of(downtime_s, failed_requests)
        return base + self.full_outage_penalty * outage_s

    def cost_weights(self) -> CostWeights:
        """:meth:`cost` as weights, for a backend that stops a branch once it costs too much
        (:class:`~shadowrl.shadow.base.CostCapping`)."""
        outage = self.full_outage_penalty
        if self.objective == "budget":
            bad = 100.0 / self.error_budget if self.error_budget > 0 else 0.0
            return CostWeights(bad_requests=bad, outage_s=outage)
        return CostWeights(downtime_s=1.0 / 60.0,
                           failed_requests=self.failed_request_weight / self._healthy_rps / 60.0,
                           outage_s=outage)

    def cost_of(self, downtime_s: float, failed_requests: float) -> float:
        """The ``downtime`` objective in minutes: downtime plus weighted failed requests, the
        latter as seconds of full outage at the healthy edge rate."""
        return (downtime_s + self.failed_request_weight * failed_requests
                / self._healthy_rps) / 60.0

    def rehearsal_cost(self, r: Rehearsal) -> float:
        """The objective of a finished rehearsal: minus the return of the episode that
        produced it (a failed step adds ``failed_step_penalty``)."""
        cost = self.cost(r.downtime_s, r.failed_requests, r.bad_requests, r.outage_s)
        if any(s.stopped for s in r.steps):
            cost += self.failed_step_penalty
        return cost

    # ------------------------------------------------------------------ gym API

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        episode_seed = seed if seed is not None else int(self.np_random.integers(2**31 - 1))
        self.healthy_metrics()
        self._reset_state()
        incident = (options or {}).get("incident", self.incident)
        self.injection, self.breach = start_incident(self.shadow, self.deviation, episode_seed,
                                                     incident)
        self.episode_seed = episode_seed
        self.signature = self._signature()
        info = {"incident": self.injection.incident, "breach_at_s": self.breach.at_s,
                "episode_seed": episode_seed}
        return self._observe(), info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.breach is None:
            raise RuntimeError("call reset() before step()")
        self.n_actions += 1
        action = int(action)
        mask = self._mask()
        info: dict[str, Any] = {}
        if not (0 <= action < len(self.actions)) or not mask[action]:
            truncated = self.n_actions >= self.max_actions
            info["invalid_action"] = True
            return self._observe(), -self.invalid_penalty, False, truncated, info
        i, settings = self.actions[action]
        step = self.steps[i]
        if settings is None:
            self.status[i] = 2
            t = self.shadow.now()
            self.results.append(StepResult(step.name, step.action, "skipped", {}, Span(t, t),
                                           "optional step skipped"))
            reward = 0.0
        else:
            result = self.shadow.run_step(step, settings, timeout_s=step.timeout)
            self.results.append(result)
            self.status[i] = 1
            reward = -self._cost(result.span)
            if result.stopped:
                self.failed = True
                reward -= self.failed_step_penalty
        info["step"] = self.results[-1].name
        all_done = 0 not in self.status.tolist()  # every step done or skipped
        if all_done or self.failed:
            before = self.shadow.now()
            verify_cost_span = self._finish()
            reward -= self._cost(verify_cost_span)
            info["verify_s"] = self.shadow.now() - before
            assert self.rehearsal is not None
            info["rehearsal"] = self.rehearsal
            info["outcome"] = self.rehearsal.outcome
            info["downtime_s"] = self.rehearsal.downtime_s
            info["budget_burn"] = self.rehearsal.budget_burn
            return self._observe(), float(reward), True, False, info
        return self._observe(), float(reward), False, False, info

    def _finish(self) -> Span:
        """Skip what is left (after a failure), verify, and judge the rehearsal."""
        for i, step in enumerate(self.steps):
            if self.status[i] == 0:
                self.status[i] = 2
                t = self.shadow.now()
                self.results.append(StepResult(step.name, step.action, "skipped", {},
                                               Span(t, t), "skipped after a failed step"))
        assert self.injection is not None and self.breach is not None
        steps = Span(0.0, 0.0)
        for r in self.results:
            steps.downtime_s += r.span.downtime_s
            steps.failed_requests += r.span.failed_requests
            steps.bad_requests += r.span.bad
            steps.outage_s += r.span.outage_s
        self.rehearsal = rh = finish(self.scenario, self.procedure, self.shadow,
                                     self.episode_seed, self.injection, self.breach,
                                     self.results)
        if self.record_profile:
            rh.profile = getattr(self.shadow, "profile", None)
        # what verification added: the rehearsal's totals less the steps'
        return Span(0.0, 0.0, rh.downtime_s - steps.downtime_s,
                    rh.failed_requests - steps.failed_requests,
                    bad_requests=rh.bad_requests - steps.bad_requests,
                    outage_s=rh.outage_s - steps.outage_s)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        m = self.shadow.sample()
        done = [r.name + ("" if r.status == "ok" else f" ({r.status})") for r in self.results]
        return (f"t={m.at_s:.0f}s edge err={m.edge.error_rate:.4f} "
                f"p99={m.edge.latency_p99_ms:.0f}ms failing={list(m.failing_rules)} "
                f"steps={done}")

    def close(self) -> None:
        """Close the shadow backend (idempotent, like the backend's ``close``)."""
        self.shadow.close()
        super().close()


def objective_kwargs(env: RollbackEnv) -> dict[str, Any]:
    """The env's objective as :class:`RollbackEnv` keyword arguments."""
    return {"objective": env.objective, "full_outage_penalty": env.full_outage_penalty}


def replica_kwargs(env: RollbackEnv) -> dict[str, Any]:
    """The keyword arguments that rebuild ``env`` in a Ray task: its procedure and objective
    (a replica measures the same thing as the env it stands in for)."""
    return {"procedure": env.procedure, **objective_kwargs(env)}


def _clamp(values: list[float]) -> list[float]:
    """NaN and negatives to 0, above ``OBS_CAP`` (and +inf) to ``OBS_CAP``."""
    return [(v if v < OBS_CAP else OBS_CAP) if v > 0.0 else 0.0 for v in values]


def healthy_ratio(value: float, healthy: float) -> float:
    """``value`` relative to its healthy level, as observed: 0 without a healthy level,
    ``OBS_CAP`` when not finite."""
    if healthy <= 0:
        return 0.0
    r = value / healthy
    return r if math.isfinite(r) else OBS_CAP

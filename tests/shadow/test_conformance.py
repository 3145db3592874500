"""The backend contract: every shadow backend passes this suite.

It is parametrised over backend factories: the simulator, the simulator behind the
mandatory interface plus fast-forward only (a backend without snapshots), and the real
Docker shadow (time compressed 60x so a test takes seconds of wall time). A new backend adds
its factory to ``BACKENDS`` and the capabilities it declares to ``CAPABILITIES``; a
wall-clock backend gets a time tolerance in ``TOLERANCE_S`` (its clock moves between two
calls, and a step stops at the first check after its deadline).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shadowrl.core.errors import BackendUnavailable, SnapshotUnsupported
from shadowrl.core.injection import Injection
from shadowrl.core.plan import configured_plan
from shadowrl.core.results import ERROR_SOURCES, Breach, Metrics, Span, StepResult
from shadowrl.core.slo import Observer, verify, violated
from shadowrl.core.spec import Scenario, Step, load_scenario
from shadowrl.rehearsal.deviation import DeviationSimulator
from shadowrl.rehearsal.runner import rehearse, run_plan, start_incident
from shadowrl.shadow.base import (
    CancelToken,
    ErrorAttribution,
    FastForward,
    ProfileRecording,
    ShadowBackend,
    Snapshotting,
)
from shadowrl.shadow.sim.engine import SimShadow

ROOT = Path(__file__).resolve().parents[2]
SEED = 1  # checkout: a bad web release the configured procedure recovers from


class NoSnapshotSim:
    """The simulator behind the mandatory interface and :class:`FastForward`, nothing else:
    like a container shadow, it cannot snapshot."""

    name = "sim-no-snapshots"
    clock = "simulated"

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._sim = SimShadow(scenario)

    def launch(self, seed: int) -> None:
        self._sim.launch(seed)

    def close(self) -> None:
        self._sim.close()

    def __enter__(self) -> NoSnapshotSim:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def inject(self, injection: Injection) -> None:
        self._sim.inject(injection)

    def run_step(self, step: Step, settings: dict[str, Any], *, timeout_s: float | None = None,
                 cancel: CancelToken | None = None) -> StepResult:
        return self._sim.run_step(step, settings, timeout_s=timeout_s, cancel=cancel)

    def sample(self) -> Metrics:
        return self._sim.sample()

    def now(self) -> float:
        return self._sim.now()

    def advance(self, seconds: float) -> Span:
        return self._sim.advance(seconds)

    def advance_until(self, seconds: float, observe: Observer) -> Span:
        return self._sim.advance_until(seconds, observe)


def docker_shadow(scenario: Scenario) -> ShadowBackend:
    """The real shadow, 60 scenario seconds per wall second."""
    from shadowrl.shadow.docker.backend import DockerShadow

    return DockerShadow(scenario, time_compression=DOCKER_COMPRESSION)


DOCKER_COMPRESSION = 60.0
Factory = Callable[[Scenario], ShadowBackend]
BACKENDS = [pytest.param(SimShadow, id="sim"),
            pytest.param(NoSnapshotSim, id="sim-no-snapshots"),
            pytest.param(docker_shadow, id="docker",
                         marks=[pytest.mark.docker, pytest.mark.xdist_group("docker")])]
CAPABILITIES = {
    "sim": {Snapshotting, FastForward, ErrorAttribution, ProfileRecording},
    "sim-no-snapshots": {FastForward},
    "docker": {ErrorAttribution, ProfileRecording},
}
# how exactly a step stops at its timeout, and how far a clock moves between two calls:
# a wall clock, 0.3 wall seconds (six checks of a running step) at the docker compression
TOLERANCE_S = {"simulated": 1e-9, "wall": 0.3 * DOCKER_COMPRESSION}


class CancelAfter(CancelToken):
    """Cancels itself at its ``polls``-th poll: a cancellation arriving mid-step."""

    def __init__(self, polls: int) -> None:
        super().__init__()
        self.polls = polls

    @property
    def cancelled(self) -> bool:
        self.polls -= 1
        if self.polls < 0:
            self.cancel()
        return super().cancelled


@pytest.fixture(scope="module")
def sc() -> Scenario:
    return load_scenario(ROOT / "envs" / "checkout.yaml")


@pytest.fixture(params=BACKENDS)
def factory(request: pytest.FixtureRequest) -> Factory:
    return request.param


def at_breach(factory: Factory, sc: Scenario) -> tuple[ShadowBackend, Injection, Breach]:
    backend = factory(sc)
    injection, breach = start_incident(backend, DeviationSimulator(sc), SEED)
    return backend, injection, breach


def test_capabilities_are_declared(factory: Factory, sc: Scenario) -> None:
    with factory(sc) as backend:
        assert isinstance(backend, ShadowBackend)
        has = {cap for cap in (Snapshotting, FastForward, ErrorAttribution, ProfileRecording)
               if isinstance(backend, cap)}
        assert has == CAPABILITIES[backend.name]
        assert backend.clock in ("simulated", "wall")
        if backend.clock == "simulated":
            assert FastForward in has  # otherwise its time could never pass
        if isinstance(backend, ErrorAttribution):
            assert set(backend.error_sources) <= set(ERROR_SOURCES)


def test_launch_inject_and_sample(factory: Factory, sc: Scenario) -> None:
    with factory(sc) as backend:
        backend.launch(SEED)
        tolerance = TOLERANCE_S[backend.clock]
        assert backend.now() == pytest.approx(0.0, abs=tolerance)
        m = backend.sample()
        assert m.at_s == pytest.approx(backend.now(), abs=tolerance)
        assert set(m.components) == set(sc.components())
        assert m.edge.rps > 0 and m.failing_rules == ()  # a healthy shadow
        # relaunches and injects; a draw whose SLO breaches before the onset (a real
        # shadow's healthy tail latency can, under contention at 60x) is redrawn, as in
        # every rehearsal
        injection, breach = start_incident(backend, DeviationSimulator(sc), SEED,
                                           "bad-web-release")
        assert breach.at_s >= injection.onset_s
        assert backend.now() == pytest.approx(breach.at_s, abs=tolerance)
        m = backend.sample()
        rules = {r.name for r in sc.slo.rules}
        assert set(breach.rules) <= set(m.failing_rules) <= rules
        assert m.edge.error_rate > 0.01


def test_calls_before_launch_and_after_close_are_refused(factory: Factory,
                                                         sc: Scenario) -> None:
    backend = factory(sc)
    with pytest.raises(BackendUnavailable, match="launch"):
        backend.sample()
    backend.launch(SEED)
    backend.sample()
    backend.close()
    backend.close()  # idempotent
    step = sc.procedure.steps[0]
    for call in (backend.sample, backend.now, lambda: backend.launch(SEED),
                 lambda: backend.run_step(step, step.default_settings())):
        with pytest.raises(BackendUnavailable, match="closed"):
            call()


def test_the_context_manager_closes_even_on_errors(factory: Factory, sc: Scenario) -> None:
    backend = factory(sc)
    with backend as entered:
        assert entered is backend
        backend.launch(SEED)
        backend.sample()
    with pytest.raises(BackendUnavailable):
        backend.sample()
    other = factory(sc)
    with pytest.raises(RuntimeError, match="boom"), other:
        other.launch(SEED)
        raise RuntimeError("boom")
    with pytest.raises(BackendUnavailable):
        other.now()


def test_a_step_past_its_timeout_stops_at_the_deadline(factory: Factory,
                                                        sc: Scenario) -> None:
    step = sc.procedure.step("revert-web")  # 9 batches of drain, stop and startup
    settings = step.default_settings()
    backend, _, _ = at_breach(factory, sc)
    with backend:
        start = backend.now()
        result = backend.run_step(step, settings, timeout_s=45.0)
        assert result.status == "timed_out" and result.stopped
        assert "45s timeout" in result.message
        tolerance = TOLERANCE_S[backend.clock]
        assert result.start_s == pytest.approx(start, abs=tolerance)
        assert result.end_s == pytest.approx(start + 45.0, abs=tolerance)
        assert backend.now() == pytest.approx(result.end_s, abs=tolerance)
        assert result.span.requests > 0
    full, _, _ = at_breach(factory, sc)
    with full:
        done = full.run_step(step, settings, timeout_s=1e6)  # a generous timeout changes nothing
        assert done.status == "ok" and done.end_s - done.start_s > 45.0


def test_a_cancelled_step_stops(factory: Factory, sc: Scenario) -> None:
    step = sc.procedure.step("revert-web")
    settings = step.default_settings()
    backend, _, _ = at_breach(factory, sc)
    with backend:
        before = backend.now()
        token = CancelToken()
        token.cancel()
        result = backend.run_step(step, settings, cancel=token)
        assert result.status == "cancelled" and result.stopped
        tolerance = TOLERANCE_S[backend.clock]
        assert result.end_s == result.start_s
        assert result.start_s == pytest.approx(before, abs=tolerance)
        assert backend.now() == pytest.approx(result.end_s, abs=tolerance)

        mid = backend.run_step(step, settings, cancel=CancelAfter(20))
        assert mid.status == "cancelled"
        assert before < mid.end_s
        assert backend.now() == pytest.approx(mid.end_s, abs=tolerance)
    full, _, _ = at_breach(factory, sc)
    with full:
        done = full.run_step(step, settings)
        assert done.status == "ok" and mid.end_s < done.end_s


def test_breach_and_verification_through_the_core(factory: Factory, sc: Scenario) -> None:
    # the real shadow's containers start in about a wall second, a scenario minute at 60x:
    # checkout's configured procedure ends about 1,700 scenario s after the breach there
    # (the simulator: 900 s), so 30 minutes leave its 2-minute hold no room, even idle.
    # The contract is the same with an hour.
    sc = sc.model_copy(deep=True)
    sc.procedure.verify.timeout = 3600.0
    backend, _, breach = at_breach(factory, sc)
    with backend:
        # a sampled clock sees the firing tick within one sample period, and a sample
        # measures a trailing window of requests: it reports a recovery that much later
        tolerance = (TOLERANCE_S[backend.clock] + getattr(backend, "sample_period_s", 0.0)
                     + getattr(backend, "sample_window_s", 0.0))
        assert breach.before is not None
        assert breach.before.end_s == pytest.approx(breach.at_s, abs=tolerance)
        results = run_plan(backend, sc.procedure, configured_plan(sc.procedure))
        assert all(r.status == "ok" for r in results), [(r.name, r.message) for r in results]
        hold = sc.procedure.verify.hold
        deadline = breach.at_s + sc.procedure.verify.timeout
        result = verify(backend, hold, deadline)
        timeline = (breach.at_s, [(r.name, round(r.end_s)) for r in results], result.end_s,
                    result.span.downtime_s, result.span.failed_requests,
                    result.span.violated_until_s,
                    [rule.name for rule, v in zip(sc.slo.rules,
                                                  violated(sc.slo.rules, backend.sample())) if v])
        print("breach, steps' ends, verification's end, downtime, failed requests, violated "
              "until, rules violated now:", timeline)
        measured = backend.clock == "wall"
        if measured and not result.healthy:
            # whether the SLO then holds is the machine's to say: a starved host's real shadow
            # (CI's, with its CPU stolen) can stay violated after the rollback. The
            # verification must then say so, watching to its deadline (or the steps overran it).
            assert result.end_s >= deadline - tolerance, timeline
            assert (result.span.violated_until_s is not None
                    or results[-1].end_s >= deadline), timeline
        else:
            assert result.healthy, timeline
            assert result.end_s == pytest.approx(results[-1].end_s + hold,  # clean at once
                                                 abs=tolerance), timeline
            # clean at once (what a sample still measured of the last step's window aside)
            assert result.span.downtime_s <= getattr(backend, "sample_window_s", 0.0), timeline

    r = rehearse(sc, SEED, backend_factory=factory)
    assert r.backend == factory(sc).name
    assert r.outcome == "recovered" or (measured and r.outcome == "rollback_ineffective"), \
        (r.outcome, [(s.name, s.status) for s in r.steps])


def test_a_step_timeout_fails_the_rehearsal(factory: Factory, sc: Scenario) -> None:
    procedure = sc.procedure.model_copy(deep=True)
    procedure.step("revert-web").timeout = 45.0
    r = rehearse(sc, SEED, procedure=procedure, backend_factory=factory)
    assert r.outcome == "rollback_failed"
    status = {s.name: s.status for s in r.steps}
    assert status["revert-web"] == "timed_out"
    assert status["revert-orders"] == status["migrate-db-down"] == "skipped"
    alert = next(a for a in r.alerts if a.kind == "rollback_failed")
    assert alert.step == "revert-web" and "timed out" in alert.message


def test_search_methods_refuse_a_backend_without_snapshots(factory: Factory,
                                                           sc: Scenario) -> None:
    from shadowrl.rl.env import RollbackEnv
    from shadowrl.rl.search import GreedyPolicy, OraclePolicy

    env = RollbackEnv(sc)
    env.shadow = factory(sc)
    with env.shadow:
        obs, _ = env.reset(seed=SEED)
        if isinstance(env.shadow, Snapshotting):
            action = GreedyPolicy().act(env, obs)
            assert env.action_masks()[action]
            return
        name = env.shadow.name
        with pytest.raises(SnapshotUnsupported, match=f"greedy .*'{name}' backend"):
            GreedyPolicy().act(env, obs)
        with pytest.raises(SnapshotUnsupported, match=f"oracle .*'{name}' backend"):
            OraclePolicy().reset(env)
        # what only replays the shadow still works
        _, _, terminated, _, info = env.step(int(env.action_masks().argmax()))
        assert not terminated and info["step"]

"""Verification: a procedure rehearsed on a real backend before it is exported or promoted.

The optimizer and the trainer choose on the simulator; the simulator is not the deployment
(docs/docker-shadow.md lists where it is not faithful yet). :func:`verify_procedures`
rehearses the winner *and* the configured procedure on the same seeds on the real backend
(a seed fixes the incident, its magnitude, onset and load on every backend), and both on
the simulator too, so the record says whether the improvement the simulator promised holds
on the real shadow and how far the simulator was off (the sim-vs-real gap,
:mod:`shadowrl.calibration.compare`).

**The pass rule.** A verification passes when

1. every real run of the winner ended ``recovered`` (no ``rollback_failed``, no
   ``rollback_ineffective``: a step that timed out fails its run), and
2. the winner is not worse than the configured procedure on the real backend beyond noise:
   with ``d_i`` = winner minus configured on seed ``i`` of the objective's measure (budget
   burn for ``objective="budget"``, downtime for ``"downtime"``), the mean of ``d`` is at
   most 2 standard errors of ``d`` (``std(d, ddof=1) / sqrt(n)``; with one run there is no
   noise estimate and the winner must simply be no worse on it).

Otherwise it fails, and ``reasons`` say why in plain words. A failed verification is kept
(``verification.json``, the procedure's header): export refuses the procedure and promotion
refuses the version.

The header lines (:func:`header_lines`, :func:`not_verified_line`) are what
``procedure.yaml`` and every export carry; :func:`read_header_lines` reads them back.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field

from shadowrl.analysis.summary import OUTCOMES, ResultModel
from shadowrl.calibration.compare import gap, run_facts
from shadowrl.core.plan import configured_plan
from shadowrl.core.spec import Procedure, Scenario
from shadowrl.rehearsal.runner import Rehearsal, rehearse

Runner = Callable[[int, str], Rehearsal]
"""``run(seed, backend)``: one rehearsal of a contender (e.g. a policy rolled out per seed)."""

Contender = Procedure | Runner

MEASURES = {"budget": "budget_burn", "downtime": "downtime_s"}  # objective -> what is paired
MAX_VERIFY_RUNS = 100  # real rehearsals take minutes each
NOISE_SE = 2.0  # the winner may be worse by at most this many standard errors
REFERENCE = "sim"  # the backend the optimizer chose on


class RunFacts(ResultModel):
    """One rehearsal, as a verification compares it."""

    incident: str
    outcome: str
    downtime_s: float
    bad_requests: float
    failed_requests: float
    budget_burn: float
    rollback_s: float


class SeedResult(ResultModel):
    """Both procedures on one seed, on the real backend and on the simulator, and the
    winner's gap (real minus simulated, :func:`shadowrl.calibration.compare.gap`)."""

    seed: int
    incident: str
    winner: RunFacts
    configured: RunFacts
    winner_sim: RunFacts
    configured_sim: RunFacts
    gap: dict[str, Any]


class Means(ResultModel):
    """Outcome counts and means over a contender's runs on one backend."""

    runs: int
    outcomes: dict[str, int]
    recovered: int
    downtime_s: float
    bad_requests: float
    budget_burn: float


class Difference(ResultModel):
    """Winner minus configured on the same seeds, of the objective's ``measure``: its mean,
    the standard error of the paired differences (0 with one run) and whether the winner is
    worse beyond noise (mean > 2 standard errors)."""

    measure: str
    mean: float
    standard_error: float
    worse_beyond_noise: bool


class Gap(ResultModel):
    """The winner's mean on the real backend minus its mean on the simulator."""

    downtime_s: float
    bad_requests: float
    budget_burn: float


class Verification(ResultModel):
    """A verification's record (``verification.json``); see the module docstring for the
    pass rule."""

    backend: str
    passed: bool
    reasons: list[str] = Field(default_factory=list)
    objective: str
    winner: str
    configured: str
    same_procedure: bool  # the winner is the configured procedure: one set of runs
    runs: int
    seeds: list[int]
    reference: str = REFERENCE
    means: dict[str, Means]  # winner, configured (real), winner_sim, configured_sim
    difference: Difference  # on the real backend
    predicted: Difference  # what the simulator said for the same seeds
    gap: Gap
    results: list[SeedResult]
    wall_s: float

    @property
    def status(self) -> str:
        return "passed" if self.passed else "failed"


def measure_of(objective: str) -> str:
    """The per-run quantity the pass rule pairs for ``objective`` (budget or downtime)."""
    try:
        return MEASURES[objective]
    except KeyError:
        raise ValueError(f"objective must be budget or downtime, got {objective!r}") from None


def _facts(facts: dict[str, Any]) -> RunFacts:
    """The :func:`~shadowrl.calibration.compare.run_facts` a verification keeps."""
    return RunFacts(**{k: facts[k] for k in RunFacts.model_fields})


def _runner(scenario: Scenario, contender: Contender) -> Runner:
    if isinstance(contender, Procedure):
        return lambda seed, backend: rehearse(scenario, seed, procedure=contender,
                                              backend=backend)
    return contender


def same_procedure(a: Contender, b: Contender) -> bool:
    """Do two procedures rehearse alike (same steps, order, settings, verify and budget)?
    Then one set of runs serves both."""
    if a is b:
        return True
    if not (isinstance(a, Procedure) and isinstance(b, Procedure)):
        return False
    shape = [(s.name, s.action, s.target, s.timeout) for s in a.steps]
    return (configured_plan(a) == configured_plan(b) and a.verify == b.verify
            and a.budget == b.budget
            and shape == [(s.name, s.action, s.target, s.timeout) for s in b.steps])


def verify_procedures(scenario: Scenario, winner: Contender, configured: Contender,
                      seeds: Sequence[int], *, backend: str = "docker",
                      objective: str = "budget", winner_name: str | None = None,
                      configured_name: str | None = None,
                      on_log: Callable[[str], None] | None = None,
                      on_progress: Callable[[int, int, str], None] | None = None
                      ) -> Verification:
    """Rehearse ``winner`` and ``configured`` (procedures, or :data:`Runner` callables such
    as a policy's per-seed rollout) on ``seeds`` on ``backend`` and on the simulator, and
    judge the winner by the pass rule (module docstring).

    On each seed the winner runs first, then the configured procedure, so both meet the
    machine in the same state; a winner that is the configured procedure runs once.
    ``on_progress(done, total, label)`` counts the real rehearsals."""
    measure_of(objective)  # a bad objective fails before minutes of real runs
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("a verification needs at least one seed")
    log = on_log or (lambda _m: None)
    same = same_procedure(winner, configured)
    run_winner, run_configured = _runner(scenario, winner), _runner(scenario, configured)
    names = (winner_name or _name(winner, "winner"),
             configured_name or _name(configured, "configured"))
    total = len(seeds) * (1 if same else 2)
    label = f"verifying on {backend}"
    done = 0
    start = time.monotonic()
    results: list[SeedResult] = []
    for seed in seeds:
        real: dict[str, dict[str, Any]] = {}
        for key, name, run in (("winner", names[0], run_winner),
                               ("configured", names[1], run_configured)):
            if key == "configured" and same:
                real[key] = real["winner"]
                continue
            done += 1
            log(f"verification {done}/{total}: {name} on {backend}, seed {seed}")
            facts = real[key] = run_facts(run(seed, backend))
            log(f"  {facts['incident']}: {facts['outcome']}, downtime "
                f"{facts['downtime_s']:.0f}s, error budget burn {facts['budget_burn']:.3%}")
            if on_progress is not None:
                on_progress(done, total, label)
        sim_winner = run_facts(run_winner(seed, REFERENCE))
        sim_configured = sim_winner if same else run_facts(run_configured(seed, REFERENCE))
        results.append(SeedResult(
            seed=seed, incident=real["winner"]["incident"], winner=_facts(real["winner"]),
            configured=_facts(real["configured"]), winner_sim=_facts(sim_winner),
            configured_sim=_facts(sim_configured), gap=gap(sim_winner, real["winner"])))
    return judge(results, backend=backend, objective=objective, winner=names[0],
                 configured=names[1], same=same, wall_s=time.monotonic() - start)


def _name(contender: Contender, default: str) -> str:
    return contender.name if isinstance(contender, Procedure) else default


def judge(results: Sequence[SeedResult], *, backend: str, objective: str, winner: str,
          configured: str, same: bool = False, wall_s: float = 0.0) -> Verification:
    """The verification of ``results`` by the pass rule (module docstring)."""
    measure = measure_of(objective)
    if not results:
        raise ValueError("a verification needs at least one seed")
    reasons = [f"on seed {r.seed} ({r.incident}) {winner} ended {r.winner.outcome} on "
               f"{backend}" for r in results if r.winner.outcome != "recovered"]
    diff = difference([getattr(r.winner, measure) for r in results],
                      [getattr(r.configured, measure) for r in results], measure)
    predicted = difference([getattr(r.winner_sim, measure) for r in results],
                           [getattr(r.configured_sim, measure) for r in results], measure)
    if diff.worse_beyond_noise:
        reasons.append(f"{winner} is worse than {configured} on {backend} beyond noise: "
                       f"{MEASURE_WORDS[measure]} {signed_text(diff.mean, measure)} per incident "
                       f"on average, more than {NOISE_SE:g} standard errors "
                       f"({amount_text(NOISE_SE * diff.standard_error, measure)})")
    means = {"winner": _means([r.winner for r in results]),
             "configured": _means([r.configured for r in results]),
             "winner_sim": _means([r.winner_sim for r in results]),
             "configured_sim": _means([r.configured_sim for r in results])}
    w, s = means["winner"], means["winner_sim"]
    return Verification(
        backend=backend, passed=not reasons, reasons=reasons, objective=objective,
        winner=winner, configured=configured, same_procedure=same, runs=len(results),
        seeds=[r.seed for r in results], means=means, difference=diff, predicted=predicted,
        gap=Gap(downtime_s=round(w.downtime_s - s.downtime_s, 3),
                bad_requests=round(w.bad_requests - s.bad_requests, 3),
                budget_burn=round(w.budget_burn - s.budget_burn, 8)),
        results=list(results), wall_s=round(wall_s, 1))


def difference(winner: Sequence[float], configured: Sequence[float],
               measure: str) -> Difference:
    """Winner minus configured, paired by seed: mean, standard error, worse beyond noise."""
    d = [a - b for a, b in zip(winner, configured, strict=True)]
    n = len(d)
    mean = sum(d) / n
    se = (math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) / math.sqrt(n)) if n > 1 else 0.0
    tiny = 1e-12 if measure == "budget_burn" else 1e-6  # float noise, not a difference
    digits = 8 if measure == "budget_burn" else 3
    return Difference(measure=measure, mean=round(mean, digits),
                      standard_error=round(se, digits),
                      worse_beyond_noise=mean > NOISE_SE * se + tiny)


def _means(runs: Sequence[RunFacts]) -> Means:
    n = len(runs)
    outcomes = {o: sum(r.outcome == o for r in runs) for o in OUTCOMES}
    return Means(runs=n, outcomes=outcomes, recovered=outcomes["recovered"],
                 downtime_s=round(sum(r.downtime_s for r in runs) / n, 3),
                 bad_requests=round(sum(r.bad_requests for r in runs) / n, 3),
                 budget_burn=round(sum(r.budget_burn for r in runs) / n, 8))


# --------------------------------------------------------------------------- header lines

MEASURE_WORDS = {"budget_burn": "error budget burn", "downtime_s": "downtime"}
PREFIX = "verification"  # every header line of a verification starts with it


def amount_text(value: float, measure: str) -> str:
    """A value of ``measure`` as people read it: ``1.234%`` of the budget, or ``12s``."""
    return f"{value:.3%}" if measure == "budget_burn" else f"{value:.0f}s"


def signed_text(value: float, measure: str) -> str:
    """A difference of ``measure`` with its sign: ``-1.234%`` or ``+12s``."""
    return f"{value:+.3%}" if measure == "budget_burn" else f"{value:+.0f}s"


def _kind(backend: str) -> str:
    """``real`` for a real backend; the simulator verifies only in tests and examples."""
    return "simulated" if backend == REFERENCE else "real"


def seeds_text(seeds: Sequence[int]) -> str:
    """``seed 7``, ``seeds 7..9``, or ``seeds 7, 12``."""
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    contiguous = list(seeds) == list(range(seeds[0], seeds[0] + len(seeds)))
    return (f"seeds {seeds[0]}..{seeds[-1]}" if contiguous
            else "seeds " + ", ".join(str(s) for s in seeds))


def _means_text(m: Means) -> str:
    outcomes = ", ".join(f"{k} {v}" for k, v in m.outcomes.items())
    return (f"outcomes {outcomes}; downtime mean {m.downtime_s:.0f}s; bad requests mean "
            f"{m.bad_requests:.0f}; error budget burn mean {m.budget_burn:.3%}")


def header_lines(v: Verification) -> list[str]:
    """The verification as header lines (without comment markers), plain words first:
    ``verification: passed|FAILED on the real shadow (BACKEND): N incidents, seeds ...``,
    then the winner's and the configured procedure's real runs, the paired difference and
    the sim-vs-real gap. :func:`read_header_lines` reads them back."""
    b = v.backend
    status = "passed" if v.passed else "FAILED"
    why = f": {'; '.join(v.reasons)}" if v.reasons else ""
    m = v.difference.measure
    diff, pred = v.difference, v.predicted
    configured = ("the configured procedure is this procedure (one set of runs)"
                  if v.same_procedure else _means_text(v.means["configured"]))
    return [
        f"{PREFIX}: {status} on the {_kind(b)} shadow ({b}): {v.runs} incident"
        f"{'s' if v.runs != 1 else ''}, {seeds_text(v.seeds)}, each rehearsed with this "
        f"procedure and the configured one, on {b} and on the simulator{why}",
        f"{PREFIX}, this procedure on {b}: {_means_text(v.means['winner'])}",
        f"{PREFIX}, the configured procedure on {b}, same incidents: {configured}",
        f"{PREFIX}, this procedure minus the configured one on {b} (paired by incident): "
        f"{MEASURE_WORDS[m]} {signed_text(diff.mean, m)} ± {amount_text(diff.standard_error, m)} "
        f"standard error (the simulator predicted {signed_text(pred.mean, m)}); it passes when "
        f"not above {NOISE_SE:g} standard errors",
        f"{PREFIX}, sim-vs-real gap of this procedure ({b} minus sim, means): downtime "
        f"{v.gap.downtime_s:+.0f}s, bad requests {v.gap.bad_requests:+.0f}, error budget "
        f"burn {v.gap.budget_burn:+.3%}",
    ]


def summary_line(v: Verification) -> str:
    """The verification in one line, naming its contenders (an MLflow tag, a log line)."""
    m = v.difference.measure
    w, c = v.means["winner"], v.means["configured"]
    why = f" ({'; '.join(v.reasons)})" if v.reasons else ""
    return (f"{v.status}{why} on the {_kind(v.backend)} shadow ({v.backend}), "
            f"{seeds_text(v.seeds)}: {v.winner} recovered {w.recovered}/{w.runs}, "
            f"{MEASURE_WORDS[m]} mean {amount_text(getattr(w, m), m)}; {v.configured} "
            f"recovered {c.recovered}/{c.runs}, {amount_text(getattr(c, m), m)}; paired "
            f"difference {signed_text(v.difference.mean, m)} ± "
            f"{amount_text(v.difference.standard_error, m)}; sim-vs-real gap "
            f"{signed_text(getattr(v.gap, m), m)}")


def not_verified_line(hint: str | None = None) -> str:
    """The plain-words header line of a procedure never verified on a real shadow; ``hint``
    is the command that would verify it."""
    how = (f": run `{hint}` to rehearse it there before exporting it" if hint
           else ": `shadowrl optimize SCENARIO --verify docker` verifies the procedure it "
                "writes")
    return f"{PREFIX}: none: not verified on a real shadow{how}"


_HEAD = re.compile(r"^verification: (?P<status>passed|FAILED|none)\b")
_BACKEND = re.compile(r"on the (?:real|simulated) shadow \((?P<backend>[\w.-]+)\)")
_RUNS = re.compile(r"(?P<runs>\d+) incidents?\b")
_SEEDS = re.compile(r"seeds? (?P<seeds>\d+(?:\.\.\d+|(?:, \d+)*))")
_WHY = re.compile(r"on the simulator: (?P<why>.+)$")
_DOWNTIME = re.compile(r"downtime mean (?P<v>-?\d+(?:\.\d+)?)s")
_BAD = re.compile(r"bad requests mean (?P<v>-?\d+(?:\.\d+)?)")
_BURN = re.compile(r"error budget burn mean (?P<v>-?\d+(?:\.\d+)?)%")
_OUTCOMES = re.compile(r"outcomes ((?:[a-z_]+ \d+)(?:, [a-z_]+ \d+)*)")
_GAP = {"downtime_s": re.compile(r"downtime (?P<v>[+-]\d+(?:\.\d+)?)s"),
        "bad_requests": re.compile(r"bad requests (?P<v>[+-]\d+(?:\.\d+)?)"),
        "budget_burn": re.compile(r"error budget burn (?P<v>[+-]\d+(?:\.\d+)?)%")}


def _numbers(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    outcomes = _OUTCOMES.search(text)
    if outcomes:
        out["outcomes"] = {k: int(n) for k, n in (item.split(" ")
                                                  for item in outcomes.group(1).split(", "))}
    for key, pattern, scale in (("downtime_s", _DOWNTIME, 1.0), ("bad_requests", _BAD, 1.0),
                                ("budget_burn", _BURN, 0.01)):
        found = pattern.search(text)
        if found:
            out[key] = {"mean": round(float(found.group("v")) * scale, 8)}
    return out


def _seed_list(text: str) -> list[int]:
    if ".." in text:
        first, last = (int(x) for x in text.split(".."))
        return list(range(first, last + 1))
    return [int(x) for x in text.split(", ")]


def read_header_lines(lines: Sequence[tuple[int, str]]) -> dict[str, Any] | None:
    """A verification from header lines ``(line number, text without '#')``, as
    :func:`header_lines` or :func:`not_verified_line` wrote them: ``status`` (``passed``,
    ``failed`` or ``none``), ``line`` (of the first), ``lines`` (the texts, to show again),
    and what they state: ``backend``, ``runs``, ``seeds``, ``reasons``, the winner's
    ``outcomes`` / ``downtime_s`` / ``bad_requests`` / ``budget_burn``, the ``configured``
    procedure's, and the ``gap``. None when no line is a verification's."""
    ours = [(n, text) for n, text in lines if text.startswith((f"{PREFIX}:", f"{PREFIX},"))]
    head = next(((n, t) for n, t in ours if _HEAD.match(t)), None)
    if head is None:
        return None
    status = _HEAD.match(head[1]).group("status").lower()  # type: ignore[union-attr]
    out: dict[str, Any] = {"status": status, "line": head[0], "lines": [t for _, t in ours]}
    if status == "none":
        return out
    for key, pattern in (("backend", _BACKEND), ("runs", _RUNS), ("seeds", _SEEDS)):
        found = pattern.search(head[1])
        if found:
            value = found.group(key)
            out[key] = (int(value) if key == "runs" else
                        _seed_list(value) if key == "seeds" else value)
    why = _WHY.search(head[1])
    out["reasons"] = why.group("why").split("; ") if why else []
    for _, text in ours[1:]:
        if text.startswith(f"{PREFIX}, this procedure on "):
            out.update(_numbers(text))
        elif text.startswith(f"{PREFIX}, the configured procedure"):
            out["configured"] = _numbers(text)
        elif text.startswith(f"{PREFIX}, sim-vs-real gap"):
            out["gap"] = {k: round(float(m.group("v")) * (0.01 if k == "budget_burn"
                                                          else 1.0), 8)
                          for k, p in _GAP.items() if (m := p.search(text))}
    return out

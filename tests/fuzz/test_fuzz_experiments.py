"""Fuzz experiment files: mutated ``experiments/*.yaml`` either load (and then their name is
a safe folder name and their agent, as the experiment runs it, is valid) or are refused with
a ``SpecError`` whose every problem names file:line: field; through the CLI they exit 2
without a traceback, in 5 s and 500 MB, and write nothing. Also: ``best_static`` never
evaluates more plans than its ``trials`` (an experiment's ``search_trials``, optimize's
``--trials``).

Examples: 130 structural mutants + 40 name/path mutants + 12 trial budgets, 4 CLI runs.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowrl.app import experiment as experiment_module
from shadowrl.app.experiment import Experiment, experiment_problems, load_experiment
from shadowrl.core.spec import SpecError
from shadowrl.rl import agents, search
from shadowrl.rl.agents import load_agent_config
from shadowrl.rl.env import RollbackEnv
from tests.fuzz._mutate_files import ROOT, Mutant, mutated_yaml, run_cli_rss
from tests.fuzz.conftest import FUZZ, run_cli_bounded

SHIPPED = sorted((ROOT / "experiments").glob("*.yaml"))


def _absolute(path: Path) -> dict[str, Any]:
    """A shipped experiment with its scenario and agent as absolute paths, so a mutant
    written anywhere still finds them (and the mutations, not the move, make it fail)."""
    data = yaml.safe_load(path.read_text())
    for key in ("scenario", "agent"):
        if key in data:
            data[key] = str((path.parent / data[key]).resolve())
    return data


BASES = {p.stem: _absolute(p) for p in SHIPPED}


def _load(mutant: Mutant, folder: Path) -> tuple[Path, Experiment | None]:
    """Load in-process: an experiment, or a SpecError whose problems each name a file and a
    line and read ``file:line: field: message``."""
    path = mutant.write(folder, "experiment")
    start = time.thread_time()  # CPU, not wall: a busy host must not fail it
    try:
        exp = load_experiment(path)
    except SpecError as exc:
        assert exc.problems, mutant.what
        for problem in exc.problems:
            assert problem.file and problem.line >= 1 and problem.message, str(problem)
            assert str(problem).startswith(f"{problem.file}:{problem.line}: "), str(problem)
        return path, None
    finally:
        assert time.thread_time() - start < 3.0, mutant.what
    _check_loaded(exp, folder)
    return path, exp


def _check_loaded(exp: Experiment, folder: Path) -> None:
    """What a loaded experiment promises: its name is one folder inside any output root,
    and its agent is valid as this experiment runs it."""
    out = folder / "runs"
    assert (out / exp.metadata.name).resolve().parent == out.resolve(), exp.metadata.name
    assert exp.tracking.model and "/" not in exp.tracking.model
    config = load_agent_config(exp.path_of(exp.agent))
    assert experiment_problems(exp, config) == []


@settings(FUZZ, max_examples=130)
@given(st.sampled_from(sorted(BASES)).flatmap(lambda name: mutated_yaml(BASES[name])))
def test_mutated_experiments_load_or_name_file_line_and_field(mutant: Mutant) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _load(mutant, Path(tmp))


NAMES = ("../escape", "/tmp/abs", "a/b", "..", ".", "", " ", "x" * 65, "ok-name", "Ok_1.2",
         "-lead", "name\n", "name\x00", "caf\u00e9", "a..b", "~", "$HOME", "C:\\x", "con")
PATHS = ("", " ", "/", "/dev/zero", "/dev/null", "/proc/self/mem", "/etc/passwd",
         "x" * 300, "/".join(["x" * 200] * 8), "a\x00b", "../../../../../../etc/shadow",
         "missing.yaml", ".", "~/agent.yaml")


@st.composite
def _named(draw: st.DrawFn) -> Mutant:
    """A shipped experiment with hostile names and paths in its name, tracking and file
    fields."""
    rnd = draw(st.randoms(use_true_random=True))
    data = yaml.safe_load(yaml.safe_dump(BASES[rnd.choice(sorted(BASES))]))
    field = rnd.choice(["name", "name", "model", "experiment", "scenario", "agent"])
    if field == "name":
        data["metadata"]["name"] = rnd.choice(NAMES)
    elif field in ("model", "experiment"):
        data["tracking"][field] = rnd.choice(NAMES)
    else:
        data[field] = rnd.choice(PATHS)
    return Mutant(yaml.safe_dump(data, allow_unicode=True).encode(), ".yaml", f"{field}")


@settings(FUZZ, max_examples=40)
@given(_named())
def test_names_and_paths_are_safe_or_refused(mutant: Mutant) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _, exp = _load(mutant, Path(tmp))
    if exp is not None:
        assert experiment_module.SLUG_RE.fullmatch(exp.metadata.name)


def test_the_bounds_agree_with_the_agents_and_the_search() -> None:
    assert experiment_module.MAX_TIMESTEPS == agents.MAX_TIMESTEPS
    assert experiment_module.MAX_REPLICAS == agents.MAX_N_ENVS
    assert experiment_module.MAX_SEED == agents.MAX_SEED
    assert experiment_module.MAX_TRIALS == search.MAX_TRIALS


# --------------------------------------------------------------------------- trials


PHYS_ROLLOUT = ROOT / "tests" / "scenarios" / "phys_rollout.yaml"  # 75 plans: both branches


@pytest.fixture(scope="module")
def small_env() -> RollbackEnv:
    return RollbackEnv(PHYS_ROLLOUT)


@pytest.fixture(scope="module")
def big_env() -> RollbackEnv:
    return RollbackEnv(ROOT / "envs" / "checkout.yaml")  # > 400 plans: Optuna + local search


@settings(FUZZ, max_examples=12)
@given(st.sampled_from(["small", "big"]), st.integers(1, 80))
def test_best_static_evaluates_at_most_trials_plans(small_env: RollbackEnv, big_env: RollbackEnv,
                                                    which: str, trials: int) -> None:
    env = small_env if which == "small" else big_env
    costed: list[int] = []
    real = search.plan_cost

    def counting(*args: Any) -> float:
        costed.append(1)
        return real(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search, "plan_cost", counting)
        found = search.best_static(env, [0, 1], trials=trials, seed=0)
    assert len(costed) <= trials, (which, trials, found.method)
    assert found.evaluated <= trials


@pytest.mark.parametrize("trials", [0, -1, search.MAX_TRIALS + 1, True, 2.5])
def test_best_static_refuses_a_trial_count_out_of_bounds(small_env: RollbackEnv,
                                                         trials: Any) -> None:
    with pytest.raises(ValueError, match=r"trials must be a whole number in \[1, 10000\]"):
        search.best_static(small_env, [0], trials=trials)


# --------------------------------------------------------------------------- the CLI


def _experiment(tmp_path: Path, **changes: Any) -> Path:
    data = {**BASES["checkout-maskable-ppo"], **changes}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("change", "field"), [
    ({"metadata": {"name": "../../escape"}}, "metadata.name"),
    ({"metadata": {"name": "/tmp/shadowrl-escape"}}, "metadata.name"),
    ({"seed": -1, "replicas": 10**30}, "seed"),
])
def test_cli_train_refuses_a_bad_experiment_and_writes_nothing(
        tmp_path: Path, change: dict[str, Any], field: str) -> None:
    path = _experiment(tmp_path, **change)
    work = tmp_path / "cwd"
    work.mkdir()
    run = run_cli_bounded(["train", str(path)], timeout=5.0, mem_mb=500, cwd=work,
                          env={"PYTHONPATH": str(ROOT)})  # run from elsewhere: import this tree
    assert not run.timed_out and not run.traceback, run.stderr[-2000:]
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"{path}:" in run.stderr and f" {field}: " in run.stderr, run.stderr
    assert list(work.iterdir()) == []  # no runs/ folder, no mlflow.db
    assert not Path("/tmp/shadowrl-escape").exists()


def test_cli_train_refuses_an_agent_the_experiment_makes_invalid(tmp_path: Path) -> None:
    """Valid alone, the agent is invalid with this experiment's replicas: batch_size 256 >
    n_steps 64 x 1 replica. Loading the agent imports torch, so the run is bounded by its
    resident memory (500 MB) and a 15 s timeout."""
    agent = {**yaml.safe_load((ROOT / "agents" / "maskable_ppo.yaml").read_text())}
    agent["hyperparameters"] = {**agent["hyperparameters"], "n_steps": 64}
    agent_path = tmp_path / "agent.yaml"
    agent_path.write_text(yaml.safe_dump(agent))
    load_agent_config(agent_path)  # valid with its own n_envs (4)
    path = _experiment(tmp_path, agent=str(agent_path), replicas=1)
    run = run_cli_rss(["train", str(path), "--out", str(tmp_path / "out")], timeout=15.0)
    assert run.returncode == 2 and not run.traceback, run.stderr[-2000:]
    assert f"{path}:" in run.stderr and "batch_size 256" in run.stderr, run.stderr
    assert run.max_rss_mb < 500, run.max_rss_mb
    assert not (tmp_path / "out").exists()

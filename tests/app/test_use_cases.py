"""The use cases through Python, no command line: typed requests in, typed results out,
progress through callbacks, typed errors for bad input, and nothing printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shadowrl.analysis.summary import summarize
from shadowrl.app.errors import UsageError
from shadowrl.app.evaluate import EvaluateRequest, evaluate
from shadowrl.app.export import ExportRequest, export
from shadowrl.app.models import (
    CampaignSummary,
    EvaluationSummary,
    ExportResult,
    OptimizeResult,
    RehearsalResult,
    ValidateResult,
)
from shadowrl.app.optimize import OptimizeRequest, optimize
from shadowrl.app.rehearse import RehearseRequest, rehearse
from shadowrl.app.simulate import SimulateRequest, simulate
from shadowrl.app.validate import ValidateRequest, validate
from shadowrl.core.spec import SpecError, load_scenario
from shadowrl.rehearsal.runner import rehearse as rehearse_one

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
PAYMENTS = ROOT / "envs" / "payments.yaml"


class Calls:
    """A recording ``on_progress`` callback."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, str]] = []

    def __call__(self, done: int, total: int, label: str) -> None:
        self.calls.append((done, total, label))


def assert_silent(capfd: pytest.CaptureFixture[str]) -> None:
    captured = capfd.readouterr()
    assert captured.out == "", captured.out[:500]
    assert captured.err == "", captured.err[:500]


@pytest.fixture
def bad_procedure(tmp_path: Path) -> Path:
    """A procedure file whose step names an action that does not exist (on line 6)."""
    path = tmp_path / "procedure.yaml"
    path.write_text("apiVersion: shadowrl/v1\nkind: Procedure\nmetadata: {name: p}\n"
                    "procedure:\n  steps:\n    - {name: s, action: teleport, target: web}\n")
    return path


def assert_names_file_and_line(exc: SpecError, path: Path) -> None:
    assert exc.problems
    for problem in exc.problems:
        assert problem.file == str(path) and problem.line >= 1
        assert str(problem).startswith(f"{path}:{problem.line}: ")


# --------------------------------------------------------------------------- validate


def test_validate_reports_every_file(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: shadowrl/v1\nkind: Scenario\n")
    result = validate(ValidateRequest(files=[CHECKOUT, bad, PAYMENTS]))
    assert isinstance(result, ValidateResult) and not result.ok
    assert [(c.path, c.ok) for c in result.files] == [
        (str(CHECKOUT), True), (str(bad), False), (str(PAYMENTS), True)]
    assert all(p.file == str(bad) and p.line >= 1 for p in result.files[1].problems)
    assert validate(ValidateRequest(files=[CHECKOUT])).ok
    assert_silent(capfd)


# --------------------------------------------------------------------------- simulate


def test_simulate_returns_the_rehearsal(capfd: pytest.CaptureFixture[str]) -> None:
    result = simulate(SimulateRequest(file=CHECKOUT, incident="bad-web-release", seed=2))
    assert isinstance(result, RehearsalResult)
    assert result.incident == "bad-web-release" and result.seed == 2
    assert result.outcome in ("recovered", "rollback_failed", "rollback_ineffective")
    assert result.steps and all(s.end_s >= s.start_s for s in result.steps)
    expected = rehearse_one(load_scenario(CHECKOUT), 2, incident="bad-web-release")
    assert result.model_dump(mode="json") == expected.to_json()
    assert_silent(capfd)


def test_simulate_bad_input(bad_procedure: Path) -> None:
    with pytest.raises(UsageError, match="unknown incident 'nope' \\(known: bad-web-release"):
        simulate(SimulateRequest(file=CHECKOUT, incident="nope"))
    with pytest.raises(SpecError) as info:
        simulate(SimulateRequest(file=CHECKOUT, procedure=bad_procedure))
    assert_names_file_and_line(info.value, bad_procedure)


# --------------------------------------------------------------------------- rehearse


def test_rehearse_returns_a_campaign_summary(capfd: pytest.CaptureFixture[str]) -> None:
    progress = Calls()
    summary = rehearse(RehearseRequest(file=CHECKOUT, runs=5, seed=3), on_progress=progress)
    assert isinstance(summary, CampaignSummary)
    assert summary.runs == 5 and not summary.interrupted
    assert sum(summary.outcomes.model_dump().values()) == 5
    assert progress.calls == [(i, 5, "rehearsing checkout") for i in range(1, 6)]
    sc = load_scenario(CHECKOUT)
    expected = summarize("checkout", "configured", [rehearse_one(sc, 3 + i) for i in range(5)])
    assert summary.model_dump(mode="json") == expected.model_dump(mode="json")
    assert summary.outputs is None and summary.alert_errors == []
    assert_silent(capfd)


def test_rehearse_writes_the_output_folder(tmp_path: Path,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    summary = rehearse(RehearseRequest(file=CHECKOUT, runs=2, out=out, command="cmd"))
    assert summary.outputs is not None
    assert Path(summary.outputs.report).parent == out
    for path in summary.outputs.model_dump().values():
        assert Path(path).is_file(), path
    written = json.loads((out / "summary.json").read_text())
    assert written == {k: v for k, v in summary.model_dump(mode="json").items()
                       if k != "outputs"}
    assert "Command: <code>cmd</code>" in (out / "report.html").read_text()
    assert_silent(capfd)


def test_rehearse_ctrl_c_keeps_the_finished_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import shadowrl.rehearsal.campaign as campaign_mod

    def interrupted_after_two(scenario: Any, seed: int, **kwargs: Any) -> Any:
        if seed == 2:
            raise KeyboardInterrupt
        return rehearse_one(scenario, seed, **kwargs)

    real = campaign_mod.run_campaign
    monkeypatch.setattr(campaign_mod, "run_campaign", lambda *a, **kw: real(
        *a, **{**kw, "rehearse_fn": interrupted_after_two}))
    progress = Calls()
    summary = rehearse(RehearseRequest(file=CHECKOUT, runs=5), on_progress=progress)
    assert summary.interrupted is True and summary.runs == 2
    assert progress.calls == [(1, 5, "rehearsing checkout"), (2, 5, "rehearsing checkout")]
    assert summary.model_dump(mode="json")["interrupted"] is True


def test_rehearse_bad_input(bad_procedure: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        rehearse(RehearseRequest(file=CHECKOUT, runs=1, procedure=bad_procedure))
    assert_names_file_and_line(info.value, bad_procedure)
    with pytest.raises(UsageError, match="--at must be 'now' or 'peak', not 'noon'"):
        rehearse(RehearseRequest(file=CHECKOUT, runs=1, at="noon"))
    with pytest.raises(UsageError, match="needs a .json \\(Prometheus\\) or .csv file"):
        rehearse(RehearseRequest(file=CHECKOUT, runs=1, history=tmp_path / "h.txt"))


# --------------------------------------------------------------------------- evaluate


def test_evaluate_returns_an_evaluation_summary(capfd: pytest.CaptureFixture[str]) -> None:
    progress = Calls()
    summary = evaluate(EvaluateRequest(file=CHECKOUT, policy="configured", episodes=3),
                       on_progress=progress)
    assert isinstance(summary, EvaluationSummary)
    assert summary.policy == "configured" and summary.runs == 3
    assert summary.cost.mean > 0
    assert progress.calls == [(i, 3, "evaluating configured") for i in (1, 2, 3)]
    # the same seeds as a rehearsal from 10000: the same incidents, the same numbers
    rehearsed = rehearse(RehearseRequest(file=CHECKOUT, runs=3, seed=10_000))
    assert summary.downtime_s == rehearsed.downtime_s
    assert summary.outcomes == rehearsed.outcomes
    assert_silent(capfd)


def test_evaluate_bad_policy(bad_procedure: Path) -> None:
    with pytest.raises(UsageError, match="nope.zip: no such policy"):
        evaluate(EvaluateRequest(file=CHECKOUT, policy="nope.zip", episodes=1))
    with pytest.raises(SpecError) as info:
        evaluate(EvaluateRequest(file=CHECKOUT, policy=str(bad_procedure), episodes=1))
    assert_names_file_and_line(info.value, bad_procedure)


# --------------------------------------------------------------------------- optimize


def test_optimize_returns_the_comparison(tmp_path: Path,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    progress, logs = Calls(), []
    out = tmp_path / "opt"
    result = optimize(OptimizeRequest(file=CHECKOUT, method="search", episodes=2, trials=3,
                                      oracle_nodes=100, out=out),
                      on_progress=progress, on_log=logs.append)
    assert isinstance(result, OptimizeResult)
    assert set(result.methods) == {"configured", "random", "greedy", "best_static", "oracle"}
    assert all(s.runs == 2 for s in result.methods.values())
    assert result.policy is None and result.rl is None
    assert result.search is not None and result.search.plans >= 1
    assert result.oracle is not None and result.oracle.max_nodes == 100
    assert json.loads((out / "summary.json").read_text()) == result.model_dump(mode="json")
    assert "# shadowrl optimized procedure" in Path(result.procedure).read_text()
    labels = {label for _, _, label in progress.calls}
    assert {"configured", "best_static", "oracle", "best_static search"} <= labels
    assert ("evaluating the configured procedure" in logs
            and "searching the best static procedure" in logs)
    assert_silent(capfd)


def test_optimize_bad_input(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown method 'bogus'"):
        optimize(OptimizeRequest(file=CHECKOUT, method="bogus", out=tmp_path))
    agent = tmp_path / "agent.yaml"
    agent.write_text("algorithm: [not, a, name]\n")
    with pytest.raises(SpecError) as info:
        optimize(OptimizeRequest(file=CHECKOUT, method="rl", agent=agent, out=tmp_path))
    assert_names_file_and_line(info.value, agent)


def scenario_naming_agent(tmp_path: Path, agent_text: str) -> Path:
    """checkout.yaml copied to ``tmp_path`` with ``optimizer.agent: agents/tiny.yaml``."""
    import yaml

    data = yaml.safe_load(CHECKOUT.read_text())
    data["optimizer"] = {"agent": "agents/tiny.yaml"}
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "tiny.yaml").write_text(agent_text)
    scenario = tmp_path / "sc.yaml"
    scenario.write_text(yaml.safe_dump(data, sort_keys=False))
    return scenario


TINY_AGENT = ("algorithm: maskable_ppo\nn_envs: 1\ntimesteps: 96\n"
              "hyperparameters: {n_steps: 32, batch_size: 32, n_epochs: 1}\n"
              "eval: {freq: 32, episodes: 2}\n")


def test_optimize_trains_the_agent_the_scenario_names(tmp_path: Path) -> None:
    """``optimizer.agent`` (relative to the scenario file) is what optimize trains when no
    --agent is given; --agent still wins; summary.json says which config it was."""
    scenario = scenario_naming_agent(tmp_path, TINY_AGENT)
    result = optimize(OptimizeRequest(file=scenario, method="rl", episodes=1,
                                      out=tmp_path / "named"))
    assert result.rl is not None
    assert result.rl.agent == str(tmp_path / "agents" / "tiny.yaml")
    assert result.rl.timesteps == 96
    summary = json.loads((tmp_path / "named" / "summary.json").read_text())
    assert summary["rl"]["agent"] == str(tmp_path / "agents" / "tiny.yaml")
    # the policy kept is the training's best evaluated checkpoint
    history = json.loads((tmp_path / "named" / "rl" / "train_state.json").read_text())
    evaluated = history["eval_history"]
    assert len(evaluated) >= 3
    best = min(evaluated, key=lambda r: r["mean_cost"])
    assert result.rl.validation_cost == pytest.approx(best["mean_cost"])
    assert result.rl.policy_timesteps in {r["timesteps"] for r in evaluated
                                          if r["mean_cost"] == best["mean_cost"]}
    assert ((tmp_path / "named" / "policy.zip").read_bytes()
            == (tmp_path / "named" / "rl" / "best_policy.zip").read_bytes())
    other = tmp_path / "other.yaml"
    other.write_text(TINY_AGENT.replace("timesteps: 96", "timesteps: 64"))
    flagged = optimize(OptimizeRequest(file=scenario, method="rl", episodes=1, agent=other,
                                       out=tmp_path / "flagged"))
    assert flagged.rl is not None and flagged.rl.agent == str(other)
    assert flagged.rl.timesteps == 64


def test_a_bad_agent_the_scenario_names_is_reported_with_its_line(tmp_path: Path) -> None:
    """A missing agent file is the scenario's error (its optimizer.agent line); a bad one is
    the agent file's, from validate and from optimize alike, before anything runs."""
    scenario = scenario_naming_agent(tmp_path, "algorithm: maskable_ppo\nn_envs: -3\n")
    report = validate(ValidateRequest(files=[scenario]))
    text = "\n".join(str(p) for f in report.files for p in f.problems)
    assert f"{tmp_path / 'agents' / 'tiny.yaml'}:2: n_envs" in text
    with pytest.raises(SpecError) as info:
        optimize(OptimizeRequest(file=scenario, method="rl", out=tmp_path / "out"))
    assert_names_file_and_line(info.value, tmp_path / "agents" / "tiny.yaml")
    assert not (tmp_path / "out").exists()
    # a search does not train, so it does not need the agent
    optimize(OptimizeRequest(file=scenario, method="search", episodes=1, trials=2,
                             oracle_nodes=50, out=tmp_path / "search"))
    (tmp_path / "agents" / "tiny.yaml").unlink()
    with pytest.raises(SpecError, match=r"sc.yaml:\d+: optimizer.agent: no such file"):
        load_scenario(scenario)


# --------------------------------------------------------------------------- train


def test_train_bad_input(tmp_path: Path, mlflow_store: Any) -> None:
    from shadowrl.app.train import TrainRequest, train

    exp = tmp_path / "exp.yaml"
    exp.write_text("apiVersion: shadowrl/v1\nkind: Experiment\nmetadata: {name: t}\n"
                   f"scenario: {CHECKOUT}\nagent: {ROOT / 'agents' / 'maskable_ppo.yaml'}\n"
                   "tracking: {experiment: t, model: t}\n"
                   "timesteps: [1]\n")
    with pytest.raises(SpecError) as info:
        train(TrainRequest(experiment=exp, tracking_uri=mlflow_store.uri))
    assert_names_file_and_line(info.value, exp)
    exp.write_text(exp.read_text().replace("timesteps: [1]\n", ""))
    with pytest.raises(UsageError, match="127.0.0.1:1"):
        train(TrainRequest(experiment=exp, tracking_uri=mlflow_store.uri,
                           ray_address="127.0.0.1:1", out=tmp_path / "run"))


# --------------------------------------------------------------------------- export


def test_export_writes_and_warns(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    warned: list[str] = []
    target = tmp_path / "rollback.sh"
    result = export(ExportRequest(source=str(CHECKOUT), format="shell", out=target),
                    on_warning=warned.append)
    assert isinstance(result, ExportResult)
    assert result.written == str(target) and target.read_text() == result.text
    assert os.stat(target).st_mode & 0o777 == 0o755
    assert warned == result.warnings and any("PLACEHOLDER" in w for w in warned)
    assert f"shadowrl export {CHECKOUT} --format shell --out {target}" in result.text
    printed = export(ExportRequest(source=str(CHECKOUT), format="yaml"))
    assert printed.written is None and printed.warnings == []
    assert "kind: Procedure" in printed.text
    assert_silent(capfd)


def test_export_bad_input(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown format 'pdf' \\(use yaml, argo"):
        export(ExportRequest(source=str(CHECKOUT), format="pdf"))
    with pytest.raises(UsageError, match="no such file"):
        export(ExportRequest(source=str(tmp_path / "nope.yaml"), format="yaml"))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UsageError, match="cannot write"):
        export(ExportRequest(source=str(CHECKOUT), format="yaml",
                             out=tmp_path / "a-file" / "x.yaml"))


# --------------------------------------------------------------------------- dependencies


def test_app_imports_and_rehearses_without_rl_ray_or_mlflow() -> None:
    """Ray (and the RL and tracking stacks) load only when a use case needs them."""
    code = (
        "import sys\n"
        "for m in ('ray', 'mlflow', 'torch', 'gymnasium', 'stable_baselines3', 'optuna'):\n"
        "    sys.modules[m] = None\n"
        "from pathlib import Path\n"
        "import shadowrl.app.evaluate, shadowrl.app.export, shadowrl.app.models\n"
        "import shadowrl.app.optimize, shadowrl.app.simulate, shadowrl.app.train\n"
        "from shadowrl.app.rehearse import RehearseRequest, rehearse\n"
        "from shadowrl.app.validate import ValidateRequest, validate\n"
        f"assert validate(ValidateRequest(files=[Path({str(CHECKOUT)!r})])).ok\n"
        f"s = rehearse(RehearseRequest(file=Path({str(CHECKOUT)!r}), runs=2))\n"
        "print(s.runs, sum(s.outcomes.model_dump().values()))\n"
    )
    assert python_prints(code) == ["2", "2"]


def python_prints(code: str) -> list[str]:
    """What ``code`` prints (split into words), run in a fresh interpreter that must exit 0."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()


def test_simulating_a_scenario_that_names_an_agent_does_not_load_the_rl_stack() -> None:
    """search.yaml names an agent config; reading it imports torch, which only training
    needs: simulate leaves it unread (with the stack installed), and validate without the
    stack still passes the scenario."""
    search = str(ROOT / "envs" / "search.yaml")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from shadowrl.app.simulate import SimulateRequest, simulate\n"
        f"simulate(SimulateRequest(file=Path({search!r}), seed=1))\n"
        "print('torch' in sys.modules, 'stable_baselines3' in sys.modules)\n"
    )
    assert python_prints(code) == ["False", "False"]
    blocked = (
        "import sys\n"
        "for m in ('torch', 'gymnasium', 'stable_baselines3', 'sb3_contrib'):\n"
        "    sys.modules[m] = None\n"
        "from pathlib import Path\n"
        "from shadowrl.app.validate import ValidateRequest, validate\n"
        f"print(validate(ValidateRequest(files=[Path({search!r})])).ok)\n"
    )
    assert python_prints(blocked) == ["True"]

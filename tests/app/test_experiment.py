"""Experiment files and ``shadowrl train``: load and validate, then one tiny experiment end to
end (Ray replicas, MLflow run, registry and the champion decision) and ``shadowrl export`` of
the registered policy."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner, Result

from shadowrl.app.experiment import load_experiment
from shadowrl.cli.main import app
from shadowrl.core.spec import SpecError

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
AGENT = ROOT / "agents" / "maskable_ppo.yaml"
MODEL = "tiny-checkout-rollback"

EXPERIMENT = f"""\
apiVersion: shadowrl/v1
kind: Experiment
metadata: {{name: tiny-checkout}}
scenario: {CHECKOUT}
agent: {AGENT}
timesteps: 512
replicas: 2
seed: 0
evaluation: {{episodes: 3, seed: 10000}}
tracking: {{experiment: tiny-checkout, model: {MODEL}}}
search_trials: 5
"""


def run(*args: Any) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def ok_json(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, (result.stderr[-3000:], repr(result.exception))
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_experiments_load(path: Path) -> None:
    exp = load_experiment(path)
    assert exp.metadata.name == path.stem
    assert exp.path_of(exp.scenario).is_file()
    assert exp.path_of(exp.agent).is_file()
    assert exp.path_of(exp.scenario).parent == ROOT / "envs"  # relative to the file
    assert exp.evaluation.episodes >= 1 and exp.replicas >= 1
    if exp.sweep is not None:
        assert exp.sweep.params


def test_paths_are_relative_to_the_experiment_file(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "exps"
    folder.mkdir()
    shutil.copyfile(CHECKOUT, tmp_path / "scenario.yaml")
    (folder / "e.yaml").write_text(EXPERIMENT.replace(str(CHECKOUT), "../scenario.yaml"))
    monkeypatch.chdir(ROOT)  # anywhere else
    exp = load_experiment(folder / "e.yaml")
    assert exp.path_of(exp.scenario) == (tmp_path / "scenario.yaml").resolve()


def test_experiment_objective_overrides_the_agent_env(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(EXPERIMENT)
    exp = load_experiment(path)
    assert exp.objective is None and exp.full_outage_penalty is None
    assert exp.objective_env({}) == {"objective": "budget", "full_outage_penalty": 0.0}
    assert exp.objective_env({"objective": "downtime", "full_outage_penalty": 0.2}) == {
        "objective": "downtime", "full_outage_penalty": 0.2}
    path.write_text(EXPERIMENT + "objective: downtime\nfull_outage_penalty: 0.05\n")
    exp = load_experiment(path)
    assert exp.objective_env({"objective": "budget"}) == {"objective": "downtime",
                                                          "full_outage_penalty": 0.05}
    path.write_text(EXPERIMENT + "objective: uptime\n")
    with pytest.raises(SpecError) as info:
        load_experiment(path)
    assert info.value.problems[0].path == "objective"


def test_an_experiment_may_name_a_real_backend_to_verify_on(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(EXPERIMENT)
    assert load_experiment(path).verify is None  # no real backend: unverified, as before
    path.write_text(EXPERIMENT + "verify: {backend: docker}\n")
    verify = load_experiment(path).verify
    assert verify is not None and verify.backend == "docker" and verify.runs == 3
    path.write_text(EXPERIMENT + "verify: {backend: docker, runs: 0}\n")
    with pytest.raises(SpecError) as info:
        load_experiment(path)
    assert info.value.problems[0].path == "verify.runs"


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


BAD = {
    # name: (text, line containing this, field, words in the message)
    "unknown-key": (EXPERIMENT + "learning_rate: 0.001\n", "learning_rate:", "learning_rate",
                    "unknown"),
    "missing-scenario": (EXPERIMENT.replace(str(CHECKOUT), "nope/checkout.yaml"),
                         "scenario:", "scenario", "no such file"),
    "bad-sweep-range": (EXPERIMENT + "sweep:\n  samples: 2\n  params:\n"
                        "    learning_rate: [1e-3, 1e-4]\n", "params:", "sweep.params",
                        "low <= high"),
    "bad-verify-backend": (EXPERIMENT + "verify: {backend: kubernetes, runs: 1}\n", "verify:",
                           "verify.backend", "'docker'"),
    "verify-runs-beyond-episodes": (EXPERIMENT + "verify:\n  backend: docker\n  runs: 5\n",
                                    "runs: 5", "verify.runs",
                                    "5 is more than evaluation.episodes (3)"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_experiment_names_file_line_and_field(name: str, tmp_path: Path) -> None:
    text, needle, field, words = BAD[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_experiment(path)
    [problem] = info.value.problems
    line = _line_of(text, needle)
    if name == "bad-sweep-range":  # the range's own line would do as well
        assert problem.line in (line, line + 1)
    else:
        assert problem.line == line
    assert problem.file == str(path)
    assert problem.path == field
    assert words in problem.message
    assert str(problem).startswith(f"{path}:{problem.line}: {field}: ")
    # the command says the same, exits 2, no traceback
    result = run("train", path)
    assert result.exit_code == 2
    assert str(problem) in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- bounds


def _experiment(tmp_path: Path, text: str = EXPERIMENT, name: str = "e.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _problem(path: Path, field: str) -> Any:
    with pytest.raises(SpecError) as info:
        load_experiment(path)
    found = [p for p in info.value.problems if p.path == field]
    assert found, str(info.value)
    return found[0]


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "..", ".", "", "x" * 65,
                                  "-lead", "name\n", "caf\u00e9", "$HOME", "C:\\x"])
def test_metadata_name_is_a_safe_slug(tmp_path: Path, name: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The name becomes runs/NAME/...: an absolute or ../ name would write outside it."""
    text = EXPERIMENT.replace("{name: tiny-checkout}", "{name: " + json.dumps(name) + "}")
    path = _experiment(tmp_path, text)
    problem = _problem(path, "metadata.name")
    assert problem.line == _line_of(text, "metadata:")
    assert "invalid name" in problem.message and "no '/', no '..'" in problem.message
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    result = run("train", path)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert list(work.iterdir()) == []  # no runs/ folder, no mlflow.db


@pytest.mark.parametrize("name", ["tiny-checkout", "Run_2.v1", "a..b", "x" * 64])
def test_slug_names_load(tmp_path: Path, name: str) -> None:
    text = EXPERIMENT.replace("{name: tiny-checkout}", "{name: " + json.dumps(name) + "}")
    assert load_experiment(_experiment(tmp_path, text)).metadata.name == name


def test_tracking_names_are_slugs_too(tmp_path: Path) -> None:
    text = EXPERIMENT.replace(f"model: {MODEL}", "model: 'models:/x@champion'")
    assert "invalid name" in _problem(_experiment(tmp_path, text), "tracking.model").message


@pytest.mark.parametrize(("value", "words"), [
    ("''", "expected a file path, got an empty string"),
    ('"a\\x00b"', "control characters"),
    ("x" * 1100, "path too long (1100 characters; the limit is 1024)"),
    ('"' + "/".join(["x" * 300] * 3) + '"', "cannot use"),
    ("/", "not a regular file: /"),
    ("/dev/null", "not a regular file: /dev/null"),
])
def test_scenario_and_agent_paths_are_checked(tmp_path: Path, value: str, words: str) -> None:
    text = EXPERIMENT.replace(f"scenario: {CHECKOUT}", f"scenario: {value}")
    problem = _problem(_experiment(tmp_path, text), "scenario")
    assert words in problem.message, problem.message
    assert problem.line == _line_of(text, "scenario:")


def test_an_oversized_scenario_is_refused_before_it_is_read(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    from shadowrl.app import experiment

    monkeypatch.setattr(experiment, "MAX_FILE_BYTES", 100)
    assert "file too large" in _problem(_experiment(tmp_path), "scenario").message


@pytest.mark.parametrize(("line", "field", "words"), [
    ("seed: -1", "seed", "greater than or equal to 0"),
    ("seed: 4294967296", "seed", "less than or equal to 2147483647"),
    ("replicas: 257", "replicas", "less than or equal to 256"),
    ("replicas: true", "replicas", "valid integer"),
    ("timesteps: 100000000000", "timesteps", "less than or equal to 10000000"),
    ("search_trials: 10001", "search_trials", "less than or equal to 10000"),
    ("evaluation: {episodes: 0, seed: 10000}", "evaluation.episodes", "greater than or equal"),
    ("full_outage_penalty: 1.0e+308", "full_outage_penalty", "less than or equal to 1000000"),
])
def test_numbers_are_bounded(tmp_path: Path, line: str, field: str, words: str) -> None:
    key = line.split(":")[0]
    text = "\n".join(ln for ln in EXPERIMENT.splitlines() if not ln.startswith(key + ":"))
    text += f"\n{line}\n"
    problem = _problem(_experiment(tmp_path, text), field)
    assert words in problem.message, problem.message
    assert problem.line == _line_of(text, line)


def _agent(tmp_path: Path, **changes: Any) -> Path:
    data = yaml.safe_load(AGENT.read_text())
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_agent_is_checked_as_the_experiment_runs_it(tmp_path: Path) -> None:
    """Valid with its own 4 envs (64 x 4 = 256 >= batch 256), invalid with 1 replica."""
    agent = _agent(tmp_path, hyperparameters={"n_steps": 64})
    text = EXPERIMENT.replace(f"agent: {AGENT}", f"agent: {agent}").replace(
        "replicas: 2", "replicas: 1")
    problem = _problem(_experiment(tmp_path, text), "agent")
    assert problem.message.startswith(f"{agent}: hyperparameters.batch_size: batch_size 256 is "
                                      "larger than n_steps x n_envs = 64")
    assert problem.line == _line_of(text, "agent:")
    # the experiment's timesteps count too: 10M steps at eval.freq 5000 x 50 episodes
    text = EXPERIMENT.replace("timesteps: 512", "timesteps: 10000000")
    assert "more than 100000 episodes" in _problem(_experiment(tmp_path, text), "agent").message


def test_an_agent_incident_must_be_the_scenarios(tmp_path: Path) -> None:
    agent = _agent(tmp_path, env={"incident": "no-such-incident"})
    text = EXPERIMENT.replace(f"agent: {AGENT}", f"agent: {agent}")
    problem = _problem(_experiment(tmp_path, text), "agent")
    assert "'no-such-incident' is not an incident of scenario 'checkout'" in problem.message


SWEEPS = {
    "unknown": ("    learnig_rate: [1.0e-4, 1.0e-3]", "sweep.params.learnig_rate",
                "does not accept 'learnig_rate'"),
    "range-out": ("    learning_rate: [0, 1.0e-3]", "sweep.params.learning_rate",
                  "0: hyperparameters.learning_rate: must be in (0, 1]"),
    "int-range": ("    n_steps: [64.5, 512]", "sweep.params.n_steps",
                  "n_steps is a whole number: give the range as whole numbers"),
    "choice-out": ("    gamma: {choices: [0.9, 1.5]}", "sweep.params.gamma", "1.5: "),
    "alone": ("    n_steps: {choices: [16, 256]}", "sweep.params.n_steps",
              "16: hyperparameters.batch_size: batch_size 256 is larger than n_steps x n_envs"),
    "combination": ("    n_steps: {choices: [128, 256]}\n    batch_size: {choices: [128, 512]}",
                    "sweep.params", "the combination n_steps=128, batch_size=512 at 512 "
                    "timesteps: hyperparameters.batch_size: batch_size 512 is larger"),
    "strings": ("    learning_rate: [1e-4, x]", "sweep.params", "two finite numbers"),
    "choices": ("    ent_coef: {choices: [" + ", ".join(["0.0"] * 65) + "]}", "sweep.params",
                "at most 64 choices"),
}


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_sweep_values_are_checked_against_the_agent(tmp_path: Path, name: str) -> None:
    line, field, words = SWEEPS[name]
    text = EXPERIMENT + "sweep:\n  samples: 2\n  params:\n" + line + "\n"
    problem = _problem(_experiment(tmp_path, text), field)
    assert words in problem.message, problem.message


def test_sweep_ranges_written_1e_4_load_and_whole_numbers_draw_integers(tmp_path: Path) -> None:
    text = (EXPERIMENT + "sweep:\n  samples: 2\n  params:\n    learning_rate: [1e-4, 1e-3]\n"
            "    n_steps: [128, 256]\n    n_epochs: [1, 20]\n")
    exp = load_experiment(_experiment(tmp_path, text))
    assert exp.sweep is not None and exp.sweep.params["learning_rate"] == [1e-4, 1e-3]
    pytest.importorskip("ray")
    from ray.tune.search.sample import Float, Integer

    from shadowrl.app.experiment import _search_space

    space = _search_space(exp.sweep, "maskable_ppo")
    assert isinstance(space["learning_rate"], Float)
    assert isinstance(space["n_steps"], Integer) and isinstance(space["n_epochs"], Integer)
    assert {space["n_steps"].sample() for _ in range(20)} <= set(range(128, 257))


# --------------------------------------------------------------------------- train end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path,
            ray_local: Any) -> dict[str, Any]:
    """``shadowrl train`` twice on the same experiment (one migrated store, cwd in a tmp
    folder), then ``shadowrl export`` of the champion.

    torch's global generator is re-seeded before each run: ``train`` builds the network
    before seeding, so the initial weights depend on the process's torch state (see
    test_training_is_reproducible_without_reseeding_torch). Seeded, the two runs are
    identical, which is what "a second identical run" means here.
    """
    folder = tmp_path_factory.mktemp("experiment")
    db = folder / "mlflow.db"
    shutil.copyfile(mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    assert uri.startswith("sqlite:////")
    exp = folder / "tiny.yaml"
    exp.write_text(EXPERIMENT)
    out: dict[str, Any] = {"folder": folder, "uri": uri, "runs": []}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored (unset) afterwards
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            for _ in range(2):
                torch.manual_seed(0)
                out["runs"].append(ok_json(run("train", exp, "--tracking-uri", uri, "--json")))
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            out["export"] = run("export", f"models:/{MODEL}/1", "--format", "argo")
            out["bad_ray"] = run("train", exp, "--tracking-uri", uri, "--ray-address",
                                 "127.0.0.1:1", "--json")
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    out["client"] = MlflowClient(tracking_uri=uri)
    return out


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    files: list[str] = []
    for item in client.list_artifacts(run_id, path):
        files += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return files


def test_train_registers_the_first_version_and_decides_with_evidence(trained) -> None:
    first = trained["runs"][0]
    assert first["experiment"] == "tiny-checkout"
    assert first["tracking_uri"] == trained["uri"]
    assert first["model"] == MODEL and first["version"] == "1"
    assert set(first["methods"]) == set(first["budget_burn"]) == {"configured", "best_static",
                                                                  "rl"}
    assert first["objective"] == "budget"
    decision = first["champion"]
    # 3 held-out incidents cannot show a significant reduction: a 512-step policy is not
    # made champion on that evidence, even without a champion to beat
    assert decision["promoted"] is False and decision["champion_version"] == ""
    assert decision["seeds"] == "10000+3"
    assert set(decision["recovered"]) == set(decision["budget_burn"]) == {
        "new", "configured", "best_static"}
    assert decision["budget_burn"]["new"] == pytest.approx(first["budget_burn"]["rl"]["mean"],
                                                           abs=1e-7)
    assert decision["reason"].startswith("not promoted")
    assert decision["p_value"] is not None and "wilcoxon" in decision["test"]
    assert decision["sources"] == {"new": f"run {first['run_id']}"}  # nothing re-evaluated
    # outputs under the working directory (a tmp folder), none in the repo
    out = Path(first["out"])
    assert out.is_absolute() and out.is_relative_to(trained["folder"].resolve())
    assert Path(first["comparison"]).is_file()
    assert not (ROOT / "runs" / "tiny-checkout").exists()


def test_train_logs_metrics_params_and_artifacts(trained) -> None:
    client: MlflowClient = trained["client"]
    first = trained["runs"][0]
    run_ = client.get_run(first["run_id"])
    metrics, params = run_.data.metrics, run_.data.params
    assert metrics["eval_holdout_downtime_mean"] == pytest.approx(
        first["methods"]["rl"]["mean"])
    # which held-out incidents: constants of the run, so params (integrations.mlflow)
    assert params["eval_holdout_seed"] == "10000" and params["eval_holdout_episodes"] == "3"
    for q in ("mean", "p50", "p95", "max"):
        assert metrics[f"eval_holdout_budget_burn_{q}"] == pytest.approx(
            first["budget_burn"]["rl"][q])
        assert f"eval_holdout_bad_requests_{q}" in metrics
    assert metrics["holdout_configured_budget_burn_mean"] == pytest.approx(
        first["budget_burn"]["configured"]["mean"])
    assert params["scenario_hash"] and params["git_commit"]
    assert params["replicas"] == "2"
    names = {Path(p).name for p in _artifacts(client, first["run_id"])}
    assert {"report.html", "comparison.md", "procedure.yaml", "eval_holdout.json",
            "episodes.json"} <= names
    tags = run_.data.tags  # the champion decision, on the run and on the version
    assert tags["shadowrl.promotion"].startswith("not promoted")
    assert tags["shadowrl.promotion.test"] == first["champion"]["test"]
    version_tags = client.get_model_version(MODEL, "1").tags
    assert version_tags["shadowrl.promotion"] == tags["shadowrl.promotion"]
    assert float(version_tags["shadowrl.promotion.p_value"]) == pytest.approx(
        first["champion"]["p_value"])
    table = (trained["folder"] / first["comparison"]).read_text()
    for method in ("configured", "best_static", "rl"):
        assert f"| {method} |" in table


def test_second_identical_run_is_not_promoted_either(trained) -> None:
    client: MlflowClient = trained["client"]
    first, second = trained["runs"]
    assert second["version"] == "2"
    assert second["methods"] == first["methods"]  # identical runs, identical held-out numbers
    decision = second["champion"]
    assert decision["new"] == first["champion"]["new"]
    assert decision["p_value"] == first["champion"]["p_value"]
    assert decision["promoted"] is False and decision["champion_version"] == ""
    assert "champion" not in client.get_registered_model(MODEL).aliases
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]


def test_train_prints_the_decision(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from shadowrl.app.models import TrainResult
    from shadowrl.cli import render

    buffer = io.StringIO()
    monkeypatch.setattr(render, "out", Console(file=buffer, width=200, highlight=False))
    render.print_train(TrainResult.model_validate(trained["runs"][0]))
    text = buffer.getvalue()
    assert "champion: none yet (kept)" in text
    assert "decision: not promoted" in text
    assert "paired test on budget burn: wilcoxon" in text and "p = " in text
    assert "recovered" in text and "mean budget burn" in text


def test_export_the_champion_as_argo(trained) -> None:
    result: Result = trained["export"]
    assert result.exit_code == 0, result.stderr
    workflow = yaml.safe_load(result.stdout)
    assert workflow["kind"] == "Workflow"
    assert workflow["apiVersion"].startswith("argoproj.io/")
    assert workflow["metadata"]["annotations"]["shadowrl/scenario"] == "checkout"
    assert workflow["spec"]["templates"]


def test_export_header_states_the_evaluation(trained) -> None:
    header = [line for line in trained["export"].stdout.splitlines()
              if line.startswith("# evaluation:")]
    assert header and "downtime mean" in header[0], header


def test_unreachable_ray_address_exits_2(trained) -> None:
    result: Result = trained["bad_ray"]
    assert result.exit_code == 2
    assert "127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


TINY_AGENT = {
    "algorithm": "maskable_ppo", "policy": "MlpPolicy", "n_envs": 1, "timesteps": 128,
    "hyperparameters": {"n_steps": 64, "batch_size": 64, "n_epochs": 1, "gamma": 1.0},
    "policy_kwargs": {"net_arch": [16]},
    "eval": {"freq": 1_000_000, "episodes": 1, "seed": 1000},
    "checkpoint": {"freq": 1_000_000},
}


def test_training_is_reproducible_without_reseeding_torch(tmp_path: Path) -> None:
    from shadowrl.rl.agents import load_policy, train

    agent = tmp_path / "agent.yaml"
    agent.write_text(yaml.safe_dump(TINY_AGENT))
    weights = []
    for k, torch_state in enumerate((1, 2)):  # whatever ran before in the process
        torch.manual_seed(torch_state)
        result = train(CHECKOUT, agent, tmp_path / f"run{k}", seed=0, progress=False)
        params = load_policy(result.model_path).model.policy.state_dict()
        weights.append({key: value.clone() for key, value in params.items()})
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key

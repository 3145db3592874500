"""``shadowrl train`` with a ``sweep:`` block: a real Ray Tune search on a tiny agent, tracked
in MLflow (one sqlite store in tmp_path) and registered."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from shadowrl.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
MODEL = "tiny-sweep-rollback"
LR_RANGE = (1.0e-4, 1.0e-3)
ENT_CHOICES = [0.0, 0.01]

AGENT = {
    "algorithm": "maskable_ppo",
    "policy": "MlpPolicy",
    "n_envs": 1,
    "timesteps": 256,
    "hyperparameters": {"n_steps": 64, "batch_size": 64, "n_epochs": 1, "gamma": 1.0},
    "policy_kwargs": {"net_arch": [16]},
    "eval": {"freq": 100_000, "episodes": 2, "seed": 100_000},
    "checkpoint": {"freq": 100_000},
}

EXPERIMENT = {
    "apiVersion": "shadowrl/v1",
    "kind": "Experiment",
    "metadata": {"name": "tiny-sweep"},
    "scenario": str(CHECKOUT),
    "agent": "agent.yaml",
    "timesteps": 256,
    "replicas": 1,
    "seed": 0,
    "evaluation": {"episodes": 3, "seed": 10000},
    "tracking": {"experiment": "tiny-sweep", "model": MODEL},
    "search_trials": 3,
    "sweep": {"samples": 2, "timesteps": 256,
              "params": {"learning_rate": list(LR_RANGE),
                         "ent_coef": {"choices": ENT_CHOICES}}},
}


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    files: list[str] = []
    for item in client.list_artifacts(run_id, path):
        files += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return files


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path,
          ray_local: Any) -> dict[str, Any]:
    import ray

    @ray.remote(num_cpus=0)
    def where() -> str:
        import shadowrl

        return shadowrl.__file__

    # Tune runs the trials in Ray workers: they must import this checkout of shadowrl, not
    # another installed copy (the editable install may point elsewhere).
    worker_pkg = Path(ray.get(where.remote())).resolve()
    assert worker_pkg.is_relative_to(ROOT), (
        f"Ray workers import shadowrl from {worker_pkg}, not from {ROOT}")

    folder = tmp_path_factory.mktemp("sweep")
    db = folder / "mlflow.db"
    shutil.copyfile(mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    assert uri.startswith("sqlite:////")
    (folder / "agent.yaml").write_text(yaml.safe_dump(AGENT))
    (folder / "exp.yaml").write_text(yaml.safe_dump(EXPERIMENT, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", uri)  # recorded: restored after the fixture
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # no RAY_AIR_NEW_OUTPUT / TUNE_DISABLE_AUTO_CALLBACK_LOGGERS: Tune runs as it would
        # for a user, which is what test_train_json_stdout_is_one_object checks
        try:
            result = CliRunner().invoke(app, ["train", "exp.yaml", "--tracking-uri", uri,
                                              "--json"])
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    assert result.exit_code == 0, (result.stderr[-4000:], repr(result.exception))
    return {"result": last_json_object(result.stdout), "stdout": result.stdout,
            "folder": folder, "uri": uri, "client": MlflowClient(tracking_uri=uri),
            "stderr": result.stderr}


def last_json_object(stdout: str) -> dict[str, Any]:
    """The JSON object ``--json`` printed (indent 2: it starts on a line of its own)."""
    start = stdout.rfind("\n{\n") + 1 if not stdout.startswith("{") else 0
    obj, end = json.JSONDecoder().raw_decode(stdout, start)
    assert stdout[end:].strip() == ""
    return obj


def test_train_json_stdout_is_one_object(swept: dict[str, Any]) -> None:
    assert json.loads(swept["stdout"]) == swept["result"]


def test_sweep_runs_the_declared_trials(swept: dict[str, Any]) -> None:
    res = swept["result"]
    sweep = res["sweep"]
    assert len(sweep["trials"]) == 2
    for trial in [*sweep["trials"], sweep]:
        params = trial["params"]
        assert set(params) == {"learning_rate", "ent_coef"}
        assert LR_RANGE[0] <= params["learning_rate"] <= LR_RANGE[1]
        assert params["ent_coef"] in ENT_CHOICES
        assert math.isfinite(trial["cost"]) and trial["cost"] >= 0
        assert trial["downtime"] >= 0
    assert sweep["cost"] == min(t["cost"] for t in sweep["trials"])
    best = next(t for t in sweep["trials"] if t["cost"] == sweep["cost"])
    assert best["params"] == sweep["params"]
    # the best trial's policy is what was evaluated and registered
    policy = Path(sweep["policy"])
    assert policy.is_file() and policy.is_relative_to(Path(res["out"]) / "sweep")
    assert "sweep: 2 trials of 256 timesteps" in swept["stderr"]


def test_sweep_is_tracked_and_registered(swept: dict[str, Any]) -> None:
    res, client = swept["result"], swept["client"]
    assert res["tracking_uri"] == swept["uri"]
    run = client.get_run(res["run_id"])
    assert run.info.status == "FINISHED"
    files = _artifacts(client, res["run_id"])
    assert "sweep.json" in files
    local = client.download_artifacts(res["run_id"], "sweep.json",
                                      str(swept["folder"] / "dl"))
    logged = json.loads(Path(local).read_text())
    assert logged == {"trials": res["sweep"]["trials"]}
    # the run trained with the best trial's hyperparameters
    lr = run.data.params["agent.hyperparameters.learning_rate"]
    assert float(lr) == pytest.approx(res["sweep"]["params"]["learning_rate"])
    ent = run.data.params["agent.hyperparameters.ent_coef"]
    assert float(ent) == res["sweep"]["params"]["ent_coef"]
    assert run.data.metrics["train_wall_s"] == 0.0  # no second training after the sweep
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert [str(v.version) for v in versions] == ["1"] == [res["version"]]
    assert versions[0].run_id == res["run_id"]
    # a few held-out incidents are no evidence of a lower budget burn than the configured
    # procedure's: registered, not made champion (tests/integrations covers promotion)
    assert res["champion"]["promoted"] is False and res["champion"]["p_value"] >= 0.05
    assert "champion" not in client.get_registered_model(MODEL).aliases
    assert client.get_model_version(MODEL, "1").tags["shadowrl.promotion"].startswith(
        "not promoted")
    for name in ("report.html", "profiles.parquet", "procedure.yaml", "summary.json"):
        assert name in files, (name, files)
    assert set(res["methods"]) >= {"configured", "best_static", "rl"}


def test_sweep_outputs_stay_in_the_out_folder(swept: dict[str, Any]) -> None:
    out = Path(swept["result"]["out"])
    assert out.is_relative_to(swept["folder"])
    trials = sorted(p for p in (out / "sweep").iterdir() if p.is_dir())
    assert len(trials) == 2 and all((t / "policy.zip").is_file() for t in trials)
    assert (out / "tune").is_dir()
    assert not (ROOT / "runs" / "tiny-sweep").exists()
    assert os.path.realpath(Path.cwd()) != os.path.realpath(swept["folder"])  # restored

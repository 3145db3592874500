"""Concurrent champion decisions and concurrent first use of a fresh SQLite store, each with
two real processes started together on a real MLflow store.

The per-seed evidence is synthetic (an ``eval_holdout.json`` per version's run, as
``train`` logs it), so significance is known in advance: version 2 is clearly better than
version 1, version 3 clearly better than both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest

from shadowrl.integrations import mlflow as tracking

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
SEED, N = 20_000, 20
ROUNDS = 3  # races per test: one pair of processes, a fresh model (or store) per round
LEVELS = {"1": 0.04, "2": 0.03, "3": 0.015}  # mean budget burn of each version


def _burns(level: float) -> list[float]:
    wiggle = np.sin(np.arange(N) * 1.7)
    return [float(level + 0.005 * w) for w in wiggle - wiggle.mean()]


def _record(level: float) -> dict[str, Any]:
    burns = _burns(level)
    return {"seed": SEED, "episodes": N, "outcomes": ["recovered"] * N, "budget_burn": burns,
            "downtime_s": [100.0 * b for b in burns]}


CONFIGURED = _record(0.08)


def _children(script: str, args: list[list[str]], env: dict[str, str], cwd: Path,
              go: Any, rounds: int, timeout: float = 300.0) -> list[list[dict[str, Any]]]:
    """Start one process per argument list (its first argument is its index: it touches
    ``ready-<index>-<round>`` at the barrier), release them together ``rounds`` times by
    creating ``go(r)``, and return each one's JSON lines."""
    procs = [subprocess.Popen([sys.executable, "-c", script, *a], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a in args]
    try:
        for r in range(rounds):
            ready = [cwd / f"ready-{k}-{r}" for k in range(len(procs))]
            deadline = time.monotonic() + timeout
            while not all(p.exists() for p in ready):  # both wait at the barrier
                if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                    for p in procs:
                        if p.poll() is None:
                            p.kill()
                    errors = [p.communicate()[1][-3000:] for p in procs]
                    pytest.fail(f"a child stopped before round {r}: {errors}")
                time.sleep(0.05)
            go(r).touch()
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
    return [[json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
            for stdout, _ in outs]


def _env(uri: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri,
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


# --------------------------------------------------------------------------- promotion

PROMOTER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from shadowrl.integrations import mlflow as tracking

    k, version, rounds, configured = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    baselines = {"configured": json.loads(Path(configured).read_text())}
    tracking.configure()
    for r in range(rounds):
        Path(f"ready-{k}-{r}").touch()
        while not Path(f"go-{r}").exists():
            time.sleep(0.002)
        result = tracking.promote_if_better(f"race{r}", version, scenario=sys.argv[5],
                                            eval_seed=20000, episodes=20, baselines=baselines)
        print(json.dumps({"round": r, "version": version, **result}), flush=True)
""")


def _version(client: Any, experiment_id: str, name: str, level: float) -> str:
    with mlflow.start_run(experiment_id=experiment_id) as run:
        tracking.log_per_seed(_record(level))
    return str(client.create_model_version(name, source=run.info.artifact_uri,
                                           run_id=run.info.run_id).version)


def test_concurrent_promotions_each_compare_with_the_champion_of_the_moment(
        mlflow_store: Any, tmp_path: Path) -> None:
    """Two processes decide at the same moment, for versions 2 and 3, with version 1
    champion. Unserialised, both compare with version 1, both win, and whichever writes the
    alias last is champion: version 2 half of the time. Serialised, one decides first and
    the other compares with its outcome, so version 3 ends up champion every time."""
    client = mlflow_store.client
    for r in range(ROUNDS):
        name = f"race{r}"
        client.create_registered_model(name)
        for version, level in LEVELS.items():
            assert _version(client, mlflow_store.experiment_id, name, level) == version
        client.set_registered_model_alias(name, "champion", "1")
    configured = tmp_path / "configured.json"
    configured.write_text(json.dumps(CONFIGURED))
    runs = _children(PROMOTER, [["0", "2", str(ROUNDS), str(configured), str(CHECKOUT)],
                                ["1", "3", str(ROUNDS), str(configured), str(CHECKOUT)]],
                     _env(mlflow_store.uri), tmp_path, lambda r: tmp_path / f"go-{r}", ROUNDS)
    mean = {v: float(np.mean(_burns(level))) for v, level in LEVELS.items()}
    for r in range(ROUNDS):
        two, three = runs[0][r], runs[1][r]
        assert (two["round"], three["round"]) == (r, r)
        champion = client.get_model_version_by_alias(f"race{r}", "champion")
        assert str(champion.version) == "3", (two["reason"], three["reason"])
        assert three["promoted"] and three["champion_version"] == "3"
        # each decision compared with the champion current when it decided
        if two["promoted"]:  # 2 went first: 2 beat 1, then 3 beat 2
            assert two["old"] == pytest.approx(mean["1"])
            assert three["old"] == pytest.approx(mean["2"])
            assert "than version 2" in three["reason"] or "for version 2" in three["reason"]
        else:  # 3 went first: 2 then faced 3 and lost
            assert three["old"] == pytest.approx(mean["1"])
            assert two["old"] == pytest.approx(mean["3"])
            assert two["champion_version"] == "3"
            assert "version 3" in two["reason"]
        tags = {v: client.get_model_version(f"race{r}", v).tags for v in ("2", "3")}
        assert tags["3"]["shadowrl.promotion.promoted"] == "true"
        assert tags["2"]["shadowrl.promotion.promoted"] == str(two["promoted"]).lower()
    assert (Path(str(mlflow_store.path) + ".promotion.lock")).exists()


def test_promotion_lock_serialises_holders(mlflow_store: Any, tmp_path: Path) -> None:
    """The lock itself: a second holder waits for the first, and gives up after its
    timeout while the first still holds it."""
    client = mlflow_store.client
    path = Path(str(mlflow_store.path) + ".promotion.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pathlib import Path
            from shadowrl.integrations.mlflow import file_lock
            with file_lock(Path({str(path)!r})):
                Path("held").touch()
                time.sleep(3)
        """)], cwd=tmp_path, env=_env(mlflow_store.uri))
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "held").exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(TimeoutError, match="still held"):
            with tracking.promotion_lock("any", client, timeout_s=0.5):
                pass
        start = time.monotonic()
        with tracking.promotion_lock("any", client, timeout_s=60) as how:
            waited = time.monotonic() - start  # until the holder's 3 s were over
        assert how.startswith("file lock") and waited > 1.0
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()


def test_registry_lease_serialises_without_a_file(mlflow_server: str, monkeypatch) -> None:
    """A tracking server has no file to lock: the lease tag is taken, read back, released,
    and a second taker waits while it is held."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setattr(tracking, "LEASE_SETTLE_S", 0.2)
    tracking.configure(mlflow_server)
    try:
        client = mlflow.MlflowClient()
        client.create_registered_model("leased")
        with tracking.promotion_lock("leased", client) as how:
            assert how.startswith("registry lease")
            token = client.get_registered_model("leased").tags[tracking.LEASE_TAG]
            assert f":{os.getpid()} until " in token
            with pytest.raises(TimeoutError, match="deciding its champion"):
                with tracking.promotion_lock("leased", client, timeout_s=0.5):
                    pass
        assert tracking.LEASE_TAG not in client.get_registered_model("leased").tags
        # an expired lease (a crashed holder) is taken over
        client.set_registered_model_tag("leased", tracking.LEASE_TAG,
                                        f"dead host:1 until {time.time() - 1:.0f}")
        with tracking.promotion_lock("leased", client, timeout_s=10):
            held = client.get_registered_model("leased").tags[tracking.LEASE_TAG]
            assert not held.startswith("dead ")
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- a fresh store

FIRST_USE = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import mlflow
    from shadowrl.integrations import mlflow as tracking

    k, rounds = sys.argv[1], int(sys.argv[2])
    for r in range(rounds):
        Path(f"ready-{k}-{r}").touch()
        while not Path(f"go-{r}").exists():
            time.sleep(0.002)
        uri = tracking.configure(f"sqlite:///{Path.cwd() / f'fresh{r}' / 'mlflow.db'}")
        experiment_id = tracking.use_experiment("both")
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_metric("train_reward_mean", float(r), step=64)
        print(json.dumps({"round": r, "run": run.info.run_id, "uri": uri}), flush=True)
""")


def test_two_processes_open_a_fresh_store_at_once(tmp_path: Path) -> None:
    """MLflow creates and migrates a SQLite store on first use, and two processes doing it
    at once used to fail (``duplicate column name: step``, ``table ... already exists``);
    opened through ``configure`` they queue on a lock and both runs land."""
    runs = _children(FIRST_USE, [["0", str(ROUNDS)], ["1", str(ROUNDS)]],
                     {**os.environ, "PYTHONPATH": str(ROOT)}, tmp_path,
                     lambda r: tmp_path / f"go-{r}", ROUNDS)
    for r in range(ROUNDS):
        a, b = runs[0][r], runs[1][r]
        assert a["uri"] == b["uri"] and a["run"] != b["run"]
        client = mlflow.MlflowClient(tracking_uri=a["uri"])
        experiment = client.get_experiment_by_name("both")
        found = {run.info.run_id: run for run in client.search_runs([experiment.experiment_id])}
        assert set(found) == {a["run"], b["run"]}
        assert all(run.info.status == "FINISHED" and run.data.metrics["train_reward_mean"] == r
                   for run in found.values())
        assert (tmp_path / f"fresh{r}" / "mlflow.db.schema.lock").exists()

"""The demo runner: one output folder per scenario, the stages it runs, and which registered
version it evaluates and exports."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from shadowrl.demo import (
    after_training,
    closing_message,
    default_out,
    stages,
    trained_model_uri,
)


def test_each_scenario_gets_its_own_output_folder() -> None:
    assert default_out("envs/checkout.yaml") == Path("out/demo/checkout")
    assert default_out("envs/payments.yaml") == Path("out/demo/payments")


def test_stages_write_under_the_output_folder() -> None:
    out = Path("out/demo/payments")
    plan = [*stages("envs/payments.yaml", "experiments/payments-maskable-ppo.yaml", out, True),
            *after_training("envs/payments.yaml", "models:/payments-rollback/3", out, True)]
    assert [s[0] for s in plan] == ["validate", "simulate", "rehearse", "optimize", "train",
                                    "evaluate", "export"]
    written = [s[s.index("--out") + 1] for s in plan if "--out" in s]
    assert written and all(Path(w).is_relative_to(out) for w in written)
    assert "models:/payments-rollback/3" in plan[-1]


def test_the_champion_is_used_when_there_is_one_else_the_new_version() -> None:
    def result(champion: str) -> str:
        return json.dumps({"model": "checkout-rollback", "version": "4",
                           "champion": {"champion_version": champion}})

    assert trained_model_uri(result("2")) == "models:/checkout-rollback@champion"
    assert trained_model_uri(result("")) == "models:/checkout-rollback/4"


def test_the_closing_message_says_the_workflow_is_the_best_static_procedure() -> None:
    out = Path("out/demo/payments")
    text = closing_message(out, "models:/payments-rollback@champion")
    assert (f"{out / 'rollback-workflow.yaml'} is the best static procedure found while "
            f"training models:/payments-rollback@champion") in text
    assert "cannot be exported as a fixed procedure yet" in text


def _fake_summaries(argv: list[str]) -> int:
    """What `shadowrl rehearse --out DIR` leaves: a summary.json."""
    out = Path(argv[argv.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    docker = "docker" in argv
    (out / "summary.json").write_text(json.dumps({
        "runs": 2, "outcomes": {"recovered": 1 if docker else 2},
        "downtime_s": {"mean": 300.0 if docker else 250.0},
        "bad_requests": {"mean": 9000.0}, "budget_burn": {"mean": 0.008}}))
    return 0


def test_the_real_shadow_stage_rehearses_both_procedures_on_both_backends(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import types

    import shadowrl.demo as demo

    calls: list[list[str]] = []

    def fake_call(argv: list[str], **_kw: object) -> int:
        calls.append(list(argv))
        return _fake_summaries(argv)

    monkeypatch.setattr(demo, "docker_reachable", lambda: None)
    monkeypatch.setattr(demo, "subprocess", types.SimpleNamespace(
        call=fake_call, DEVNULL=subprocess.DEVNULL))
    assert demo.real_shadow_stage("envs/checkout.yaml", tmp_path, ["python"]) == 0
    stages = [argv[1:] for argv in calls]
    backends = [s[s.index("--backend") + 1] for s in stages]
    assert backends == ["docker", "docker", "sim", "sim"]
    # the same incidents everywhere: same seed and runs
    assert {(s[s.index("--seed") + 1], s[s.index("--runs") + 1]) for s in stages} == {
        (demo.REAL_SEED, demo.REAL_RUNS)}
    optimized = [s for s in stages if "--procedure" in s]
    assert len(optimized) == 2 and all(
        s[s.index("--procedure") + 1] == str(tmp_path / "optimize" / "procedure.yaml")
        for s in optimized)
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines()]
    assert ["configured", "docker", "1", "of", "2", "300s", "9000", "0.80%"] in rows
    assert ["optimized", "sim", "2", "of", "2", "250s", "9000", "0.80%"] in rows


def test_without_docker_the_real_stage_says_how_to_enable_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import shadowrl.demo as demo

    monkeypatch.setattr(demo, "docker_reachable", lambda: "no Docker daemon answers")
    assert demo.real_shadow_stage("envs/checkout.yaml", tmp_path, ["python"]) == 0
    printed = capsys.readouterr().out
    assert "Skipping the real-shadow stage: no Docker daemon answers" in printed
    assert "apt-get install -y docker.io debootstrap" in printed

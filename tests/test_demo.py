"""The demo runner: one output folder per scenario, the stages it runs, and which registered
version it evaluates and exports."""

from __future__ import annotations

import json
import subprocess
import types
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


def test_the_closing_message_says_the_workflow_is_the_best_static_procedure(
        tmp_path: Path) -> None:
    out = tmp_path / "out/demo/payments"
    text = closing_message(out, "models:/payments-rollback@champion")
    assert (f"{out / 'rollback-workflow.yaml'} is the best static procedure found while "
            f"training models:/payments-rollback@champion") in text
    assert f"{out / 'train' / 'runbook.yaml'} says why" in text
    # a runbook with branches is what the champion exports, and the message says so
    (out / "train").mkdir(parents=True)
    (out / "train" / "runbook.json").write_text(json.dumps({"branches": 4}))
    text = closing_message(out, "models:/payments-rollback@champion")
    assert (f"{out / 'rollback-workflow.yaml'} is the runbook {out / 'train' / 'runbook.yaml'}"
            f" distilled from models:/payments-rollback@champion (4 branches") in text


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


def test_the_live_link_syncs_rehearses_then_checks_under_the_output_folder() -> None:
    import shadowrl.demo as demo

    out = Path("out/demo/payments")
    plan = demo.live_stages(out, "live-demo-1")
    assert [s[0] for s in plan] == ["sync", "rehearse", "sync"]
    scenario = str(out / "live" / "scenario.yaml")
    assert plan[0] == ["sync", "docker:live-demo-1", "--scenario", scenario]
    assert plan[1][1] == scenario and Path(plan[1][plan[1].index("--out") + 1]).is_relative_to(
        out / "live")
    assert plan[2] == [*plan[0], "--check"]
    # only the check after the release is expected to find drift
    assert [demo.expected_exit(s) for s in plan] == [0, 0, demo.DRIFT_EXIT] == [0, 0, 1]


class _FakeLive:
    """What the live-link stage uses of a DemoDeployment, recording the calls."""

    def __init__(self, events: list[str]) -> None:
        self.events, self.project = events, "live-demo-test"
        self.client = types.SimpleNamespace(close=lambda: events.append("client closed"))

    def start_shop(self, web_version: str) -> None:
        self.events.append(f"start web {web_version}")

    def release_web(self, version: str) -> None:
        self.events.append(f"release web {version}")

    def close(self) -> None:
        self.events.append("closed")


def _run_live_stage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                    codes: dict[str, int | BaseException],
                    events: list[str] | None = None) -> tuple[int, list[str]]:
    """The live-link stage with Docker and the commands faked: ``codes`` maps a command
    (``sync``, ``rehearse``, ``check``) to its exit code or the exception it raises;
    ``events`` records the deployment's calls and the commands, in order."""
    import shadowrl.demo as demo

    events = [] if events is None else events

    def fake_call(argv: list[str], **kw: object) -> int:
        stage = argv[1:]
        name = "check" if "--check" in stage else stage[0]
        events.append(f"$ {name}")
        env = kw["env"]
        assert isinstance(env, dict) and env["DOCKER_HOST"] == "unix:///fake.sock"
        result = codes.get(name, 0)
        if isinstance(result, BaseException):
            raise result
        return result

    monkeypatch.setattr(demo, "docker_reachable", lambda: None)
    monkeypatch.setattr(demo, "open_live_deployment",
                        lambda: (_FakeLive(events), "unix:///fake.sock"))
    monkeypatch.setattr(demo, "subprocess", types.SimpleNamespace(call=fake_call))
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "scenario.yaml").write_text("a previous demo's scenario")
    code = demo.live_link_stage(tmp_path, ["python"])
    assert not (tmp_path / "live" / "scenario.yaml").exists()  # sync creates it anew
    return code, events


def test_the_live_link_expects_drift_after_the_release(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    code, events = _run_live_stage(monkeypatch, tmp_path, {"check": 1})
    assert code == 0
    assert events == ["start web v1", "$ sync", "$ rehearse", "release web v2", "$ check",
                      "closed", "client closed"]


@pytest.mark.parametrize(("codes", "expected"), [
    ({"check": 0}, 1),  # no drift seen after a release: the stage failed
    ({"check": 2}, 2),
    ({"sync": 1, "check": 1}, 1),  # the first sync must write, not report
    ({"rehearse": 3, "check": 1}, 3),
])
def test_the_live_link_fails_on_any_other_exit_and_still_cleans_up(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, codes: dict[str, int],
        expected: int) -> None:
    code, events = _run_live_stage(monkeypatch, tmp_path, dict(codes))
    assert code == expected
    assert events[-2:] == ["closed", "client closed"]


def test_ctrl_c_in_the_live_link_removes_the_live_containers(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    events: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        _run_live_stage(monkeypatch, tmp_path, {"rehearse": KeyboardInterrupt()}, events)
    assert events == ["start web v1", "$ sync", "$ rehearse", "closed", "client closed"]


def test_without_docker_the_live_link_says_how_to_enable_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import shadowrl.demo as demo

    def refuse() -> None:
        raise AssertionError("no live deployment without Docker")

    monkeypatch.setattr(demo, "docker_reachable", lambda: "no Docker daemon answers")
    monkeypatch.setattr(demo, "open_live_deployment", refuse)
    assert demo.live_link_stage(tmp_path, ["python"]) == 0
    printed = capsys.readouterr().out
    assert "Skipping the live-link stage: no Docker daemon answers" in printed
    assert "apt-get install -y docker.io debootstrap" in printed


@pytest.mark.parametrize(("no_real", "live_code"), [(False, 0), (False, 1), (True, 0)])
def test_the_live_link_runs_after_the_real_shadow_unless_no_real(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], no_real: bool, live_code: int) -> None:
    import shadowrl.demo as demo

    order: list[str] = []

    def fake_run(argv: list[str], **_kw: object) -> subprocess.CompletedProcess[str]:
        order.append(argv[3])
        return subprocess.CompletedProcess(argv, 0, stdout=json.dumps(
            {"model": "m", "version": "1", "champion": {"champion_version": ""}}))

    def fake_call(argv: list[str], **_kw: object) -> int:
        order.append(argv[3])
        return 0

    def live_stage(_out: Path, _exe: list[str]) -> int:
        order.append("live-link")
        return live_code

    monkeypatch.setattr(demo, "subprocess", types.SimpleNamespace(
        run=fake_run, call=fake_call, PIPE=subprocess.PIPE))
    monkeypatch.setattr(demo, "real_shadow_stage", lambda *_a: order.append("real") or 0)
    monkeypatch.setattr(demo, "live_link_stage", live_stage)
    out = tmp_path / "demo"
    argv = ["--out", str(out), *(["--no-real"] if no_real else [])]
    assert demo.main(argv) == live_code
    steps = ["validate", "simulate", "rehearse", "optimize", "train", "evaluate", "export"]
    assert order == steps + ([] if no_real else ["real", "live-link"])
    printed = capsys.readouterr().out
    assert ("Done." in printed) == (live_code == 0)
    if live_code == 0:
        assert f"the live link's synced scenario (scenario.yaml, with its drift check) and its " \
               f"rehearsal are in {out / 'live'}" in " ".join(printed.split())


def test_the_readme_names_the_live_link_stages_after_the_real_shadow() -> None:
    """tests/test_readme.py checks the stages the demo runs without Docker against the
    README's `make demo` comment; the live link's stages (sync, rehearse, sync) follow the
    real shadow there."""
    import re

    import shadowrl.demo as demo
    from tests.readme import markdown as md

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in md.blocks(readme) if re.search(r"^make demo\b", b.body, re.M))
    comment = md.norm(re.split(r"^(?!make demo)\S", block.body, flags=re.M)[0])
    after = comment[comment.index("real shadow"):]
    names = [s[0] for s in demo.live_stages(Path("out"), "p")]
    positions, start = [], 0
    for name in names:
        start = after.find(f" {name}", start) + 1
        assert start, (name, after)
        positions.append(start)
    assert "--check" in after[positions[-1]:]

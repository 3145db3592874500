"""``shadowrl sync`` on the command line: exit codes 0 (in sync, written), 1 (drift with
--check) and 2 (bad input, no traceback)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from shadowrl.cli.commands import Command
from shadowrl.cli.sync import SYNC_HELP, sync_cmd
from shadowrl.core.spec import load_scenario
from shadowrl.rehearsal.runner import rehearse

DATA = Path(__file__).parent / "data"

app = typer.Typer()
app.command("sync", cls=Command, help=SYNC_HELP)(sync_cmd)


@app.callback()
def main() -> None:
    """shadowrl, as main.py registers sync."""


def run(*args: str) -> object:
    return CliRunner().invoke(app, ["sync", *args])


@pytest.fixture
def compose(tmp_path: Path) -> Path:
    path = tmp_path / "compose.yaml"
    shutil.copy(DATA / "compose.yaml", path)
    return path


def test_create_then_in_sync_then_drift(compose: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEB_TAG", raising=False)
    scenario = tmp_path / "shop.yaml"
    done = run(f"compose:{compose}", "--scenario", str(scenario))
    assert done.exit_code == 0, done.output
    assert "created from 4 live component(s)" in done.output
    sc = load_scenario(scenario)
    assert sc.name == "shop" and rehearse(sc, 0).outcome == "recovered"

    done = run(f"compose:{compose}", "--scenario", str(scenario), "--check")
    assert done.exit_code == 0 and "in sync" in done.output

    monkeypatch.setenv("WEB_TAG", "v43")
    before = scenario.read_text()
    done = run(f"compose:{compose}", "--scenario", str(scenario), "--check", "--json")
    assert done.exit_code == 1, done.output
    result = json.loads(done.output)
    assert result["status"] == "drift" and not result["written"]
    assert {(c["component"], c["field"]) for c in result["changes"]} == {
        ("web", "version"), ("web", "image")}
    assert scenario.read_text() == before  # --check never writes

    done = run(f"compose:{compose}", "--scenario", str(scenario))
    assert done.exit_code == 0 and "updated: 2 change(s) written" in done.output
    web = load_scenario(scenario).deployment.services[0]
    assert (web.version.live, web.version.previous) == ("v43", "v42")
    assert run(f"compose:{compose}", "--scenario", str(scenario), "--check").exit_code == 0


@pytest.mark.parametrize(("args", "message"), [
    (["nowhere:x"], "SOURCE: expected docker:PROJECT"),
    (["compose:{missing}"], "no such file"),
    (["compose:{compose}", "--check", "--watch"], "--check and --watch"),
    (["compose:{compose}", "--shadow"], "--shadow: only with --watch"),
    (["compose:{compose}", "--interval", "3"], "--interval: only with --watch"),
    (["compose:{compose}", "--kubeconfig", "k"], "--kubeconfig/--context"),
    (["k8s-cluster:x"], "k8s-cluster: takes no value"),
])
def test_bad_input_exits_2(args: list[str], message: str, compose: Path,
                           tmp_path: Path) -> None:
    args = [a.format(compose=compose, missing=tmp_path / "missing.yaml") for a in args]
    done = run(*args, "--scenario", str(tmp_path / "s.yaml"))
    assert done.exit_code == 2, done.output
    assert message in done.output and "Traceback" not in done.output


def test_a_bad_scenario_or_source_file_names_its_line(compose: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text("apiVersion: shadowrl/v1\nkind: Scenario\nmetadata: {name: x}\n"
                        "deployment: {traffic: {rps: 1}, services: []}\n")
    done = run(f"compose:{compose}", "--scenario", str(scenario))
    assert done.exit_code == 2 and f"{scenario}:4: deployment.services" in done.output
    compose.write_text("services:\n  web:\n    image: x\n    scale: lots\n")
    done = run(f"compose:{compose}", "--scenario", str(tmp_path / "new.yaml"))
    assert done.exit_code == 2 and f"{compose}:2: services.web: replicas" in done.output
    done = run(f"compose:{compose}", "--scenario", str(tmp_path / "new.yaml"), "--check")
    assert done.exit_code == 2


def test_a_merge_that_would_not_validate_is_not_written(compose: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.delenv("WEB_TAG", raising=False)
    scenario = tmp_path / "shop.yaml"
    assert run(f"compose:{compose}", "--scenario", str(scenario)).exit_code == 0
    text = scenario.read_text().replace(
        "{name: rollback-web, action: rollback_version, target: web}",
        "{name: rollback-web, action: rollback_version, target: web, settings: {batch: 3}}")
    scenario.write_text(text)
    compose.write_text(compose.read_text().replace("replicas: 3", "replicas: 2"))
    done = run(f"compose:{compose}", "--scenario", str(scenario))
    assert done.exit_code == 2 and "not written" in done.output and "batch" in done.output
    assert scenario.read_text() == text


def test_manifests_source(tmp_path: Path) -> None:
    scenario = tmp_path / "k.yaml"
    done = run(f"k8s:{DATA / 'k8s'}", "--scenario", str(scenario), "--namespace", "default")
    assert done.exit_code == 0, done.output
    sc = load_scenario(scenario)
    assert [s.name for s in sc.deployment.services] == ["web", "api"]
    assert sc.deployment.services[0].flags == ["new-cart"]

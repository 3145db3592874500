"""Export and verification: every export's header carries the procedure's verification on a
real shadow (or says in plain words that it has none), and export refuses a procedure whose
header says it failed verification, writing nothing.

The verifications here ran on the simulator (what the engine offers besides real backends):
the header lines and the refusal do not depend on which backend wrote them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from shadowrl.analysis.summary import summarize
from shadowrl.cli.main import app
from shadowrl.core.plan import configured_plan
from shadowrl.core.spec import Scenario
from shadowrl.export.renderers import FORMATS
from shadowrl.export.sources import load_source
from shadowrl.rehearsal.runner import rehearse
from shadowrl.rehearsal.verification import header_lines, verify_procedures
from shadowrl.rl.optimizer import procedure_yaml
from shadowrl.rl.search import plan_to_procedure

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
COMMAND = "shadowrl optimize envs/checkout.yaml --method search"
SEEDS = [10000, 10001, 10002]


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def _plan(checkout: Scenario, faster: bool) -> list[Any]:
    plan = dict(configured_plan(checkout.procedure))
    if faster:
        plan["revert-web"] = {**(plan["revert-web"] or {}), "batch": 2, "drain": 10.0,
                              "surge": 3}
    return list(plan.items())


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, checkout: Scenario) -> dict[str, Path]:
    """procedure.yaml files as optimize writes them: one verified (passed), one whose
    verification failed (the configured procedure against a faster one, on downtime), and
    one never verified."""
    folder = tmp_path_factory.mktemp("verified-files")
    faster = plan_to_procedure(checkout.procedure, _plan(checkout, True))
    summary = summarize(checkout.name, "best_static", [rehearse(checkout, s) for s in SEEDS])
    passed = verify_procedures(checkout, faster, checkout.procedure, SEEDS, backend="sim",
                               objective="downtime")
    failed = verify_procedures(checkout, checkout.procedure, faster, SEEDS, backend="sim",
                               objective="downtime")
    assert passed.passed and not failed.passed
    out = {}
    for name, plan, verification in (("passed", _plan(checkout, True), passed),
                                     ("failed", _plan(checkout, False), failed),
                                     ("unverified", _plan(checkout, True), None)):
        path = out[name] = folder / f"{name}.yaml"
        path.write_text(procedure_yaml(checkout, plan, summary, COMMAND,
                                       verification=verification))
    out["passed_lines"] = header_lines(passed)  # type: ignore[assignment]
    return out


def test_a_failed_verification_is_refused_and_nothing_is_written(files: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    path = files["failed"]
    line = next(k for k, text in enumerate(path.read_text().splitlines(), start=1)
                if text.startswith("# verification: FAILED"))
    for fmt in FORMATS:
        target = tmp_path / f"out.{fmt}"
        result = run("export", path, "--format", fmt, "--scenario", CHECKOUT, "--out", target,
                     "--json")
        assert result.exit_code == 2, (fmt, result.output)
        assert result.stderr.startswith(
            f"{path}:{line}: verification: this procedure failed verification on the real "
            f"shadow (sim): checkout-rollback is worse than checkout-rollback-optimized on "
            f"sim beyond noise: downtime +"), result.stderr
        assert "export refuses it" in result.stderr and "Traceback" not in result.stderr
        assert result.stdout == "" and not target.exists()


def test_every_format_carries_the_verification(files: dict[str, Any]) -> None:
    lines = files["passed_lines"]
    for fmt in FORMATS:
        result = run("export", files["passed"], "--format", fmt, "--scenario", CHECKOUT)
        assert result.exit_code == 0, result.output
        text = result.stdout
        if fmt == "chaostoolkit":  # the header is the experiment's description
            experiment = json.loads(text)
            text = experiment["description"]
            assert experiment["x-shadowrl"]["verification"]["status"] == "passed"
        header = [line for line in text.splitlines() if "verification" in line]
        for line in lines:  # backend, runs, outcomes, downtime, burn, the gap: as recorded
            assert any(line in shown for shown in header), (fmt, line, header)
        assert "not verified" not in result.stdout


def test_export_json_and_a_re_export_keep_the_verification(files: dict[str, Any],
                                                           tmp_path: Path) -> None:
    exported = tmp_path / "exported.yaml"
    result = run("export", files["passed"], "--format", "yaml", "--scenario", CHECKOUT,
                 "--out", exported, "--json")
    assert result.exit_code == 0, result.output
    v = json.loads(result.stdout)["verification"]
    assert v["status"] == "passed" and v["backend"] == "sim" and v["runs"] == 3
    assert v["seeds"] == SEEDS and v["outcomes"]["recovered"] == 3
    assert set(v["gap"]) == {"downtime_s", "bad_requests", "budget_burn"}
    again = load_source(str(exported), CHECKOUT)
    assert again.verification is not None
    assert again.verification["lines"] == files["passed_lines"]
    assert yaml.safe_load(exported.read_text())["kind"] == "Procedure"


@pytest.mark.parametrize("source", ["unverified", "scenario"])
def test_an_unverified_procedure_says_so_in_plain_words(files: dict[str, Any],
                                                        source: str) -> None:
    path = CHECKOUT if source == "scenario" else files[source]
    args = ["--scenario", CHECKOUT] if source != "scenario" else []
    for fmt in FORMATS:
        result = run("export", path, "--format", fmt, *args, "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["verification"]["status"] == "none"
        assert "verification: none: not verified on a real shadow" in data["text"], fmt

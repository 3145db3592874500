"""The ``shadowrl`` command line (docs/architecture.md, The layers: a public contract)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from shadowrl.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "tests" / "scenarios"
CHECKOUT_YAML = ROOT / "envs" / "checkout.yaml"
ENVS = ["checkout", "payments", "search"]

OUTCOMES = {"recovered", "rollback_failed", "rollback_ineffective"}
TOP_KEYS = {"scenario": str, "backend": str, "incident": str, "seed": int, "outcome": str,
            "breach_at_s": float, "rollback_s": float, "downtime_s": float,
            "failed_requests": float, "bad_requests": float, "budget_burn": float,
            "outage_s": float, "peak_error_rate": float, "restored_s": (float, type(None)),
            "steps": list, "alerts": list}
STEP_KEYS = {"name": str, "status": str, "settings": dict, "start_s": float, "end_s": float,
             "downtime_s": float, "failed_requests": float, "bad_requests": float}
ALERT_KEYS = {"kind", "severity", "step", "message"}


def run(*args: str) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.stdout
    assert "Traceback" not in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception))


def problem_lines(result: Result, path: Path) -> list[str]:
    """stderr lines, each checked to be ``FILE:LINE: [path: ]message``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no problem reported on stderr"
    pattern = re.compile(re.escape(str(path)) + r":(\d+): \S.*")
    for line in lines:
        assert pattern.fullmatch(line), line
    return lines


# --------------------------------------------------------------------------- validate

@pytest.mark.parametrize("name", ENVS)
def test_validate_ok(name: str) -> None:
    path = ROOT / "envs" / f"{name}.yaml"
    result = run("validate", path)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"ok: {path}"
    assert result.stderr == ""


def test_validate_many_files() -> None:
    paths = [ROOT / "envs" / f"{n}.yaml" for n in ENVS]
    paths += sorted(SCENARIOS.glob("*.yaml"))
    result = run("validate", *paths)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [f"ok: {p}" for p in paths]


def _huge_csv() -> bytes:
    # a ~5 MB metrics export passed by mistake: YAML reads it as one long string
    rows = "".join(f"{1700000000 + 60 * i},{(i * 7919) % 1000 / 10:.1f}\n"
                   for i in range(300_000))
    return ("timestamp,value\n" + rows).encode()


BAD_FILES: dict[str, tuple[Any, str]] = {
    "junk-nul.bin": (bytes(range(256)) * 64, "not a text file"),
    "junk-latin1.bin": (bytes(range(128, 256)) * 64, "not UTF-8"),
    "empty.yaml": (b"", "empty"),
    "blank.yaml": (b"\n   \n# only a comment\n", "empty"),
    "list.yaml": (b"- apiVersion: shadowrl/v1\n- kind: Scenario\n", "mapping"),
    "scalar.yaml": (b"42\n", "mapping"),
    "syntax.yaml": (b"apiVersion: shadowrl/v1\nkind: [Scenario\n", "YAML"),
    "huge.yaml": (_huge_csv, "mapping"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_validate_bad_file(tmp_path: Path, name: str) -> None:
    content, words = BAD_FILES[name]
    data = content() if callable(content) else content
    path = tmp_path / name
    path.write_bytes(data)
    if name == "huge.yaml":
        assert 4 * 2**20 < len(data) < 6 * 2**20
    result = run("validate", path)
    assert result.exit_code == 2
    no_traceback(result)
    lines = problem_lines(result, path)
    assert any(words in line for line in lines), lines
    assert "ok:" not in result.stdout


def test_validate_names_line_and_field(tmp_path: Path) -> None:
    text = (ROOT / "envs" / "checkout.yaml").read_text()
    lines = text.splitlines()
    target = next(i for i, line in enumerate(lines) if line.strip().startswith("replicas: 4"))
    lines[target] = lines[target].replace("replicas: 4", "replicas: -4")
    unknown = next(i for i, line in enumerate(lines) if line.strip().startswith("hold: 2m"))
    lines.insert(unknown + 1, "    holdd: 3m")
    path = tmp_path / "checkout.yaml"
    path.write_text("\n".join(lines) + "\n")
    result = run("validate", path)
    assert result.exit_code == 2
    no_traceback(result)
    problems = problem_lines(result, path)
    assert any(p.startswith(f"{path}:{target + 1}: deployment.services[1].replicas: ")
               for p in problems), problems
    assert f"{path}:{unknown + 2}: procedure.verify.holdd: unknown field" in problems


def test_validate_mixed_files(tmp_path: Path) -> None:
    good = ROOT / "envs" / "payments.yaml"
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n")
    missing = tmp_path / "nope.yaml"
    result = run("validate", good, bad, missing)
    assert result.exit_code == 2
    no_traceback(result)
    assert result.stdout.strip() == f"ok: {good}"
    assert {line.split(":")[0] for line in result.stderr.splitlines()} == {str(bad), str(missing)}


def test_validate_directory(tmp_path: Path) -> None:
    result = run("validate", tmp_path)
    assert result.exit_code == 2
    no_traceback(result)
    problem_lines(result, tmp_path)


# --------------------------------------------------------------------------- simulate

def check_contract(data: dict[str, Any]) -> None:
    assert set(data) == set(TOP_KEYS)
    for key, kind in TOP_KEYS.items():
        assert isinstance(data[key], kind), key
    assert data["backend"] == "sim"
    assert data["outcome"] in OUTCOMES
    for step in data["steps"]:
        assert set(step) == set(STEP_KEYS)
        for key, kind in STEP_KEYS.items():
            assert isinstance(step[key], kind), (step["name"], key)
        assert step["status"] in {"ok", "failed", "skipped"}
    names = {s["name"] for s in data["steps"]}
    for alert in data["alerts"]:
        assert set(alert) == ALERT_KEYS
        assert alert["kind"] in {"rollback_failed", "rollback_ineffective", "too_slow",
                                 "new_errors"}
        assert alert["severity"] in {"critical", "warning"}
        assert alert["step"] is None or alert["step"] in names
        assert isinstance(alert["message"], str) and alert["message"]


@pytest.mark.parametrize("name", ENVS)
def test_simulate_json(name: str) -> None:
    path = ROOT / "envs" / f"{name}.yaml"
    result = run("simulate", path, "--json", "--seed", "3")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)  # exactly one JSON document, nothing else on stdout
    assert isinstance(data, dict)
    check_contract(data)
    assert data["scenario"] == name and data["seed"] == 3
    assert json.loads(run("simulate", path, "--json", "--seed", "3").stdout) == data


@pytest.mark.parametrize("name,incident,outcome", [
    ("irreversible", "bad-schema", "rollback_failed"),
    ("external", "upstream-outage", "rollback_ineffective"),
    ("minimal", "bad-release", "recovered"),
])
def test_simulate_outcomes(name: str, incident: str, outcome: str) -> None:
    result = run("simulate", SCENARIOS / f"{name}.yaml", "--json", "--incident", incident)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    check_contract(data)
    assert data["incident"] == incident
    assert data["outcome"] == outcome


def test_simulate_incident_option() -> None:
    path = ROOT / "envs" / "checkout.yaml"
    for incident in ("bad-web-release", "new-checkout-flag", "payment-provider-outage"):
        data = json.loads(run("simulate", path, "--json", "--incident", incident).stdout)
        assert data["incident"] == incident


def test_simulate_unknown_incident() -> None:
    result = run("simulate", ROOT / "envs" / "checkout.yaml", "--incident", "nope")
    assert result.exit_code == 2
    no_traceback(result)
    assert result.stdout == ""
    assert "unknown incident 'nope'" in result.stderr
    assert "bad-web-release" in result.stderr  # lists the known ones
    assert len(result.stderr.strip().splitlines()) == 1


def test_simulate_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: shadowrl/v1\nkind: Scenario\n")
    result = run("simulate", path, "--json")
    assert result.exit_code == 2
    no_traceback(result)
    assert result.stdout == ""
    problem_lines(result, path)


@pytest.mark.parametrize("name", ["checkout", "irreversible"])
def test_simulate_text_mentions_the_outcome(name: str) -> None:
    path = ROOT / "envs" / f"{name}.yaml"
    if not path.exists():
        path = SCENARIOS / f"{name}.yaml"
    data = json.loads(run("simulate", path, "--json", "--seed", "1").stdout)
    result = run("simulate", path, "--seed", "1")
    assert result.exit_code == 0, result.stderr
    no_traceback(result)
    text = result.stdout
    assert data["outcome"] in text
    assert data["incident"] in text
    assert f"downtime {data['downtime_s']:.0f}s" in text
    for alert in data["alerts"]:
        assert alert["kind"] in text


def test_console_script_subprocess() -> None:
    exe = shutil.which("shadowrl") or str(Path(sys.executable).parent / "shadowrl")
    assert Path(exe).exists(), "the shadowrl console script is not installed"
    proc = subprocess.run([exe, "simulate", "envs/payments.yaml", "--json", "--seed", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    check_contract(data)
    assert data == json.loads(run("simulate", ROOT / "envs" / "payments.yaml", "--json",
                                  "--seed", "2").stdout)


def test_validate_rejects_a_huge_many_node_file_quickly(tmp_path: Path) -> None:
    path = tmp_path / "huge-list.yaml"
    path.write_text("".join(f"- {i}\n" for i in range(600_000)))  # ~5 MB, 600k nodes
    exe = shutil.which("shadowrl") or str(Path(sys.executable).parent / "shadowrl")
    proc = subprocess.run([exe, "validate", str(path)], capture_output=True, text=True,
                          timeout=8)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"{path}:")


# --------------------------------------------------------------------------- the app layer

def test_json_is_the_use_case_result_exactly() -> None:
    """The commands only render: `--json` is the use case's typed result, byte for byte."""
    from shadowrl.app.evaluate import EvaluateRequest, evaluate
    from shadowrl.app.rehearse import RehearseRequest, rehearse
    from shadowrl.app.simulate import SimulateRequest, simulate

    path = ROOT / "envs" / "payments.yaml"
    cases = [
        (["simulate", path, "--seed", "4", "--json"], simulate(SimulateRequest(file=path,
                                                                               seed=4))),
        (["rehearse", path, "--runs", "3", "--json"], rehearse(RehearseRequest(file=path,
                                                                               runs=3))),
        (["evaluate", path, "--policy", "greedy", "--episodes", "2", "--json"],
         evaluate(EvaluateRequest(file=path, policy="greedy", episodes=2))),
    ]
    for args, result in cases:
        printed = run(*args)
        assert printed.exit_code == 0, printed.stderr
        assert printed.stdout == json.dumps(result.model_dump(mode="json"), indent=2) + "\n"


@pytest.mark.parametrize("args,message", [
    (["export", ROOT / "envs" / "checkout.yaml", "--format", "pdf"],
     "error: unknown format 'pdf' (use yaml, argo, chaostoolkit, shell)"),
    (["evaluate", ROOT / "envs" / "checkout.yaml", "--policy", "nope.zip", "--json"],
     "error: nope.zip: no such policy (use configured, random, greedy, oracle, a procedure "
     ".yaml, a policy .zip or models:/NAME@ALIAS)"),
    (["optimize", ROOT / "envs" / "checkout.yaml", "--method", "bogus", "--json"],
     "error: unknown method 'bogus' (search, rl or all)"),
    (["optimize", ROOT / "envs" / "checkout.yaml", "--objective", "latency", "--json"],
     "error: --objective must be 'budget' or 'downtime', not 'latency'"),
    (["evaluate", ROOT / "envs" / "checkout.yaml", "--policy", "configured", "--objective",
      "uptime"], "error: --objective must be 'budget' or 'downtime', not 'uptime'"),
    (["optimize", ROOT / "envs" / "checkout.yaml", "--verify", "kubernetes", "--json"],
     "error: --verify: must be docker or none, got 'kubernetes'"),
    (["optimize", ROOT / "envs" / "checkout.yaml", "--verify", "docker", "--verify-runs", "5",
      "--episodes", "2", "--json"],
     "error: --verify-runs 5 is more than --episodes 2: the verification rehearses the first "
     "held-out incidents, which the comparison also measured"),
])
def test_usage_errors_are_one_line_and_exit_2(args: list[Any], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    no_traceback(result)
    assert result.stdout == ""
    assert result.stderr == message + "\n"  # nothing else: no progress, no blank line


def test_bad_verify_flags_exit_2_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "never"
    for flags in (["--verify", "Docker"], ["--verify-runs", "0"], ["--verify-runs", "101"]):
        result = run("optimize", ROOT / "envs" / "checkout.yaml", *flags, "--out", out)
        assert result.exit_code == 2, (flags, result.output)
        no_traceback(result)
        assert flags[0] in result.stderr and not out.exists()


def test_evaluate_objective_chooses_what_the_cost_measures() -> None:
    path = ROOT / "envs" / "checkout.yaml"
    args = ["evaluate", path, "--policy", "configured", "--episodes", "2", "--json"]
    budget = json.loads(run(*args).stdout)
    downtime = json.loads(run(*args, "--objective", "downtime").stdout)
    penalised = json.loads(run(*args, "--full-outage-penalty", "1").stdout)
    for key in ("outcomes", "downtime_s", "budget_burn", "bad_requests", "outage_s"):
        assert budget[key] == downtime[key] == penalised[key], key  # the same rehearsals
    # budget: percent of the error budget; downtime: minutes of downtime and failures
    assert budget["cost"]["mean"] == pytest.approx(100 * budget["budget_burn"]["mean"],
                                                   abs=1e-3)
    assert downtime["cost"]["mean"] > budget["downtime_s"]["mean"] / 60 - 1e-3
    assert penalised["cost"]["mean"] == pytest.approx(
        budget["cost"]["mean"] + budget["outage_s"]["mean"], abs=1e-3)


@pytest.mark.parametrize("url", ["not-a-url", "localhost:9000/hook", "ftp://127.0.0.1/x",
                                 "http://", "http://127.0.0.1:notaport/x"])
def test_a_bad_webhook_url_is_refused_before_any_work(url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("rehearse", ROOT / "envs" / "checkout.yaml", "--runs", "3", "--out", out,
                 "--alert-webhook", url)
    assert result.exit_code == 2
    assert f"--alert-webhook: webhook URL must be http:// or https:// with a host, got " \
           f"{url!r}" in result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()  # refused before any rehearsal ran or wrote anything


def test_a_bad_webhook_url_from_the_environment_names_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOWRL_ALERT_WEBHOOK", "bogus")
    result = run("rehearse", ROOT / "envs" / "checkout.yaml", "--runs", "3")
    assert result.exit_code == 2
    assert "$SHADOWRL_ALERT_WEBHOOK: webhook URL must be http:// or https:// with a host, " \
           "got 'bogus'" in result.stderr


# --------------------------------------------------------------------------- output

LONG_STEP = "revert-the-application-to-its-previous-version-two-at-a-time"  # 60


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess with stdout a pipe, as in a CI log (COLUMNS says 80)."""
    return subprocess.run([sys.executable, "-m", "shadowrl", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT)})


def test_piped_output_prints_whole_names_and_settings_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "long.yaml"
    path.write_text((SCENARIOS / "minimal.yaml").read_text().replace(
        "- {name: revert-app, action: rollback_version, target: app}",
        f"- {{name: {LONG_STEP}, action: rollback_version, target: app, "
        f"settings: {{batch: 2, drain: 45s}}}}"))
    proc = cli("simulate", path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rows = [line for line in lines if line.startswith(f"│ {LONG_STEP} ")]
    assert len(rows) == 1, proc.stdout
    assert "│ batch=2, drain=45s │" in rows[0]  # the scenario format's spelling, whole
    alerts = [line for line in lines if line.startswith("warning new_errors: ")]
    assert alerts and all(LONG_STEP in a and a.endswith("failed requests") for a in alerts)
    assert "…" not in proc.stdout
    assert max(len(line) for line in lines) > 80  # nothing folded to COLUMNS


def test_piped_rehearse_counts_alerts_and_keeps_each_on_one_line() -> None:
    path = ROOT / "envs" / "checkout.yaml"
    data = json.loads(run("rehearse", path, "--runs", "3", "--json").stdout)
    assert data["alerts"], "checkout's configured procedure raises alerts"
    proc = cli("rehearse", path, "--runs", "3")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for alert in data["alerts"]:
        n = alert["count"]
        head = f"{alert['kind']}: {n} alert{'' if n == 1 else 's'} at step '{alert['step']}' in "
        found = [line for line in lines if line.startswith(head)]
        assert len(found) == 1, (head, proc.stdout)
        assert " runs; e.g. " in found[0] and found[0].endswith(("requests", "s"))
    for step in data["steps"]:
        assert any(line.startswith(f"│ {step['name']} ") for line in lines), step["name"]
    assert "…" not in proc.stdout


COMMANDS = [c.name or getattr(c.callback, "__name__", "") for c in app.registered_commands]


def test_the_commands_are_the_documented_ones() -> None:
    assert set(COMMANDS) >= {"validate", "simulate", "rehearse", "optimize", "evaluate",
                             "train", "export"}


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_flags_without_a_value_type(command: str | None) -> None:
    result = run(*([command] if command else []), "--help")
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout
    assert re.search(r"--help\s+Show this message", result.stdout), result.stdout
    if command is not None:  # every command takes --json (README), a flag: no value type
        assert re.search(r"--json\s+Print one JSON object", result.stdout), result.stdout


def test_validate_json(tmp_path: Path) -> None:
    good = ROOT / "envs" / "payments.yaml"
    result = run("validate", good, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {
        "files": [{"path": str(good), "problems": [], "scenario": "payments", "valid": True}],
        "valid": True}
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n")
    result = run("validate", good, bad, "--json")
    assert result.exit_code == 2
    no_traceback(result)
    data = json.loads(result.stdout)  # one object, no `ok:` line around it
    assert data["valid"] is False
    assert [(f["path"], f["valid"], f["scenario"]) for f in data["files"]] == [
        (str(good), True, "payments"), (str(bad), False, None)]
    problem = data["files"][1]["problems"][0]
    assert problem["file"] == str(bad) and problem["line"] == 1 and problem["message"]
    assert result.stderr.startswith(f"{bad}:1: ")  # the problems still go to stderr


def test_a_missing_model_is_named_once_and_no_missing_flag_is_suggested(tmp_path: Path) -> None:
    """A registered model that does not exist: the URI appears once in the message, and the
    advice names only what ``evaluate`` takes (no ``--tracking-uri`` flag of its own)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # a real, empty store
    proc = subprocess.run([sys.executable, "-m", "shadowrl", "evaluate", str(CHECKOUT_YAML),
                           "--policy", "models:/nobody@champion", "--episodes", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri,
                               "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("models:/nobody@champion") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    empty = tmp_path / "empty"  # no ./mlflow.db here
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "shadowrl", "evaluate", str(CHECKOUT_YAML),
                           "--policy", "models:/nobody@champion", "--episodes", "2"],
                          cwd=empty, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items()
                               if k != "MLFLOW_TRACKING_URI"} | {"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "no MLflow tracking store" in proc.stderr, proc.stderr
    assert "give --tracking-uri" not in proc.stderr and "MLFLOW_TRACKING_URI" in proc.stderr


@pytest.mark.parametrize("command", [["rehearse", "--runs", "2"],
                                     ["evaluate", "--policy", "configured", "--episodes", "2"]])
def test_a_log_gets_no_blank_line_where_the_progress_bar_stood(command: list[str]) -> None:
    """Piped into a log, a command's output starts with its first line of text: the
    transient progress bar is drawn only on a terminal."""
    proc = cli(command[0], CHECKOUT_YAML, *command[1:])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", repr(proc.stderr)
    assert proc.stdout.splitlines()[0].strip(), repr(proc.stdout[:200])

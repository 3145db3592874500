"""Export of runbooks: YAML, Argo, Chaos Toolkit and shell, each choosing the branch as the
runbook does (the first whose conditions all hold, else the default) and running that
branch's steps exactly as the procedure exports run them."""

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
import yaml
from typer.testing import CliRunner, Result

from shadowrl.cli.main import app
from shadowrl.core.runbook import load_runbook, runbook_to_data
from shadowrl.core.spec import SpecError, procedure_to_data
from shadowrl.export.renderers import FORMATS, render, to_chaostoolkit, to_shell
from shadowrl.export.runbook_renderers import (
    PROBE_TEMPLATE,
    branch_tests,
    parts,
    runbook_placeholders,
)
from shadowrl.export.sources import ExportSource, load_source

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
BASH = shutil.which("bash") or "/bin/bash"

# A runbook every step of which has a Kubernetes command (no placeholder), not tied to a
# scenario: two branches and a default, with each kind of condition.
RUNBOOK = """\
apiVersion: shadowrl/v1
kind: Runbook
metadata:
  name: demo
  description: web errors, a slow db, else roll back web
branches:
  - name: web-errors
    when:
      - {component: web, metric: error_rate, above: 0.05}
      - {rule: errors, firing: true}
    procedure:
      name: web-first
      steps:
        - {name: scale-web, action: scale, target: web, settings: {replicas: 9}}
        - {name: revert-web, action: rollback_version, target: web,
           settings: {batch: 3, drain: 0s, surge: 0}}
  - name: slow-db
    when:
      - {component: db, metric: latency_ratio, above: 1.5}
      - {component: edge, metric: error_rate, at_most: 0.5}
      - {step: scale-web, ran: false}
    procedure:
      name: orders-first
      steps:
        - {name: mark, action: command, run: [kubectl, annotate, deployment/orders,
                                              "shadowrl/rollback=now"]}
        - {name: revert-orders, action: rollback_version, target: orders,
           settings: {batch: 2, drain: 0s}}
default:
  procedure:
    name: web-only
    steps:
      - {name: revert-web, action: rollback_version, target: web, settings: {drain: 0s}}
"""

# probe values -> the branch chosen; SHADOWRL_RAN names the steps that already ran
CASES = [
    ({"web-error-rate": "0.07", "rule-errors": "1", "db-latency-ratio": "1.0",
      "edge-error-rate": "0.07"}, "", "web-errors"),
    ({"web-error-rate": "0.07", "rule-errors": "0", "db-latency-ratio": "2.2",
      "edge-error-rate": "0.07"}, "", "slow-db"),  # the rule does not fire: not web-errors
    ({"web-error-rate": "0.5", "rule-errors": "1", "db-latency-ratio": "2.2",
      "edge-error-rate": "0.07"}, "", "web-errors"),  # both hold: the first wins
    ({"web-error-rate": "0.01", "rule-errors": "1", "db-latency-ratio": "2.2",
      "edge-error-rate": "0.07"}, "scale-web", "default"),  # scale-web ran
    ({"web-error-rate": "0.01", "rule-errors": "1", "db-latency-ratio": "2.2",
      "edge-error-rate": "0.9"}, "", "default"),  # edge error rate above 0.5
    ({"web-error-rate": "0.01", "rule-errors": "1", "db-latency-ratio": "1.2",
      "edge-error-rate": "0.07"}, "", "default"),
]


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def book_file(tmp_path) -> Path:
    path = tmp_path / "runbook.yaml"
    path.write_text(RUNBOOK)
    return path


@pytest.fixture
def src(book_file) -> ExportSource:
    return load_source(str(book_file))


@pytest.fixture(scope="module")
def checkout_book(tmp_path_factory, checkout) -> Path:
    """A checkout runbook (placeholder steps included), checked against the scenario."""
    base = procedure_to_data(checkout.procedure)
    fast = {**base, "steps": [dict(s, settings={**s.get("settings", {}), "replicas": 12})
                              if s["name"] == "scale-web" else s for s in base["steps"]
                              if s["name"] != "warm-cache"]}
    data = {"apiVersion": "shadowrl/v1", "kind": "Runbook",
            "metadata": {"name": "checkout-runbook", "scenario": "checkout"},
            "branches": [{"name": "web-errors",
                          "when": [{"component": "web", "metric": "error_rate", "above": 0.05},
                                   {"rule": "edge-errors", "firing": True}],
                          "procedure": fast}],
            "default": {"procedure": base}}
    path = tmp_path_factory.mktemp("checkout") / "runbook.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------- sources


def test_load_source_reads_a_runbook(src, book_file) -> None:
    book = load_runbook(book_file)
    assert src.runbook == book
    assert src.procedure is src.runbook.default.procedure
    assert [p.name for p in parts(src)] == ["web-errors", "slow-db", "default"]
    assert [p.src.procedure.name for p in parts(src)] == ["web-first", "orders-first",
                                                           "web-only"]
    assert runbook_placeholders(src) == []
    assert any("not checked against a scenario" in w for w in src.warnings)


def test_a_runbook_checked_against_a_scenario(checkout_book) -> None:
    src = load_source(str(checkout_book), CHECKOUT)
    assert src.scenario is not None and src.scenario_name == "checkout" and not src.warnings
    holders = runbook_placeholders(src)
    who = {h.split("'")[1]: h.split(":")[0] for h in holders}
    assert who == {"disable-new-checkout": "PLACEHOLDER (web-errors, default)",
                   "migrate-db-down": "PLACEHOLDER (web-errors, default)",
                   "flush-cache": "PLACEHOLDER (web-errors, default)",
                   "warm-cache": "PLACEHOLDER (default)"}  # the branch leaves it out


def test_a_branch_error_names_the_runbook_line(tmp_path) -> None:
    text = RUNBOOK.replace('"shadowrl/rollback=now"', '"{{evil}}"')
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    src = load_source(str(path))
    with pytest.raises(SpecError) as info:
        render(src, "argo")
    problem = info.value.problems[0]
    assert problem.file == str(path)
    assert problem.path == "branches[1].procedure.steps[0].run[3]"
    assert problem.line == next(i for i, t in enumerate(text.splitlines(), 1) if "evil" in t)


# --------------------------------------------------------------------------- yaml


def test_yaml_loads_back_to_the_same_runbook(src, book_file, tmp_path) -> None:
    text = render(src, "yaml", command="shadowrl export X --format yaml")
    head = text.split("apiVersion:")[0].splitlines()
    assert head[0] == "# shadowrl runbook 'demo'"
    assert all(line.startswith("#") for line in head)
    assert "# exported by: `shadowrl export X --format yaml`" in head
    assert any(line.startswith("# branch 1/2 web-errors: when web error_rate > 0.05 and "
                               "rule errors firing") for line in head)
    out = tmp_path / "again.yaml"
    out.write_text(text)
    again = load_runbook(out)
    assert again == load_runbook(book_file)
    assert runbook_to_data(again) == yaml.safe_load(text)
    assert render(load_source(str(out)), "yaml").split("apiVersion:")[1] == (
        text.split("apiVersion:")[1])


# --------------------------------------------------------------------------- argo

TASK_REF = re.compile(r"\{\{tasks\.([A-Za-z0-9-]+)\.outputs\.result\}\}")
PARAM_REF = re.compile(r"\{\{workflow\.parameters\.([A-Za-z0-9-]+)\}\}")


def when_holds(expression: str, results: dict[str, str], params: dict[str, str]) -> bool:
    """Evaluate an Argo ``when:`` as Argo does: substitute, then the expression."""
    text = TASK_REF.sub(lambda m: results[m.group(1)], expression)
    text = PARAM_REF.sub(lambda m: params[m.group(1)], text)
    assert re.fullmatch(r"[0-9.()!<=>&| ]+", text), text
    text = text.replace("&&", " and ").replace("!(", " not (")
    return bool(eval(text, {"__builtins__": {}}))  # noqa: S307 - digits and operators only


def ancestors(tasks: dict[str, dict[str, Any]], name: str) -> set[str]:
    out: set[str] = set()
    todo = list(tasks[name].get("dependencies", []))
    while todo:
        dep = todo.pop()
        if dep not in out:
            out.add(dep)
            todo += tasks[dep].get("dependencies", [])
    return out


def test_argo_dag(src) -> None:
    text = render(src, "argo", command="shadowrl export X --format argo")
    assert text.startswith("# shadowrl runbook 'demo'")
    workflow = yaml.safe_load(text)
    assert workflow["kind"] == "Workflow"
    spec = workflow["spec"]
    templates = {t["name"]: t for t in spec["templates"]}
    assert len(templates) == len(spec["templates"])
    dag = templates[spec["entrypoint"]]["dag"]["tasks"]
    tasks = {t["name"]: t for t in dag}
    assert len(tasks) == len(dag)
    params = {p["name"]: p["value"] for p in spec["arguments"]["parameters"]}
    assert params["prometheus-url"].startswith("http")
    assert 'service="web",code=~"5.."' in params["query-web-error-rate"]
    assert "offset 1h" in params["query-db-latency-ratio"]
    assert 'ALERTS{alertname="errors",alertstate="firing"}' in params["query-rule-errors"]
    assert params["step-ran-scale-web"] == "0"  # at the breach no step has run
    probes = {n for n, t in tasks.items() if t["template"] == PROBE_TEMPLATE}
    assert probes == {"probe-web-error-rate", "probe-rule-errors", "probe-db-latency-ratio",
                      "probe-edge-error-rate"}
    probe = templates[PROBE_TEMPLATE]["container"]
    assert probe["args"] == ["{{workflow.parameters.prometheus-url}}",
                             "{{inputs.parameters.query}}"]
    for name, task in tasks.items():
        assert task["template"] in templates
        assert all(dep in tasks for dep in task.get("dependencies", []))
        refs = TASK_REF.findall(task.get("when", ""))
        assert set(refs) <= probes and set(refs) <= ancestors(tasks, name), name
        assert set(PARAM_REF.findall(task.get("when", ""))) <= set(params)
        for arg in task.get("arguments", {}).get("parameters", []):
            assert set(PARAM_REF.findall(arg["value"])) <= set(params)
        if name not in probes:
            assert "when" in task
    # each branch's steps: a chain in the procedure's order, its templates the procedure
    # export's own
    for part in parts(src):
        names = [n for n, t in tasks.items()
                 if templates[t["template"]]["metadata"]["annotations"].get(
                     "shadowrl/branch") == part.name]
        steps = [templates[n]["metadata"]["annotations"]["shadowrl/step"] for n in names]
        assert steps == [s.name for s in part.src.procedure.steps]
        for before, after in zip(names, names[1:]):
            assert tasks[after]["dependencies"] == [before]
        own = yaml.safe_load(render(part.src, "argo"))["spec"]["templates"]
        for n, step in zip(names, steps):
            original = next(t for t in own if t["name"] == step)
            assert templates[n]["container"] == original["container"]
    # which tasks run: exactly the chosen branch's
    for values, ran, chosen in CASES:
        results = {f"probe-{k}": v for k, v in values.items()}
        flags = {**params, "step-ran-scale-web": "1" if "scale-web" in ran else "0"}
        running = [n for n, t in tasks.items() if n not in probes
                   and when_holds(t["when"], results, flags)]
        branch = {templates[n]["metadata"]["annotations"]["shadowrl/branch"] for n in running}
        assert branch == {chosen}, (values, ran)
        want = next(p for p in parts(src) if p.name == chosen)
        assert len(running) == len(want.src.procedure.steps)


def test_argo_checkout_runbook(checkout_book) -> None:
    src = load_source(str(checkout_book), CHECKOUT)
    text = render(src, "argo")
    assert "# PLACEHOLDER (web-errors, default): step 'migrate-db-down'" in text
    spec = yaml.safe_load(text)["spec"]
    assert spec["activeDeadlineSeconds"] >= 1800
    tasks = spec["templates"][0]["dag"]["tasks"]
    default = [t for t in tasks if t["name"].startswith("default-")]
    assert default and all(t["when"].startswith("!(") for t in default)


# --------------------------------------------------------------------------- chaostoolkit


def test_chaostoolkit_document(src) -> None:
    doc = json.loads(render(src, "chaostoolkit", command="shadowrl export X"))
    experiments = doc["experiments"]
    assert list(experiments) == ["web-errors", "slow-db", "default"]
    for part in parts(src):
        experiment = experiments[part.name]
        own = json.loads(to_chaostoolkit(part.src, "shadowrl export X"))
        assert set(own) <= set(experiment)
        assert experiment["version"] == own["version"]
        assert experiment["method"] == own["method"]
        assert [a["name"] for a in experiment["method"]] == [s.name for s in
                                                              part.src.procedure.steps]
        assert experiment["x-shadowrl"]["runbook"]["branch"] == part.name
    selector = doc["selector"]
    probes = {p["name"]: p for p in selector["probes"]}
    assert [b["name"] for b in selector["branches"]] == ["web-errors", "slow-db"]
    assert selector["default"] == {"experiment": "default"}
    for branch in selector["branches"]:
        assert branch["experiment"] in experiments
        assert all(t["probe"] in probes and t["op"] in (">", "<=") for t in branch["when"])
    assert probes["rule-errors"]["provider"]["arguments"]["query"].startswith("count(ALERTS")
    assert probes["step-ran-scale-web"]["value_at_breach"] == 0
    assert doc["x-shadowrl"]["runbook"] == "demo"


# --------------------------------------------------------------------------- shell


def fake(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\nimport json, os, sys\n{body}")
    path.chmod(0o755)


@pytest.fixture
def fakes(tmp_path) -> Path:
    """Fake kubectl, probe and curl first on PATH; each logs its argv to $FAKE_LOG."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = 'open(os.environ["FAKE_LOG"], "a").write(json.dumps([{name!r}, *sys.argv[1:]]) + "\\n")\n'
    fake(bin_dir / "kubectl", log.format(name="kubectl"))
    fake(bin_dir / "fake-probe", log.format(name="probe")
         + 'print(json.loads(os.environ["FAKE_VALUES"])[sys.argv[1]])\n')
    fake(bin_dir / "curl", log.format(name="curl") + """\
query = next(a[len("query="):] for a in sys.argv if a.startswith("query="))
values = json.loads(os.environ["FAKE_VALUES"])
value = next(v for k, v in values.items() if k in query)
print(json.dumps({"status": "success", "data": {"resultType": "vector",
                  "result": [{"metric": {}, "value": [1700000000, value]}]}}))
""")
    return bin_dir


def run_script(script: Path, fakes: Path, tmp_path: Path, values: dict[str, str],
               ran: str = "", probe: str | None = "fake-probe",
               extra: dict[str, str] | None = None) -> tuple[int, list[list[str]], str]:
    log = tmp_path / "log.jsonl"
    log.unlink(missing_ok=True)
    env = {"PATH": f"{fakes}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log),
           "FAKE_VALUES": json.dumps(values), "SHADOWRL_RAN": ran, **(extra or {})}
    if probe is not None:
        env["SHADOWRL_PROBE"] = probe
    done = subprocess.run([BASH, str(script)], env=env, capture_output=True, text=True,
                          timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done.returncode, calls, done.stderr


@pytest.fixture
def branch_commands(src, fakes, tmp_path) -> dict[str, list[list[str]]]:
    """The kubectl calls each branch's procedure makes, run as a procedure shell export."""
    out = {}
    for part in parts(src):
        script = tmp_path / f"{part.name}.sh"
        script.write_text(to_shell(part.src))
        code, calls, stderr = run_script(script, fakes, tmp_path, {})
        assert code == 0, stderr
        out[part.name] = calls
    return out


def test_shell_runs_the_chosen_branch(src, fakes, tmp_path, branch_commands) -> None:
    script = tmp_path / "runbook.sh"
    script.write_text(render(src, "shell", command="shadowrl export X --format shell"))
    check = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    scale_web = ["kubectl", "scale", "deployment/web", "--replicas=9"]
    first = {"web-errors": scale_web,
             "slow-db": ["kubectl", "annotate", "deployment/orders", "shadowrl/rollback=now"],
             "default": ["kubectl", "patch", "deployment/web"]}
    undo = {"web-errors": ["deployment/web"], "slow-db": ["deployment/orders"],
            "default": ["deployment/web"]}
    for values, ran, chosen in CASES:
        code, calls, stderr = run_script(script, fakes, tmp_path, values, ran)
        assert code == 0, stderr
        probes = [c for c in calls if c[0] == "probe"]
        kubectl = [c for c in calls if c[0] == "kubectl"]
        assert calls == probes + kubectl  # every probe read once, before any step
        assert [p[1] for p in probes] == ["web-error-rate", "rule-errors", "db-latency-ratio",
                                          "edge-error-rate"]
        assert kubectl == branch_commands[chosen], (values, ran, chosen)
        assert kubectl[0][:len(first[chosen])] == first[chosen]
        assert [c[3] for c in kubectl if c[1:3] == ["rollout", "undo"]] == undo[chosen]
        assert f"branch {chosen}" in stderr or (chosen == "default"
                                                and "default (no branch matched)" in stderr)


def test_shell_stops_on_a_probe_that_is_not_a_number(src, fakes, tmp_path) -> None:
    script = tmp_path / "runbook.sh"
    script.write_text(render(src, "shell"))
    values = dict(CASES[0][0], **{"db-latency-ratio": "NaN"})
    code, calls, stderr = run_script(script, fakes, tmp_path, values)
    assert code == 2 and "probe db-latency-ratio gave 'NaN', not a number" in stderr
    assert not [c for c in calls if c[0] == "kubectl"]


@pytest.mark.skipif(shutil.which("jq") is None, reason="the default probe needs jq")
def test_shell_default_probe_queries_prometheus(src, fakes, tmp_path) -> None:
    """Without SHADOWRL_PROBE, each probe is a Prometheus instant query (curl + jq) of its
    PromQL template; a SHADOWRL_QUERY_* variable replaces the template."""
    script = tmp_path / "runbook.sh"
    script.write_text(render(src, "shell"))
    # the fake Prometheus answers by a substring of the query
    values = {'service="web",code': "0.07", "errors": "1", 'service="db"': "1.0",
              'service="edge",code': "0.07"}
    code, calls, stderr = run_script(script, fakes, tmp_path, values, probe=None)
    assert code == 0, stderr
    curls = [c for c in calls if c[0] == "curl"]
    assert len(curls) == 4
    assert all("http://localhost:9090/api/v1/query" in c for c in curls)
    assert "branch web-errors" in stderr
    code, calls, stderr = run_script(
        script, fakes, tmp_path, {"my_web_rate": "0.01", **values}, probe=None,
        extra={"SHADOWRL_QUERY_WEB_ERROR_RATE": "my_web_rate"})
    assert code == 0, stderr
    assert ["curl", "-fsS", "--get", "http://localhost:9090/api/v1/query", "--data-urlencode",
            "query=my_web_rate"] in calls
    assert "probe web-error-rate = 0.01" in stderr
    assert "default (no branch matched)" in stderr


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_export_of_a_checkout_runbook(checkout_book, fmt, tmp_path) -> None:
    out = tmp_path / f"export.{fmt}"
    result = run("export", checkout_book, "--format", fmt, "--scenario", CHECKOUT, "--out",
                 out, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["exported"].startswith("the runbook 'checkout-runbook' in ")
    assert report["scenario"] == "checkout"
    text = out.read_text()
    if fmt == "chaostoolkit":
        assert set(json.loads(text)["experiments"]) == {"web-errors", "default"}
    elif fmt == "shell":
        assert subprocess.run([BASH, "-n", str(out)]).returncode == 0
        assert os.access(out, os.X_OK)
    else:
        assert yaml.safe_load(text)
    if fmt == "yaml":
        assert report["warnings"] == []
        assert load_runbook(out, load_source(str(CHECKOUT)).scenario) == load_runbook(
            checkout_book)
    else:
        assert report["warnings"] and all("PLACEHOLDER (" in w for w in report["warnings"])


def test_cli_bad_runbook_exits_2(tmp_path, checkout_book) -> None:
    text = checkout_book.read_text().replace("component: web", "component: nowhere", 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "nowhere" in t)
    result = run("export", bad, "--format", "shell", "--scenario", CHECKOUT)
    assert result.exit_code == 2
    assert (f"{bad}:{line}: branches[0].when[0].component: unknown component 'nowhere'"
            in result.stderr)


def test_probes_are_the_distinct_observables(src) -> None:
    probes, tests = branch_tests(src)
    assert [p.name for p in probes] == ["web-error-rate", "rule-errors", "db-latency-ratio",
                                        "edge-error-rate", "step-ran-scale-web"]
    assert [[f"{t.probe.name} {t.op} {t.number}" for t in ts] for _, ts in tests] == [
        ["web-error-rate > 0.05", "rule-errors > 0"],
        ["db-latency-ratio > 1.5", "edge-error-rate <= 0.5", "step-ran-scale-web <= 0"]]


def test_a_runbook_with_only_a_default(tmp_path, fakes) -> None:
    """No branch: no probe; every format runs the default's steps."""
    text = RUNBOOK.split("branches:")[0] + "default:" + RUNBOOK.split("default:")[1]
    path = tmp_path / "plain.yaml"
    path.write_text(text)
    src = load_source(str(path))
    assert branch_tests(src) == ([], [])
    spec = yaml.safe_load(render(src, "argo"))["spec"]
    tasks = spec["templates"][0]["dag"]["tasks"]
    assert [t["name"] for t in tasks] == ["default-revert-web"]
    assert "when" not in tasks[0] and "dependencies" not in tasks[0]
    assert PROBE_TEMPLATE not in {t["name"] for t in spec["templates"]}
    doc = json.loads(render(src, "chaostoolkit"))
    assert doc["selector"]["branches"] == [] and list(doc["experiments"]) == ["default"]
    script = tmp_path / "plain.sh"
    script.write_text(render(src, "shell"))
    code, calls, stderr = run_script(script, fakes, tmp_path, {})
    assert code == 0, stderr
    assert [c[1:3] for c in calls] == [["patch", "deployment/web"], ["get", "deployment/web"],
                                       ["rollout", "undo"], ["rollout", "status"]]


def test_argo_refuses_a_template_tag_in_the_header(tmp_path) -> None:
    path = tmp_path / "tagged.yaml"
    path.write_text("# produced by: `shadowrl optimize {{x}}`\n" + RUNBOOK)
    src = load_source(str(path))
    assert src.command == "shadowrl optimize {{x}}"
    with pytest.raises(SpecError, match="shadowrl/produced-by .* template tag"):
        render(src, "argo")
    assert "shadowrl optimize {{x}}" in render(src, "shell")  # a comment there


def test_cpu_and_load_probes_have_query_templates() -> None:
    from shadowrl.export.runbook_renderers import default_query

    cpu = default_query(("metric", "web", "cpu"))
    load = default_query(("metric", "orders", "load_ratio"))
    assert cpu is not None and 'container="web"' in cpu and "cpu" in cpu
    assert load is not None and 'service="orders"' in load and "offset 1h" in load

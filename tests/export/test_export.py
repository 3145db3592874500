"""Export of rollback procedures: sources, command templates and renderers."""

from __future__ import annotations

import json
import shlex
import shutil
import stat
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from shadowrl.analysis.summary import summarize
from shadowrl.cli.main import app
from shadowrl.core.plan import configured_plan
from shadowrl.core.spec import SpecError, load_procedure, procedure_to_data
from shadowrl.export.commands import placeholders
from shadowrl.export.renderers import (
    FORMATS,
    evaluation_line,
    render,
    to_argo,
    to_chaostoolkit,
    to_shell,
    to_yaml,
)
from shadowrl.export.sources import (
    ExportSource,
    SourceError,
    SourceResolver,
    load_source,
    read_header,
)
from shadowrl.integrations.sources import RESOLVERS
from shadowrl.rehearsal.runner import rehearse
from shadowrl.rl.optimizer import procedure_yaml

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
MINIMAL = ROOT / "tests" / "scenarios" / "minimal.yaml"
OPTIMIZE_CMD = "shadowrl optimize envs/checkout.yaml --method search --seed 3"
PLACEHOLDER_ACTIONS = {"migrate_down", "flush_cache", "warm_cache", "disable_flag"}


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception))



@pytest.fixture(scope="module")
def summary(checkout):
    runs = [rehearse(checkout, seed) for seed in (0, 1)]
    return summarize(checkout.name, "best_static", runs)


@pytest.fixture(scope="module")
def optimized_file(tmp_path_factory, checkout, summary) -> Path:
    """A procedure.yaml as `optimize` writes it: a changed order/settings, one step skipped."""
    plan = dict(configured_plan(checkout.procedure))
    plan["scale-web"] = {"replicas": 12}
    plan["revert-web"] = {"batch": 3, "drain": 10.0}
    plan["warm-cache"] = None
    order = ["disable-new-checkout", "scale-web", "revert-orders", "revert-web",
             "migrate-db-down", "flush-cache", "warm-cache"]
    path = tmp_path_factory.mktemp("optimize") / "procedure.yaml"
    path.write_text(procedure_yaml(checkout, [(n, plan[n]) for n in order], summary,
                                   OPTIMIZE_CMD))
    return path


@pytest.fixture(params=["scenario", "optimized"])
def source(request, optimized_file) -> ExportSource:
    if request.param == "scenario":
        return load_source(str(CHECKOUT))
    return load_source(str(optimized_file), CHECKOUT)


def order(src: ExportSource) -> list[str]:
    return [s.name for s in src.procedure.steps]


# --------------------------------------------------------------------------- sources


def test_sources_load(optimized_file, summary) -> None:
    sc = load_source(str(CHECKOUT))
    assert sc.procedure.name == "checkout-rollback" and sc.scenario is not None
    assert sc.scenario_name == "checkout" and sc.evaluation is None and not sc.warnings
    opt = load_source(str(optimized_file), CHECKOUT)
    assert opt.procedure.name == "checkout-rollback-optimized"
    assert order(opt) == ["disable-new-checkout", "scale-web", "revert-orders", "revert-web",
                          "migrate-db-down", "flush-cache"]
    assert opt.command == OPTIMIZE_CMD
    assert opt.evaluation["runs"] == 2
    assert opt.evaluation["downtime_s"]["mean"] == pytest.approx(
        round(summary.downtime_s.mean))
    assert opt.evaluation["outcomes"] == summary.outcomes.model_dump()
    # the folder `optimize --out` wrote works too
    assert load_source(str(optimized_file.parent), CHECKOUT).procedure == opt.procedure


def test_procedure_file_without_scenario(optimized_file) -> None:
    alone = load_source(str(optimized_file))
    with_sc = load_source(str(optimized_file), CHECKOUT)
    assert alone.scenario is None and alone.scenario_name == "checkout"
    assert procedure_to_data(alone.procedure) == procedure_to_data(with_sc.procedure)
    assert any("--scenario" in w for w in alone.warnings)
    # without a scenario there are no SLO rules to probe, but every format still renders
    for fmt in FORMATS:
        assert "checkout-rollback-optimized" in render(alone, fmt)


def test_bad_procedure_file_names_line(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("procedure:\n  name: p\n  steps:\n"
                   "    - {name: a, action: rollback_version, target: app}\n"
                   "    - {name: b, action: wait, settings: {duration: soon}, after: [zz]}\n")
    with pytest.raises(SpecError) as info:
        load_source(str(bad))
    text = str(info.value)
    assert f"{bad}:5: procedure.steps[1].settings.duration" in text
    assert f"{bad}:5: procedure.steps[1].after[0]: unknown step 'zz'" in text
    with pytest.raises(SpecError, match=r"unknown component 'app'"):
        load_source(str(bad), CHECKOUT)
    with pytest.raises(SourceError, match="no such file"):
        load_source(str(tmp_path / "missing.yaml"))
    (tmp_path / "other.yaml").write_text("apiVersion: shadowrl/v1\nkind: Experiment\n")
    with pytest.raises(SpecError, match="expected a scenario"):
        load_source(str(tmp_path / "other.yaml"))


def test_read_header_stops_at_the_body() -> None:
    text = ("# shadowrl optimized procedure 'p' for scenario 's'\n"
            "# best static order and settings found by `shadowrl optimize s.yaml`\n"
            "#\n"
            "# held-out evaluation (7 incidents): downtime mean 12s p95 30s; outcomes "
            "{'recovered': 7}\n"
            "procedure: {name: p}\n"
            "# produced by: `not this one`\n")
    command, evaluation, verification = read_header(text)
    assert verification is None  # no verification line at all (an older file)
    assert command == "shadowrl optimize s.yaml"
    assert evaluation is not None and evaluation["runs"] == 7
    assert evaluation["downtime_s"] == {"mean": 12.0, "p95": 30.0}
    assert evaluation["outcomes"] == {"recovered": 7}
    assert read_header("procedure: {}\n") == (None, None, None)


@pytest.mark.parametrize("outcomes", [
    "{'recovered': 50, 'rollback_failed': 1, 'rollback_ineffective': 0}",  # older headers
    "recovered 50, rollback_failed 1, rollback_ineffective 0",
])
def test_header_outcomes_are_read_either_way_and_shown_in_words(outcomes: str) -> None:
    line = (f"# held-out evaluation (51 incidents): downtime mean 188s p95 250s; outcomes "
            f"{outcomes}; error budget burn mean 0.180%\n")
    evaluation = read_header(line + "procedure: {name: p}\n").evaluation
    assert evaluation is not None
    assert evaluation["outcomes"] == {"recovered": 50, "rollback_failed": 1,
                                      "rollback_ineffective": 0}
    assert evaluation["budget_burn"]["mean"] == pytest.approx(0.0018)
    shown = evaluation_line(evaluation)
    assert shown is not None and "{" not in shown and "'" not in shown
    assert ("outcomes recovered 50, rollback_failed 1, rollback_ineffective 0; error budget "
            "burn mean 0.180%") in shown
    built = evaluation_line({k: v for k, v in evaluation.items() if k != "text"})
    assert built == ("51 incidents: downtime mean 188s p95 250s; outcomes recovered 50, "
                     "rollback_failed 1, rollback_ineffective 0; error budget burn mean 0.180%")


# --------------------------------------------------------------------------- formats


def test_yaml_loads_back(source, checkout, tmp_path) -> None:
    text = to_yaml(source, command="shadowrl export X --format yaml")
    data = yaml.safe_load(text)
    assert data["kind"] == "Procedure" and data["apiVersion"] == "shadowrl/v1"
    assert data["metadata"] == {"name": source.procedure.name, "scenario": "checkout"}
    path = tmp_path / "procedure.yaml"
    path.write_text(text)
    back = load_procedure(path, checkout)
    assert procedure_to_data(back) == procedure_to_data(source.procedure)
    assert [(s.name, s.default_settings()) for s in back.steps] == \
        [(s.name, s.default_settings()) for s in source.procedure.steps]
    # a re-export keeps the evaluation and the command that produced the procedure
    again = load_source(str(path), CHECKOUT)
    assert again.command == source.command
    assert (again.evaluation or {}).get("downtime_s") == (source.evaluation or {}).get(
        "downtime_s")


def test_argo_workflow(source) -> None:
    wf = yaml.safe_load(to_argo(source, image="registry.local/kubectl:1.31"))
    assert wf["apiVersion"] == "argoproj.io/v1alpha1" and wf["kind"] == "Workflow"
    assert wf["metadata"]["generateName"] == source.procedure.name + "-"
    templates = {t["name"]: t for t in wf["spec"]["templates"]}
    entry = templates[wf["spec"]["entrypoint"]]
    groups = entry["steps"]
    assert all(len(g) == 1 for g in groups)
    assert [g[0]["name"] for g in groups] == order(source)
    for group, step in zip(groups, source.procedure.steps):
        item = group[0]
        params = {p["name"]: p["value"] for p in item.get("arguments", {}).get("parameters", [])}
        assert set(params) == set(step.default_settings())
        assert all(isinstance(v, str) for v in params.values())
        template = templates[item["template"]]
        assert template["container"]["image"] == "registry.local/kubectl:1.31"
        assert template["container"]["command"] == ["sh", "-c"]
        script = template["container"]["args"][0]
        declared = {p["name"] for p in template.get("inputs", {}).get("parameters", [])}
        assert declared == set(params)
        for key in params:
            assert f"{{{{inputs.parameters.{key}}}}}" in script
        if step.action == "scale":
            assert script.startswith(f"kubectl scale deployment/{step.target} --replicas=")
        if step.action == "rollback_version":
            assert f"kubectl rollout undo deployment/{step.target}" in script
            assert "maxUnavailable" in script and "terminationGracePeriodSeconds" in script
        if step.action in PLACEHOLDER_ACTIONS:
            assert "TODO(shadowrl)" in script and "exit 1" in script
    revert = next(g[0] for g in groups if g[0]["name"] == "revert-web")
    values = {p["name"]: p["value"] for p in revert["arguments"]["parameters"]}
    expected = source.procedure.step("revert-web").default_settings()
    assert values == {"batch": str(expected["batch"]), "drain": str(int(expected["drain"])),
                      **({"surge": str(expected["surge"])} if "surge" in expected else {})}


def test_chaostoolkit_experiment(source, checkout) -> None:
    exp = json.loads(to_chaostoolkit(source, command="shadowrl export X --format chaostoolkit"))
    assert exp["title"] and exp["description"] and exp["rollbacks"] == []
    assert source.procedure.name in exp["description"]
    assert exp["x-shadowrl"]["procedure"] == source.procedure.name
    assert [a["name"] for a in exp["method"]] == order(source)
    for action in exp["method"]:
        assert action["type"] == "action"
        assert action["provider"]["type"] == "process"
        assert action["provider"]["path"] and isinstance(action["provider"]["arguments"], list)
    probes = exp["steady-state-hypothesis"]["probes"]
    assert exp["steady-state-hypothesis"]["title"]
    assert len(probes) == len(checkout.slo.rules)
    assert [p["name"] for p in probes] == [f"slo-{r.name}" for r in checkout.slo.rules]
    for probe in probes:
        assert probe["type"] == "probe" and "tolerance" in probe
        assert probe["provider"]["type"] in ("process", "http")
    assert exp["method"][-1]["pauses"]["after"] == int(source.procedure.verify.hold)


def test_shell_script(source, tmp_path) -> None:
    text = to_shell(source, command="shadowrl export X --format shell")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    path = tmp_path / "rollback.sh"
    path.write_text(text)
    bash = shutil.which("bash")
    assert bash
    check = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True, timeout=10)
    assert check.returncode == 0, check.stderr
    for i, name in enumerate(order(source), 1):
        assert f"# step {i}/{len(source.procedure.steps)}: {name}\n" in text
    holders = [s for s in source.procedure.steps if s.action in PLACEHOLDER_ACTIONS]
    blocks = text.split("# " + "-" * 77)[1:]
    assert len(blocks) == len(source.procedure.steps)
    for step, block in zip(source.procedure.steps, blocks):
        if step.action in PLACEHOLDER_ACTIONS:
            assert "# PLACEHOLDER: " in block and "exit 1" in block
        else:
            assert "PLACEHOLDER" not in block and "exit 1" not in block
    assert len(placeholders(source)) == len(holders)
    revert = source.procedure.step("revert-web").default_settings()
    assert "kubectl rollout undo deployment/web" in text
    assert f'"maxUnavailable":{revert["batch"]},' in text
    assert f'-lt {int(revert["drain"])} ]' in text
    scale = source.procedure.step("scale-web").default_settings()
    assert f"kubectl scale deployment/web --replicas={scale['replicas']}\n" in text


def test_headers(source) -> None:
    command = "shadowrl export SOURCE --format F"
    outputs = {fmt: render(source, fmt, command=command) for fmt in FORMATS}
    for fmt, text in outputs.items():
        head = json.loads(text)["description"] if fmt == "chaostoolkit" else text
        if fmt != "chaostoolkit":
            lines = text.splitlines()
            start = 1 if fmt == "shell" else 0
            assert lines[start].startswith("# shadowrl rollback procedure")
        assert f"'{source.procedure.name}'" in head
        assert f"exported by: `{command}`" in head
        assert f"source: {source.origin}" in head
        if source.evaluation:
            assert "downtime mean" in head and f"produced by: `{OPTIMIZE_CMD}`" in head
        else:
            assert "evaluation: none recorded" in head
    if source.evaluation:
        meta = json.loads(outputs["chaostoolkit"])["x-shadowrl"]
        assert meta["evaluation"]["runs"] == 2 and meta["produced_by"] == OPTIMIZE_CMD


def test_run_replaces_template(tmp_path) -> None:
    proc = tmp_path / "proc.yaml"
    proc.write_text(
        "procedure:\n  name: custom\n  steps:\n"
        "    - name: revert-app\n      action: rollback_version\n      target: app\n"
        "      settings: {batch: 2, drain: 1500ms}\n"
        "      run: [./deploy.sh, rollback, --app, my app, \"--note=it's\"]\n"
        "    - {name: pause, action: wait, settings: {duration: 1m}}\n"
        "    - {name: tell, action: command, run: [notify, done]}\n"
        "    - {name: todo, action: command}\n")
    src = load_source(str(proc), MINIMAL)
    argv = ["./deploy.sh", "rollback", "--app", "my app", "--note=it's"]
    sh = to_shell(src)
    assert shlex.join(argv) + "\n" in sh
    assert "kubectl" not in sh
    assert "\nsleep 60\n" in sh and "\nnotify done\n" in sh
    assert sh.count("# PLACEHOLDER: ") == 2  # the header lists it, and so does its block
    (tmp_path / "s.sh").write_text(sh)
    assert subprocess.run(["bash", "-n", str(tmp_path / "s.sh")]).returncode == 0
    wf = yaml.safe_load(to_argo(src))
    templates = {t["name"]: t for t in wf["spec"]["templates"]}
    # a run: is the container's argv itself (no shell in between)
    assert templates["revert-app"]["container"]["command"] == argv
    assert "args" not in templates["revert-app"]["container"]
    params = wf["spec"]["templates"][0]["steps"][0][0]["arguments"]["parameters"]
    assert {p["name"]: p["value"] for p in params} == {"batch": "2", "drain": "2"}
    exp = json.loads(to_chaostoolkit(src))
    first = exp["method"][0]["provider"]
    assert first["path"] == "./deploy.sh" and first["arguments"] == argv[1:]
    assert [a["name"] for a in exp["method"]] == ["revert-app", "pause", "tell", "todo"]


def test_revert_config_uses_previous_config(tmp_path) -> None:
    sc = tmp_path / "sc.yaml"
    sc.write_text(MINIMAL.read_text().replace(
        "version: {live: v2, previous: v1}}",
        "version: {live: v2, previous: v1}, config: {live: c9, previous: c8}}").replace(
        "    - {name: revert-app, action: rollback_version, target: app}",
        "    - {name: revert-cfg, action: revert_config, target: app}"))
    sh = to_shell(load_source(str(sc)))
    assert "kubectl apply -f app-config-c8.yaml\n" in sh
    assert "kubectl rollout restart deployment/app\n" in sh
    assert "kubectl rollout status deployment/app" in sh


def test_mlflow_sources(monkeypatch, checkout) -> None:
    run_id = "0123456789abcdef0123456789abcdef"
    monkeypatch.setitem(sys.modules, "shadowrl.integrations.mlflow", None)
    with pytest.raises(SourceError, match="no such file"):
        load_source(run_id)  # without resolvers, export knows files only
    with pytest.raises(SourceError, match="shadowrl.integrations.mlflow"):
        load_source(run_id, resolvers=RESOLVERS)

    def resolve(uri: str) -> ExportSource:
        if uri.endswith("@missing"):
            raise ValueError("no model version with alias 'missing'")
        return ExportSource(procedure=checkout.procedure.model_copy(deep=True), scenario=None,
                            name="checkout-rollback", origin=uri,
                            evaluation={"runs": 100, "policy": "rl",
                                        "downtime_s": {"mean": 61.2, "p95": 90.0}},
                            command="shadowrl train experiments/x.yaml")

    fake = types.ModuleType("shadowrl.integrations.mlflow")
    fake.load_export_source = resolve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shadowrl.integrations.mlflow", fake)
    src = load_source("models:/checkout-rollback@champion", CHECKOUT, RESOLVERS)
    assert src.scenario is not None and src.origin == "models:/checkout-rollback@champion"
    sh = to_shell(src)
    assert "downtime mean 61s p95 90s" in sh and "shadowrl train experiments/x.yaml" in sh
    with pytest.raises(SourceError, match="alias 'missing'"):
        load_source("models:/checkout-rollback@missing", resolvers=RESOLVERS)


def test_resolvers_are_the_callers_choice(tmp_path, checkout) -> None:
    """Export reads files; anything else comes through the resolvers its caller passes, the
    first whose form matches, and is checked like a procedure file."""
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(SourceError, match=r"no such file \(give a procedure\.yaml or a "
                                          r"scenario YAML\)"):
        load_source(missing)
    with pytest.raises(SourceError, match="an MLflow run id or models:/NAME@ALIAS"):
        load_source(missing, resolvers=RESOLVERS)
    seen: list[str] = []

    def load(source: str) -> ExportSource:
        seen.append(source)
        proc = checkout.procedure.model_copy(deep=True)
        proc.steps[-1].after = [proc.steps[-1].name]
        return ExportSource(procedure=proc, scenario=None, name=proc.name, origin=source)

    toy = SourceResolver(forms="toy:NAME", matches=lambda s: s.startswith("toy:"), load=load)
    with pytest.raises(SpecError, match=r"toy:x:1: procedure\.steps\[\d+\]\.after\[0\]: "
                                        r"a step cannot come after itself"):
        load_source("toy:x", resolvers=(*RESOLVERS, toy))
    assert seen == ["toy:x"]


# --------------------------------------------------------------------------- CLI


def test_cli_out_writes_file(tmp_path, optimized_file) -> None:
    out = tmp_path / "deep" / "rollback.sh"
    result = run("export", optimized_file, "--format", "shell", "--scenario", CHECKOUT,
                 "--out", out)
    no_traceback(result)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "PLACEHOLDER" in result.stderr and f"wrote {out}" in result.stderr
    text = out.read_text()
    assert text.startswith("#!/usr/bin/env bash") and OPTIMIZE_CMD in text
    assert f"exported by: `shadowrl export {optimized_file} --format shell" in text
    assert out.stat().st_mode & stat.S_IXUSR
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    wf = tmp_path / "wf.yaml"
    assert run("export", CHECKOUT, "--format", "argo", "--out", wf).exit_code == 0
    assert yaml.safe_load(wf.read_text())["kind"] == "Workflow"
    assert not wf.stat().st_mode & stat.S_IXUSR


def test_cli_stdout(optimized_file) -> None:
    result = run("export", optimized_file, "--format", "yaml")
    no_traceback(result)
    assert result.exit_code == 0, result.stderr
    assert yaml.safe_load(result.stdout)["kind"] == "Procedure"
    assert "--scenario" in result.stderr  # not checked against a scenario: says how
    result = run("export", CHECKOUT, "--format", "chaostoolkit")
    assert result.exit_code == 0 and json.loads(result.stdout)["method"]


@pytest.mark.parametrize("args", [
    ["does-not-exist.yaml", "--format", "yaml"],
    [str(CHECKOUT), "--format", "terraform"],
    [str(MINIMAL), "--format", "shell", "--scenario", str(CHECKOUT)],
    ["models:/checkout@champion", "--format", "yaml"],
])
def test_cli_bad_input_exits_2(args, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "shadowrl.integrations.mlflow", None)
    result = run("export", *args)
    no_traceback(result)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")


def test_cli_bad_file_reports_line(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("procedure:\n  name: p\n  steps: [{name: a, action: teleport}]\n")
    result = run("export", bad, "--format", "shell")
    no_traceback(result)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{bad}:3: procedure.steps[0].action")


# --------------------------------------------------------------------------- policy sources

TRAIN_CMD = "shadowrl train experiments/checkout-maskable-ppo.yaml"
MODEL = "checkout-rollback"
POLICY_METRICS = {"eval_holdout_downtime_mean": 87.0, "eval_holdout_downtime_p95": 120.0,
                  "eval_holdout_episodes": 2, "eval_holdout_budget_burn_mean": 0.0016,
                  "eval_holdout_recovered_rate": 1.0, "holdout_rl_downtime_mean": 87.0}


def trained_version(store: Any, checkout: Any, summary: Any, folder: Path) -> str:
    """A registered model version as ``shadowrl train`` leaves one: its run holds the best
    static procedure.yaml (with optimize's header), a summary.json of every method, the
    policy's ``eval_holdout_*`` metrics, and the version's model folder."""
    import mlflow

    from shadowrl.integrations import mlflow as tracking

    folder.mkdir(parents=True)
    proc = folder / "procedure.yaml"
    proc.write_text(procedure_yaml(checkout, configured_plan(checkout.procedure), summary,
                                   TRAIN_CMD))
    best = summary.model_dump(mode="json")
    methods = {"best_static": best, "rl": {**best, "policy": "rl"}}
    with mlflow.start_run(experiment_id=store.experiment_id) as run:
        mlflow.log_metrics(POLICY_METRICS)
        tracking.log_run_files(CHECKOUT, proc, {"scenario": "checkout", "methods": methods})
        (folder / "model").mkdir()
        (folder / "model" / "MLmodel").write_text("flavors: {}\n")
        mlflow.log_artifacts(str(folder / "model"), "model")
    if not store.client.search_registered_models(f"name = '{MODEL}'"):
        store.client.create_registered_model(MODEL)
    run_id = run.info.run_id
    return str(store.client.create_model_version(MODEL, f"runs:/{run_id}/model",
                                                 run_id=run_id).version)


def test_a_registered_policy_exports_its_best_static_procedure_and_says_so(
        mlflow_store: Any, checkout: Any, summary: Any, tmp_path: Path) -> None:
    champion = trained_version(mlflow_store, checkout, summary, tmp_path / "v1")
    mlflow_store.client.set_registered_model_alias(MODEL, "champion", champion)
    static = f"downtime mean {summary.downtime_s.mean:.0f}s"
    expected = (f"the best static procedure found while training champion "
                f"models:/{MODEL}/{champion}, not the policy itself (this procedure: {static}"
                f", error budget burn mean {summary.budget_burn.mean:.3%}; the champion "
                f"policy, which is adaptive and has no runbook with branches to export instead: "
                f"downtime mean 87s, error budget burn mean 0.160%, on the same 2 held-out "
                f"incidents)")

    wf = tmp_path / "rollback-workflow.yaml"
    result = run("export", f"models:/{MODEL}@champion", "--format", "argo", "--out", wf)
    no_traceback(result)
    assert result.exit_code == 0, result.stderr
    assert f"exported: {expected}\n" in result.stderr  # the command says what it wrote
    text = wf.read_text()
    assert f"# exported: {expected}\n" in text  # and so does the file
    assert "{" not in text.split("\n# exported by:")[0]  # no Python dict in the header
    annotations = yaml.safe_load(text)["metadata"]["annotations"]
    assert annotations["shadowrl/exported"] == expected

    # --json: what was exported, the procedure's evaluation and the policy's, apart
    data = json.loads(run("export", f"models:/{MODEL}/{champion}", "--format", "yaml",
                          "--json").stdout)
    assert data["exported"] == expected and data["written"] is None
    assert data["procedure"] == f"{checkout.procedure.name}-optimized"
    assert data["evaluation"]["policy"] == "best_static"
    assert data["policy"]["name"] == f"models:/{MODEL}/{champion}"
    assert data["policy"]["champion"] is True
    assert data["policy"]["evaluation"]["downtime_s"] == {"mean": 87.0, "p95": 120.0}
    assert yaml.safe_load(data["text"])["kind"] == "Procedure"

    # a version that is not the champion is not called one
    other = trained_version(mlflow_store, checkout, summary, tmp_path / "v2")
    result = run("export", f"models:/{MODEL}/{other}", "--format", "shell")
    assert result.exit_code == 0, result.stderr
    assert (f"# exported: the best static procedure found while training "
            f"models:/{MODEL}/{other}, not the policy itself") in result.stdout
    assert "champion" not in result.stdout.split("# produced by")[0]
    assert "the policy, which is adaptive" in result.stderr

    # a missing alias: one error line, the URI said once
    result = run("export", f"models:/{MODEL}@nope", "--format", "yaml")
    assert result.exit_code == 2
    assert result.stderr == (f"error: models:/{MODEL}@nope: registered model '{MODEL}' has "
                             f"no alias 'nope'\n")


def test_export_json_of_a_procedure_file(tmp_path: Path, optimized_file: Path) -> None:
    out = tmp_path / "rollback.sh"
    result = run("export", optimized_file, "--format", "shell", "--scenario", CHECKOUT,
                 "--out", out, "--json")
    no_traceback(result)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["written"] == str(out) and data["text"] == out.read_text()
    assert data["source"] == str(optimized_file) and data["format"] == "shell"
    assert data["procedure"] == "checkout-rollback-optimized" and data["scenario"] == "checkout"
    assert data["exported"] == f"the procedure 'checkout-rollback-optimized' in {optimized_file}"
    assert data["evaluation"]["runs"] == 2 and data["policy"] is None
    assert any("PLACEHOLDER" in w for w in data["warnings"])
    assert "exported:" not in result.stderr  # a procedure file exports as itself
    data = json.loads(run("export", CHECKOUT, "--format", "yaml", "--json").stdout)
    assert data["exported"] == (f"the configured procedure 'checkout-rollback' of scenario "
                                f"{CHECKOUT}")

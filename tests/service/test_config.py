"""The service's config file: every problem names file, line and field; a good file loads
with its paths relative to the file itself, not to the working directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shadowrl.core.spec import SpecError
from shadowrl.service.config import load_service_config

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "envs" / "checkout.yaml"
HISTORY = ROOT / "envs" / "history" / "checkout_rps.csv"


def write(folder: Path, text: str) -> Path:
    path = folder / "service.yaml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[tuple[str, int, str, str]]:
    with pytest.raises(SpecError) as info:
        load_service_config(path)
    return [(p.file, p.line, p.path, p.message) for p in info.value.problems]


def test_unknown_key_is_named_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, f"""apiVersion: shadowrl/v1
kind: Service
deployments:
  - name: checkout
    scenario: {SCENARIO}
    colour: blue
""")
    found = problems(path)
    assert len(found) == 1
    file, line, field, message = found[0]
    assert (file, line, field) == (str(path), 6, "deployments[0].colour")
    assert "unknown field" in message
    # the error's text carries all three too (what the command prints)
    with pytest.raises(SpecError, match=r"service\.yaml:6: deployments\[0\]\.colour"):
        load_service_config(path)


def test_semantic_problems_are_all_reported_at_once(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHADOWRL_TEST_UNSET_TOKEN", raising=False)
    monkeypatch.setenv("SHADOWRL_TEST_EMPTY_TOKEN", "")
    path = write(tmp_path, f"""apiVersion: shadowrl/v1
kind: Service
auth:
  tokens:
    - {{name: reader, scope: read, env: SHADOWRL_TEST_UNSET_TOKEN}}
    - {{name: ops, scope: write, env: SHADOWRL_TEST_EMPTY_TOKEN}}
deployments:
  - name: checkout
    scenario: {SCENARIO}
  - name: checkout
    scenario: {SCENARIO}
    rehearse: {{at: peak}}
""")
    found = {(line, field): message for _f, line, field, message in problems(path)}
    assert set(found) == {(5, "auth.tokens[0].env"), (6, "auth.tokens[1].env"),
                          (10, "deployments[1].name"), (12, "deployments[1].rehearse.at")}
    assert "SHADOWRL_TEST_UNSET_TOKEN is not set" in found[(5, "auth.tokens[0].env")]
    assert "SHADOWRL_TEST_EMPTY_TOKEN is not set" in found[(6, "auth.tokens[1].env")]
    assert "'checkout' is named twice" in found[(10, "deployments[1].name")]
    assert "peak needs a history" in found[(12, "deployments[1].rehearse.at")]


def test_history_needs_exactly_one_source(tmp_path: Path) -> None:
    path = write(tmp_path, f"""apiVersion: shadowrl/v1
kind: Service
deployments:
  - name: checkout
    scenario: {SCENARIO}
    history:
      file: {HISTORY}
      prometheus: http://prometheus:9090
      query: sum(rate(http_requests_total[5m]))
""")
    [(file, line, field, message)] = problems(path)
    assert (file, line, field) == (str(path), 6, "deployments[0].history")
    assert "exactly one of file or prometheus" in message
    # none at all is as wrong; a Prometheus without a query, or not over HTTP, too
    for history, text in (("{range: 1d}", "exactly one of file or prometheus"),
                          ("{prometheus: 'http://p:9090'}", "needs a query"),
                          ("{prometheus: 'ftp://p', query: up}", "http:// or https://")):
        path = write(tmp_path, f"""apiVersion: shadowrl/v1
kind: Service
deployments:
  - name: checkout
    scenario: {SCENARIO}
    history: {history}
""")
        [(_f, line, field, message)] = problems(path)
        assert (line, field) == (6, "deployments[0].history") and text in message, message


def test_missing_files_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, f"""apiVersion: shadowrl/v1
kind: Service
auth:
  tokens:
    - {{name: ops, scope: write, file: secrets/ops-token}}
deployments:
  - name: checkout
    scenario: nowhere/checkout.yaml
  - name: search
    scenario: {SCENARIO}
    history: {{file: history/none.csv}}
""")
    found = {(line, field): message for _f, line, field, message in problems(path)}
    assert set(found) == {(5, "auth.tokens[0].file"), (8, "deployments[0].scenario"),
                          (11, "deployments[1].history.file")}
    assert "secrets/ops-token: cannot read" in found[(5, "auth.tokens[0].file")]
    assert found[(8, "deployments[0].scenario")].startswith("nowhere/checkout.yaml: ")
    assert "no such file: history/none.csv" in found[(11, "deployments[1].history.file")]


def test_a_good_config_loads_with_paths_relative_to_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "conf"
    (folder / "scenarios").mkdir(parents=True)
    (folder / "history").mkdir()
    shutil.copy(SCENARIO, folder / "scenarios" / "checkout.yaml")
    shutil.copy(HISTORY, folder / "history" / "checkout.csv")
    (folder / "ops-token").write_text("  s3cret-token \n")
    monkeypatch.setenv("SHADOWRL_TEST_READER", "reader-token")
    path = write(folder, """apiVersion: shadowrl/v1
kind: Service
auth:
  tokens:
    - {name: reader, env: SHADOWRL_TEST_READER}
    - {name: ops, scope: write, file: ops-token}
deployments:
  - name: checkout
    scenario: scenarios/checkout.yaml
    history: {file: history/checkout.csv}
    rehearse: {every: 30m, runs: 5, at: peak}
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the file, not to the working directory
    cfg = load_service_config(Path("..") / path.relative_to(tmp_path))
    dep = cfg.deployment("checkout")
    assert dep is not None and cfg.deployment("nope") is None
    assert cfg.path_of(dep.scenario) == folder.resolve() / "scenarios" / "checkout.yaml"
    assert dep.history is not None and dep.history.file is not None
    assert cfg.path_of(dep.history.file).is_file()
    assert cfg.path_of("/abs/file") == Path("/abs/file")
    assert dep.rehearse.every == 1800.0 and dep.rehearse.runs == 5
    assert dep.rehearse.at == "peak" and dep.backend == "sim"
    assert [t.scope for t in cfg.auth.tokens] == ["read", "write"]  # read is the default
    # the defaults: outputs next to the file, SQLite inside them
    assert cfg.data_dir == folder.resolve() / "shadowrl-data"
    assert cfg.database_url == f"sqlite:///{folder.resolve() / 'shadowrl-data' / 'shadowrl.db'}"
    assert cfg.limits.max_request_bytes == 64 * 1024 and cfg.metadata.name == "shadowrl"


def test_database_url_given_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, f"""apiVersion: shadowrl/v1
kind: Service
database: postgresql://shadowrl@db/shadowrl
data: /var/lib/shadowrl
deployments:
  - {{name: checkout, scenario: {SCENARIO}}}
""")
    cfg = load_service_config(path)
    assert cfg.database_url == "postgresql://shadowrl@db/shadowrl"
    assert cfg.data_dir == Path("/var/lib/shadowrl")


def test_bounds_and_kind_are_checked(tmp_path: Path) -> None:
    path = write(tmp_path, f"""apiVersion: shadowrl/v1
kind: Scenario
limits: {{trigger_burst: 0}}
deployments:
  - {{name: checkout, scenario: {SCENARIO}, rehearse: {{runs: 100000}}}}
""")
    found = {(line, field) for _f, line, field, _m in problems(path)}
    assert found == {(2, "kind"), (3, "limits.trigger_burst"),
                     (5, "deployments[0].rehearse.runs")}
    path = write(tmp_path, "apiVersion: shadowrl/v1\nkind: Service\ndeployments: []\n")
    assert [field for _f, _l, field, _m in problems(path)] == ["deployments"]

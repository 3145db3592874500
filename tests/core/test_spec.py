"""Scenario format ``shadowrl/v1``: loading, validation messages (file:line: path) and durations.

Bad inputs are made by editing BASE, a small valid scenario whose line numbers are listed
beside it, so every expected message names an exact line.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowrl.core.spec import (
    Scenario,
    SpecError,
    as_scenario,
    check_procedure,
    data_files,
    format_duration,
    load_procedure,
    load_scenario,
    load_yaml,
    parse_duration,
    procedure_file_data,
    procedure_to_data,
    scenario_from_data,
    scenario_problem,
)

ROOT = Path(__file__).resolve().parents[2]
ENVS = ["checkout", "payments", "search"]
TEST_SCENARIOS = ["minimal", "irreversible", "external"]

BASE = """\
apiVersion: shadowrl/v1
kind: Scenario
metadata: {name: shop, description: "web -> api -> db + cache"}
deployment:
  traffic: {rps: 100, write_fraction: 0.2}
  services:
    - name: web
      edge: true
      replicas: 4
      capacity_rps: 50
      startup: 20s
      calls: [api]
      version: {live: v2, previous: v1}
      flags: [new-ui]
    - name: api
      replicas: 2
      capacity_rps: 100
      calls: [db, cache]
      version: {live: v9, previous: v8}
      config: {live: c2, previous: c1}
  datastores:
    - name: db
      capacity_qps: 500
      migration: {duration: 1m, backward_compatible: false}
  caches:
    - {name: cache, hit_ratio: 0.8}
slo:
  rules:
    - {name: errors, metric: error_rate, above: 0.01, for: 30s}
incidents:
  - name: bad-release
    cause: {kind: version, target: web}
    effects: [{metric: error_rate, target: web, add: 0.05}]
  - name: ui-flag
    cause: {kind: flag, target: web, flag: new-ui}
    effects: [{metric: latency, target: web, factor: 2}]
procedure:
  name: shop-rollback
  steps:
    - name: scale-web
      action: scale
      target: web
      settings: {replicas: {choices: [4, 6], default: 4}}
    - name: revert-web
      action: rollback_version
      target: web
      settings: {batch: 2, drain: {choices: [0s, 10s, 30s], default: 10s}}
    - name: migrate-db-down
      action: migrate_down
      target: db
      after: [revert-web]
      settings: {online: {choices: [false, true], default: false}}
    - name: flag-off
      action: disable_flag
      target: web
      settings: {flag: new-ui}
    - name: pause
      action: wait
      settings: {duration: 30s}
    - name: revert-api-config
      action: revert_config
      target: api
      optional: true
    - name: page-team
      action: command
      run: [echo, paged]
      sim: {duration: 5s, fixes: [ui-flag]}
  verify: {hold: 1m, timeout: 20m}
  budget: {downtime: 3m}
"""
# Line numbers in BASE used below:
#   3 metadata          5 traffic           7 services[0]      9 web.replicas
#  11 web.startup      12 web.calls        14 web.flags       15 services[1] (api)
#  18 api.calls        24 db.migration     26 caches[0]       29 slo.rules[0]
#  33 incidents[0].effects                 35 incidents[1].cause
#  40 steps[0]         43 steps[0].settings                   44 steps[1]
#  47 steps[1].settings                    50 steps[2].target 51 steps[2].after
#  52 steps[2].settings                    56 steps[3].settings
#  58 steps[4].action  59 steps[4].settings                   63 steps[5].optional
#  67 steps[6].sim     68 verify           69 budget          70 (end of file)


def edit(old: str, new: str, text: str = BASE) -> str:
    """BASE with the one occurrence of ``old`` replaced by ``new``."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def problems(data: str | bytes, name: str = "x.yaml") -> list[str]:
    """Load ``data`` from a file ``name`` in the current directory; return the problems."""
    path = Path(name)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    with pytest.raises(SpecError) as info:
        load_scenario(name)
    found = [str(p) for p in info.value.problems]
    assert str(info.value) == "\n".join(found)
    return found


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


# --------------------------------------------------------------------------- valid files


@pytest.mark.parametrize("name", ENVS)
def test_envs_load(name: str) -> None:
    sc = load_scenario(ROOT / "envs" / f"{name}.yaml")
    assert sc.name == name
    assert sc.metadata.description
    comps = sc.components()
    for step in sc.procedure.steps:
        assert step.target is None or step.target in comps
        for key, tun in step.tunables().items():
            assert tun.default in tun.choices, (step.name, key)


@pytest.mark.parametrize("name", TEST_SCENARIOS)
def test_test_scenarios_load(name: str) -> None:
    sc = load_scenario(ROOT / "tests" / "scenarios" / f"{name}.yaml")
    assert sc.name == name


def test_small_scenarios_have_their_shape() -> None:
    irr = load_scenario(ROOT / "tests" / "scenarios" / "irreversible.yaml")
    db = irr.components()["db"]
    assert db.migration is not None and db.migration.reversible is False
    assert "migrate_down" in [s.action for s in irr.procedure.steps]
    ext = load_scenario(ROOT / "tests" / "scenarios" / "external.yaml")
    assert {i.cause.kind for i in ext.incidents} == {"external"}
    mini = load_scenario(ROOT / "tests" / "scenarios" / "minimal.yaml")
    assert len(mini.deployment.services) == len(mini.slo.rules) == len(mini.incidents) == 1
    assert [s.action for s in mini.procedure.steps] == ["rollback_version"]


def test_base_loads_with_defaults() -> None:
    Path("x.yaml").write_text(BASE)
    sc = load_scenario("x.yaml")
    assert sc.edge.name == "web"
    assert sc.deployment.services[0].startup == 20.0
    assert sc.deployment.services[1].inflight_time == 10.0
    assert sc.deployment.caches[0].latency == 0.001 and sc.deployment.caches[0].fronts is None
    assert sc.deployment.datastores[0].migration.online_factor == 4.0
    assert sc.slo.interval == 10.0 and sc.slo.rules[0].for_ == 30.0
    steps = {s.name: s for s in sc.procedure.steps}
    assert steps["scale-web"].default_settings() == {"replicas": 4}
    assert steps["revert-web"].default_settings() == {"batch": 2, "drain": 10.0}
    assert steps["revert-web"].tunables()["drain"].choices == [0.0, 10.0, 30.0]
    assert steps["migrate-db-down"].default_settings() == {"online": False}
    assert steps["pause"].default_settings() == {"duration": 30.0}
    assert steps["revert-api-config"].default_settings() == {"batch": 1, "drain": 30.0}
    assert steps["revert-api-config"].optional
    # queueing and surge defaults: derived concurrency (None here), no room to surge
    assert sc.deployment.services[0].concurrency is None
    assert sc.deployment.services[0].max_surge == 0
    assert sc.deployment.datastores[0].concurrency is None
    assert steps["page-team"].sim.fixes == ["ui-flag"]
    assert sc.procedure.verify.hold == 60.0 and sc.procedure.budget.downtime == 180.0


# --------------------------------------------------------------------------- validation

CASES = [
    # (id, old, new, expected problem)
    ("yaml-syntax", "      replicas: 4\n", "      replicas: 4: 5\n",
     "x.yaml:9: YAML syntax error: mapping values are not allowed in this context"),
    ("yaml-unclosed", "calls: [api]", "calls: [api",
     "x.yaml:13: YAML syntax error: did not find expected ',' or ']'"),
    ("duplicate-key", "      startup: 20s\n", "      startup: 20s\n      startup: 30s\n",
     "x.yaml:12: deployment.services[0].startup: duplicate key"),
    ("range-fraction", "write_fraction: 0.2", "write_fraction: 1.5",
     "x.yaml:5: deployment.traffic.write_fraction: must be at most 1, got 1.5"),
    ("range-hit-ratio", "hit_ratio: 0.8", "hit_ratio: 1.2",
     "x.yaml:26: deployment.caches[0].hit_ratio: must be at most 1, got 1.2"),
    ("range-replicas", "      replicas: 4\n", "      replicas: 0\n",
     "x.yaml:9: deployment.services[0].replicas: must be at least 1, got 0"),
    ("range-error-add", "add: 0.05", "add: 2",
     "x.yaml:33: incidents[0].effects[0]: error_rate 'add' must be between 0 and 1"),
    ("range-setting", "choices: [4, 6]", "choices: [4, -1]",
     "x.yaml:43: procedure.steps[0].settings.replicas.choices: must be >= 1, got -1 (a "
     "scale step keeps a serving service running: at least 1 replica)"),
    ("range-batch", "{batch: 2,", "{batch: 0,",
     "x.yaml:47: procedure.steps[1].settings.batch: must be >= 1, got 0"),
    ("type-setting", "{online: {choices: [false, true]", "{online: {choices: [no, maybe]",
     "x.yaml:52: procedure.steps[2].settings.online.choices: expected true or false, "
     "got 'maybe'"),
    ("type-effect", "factor: 2}", "factor: big}",
     "x.yaml:36: incidents[1].effects[0].factor: Input should be a valid number, "
     "unable to parse string as a number"),
    ("type-calls", "calls: [api]", "calls: api",
     "x.yaml:12: deployment.services[0].calls: Input should be a valid list"),
    ("effect-needs-change", "{metric: latency, target: web, factor: 2}",
     "{metric: latency, target: web}",
     "x.yaml:36: incidents[1].effects[0]: an effect needs 'add' or 'factor'"),
    ("rule-one-bound", "above: 0.01,", "above: 0.01, below: 0.5,",
     "x.yaml:29: slo.rules[0]: exactly one of 'above' or 'below' is required"),
    ("bad-name", "name: shop,", "name: Shop,",
     "x.yaml:3: metadata.name: invalid name 'Shop': use lowercase letters, digits and '-'"),
    ("unknown-top-level", "  budget: {downtime: 3m}\n",
     "  budget: {downtime: 3m}\nrollout: {}\n",
     "x.yaml:70: rollout: unknown field"),
    ("unknown-nested", "      startup: 20s", "      statup: 20s",
     "x.yaml:11: deployment.services[0].statup: unknown field"),
    ("unknown-flow", "{name: cache, hit_ratio: 0.8}", "{name: cache, hit_ratio: 0.8, ttl: 5m}",
     "x.yaml:26: deployment.caches[0].ttl: unknown field"),
    ("unknown-step-key", "      after: [revert-web]\n", "      after: [revert-web]\n"
     "      retries: 3\n", "x.yaml:52: procedure.steps[2].retries: unknown field"),
    ("unknown-setting", "{batch: 2,", "{parallel: 2, batch: 2,",
     "x.yaml:47: procedure.steps[1].settings.parallel: unknown setting for action "
     "'rollback_version' (allowed: batch, drain, surge)"),
    # web has no max_surge (default 0): no room for a replica beside the current ones
    ("surge-above-max", "{batch: 2,", "{surge: {choices: [0, 1]}, batch: 2,",
     "x.yaml:47: procedure.steps[1].settings.surge: surge 1 exceeds max_surge 0 of 'web' "
     "(room for at most 0 extra replicas)"),
    ("range-surge", "{batch: 2,", "{surge: -1, batch: 2,",
     "x.yaml:47: procedure.steps[1].settings.surge: must be >= 0, got -1"),
    ("range-max-surge", "      startup: 20s\n", "      startup: 20s\n      max_surge: -1\n",
     "x.yaml:12: deployment.services[0].max_surge: must be at least 0, got -1"),
    ("range-concurrency", "      capacity_qps: 500\n", "      capacity_qps: 500\n"
     "      concurrency: 0\n",
     "x.yaml:24: deployment.datastores[0].concurrency: must be at least 1, got 0"),
    ("reserved-edge-service", "    - name: api\n", "    - name: edge\n",
     "x.yaml:15: deployment.services[1].name: the name 'edge' is reserved: a rule's "
     "'scope: edge' means the edge view; rename the component"),
    ("reserved-edge-cache", "{name: cache,", "{name: edge,",
     "x.yaml:26: deployment.caches[0].name: the name 'edge' is reserved: a rule's "
     "'scope: edge' means the edge view; rename the component"),
    ("wrong-kind-migrate", "      target: db\n", "      target: web\n",
     "x.yaml:50: procedure.steps[2].target: action 'migrate_down' needs a datastore, "
     "'web' is a service"),
    ("wrong-kind-scale", "      action: scale\n      target: web",
     "      action: scale\n      target: cache",
     "x.yaml:42: procedure.steps[0].target: action 'scale' needs a service, "
     "'cache' is a cache"),
    ("unknown-target", "      action: revert_config\n      target: api",
     "      action: revert_config\n      target: apl",
     "x.yaml:62: procedure.steps[5].target: unknown component 'apl'"),
    ("revert-config-needs-config", "      action: revert_config\n      target: api",
     "      action: revert_config\n      target: web",
     "x.yaml:62: procedure.steps[5].target: service 'web' has no 'config' to revert"),
    ("after-unknown", "after: [revert-web]", "after: [revert-api]",
     "x.yaml:51: procedure.steps[2].after[0]: unknown step 'revert-api'"),
    ("after-cycle", "      settings: {batch: 2,", "      after: [migrate-db-down]\n"
     "      settings: {batch: 2,",
     "x.yaml:47: procedure.steps[1].after: 'after' cycle: "
     "revert-web -> migrate-db-down -> revert-web"),
    ("call-cycle", "calls: [db, cache]", "calls: [db, cache, web]",
     "x.yaml:12: deployment.services[0].calls: call cycle: web -> api -> web"),
    ("call-unknown", "calls: [db, cache]", "calls: [db, cash]",
     "x.yaml:18: deployment.services[1].calls[1]: unknown component 'cash'"),
    ("default-outside-choices", "default: 10s}", "default: 20s}",
     "x.yaml:47: procedure.steps[1].settings.drain.default: default '20s' is not among "
     "the choices [0s, 10s, 30s]"),
    ("default-outside-count", "default: 4}", "default: 5}",
     "x.yaml:43: procedure.steps[0].settings.replicas.default: default 5 is not among "
     "the choices [4, 6]"),
    ("duration-field", "startup: 20s", "startup: 20 secs",
     "x.yaml:11: deployment.services[0].startup: cannot parse duration '20 secs' "
     "(use e.g. 500ms, 30s, 5m, 1h)"),
    ("duration-negative", "startup: 20s", "startup: -5",
     "x.yaml:11: deployment.services[0].startup: duration must be a finite number >= 0, "
     "got -5"),
    ("duration-choice", "[0s, 10s, 30s]", "[0s, ten, 30s]",
     "x.yaml:47: procedure.steps[1].settings.drain.choices: cannot parse duration 'ten' "
     "(use e.g. 500ms, 30s, 5m, 1h)"),
    ("duration-verify", "hold: 1m", "hold: soon",
     "x.yaml:68: procedure.verify.hold: cannot parse duration 'soon' "
     "(use e.g. 500ms, 30s, 5m, 1h)"),
    ("duplicate-component", "    - name: api\n", "    - name: web\n",
     "x.yaml:15: deployment.services[1].name: duplicate component name 'web' "
     "(first at deployment.services[0].name)"),
    ("duplicate-across-kinds", "{name: cache,", "{name: db,",
     "x.yaml:26: deployment.caches[0].name: duplicate component name 'db' "
     "(first at deployment.datastores[0].name)"),
    ("duplicate-step", "    - name: pause\n", "    - name: flag-off\n",
     "x.yaml:57: procedure.steps[4].name: duplicate step 'flag-off'"),
    ("duplicate-incident", "  - name: ui-flag\n", "  - name: bad-release\n",
     "x.yaml:34: incidents[1].name: duplicate incident 'bad-release'"),
    ("two-edges", "      replicas: 2\n", "      edge: true\n      replicas: 2\n",
     "x.yaml:16: deployment.services[1].edge: only one service may have edge: true"),
    ("missing-scale-replicas", "{replicas: {choices: [4, 6], default: 4}}", "{}",
     "x.yaml:43: procedure.steps[0].settings: action 'scale' needs setting 'replicas'"),
    ("missing-wait-duration", "{duration: 30s}", "{}",
     "x.yaml:59: procedure.steps[4].settings: action 'wait' needs setting 'duration'"),
    ("missing-field", "      capacity_rps: 50\n", "",
     "x.yaml:7: deployment.services[0].capacity_rps: field required"),
    ("flag-not-served-cause", "web, flag: new-ui}", "web, flag: dark-mode}",
     "x.yaml:35: incidents[1].cause.flag: 'dark-mode' is not one of ['new-ui']"),
    ("flag-not-served-step", "{flag: new-ui}", "{flag: dark-mode}",
     "x.yaml:56: procedure.steps[3].settings.flag: 'dark-mode' is not a flag of 'web' "
     "(flags: ['new-ui'])"),
    ("flag-cause-no-flags", "{kind: flag, target: web, flag: new-ui}",
     "{kind: flag, target: api}",
     "x.yaml:35: incidents[1].cause.target: service 'api' serves no flags"),
    ("schema-cause-not-datastore", "{kind: version, target: web}",
     "{kind: schema, target: web}",
     "x.yaml:32: incidents[0].cause.target: 'web' is not a datastore"),
    ("sim-fixes-unknown", "fixes: [ui-flag]", "fixes: [ui-flags]",
     "x.yaml:67: procedure.steps[6].sim.fixes[0]: unknown incident 'ui-flags'"),
    ("slo-scope", "{name: errors, metric: error_rate,", "{name: errors, metric: error_rate, "
     "scope: nowhere,", "x.yaml:29: slo.rules[0].scope: unknown scope 'nowhere' "
     "(use 'edge' or a component)"),
]


@pytest.mark.parametrize(("old", "new", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_validation_problem(old: str, new: str, expected: str) -> None:
    assert expected in problems(edit(old, new))


def test_unknown_action() -> None:
    found = problems(edit("action: wait", "action: sleep"))
    assert len(found) == 1
    assert found[0].startswith("x.yaml:58: procedure.steps[4].action: Input should be 'scale', ")
    assert "'command'" in found[0]


def test_wrong_type_scalar() -> None:
    found = problems(edit("      replicas: 4\n", "      replicas: four\n"))
    assert found == ["x.yaml:9: deployment.services[0].replicas: Input should be a valid "
                     "integer, unable to parse string as an integer"]


def test_several_problems_are_all_reported() -> None:
    text = edit("after: [revert-web]", "after: [revert-api]",
                edit("      target: db\n", "      target: web\n"))
    found = problems(text)
    assert "x.yaml:51: procedure.steps[2].after[0]: unknown step 'revert-api'" in found
    assert any(p.startswith("x.yaml:50: procedure.steps[2].target:") for p in found)


def test_problem_names_the_path_given() -> None:
    Path("envs").mkdir()
    found = problems(edit("after: [revert-web]", "after: [revert-api]"), name="envs/x.yaml")
    assert found == ["envs/x.yaml:51: procedure.steps[2].after[0]: unknown step 'revert-api'"]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("    - name: web\n", '    - name: "web\\n"\n',
     "x.yaml:7: deployment.services[0].name: invalid name 'web\\n'"),
    ("    - name: pause\n", "    - name: \"pause\\n\"\n",
     "x.yaml:57: procedure.steps[4].name: invalid name 'pause\\n'"),
    ("{flag: new-ui}", '{flag: "new-ui\\n"}',
     "x.yaml:56: procedure.steps[3].settings.flag: invalid name 'new-ui\\n'"),
    ("      flags: [new-ui]\n", '      flags: ["new-ui\\n"]\n',
     "x.yaml:14: deployment.services[0].flags[0]: invalid name 'new-ui\\n'"),
], ids=["service", "step", "flag-setting", "flag"])
def test_name_with_trailing_newline_rejected(old: str, new: str, expected: str) -> None:
    """A name is the whole string: ``web\\n`` is not ``web`` (``$`` matches before a final
    newline; names use fullmatch), so it cannot split an exported command line."""
    found = problems(edit(old, new))
    assert any(p.startswith(expected) for p in found), found


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("text", ["", "\n\n", "   \n# only a comment\n"])
def test_empty_file(text: str) -> None:
    assert problems(text) == ["x.yaml:1: file is empty"]


def test_top_level_list() -> None:
    assert problems("- apiVersion: shadowrl/v1\n- kind: Scenario\n") == [
        "x.yaml:1: the top level must be a mapping (apiVersion, kind, ...), got a list"]


def test_top_level_scalar() -> None:
    assert problems("just words\n") == [
        "x.yaml:1: the top level must be a mapping (apiVersion, kind, ...), got a string"]


def test_binary_junk() -> None:
    junk = random.Random(0).randbytes(512) + b"\x00"
    assert problems(junk) == ["x.yaml:1: not a text file (contains NUL bytes)"]


def test_non_utf8() -> None:
    data = edit('description: "web -> api -> db + cache"', 'description: "café"').encode("latin-1")
    assert problems(data) == ["x.yaml:3: not UTF-8 text"]


def test_several_documents() -> None:
    assert problems(BASE + "---\nkind: Scenario\n") == [
        "x.yaml:71: expected one YAML document, found several"]


def test_missing_and_directory() -> None:
    with pytest.raises(SpecError, match=r"^nope\.yaml:1: no such file$"):
        load_scenario("nope.yaml")
    Path("dir.yaml").mkdir()
    with pytest.raises(SpecError, match=r"^dir\.yaml:1: is a directory, not a file$"):
        load_scenario("dir.yaml")


def test_wrong_api_version_and_kind() -> None:
    found = problems(edit("kind: Scenario", "kind: Experiment",
                          edit("apiVersion: shadowrl/v1", "apiVersion: shadowrl/v2")))
    assert found[0].startswith("x.yaml:1: apiVersion: Input should be 'shadowrl/v1'")
    assert found[1].startswith("x.yaml:2: kind: Input should be 'Scenario'")


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("2d", 172800.0),
    ("1.5m", 90.0), (" 10s ", 10.0), ("0s", 0.0), (45, 45.0), (2.5, 2.5), (0, 0.0),
])
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "ten", "5 minutes", "-5s", "1e3", "5mm", True, None,
                                 [1], float("inf"), float("nan"), -1])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0s"), (0.5, "500ms"), (1.25, "1250ms"), (30.0, "30s"), (90.0, "90s"),
    (300.0, "5m"), (5400.0, "90m"), (3600.0, "1h"), (86400.0, "24h"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@given(st.integers(min_value=0, max_value=10**7))
@settings(max_examples=100, deadline=None, database=None)
def test_format_duration_round_trips_milliseconds(ms: int) -> None:
    assert parse_duration(format_duration(ms / 1000)) == pytest.approx(ms / 1000)


# --------------------------------------------------------------------------- procedures


def _round_trip(sc: Scenario, path: Path) -> None:
    data = procedure_to_data(sc.procedure)
    path.write_text(yaml.safe_dump({"procedure": data}, sort_keys=False))
    proc = load_procedure(path, sc)
    assert proc == sc.procedure
    assert procedure_to_data(proc) == data


def test_procedure_round_trip_base(tmp_path: Path) -> None:
    Path("x.yaml").write_text(BASE)
    sc = load_scenario("x.yaml")
    data = procedure_to_data(sc.procedure)
    steps = {s["name"]: s for s in data["steps"]}
    assert steps["revert-web"]["settings"] == {
        "batch": 2, "drain": {"choices": ["0s", "10s", "30s"], "default": "10s"}}
    assert steps["pause"]["settings"] == {"duration": "30s"}
    assert steps["migrate-db-down"]["after"] == ["revert-web"]
    assert steps["page-team"]["run"] == ["echo", "paged"]
    assert steps["page-team"]["sim"] == {"duration": "5s", "fixes": ["ui-flag"]}
    assert data["verify"] == {"hold": "1m", "timeout": "20m"}
    assert data["budget"] == {"downtime": "3m"}
    _round_trip(sc, tmp_path / "proc.yaml")


@pytest.mark.parametrize("name", ENVS + TEST_SCENARIOS)
def test_procedure_round_trip_files(name: str, tmp_path: Path) -> None:
    folder = ROOT / ("envs" if name in ENVS else "tests/scenarios")
    _round_trip(load_scenario(folder / f"{name}.yaml"), tmp_path / "proc.yaml")


def test_load_procedure_problems_name_lines() -> None:
    Path("x.yaml").write_text(BASE)
    sc = load_scenario("x.yaml")
    Path("p.yaml").write_text(
        "procedure:\n"
        "  name: short\n"
        "  steps:\n"
        "    - {name: a, action: rollback_version, target: web}\n"
        "    - {name: b, action: migrate_down, target: db, after: [c]}\n"
        "    - {name: d, action: teleport}\n")
    with pytest.raises(SpecError) as info:
        load_procedure("p.yaml", sc)
    assert [str(p) for p in info.value.problems][0].startswith(
        "p.yaml:6: procedure.steps[2].action: Input should be")
    Path("p.yaml").write_text(
        "procedure:\n"
        "  name: short\n"
        "  steps:\n"
        "    - {name: a, action: rollback_version, target: web}\n"
        "    - {name: b, action: migrate_down, target: db, after: [c]}\n")
    with pytest.raises(SpecError) as info:
        load_procedure("p.yaml", sc)
    assert [str(p) for p in info.value.problems] == [
        "p.yaml:5: procedure.steps[1].after[0]: unknown step 'c'"]
    Path("p.yaml").write_text("steps: []\n")
    with pytest.raises(SpecError, match=r"^p\.yaml:1: expected a mapping with a 'procedure:' key"):
        load_procedure("p.yaml", sc)


def test_procedure_without_scenario_checks_its_own_rules() -> None:
    """Without a scenario a procedure file is checked on its own, with the same messages as a
    scenario's procedure; its targets are left unchecked."""
    Path("p.yaml").write_text(
        "kind: Procedure\n"
        "procedure:\n"
        "  name: short\n"
        "  steps:\n"
        "    - {name: a, action: rollback_version, target: nowhere, after: [b]}\n"
        "    - {name: b, action: wait, settings: {duration: 5s}, after: [a]}\n")
    with pytest.raises(SpecError) as info:
        load_procedure("p.yaml")
    assert [str(p) for p in info.value.problems] == [
        "p.yaml:5: procedure.steps[0].after: 'after' cycle: a -> b -> a"]
    Path("p.yaml").write_text(
        "procedure:\n"
        "  name: short\n"
        "  steps:\n"
        "    - {name: a, action: rollback_version, target: nowhere}\n"
        "    - {name: a, action: wait, settings: {duration: soon}}\n")
    with pytest.raises(SpecError) as info:
        load_procedure("p.yaml")
    assert [str(p) for p in info.value.problems] == [
        "p.yaml:5: procedure.steps[1].name: duplicate step 'a'",
        "p.yaml:5: procedure.steps[1].settings.duration: cannot parse duration 'soon' "
        "(use e.g. 500ms, 30s, 5m, 1h)"]
    Path("p.yaml").write_text("kind: Runbook\nprocedure: {name: p, steps: []}\n")
    with pytest.raises(SpecError, match=r"^p\.yaml:1: kind: expected 'Procedure' \(a "
                                        r"procedure file\) or 'Scenario'"):
        load_procedure("p.yaml")


def test_check_procedure_with_and_without_scenario() -> None:
    Path("x.yaml").write_text(BASE)
    sc = load_scenario("x.yaml")
    assert as_scenario(sc) is sc and as_scenario("x.yaml") == sc
    proc = sc.procedure.model_copy(deep=True)
    proc.steps[0].target = "nowhere"
    assert check_procedure(proc) == []
    assert check_procedure(proc, sc) == [
        (("procedure", "steps", 0, "target"), "unknown component 'nowhere'")]


def test_procedure_file_data_loads_back(tmp_path: Path) -> None:
    Path("x.yaml").write_text(BASE)
    sc = load_scenario("x.yaml")
    data = procedure_file_data(sc.procedure, sc.name)
    assert list(data) == ["apiVersion", "kind", "metadata", "procedure"]
    assert data["metadata"] == {"name": sc.procedure.name, "scenario": "shop"}
    path = tmp_path / "proc.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert load_procedure(path, sc) == sc.procedure == load_procedure(path)


# --------------------------------------------------------------------------- bounds

BOUND_CASES = [
    # (id, old, new, expected problem): each bound is named in the message, a duration's
    # as a duration, with the value given
    ("onset", "    effects: [{metric: latency, target: web, factor: 2}]\n",
     "    effects: [{metric: latency, target: web, factor: 2}]\n"
     "deviations: {onset: [1m, 1000000000000]}\n",
     "x.yaml:37: deviations.onset[1]: must be at most 6h, got 1000000000000"),
    ("startup", "startup: 20s", "startup: 2d",
     "x.yaml:11: deployment.services[0].startup: must be at most 1h, got 2d"),
    ("weight", "  - name: bad-release\n", "  - name: bad-release\n    weight: 1.0e+308\n",
     "x.yaml:32: incidents[0].weight: must be at most 1000000, got 1e+308"),
    ("rps", "{rps: 100,", "{rps: 1.0e+12,",
     "x.yaml:5: deployment.traffic.rps: must be at most 10000000, got 1000000000000.0"),
    ("replicas", "      replicas: 4\n", "      replicas: 99999\n",
     "x.yaml:9: deployment.services[0].replicas: must be at most 10000, got 99999"),
    ("interval-small", "slo:\n  rules:", "slo:\n  interval: 1us\n  rules:",
     "x.yaml:28: slo.interval: cannot parse duration '1us' (use e.g. 500ms, 30s, 5m, 1h)"),
    ("interval-tiny", "slo:\n  rules:", "slo:\n  interval: 0.0001\n  rules:",
     "x.yaml:28: slo.interval: must be at least 1ms, got 0.0001"),
    ("verify-timeout", "timeout: 20m}", "timeout: 400d}",
     "x.yaml:68: procedure.verify.timeout: must be at most 1d, got 400d"),
    ("hold-past-timeout", "hold: 1m", "hold: 2h",
     "x.yaml:68: procedure.verify: hold 2h is longer than timeout 20m: the SLO could never "
     "be seen restored in time"),
    ("wait", "{duration: 30s}", "{duration: 1000000000}",
     "x.yaml:59: procedure.steps[4].settings.duration: must be at most 1d, got 1000000000"),
    ("drain", "[0s, 10s, 30s]", "[0s, 10s, 2h]",
     "x.yaml:47: procedure.steps[1].settings.drain.choices: must be at most 1h, got '2h'"),
    ("scale-zero", "choices: [4, 6]", "choices: [0, 4]",
     "x.yaml:43: procedure.steps[0].settings.replicas.choices: must be >= 1, got 0 (a scale "
     "step keeps a serving service running: at least 1 replica)"),
    ("scale-huge", "choices: [4, 6]", "choices: [4, 100000]",
     "x.yaml:43: procedure.steps[0].settings.replicas.choices: must be at most 10000, "
     "got 100000"),
    ("ramp", "add: 0.05}", "add: 0.05, ramp: 7h}",
     "x.yaml:33: incidents[0].effects[0].ramp: must be at most 6h, got 7h"),
    ("latency-add-negative", "{metric: latency, target: web, factor: 2}",
     "{metric: latency, target: web, add: -5}",
     "x.yaml:36: incidents[1].effects[0]: latency 'add' must be >= 0 (milliseconds added; "
     "use 'factor' below 1 to speed a component up)"),
    ("name-length", "name: shop,", "name: " + "s" * 64 + ",",
     "x.yaml:3: metadata.name: name too long (64 characters; at most 63)"),
    ("too-many-flags", "flags: [new-ui]", "flags: [" + ", ".join(
        f"f{i}" for i in range(201)) + "]",
     "x.yaml:14: deployment.services[0].flags: at most 200 entries, got 201"),
    # batch against the target's replicas: web has 4, and a scale step gives it up to 6
    ("batch-over-replicas", "{batch: 2,", "{batch: 7,",
     "x.yaml:47: procedure.steps[1].settings.batch: batch 7 exceeds the 4 replicas of "
     "'web' (at most 6 after its scale step): a round cannot replace more replicas than run"),
    ("batch-over-replicas-unscaled", "      action: revert_config\n      target: api\n",
     "      action: revert_config\n      target: api\n      settings: {batch: 3}\n",
     "x.yaml:63: procedure.steps[5].settings.batch: batch 3 exceeds the 2 replicas of 'api': "
     "a round cannot replace more replicas than run"),
    # the Python names of aliased fields are not YAML names
    ("python-name-for", "above: 0.01, for: 30s}", "above: 0.01, for_: 30s}",
     "x.yaml:29: slo.rules[0].for_: unknown field"),
    ("python-name-schema", "      capacity_qps: 500\n",
     "      capacity_qps: 500\n      schema_: {live: 2, previous: 1}\n",
     "x.yaml:24: deployment.datastores[0].schema_: unknown field"),
]


@pytest.mark.parametrize(("old", "new", "expected"), [c[1:] for c in BOUND_CASES],
                         ids=[c[0] for c in BOUND_CASES])
def test_bound_problem(old: str, new: str, expected: str) -> None:
    assert expected in problems(edit(old, new))


def test_api_version_python_name_is_unknown() -> None:
    found = problems(edit("apiVersion: shadowrl/v1", "api_version: shadowrl/v1"))
    assert found == ["x.yaml:1: apiVersion: field required",
                     "x.yaml:1: api_version: unknown field"]


def test_batch_up_to_replicas_and_scaled_replicas_is_valid() -> None:
    Path("x.yaml").write_text(edit("{batch: 2,", "{batch: {choices: [4, 6]},"))
    sc = load_scenario("x.yaml")
    assert sc.procedure.step("revert-web").tunables()["batch"].choices == [4, 6]


def test_values_at_the_bounds_are_valid() -> None:
    text = edit("startup: 20s", "startup: 1h")
    text = edit("hold: 1m, timeout: 20m", "hold: 1d, timeout: 1d", text)
    text = edit("{duration: 30s}", "{duration: 1d}", text)
    text = edit("      replicas: 4\n", "      replicas: 10000\n", text)
    text = edit("choices: [4, 6]", "choices: [4, 10000]", text)
    text += "deviations: {onset: [6h, 6h], magnitude: [100, 100], load: [0, 100]}\n"
    Path("x.yaml").write_text(text)
    sc = load_scenario("x.yaml")
    assert sc.deviations.onset == (21600.0, 21600.0)
    assert sc.procedure.verify.timeout == 86400.0


def test_long_after_chain_has_no_recursion_limit() -> None:
    """Cycle detection is iterative: a chain longer than Python's stack still loads."""
    steps = "\n".join(
        f"    - {{name: s{i}, action: wait, settings: {{duration: 1s}}"
        + (f", after: [s{i - 1}]" if i else "") + "}"
        for i in range(200))
    text = ("apiVersion: shadowrl/v1\nkind: Scenario\nmetadata: {name: chain}\n"
            "deployment:\n  traffic: {rps: 1}\n"
            "  services: [{name: app, replicas: 1, capacity_rps: 10}]\n"
            "slo: {rules: [{name: e, metric: error_rate, above: 0.1}]}\n"
            "incidents: [{name: i, cause: {kind: external}}]\n"
            f"procedure:\n  name: p\n  steps:\n{steps}\n")
    Path("chain.yaml").write_text(text)
    import sys
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(150)  # far below the chain's length
    try:
        sc = load_scenario("chain.yaml")
    finally:
        sys.setrecursionlimit(limit)
    assert len(sc.procedure.steps) == 200
    looped = text.replace("{name: s0, action: wait, settings: {duration: 1s}}",
                          "{name: s0, action: wait, settings: {duration: 1s}, after: [s199]}")
    Path("chain.yaml").write_text(looped)
    with pytest.raises(SpecError, match="'after' cycle: s0 -> s199 -> s198 -> "):
        load_scenario("chain.yaml")


# --------------------------------------------------------------------------- data files


def test_missing_csv_pattern_names_its_line() -> None:
    found = problems(edit("{rps: 100, write_fraction: 0.2}",
                          "{rps: 100, write_fraction: 0.2, pattern: {csv: rps.csv}}"))
    assert found == ["x.yaml:5: deployment.traffic.pattern.csv: no such file: rps.csv"]


def test_csv_pattern_that_is_a_directory_or_unreadable() -> None:
    Path("rps.csv").mkdir()
    found = problems(edit("{rps: 100, write_fraction: 0.2}",
                          "{rps: 100, write_fraction: 0.2, pattern: {csv: rps.csv}}"))
    assert found == ["x.yaml:5: deployment.traffic.pattern.csv: not a file: rps.csv"]


def test_missing_history_names_its_line() -> None:
    text = BASE + "deviations:\n  history: {file: h/load.json}\n"
    assert problems(text) == [
        "x.yaml:71: deviations.history.file: no such file: h/load.json"]


def test_data_files_resolve_against_the_scenario_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rps.csv").write_text("timestamp,value\n")
    (tmp_path / "sub" / "x.yaml").write_text(edit(
        "{rps: 100, write_fraction: 0.2}",
        "{rps: 100, write_fraction: 0.2, pattern: {csv: rps.csv}}"))
    sc = load_scenario(tmp_path / "sub" / "x.yaml")  # exists, readable: content not read
    assert data_files(sc) == [(("deployment", "traffic", "pattern", "csv"),
                               tmp_path / "sub" / "rps.csv")]
    error = scenario_problem(sc, ("deployment", "traffic", "pattern", "csv"), "bad")
    assert str(error) == f"{tmp_path / 'sub' / 'x.yaml'}:5: deployment.traffic.pattern.csv: bad"


# ------------------------------------------------------------------ scenarios as procedures


def test_a_scenario_file_is_accepted_as_a_procedure_file() -> None:
    Path("x.yaml").write_text(BASE)
    sc = load_scenario("x.yaml")
    assert load_procedure("x.yaml", sc) == sc.procedure == load_procedure("x.yaml")
    checkout = load_scenario(ROOT / "envs" / "checkout.yaml")
    proc = load_procedure(ROOT / "envs" / "checkout.yaml", checkout)
    assert proc == checkout.procedure
    # without kind, a scenario's top-level keys say what it is
    Path("nokind.yaml").write_text(BASE.replace("kind: Scenario\n", ""))
    assert load_procedure("nokind.yaml", sc) == sc.procedure


def test_a_scenario_procedure_is_checked_against_the_scenario_it_is_used_with() -> None:
    Path("x.yaml").write_text(BASE)
    checkout = load_scenario(ROOT / "envs" / "checkout.yaml")
    with pytest.raises(SpecError) as info:
        load_procedure("x.yaml", checkout)
    assert all(p.file == "x.yaml" and p.path.startswith("procedure.")
               for p in info.value.problems)
    found = [str(p) for p in info.value.problems]
    assert "x.yaml:62: procedure.steps[5].target: unknown component 'api'" in found
    assert "x.yaml:67: procedure.steps[6].sim.fixes[0]: unknown incident 'ui-flag'" in found


def test_a_scenario_without_procedure_or_a_foreign_kind_is_named() -> None:
    Path("x.yaml").write_text(BASE.split("procedure:\n")[0])
    with pytest.raises(SpecError, match=r"^x\.yaml:1: a scenario without a 'procedure:' "
                                        r"block$"):
        load_procedure("x.yaml")
    Path("p.yaml").write_text("procedure: {name: p, steps: [{name: w, action: wait, "
                              "settings: {duration: 1s}}]}\nrollout: {}\n")
    with pytest.raises(SpecError, match=r"^p\.yaml:2: rollout: unknown field \(a procedure "
                                        r"file has only procedure, apiVersion, kind and "
                                        r"metadata\)$"):
        load_procedure("p.yaml")
    Path("p.yaml").write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match=r"^p\.yaml:1: expected a mapping with a 'procedure:' "
                                        r"key, got a list$"):
        load_procedure("p.yaml")


# --------------------------------------------------------------------------- robustness


def _mutate(base: str, edits: list[tuple[int, int, str]]) -> str:
    text = base
    for pos, cut, insert in edits:
        pos %= len(text) + 1
        text = text[:pos] + insert + text[pos + cut:]
    return text


junk = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=400),
    st.builds(_mutate, st.just(BASE),
              st.lists(st.tuples(st.integers(0, len(BASE)), st.integers(0, 40),
                                 st.text(alphabet=" \n\t:-[]{},#&*!|>'\"abc01.", max_size=8)),
                       min_size=1, max_size=4)),
)


@given(junk)
@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_input_raises_only_spec_error(data: str | bytes) -> None:
    try:
        loaded, lines = load_yaml(data, "x.yaml")
        scenario_from_data(loaded, "x.yaml", lines)
    except SpecError as exc:
        assert exc.problems
        n_lines = (data.count(b"\n") if isinstance(data, bytes) else data.count("\n")) + 1
        for problem in exc.problems:
            assert problem.file == "x.yaml"
            assert 1 <= problem.line <= n_lines + 1, str(problem)


# --------------------------------------------------------------------------- regressions


@pytest.mark.parametrize("value", ["2024-13-45", "!!int abc", "!!bool maybe",
                                   "!!timestamp soon", "1" * 5000],
                         ids=["bad-date", "int-tag", "bool-tag", "timestamp-tag", "huge-int"])
def test_bad_scalars_raise_spec_error(value: str) -> None:
    found = problems(edit("v2, previous: v1}", f"{value}, previous: v1}}"))
    assert found and found[0].startswith("x.yaml:13:")


@pytest.mark.parametrize("key", ["Kind", "str", "constant"])
def test_unknown_key_keeps_its_name(key: str) -> None:
    assert problems(BASE + f"{key}: 1\n") == [f"x.yaml:70: {key}: unknown field"]


@pytest.mark.parametrize(("old", "new"), [("{rps: 100,", "{rps: .inf,"),
                                          ("above: 0.01", "above: .nan"),
                                          ("factor: 2}", "factor: .inf}")])
def test_non_finite_numbers_rejected(old: str, new: str) -> None:
    problems(edit(old, new))


@pytest.mark.parametrize("text", ["---\n", "~\n", "null\n"])
def test_null_document_is_empty(text: str) -> None:
    assert problems(text) == ["x.yaml:1: file is empty"]


def test_values_in_messages_are_spelled_as_in_yaml() -> None:
    """A user copies values from messages back into YAML: ``true``, ``[10s, 30s]``, ``null``,
    never Python's ``True`` or ``None``."""
    from shadowrl.core.spec import shown

    assert shown(True) == "true" and shown([False]) == "[false]" and shown(None) == "null"
    assert shown(["10s", "30s"]) == "[10s, 30s]" and shown({"online": True}) == "{online: true}"
    assert shown("2h") == "'2h'" and shown(5) == "5"
    assert shown("x" * 100).endswith("...") and len(shown("x" * 100)) == 40

"""docs/scenario-format.md stays complete and correct as the ``shadowrl/v1`` models change.

Every field of every model reachable from :class:`Scenario` (and :class:`Step`) must be
documented under its YAML name, every accepted action and enumerated value must appear, and
every complete scenario in the doc's YAML blocks (and every procedure file, against the first
scenario) must load.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from shadowrl.core import spec
from shadowrl.core.spec import Scenario, Step, load_procedure, load_scenario

DOC = Path(__file__).resolve().parents[2] / "docs" / "scenario-format.md"
FENCE = re.compile(r"^```yaml[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _inner_types(annotation: object) -> list[object]:
    """The types nested in an annotation: union members, list/tuple/dict arguments,
    Annotated's base type."""
    out: list[object] = []
    stack = [annotation]
    while stack:
        tp = stack.pop()
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            stack.append(typing.get_args(tp)[0])
        elif origin is typing.Literal:
            out.append(tp)
        elif origin is not None or isinstance(tp, types.UnionType):
            stack.extend(a for a in typing.get_args(tp) if a is not Ellipsis)
        else:
            out.append(tp)
    return out


def _models() -> list[type[BaseModel]]:
    """Scenario, Step and every model reachable from their fields."""
    seen: list[type[BaseModel]] = []
    stack: list[type[BaseModel]] = [Scenario, Step]
    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.append(model)
        for field in model.model_fields.values():
            for tp in _inner_types(field.annotation):
                if isinstance(tp, type) and issubclass(tp, BaseModel):
                    stack.append(tp)
    return seen


def _yaml_fields() -> list[tuple[str, str]]:
    """(model, YAML name) for every field of every reachable model."""
    return [(m.__name__, f.alias or name) for m in _models()
            for name, f in m.model_fields.items()]


def _literal_values() -> list[tuple[str, str, str]]:
    """(model, field, value) for every enumerated string a field accepts."""
    out = []
    for m in _models():
        for name, f in m.model_fields.items():
            for tp in _inner_types(f.annotation):
                if typing.get_origin(tp) is typing.Literal:
                    out += [(m.__name__, f.alias or name, str(v)) for v in typing.get_args(tp)]
    return out


def _documented(doc: str, word: str) -> bool:
    return f"`{word}`" in doc or re.search(rf"`{re.escape(word)}[:`]", doc) is not None


def test_models_are_found() -> None:
    names = {m.__name__ for m in _models()}
    assert {"Scenario", "Deployment", "Service", "Rule", "Effect", "Step", "Tunable",
            "SimCommand", "Verify", "Budget", "History", "CsvPattern", "Migration"} <= names


def _tables(doc: str) -> list[set[str]]:
    """For each Markdown table, the backticked names of its rows' first cells."""
    tables: list[set[str]] = []
    current: set[str] | None = None
    for line in doc.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            current = None
            continue
        if current is None:
            current = set()
            tables.append(current)
        first = line.split("|")[1].strip()
        if first.startswith("`") and first.endswith("`"):
            current.add(first.strip("`"))
    return tables


def test_every_field_is_documented(doc: str) -> None:
    missing = sorted({f"{model}.{name}" for model, name in _yaml_fields()
                      if not _documented(doc, name)})
    assert not missing, f"fields not in {DOC.name} (as `name`): {missing}"


def test_every_model_has_a_field_table(doc: str) -> None:
    """Each model's fields are rows (`| `field` | type | default | ...`) of one table."""
    tables = _tables(doc)
    for model in _models():
        fields = {f.alias or name for name, f in model.model_fields.items()}
        assert any(fields <= table for table in tables), (
            f"no table in {DOC.name} has a row for each field of {model.__name__}: "
            f"{sorted(fields)}")


def test_aliases_are_documented_not_python_names(doc: str) -> None:
    aliased = [(name, f.alias) for m in _models() for name, f in m.model_fields.items()
               if f.alias and f.alias != name]
    assert ("for_", "for") in aliased
    for python_name, alias in aliased:
        assert _documented(doc, alias)
        assert f"`{python_name}`" not in doc, f"documents {python_name!r}, not {alias!r}"


def _actions() -> set[str]:
    """The action names the spec accepts (the ``Step.action`` literal)."""
    values = {v for m, f, v in _literal_values() if m == "Step" and f == "action"}
    assert values, "Step.action is no longer an enumeration: update this test"
    return values


def test_every_action_is_documented(doc: str) -> None:
    accepted = _actions()
    table = doc.split("### Actions", 1)[1].split("\n\n", 2)[1]
    for action in sorted(accepted):
        assert f"| `{action}` |" in table, f"action {action!r} not in the actions table"


def test_every_action_setting_is_documented(doc: str) -> None:
    kinds = getattr(spec, "_SETTING_KINDS", None)
    if kinds is None:
        pytest.skip("spec no longer exposes the settings table")
    assert set(kinds) == _actions()
    table = doc.split("### Actions", 1)[1].split("\n\n", 2)[1]
    rows = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines()
            if line.startswith("| `")}
    for action, settings in kinds.items():
        for setting in settings:
            assert f"`{setting}`" in rows[action], f"{action}.{setting} not in its table row"


def test_every_enumerated_value_is_documented(doc: str) -> None:
    missing = sorted({f"{m}.{f}: {v}" for m, f, v in _literal_values()
                      if not _documented(doc, v)})
    assert not missing, f"values not in {DOC.name}: {missing}"


def _blocks(doc: str) -> list[str]:
    return [m.group(1) for m in FENCE.finditer(doc)]


def _scenario_blocks(doc: str) -> list[str]:
    return [b for b in _blocks(doc) if b.startswith(f"apiVersion: {spec.API_VERSION}\n")
            and re.search(r"^kind: Scenario\s*$", b, re.MULTILINE)]


def test_complete_scenarios_in_the_doc_load(doc: str, tmp_path: Path) -> None:
    blocks = _scenario_blocks(doc)
    assert len(blocks) >= 2, "the doc should hold a complete and a minimal scenario"
    for i, block in enumerate(blocks):
        path = tmp_path / f"scenario-{i}.yaml"
        path.write_text(block, encoding="utf-8")
        sc = load_scenario(path)  # raises SpecError naming the block's line on any problem
        assert sc.procedure.steps


def test_the_complete_example_uses_every_action(doc: str, tmp_path: Path) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(_scenario_blocks(doc)[0], encoding="utf-8")
    sc = load_scenario(path)
    assert {s.action for s in sc.procedure.steps} == _actions()
    assert {i.cause.kind for i in sc.incidents} == {"version", "config", "schema", "flag",
                                                   "external"}


def test_procedure_files_in_the_doc_load(doc: str, tmp_path: Path) -> None:
    procs = [b for b in _blocks(doc) if re.search(r"^procedure:\s*$", b, re.MULTILINE)
             and not re.search(r"^kind: Scenario\s*$", b, re.MULTILINE)]
    assert procs, "the doc should show a procedure file"
    scenario_path = tmp_path / "example.yaml"
    scenario_path.write_text(_scenario_blocks(doc)[0], encoding="utf-8")
    sc = load_scenario(scenario_path)
    for i, block in enumerate(procs):
        path = tmp_path / f"procedure-{i}.yaml"
        path.write_text(block, encoding="utf-8")
        assert load_procedure(path, sc).steps


def test_documented_defaults_match_the_models(doc: str) -> None:
    """Spot checks of defaults the doc states in its tables."""
    fields = {(m.__name__, f.alias or n): f for m in _models() for n, f in m.model_fields.items()}
    expected = {
        ("Traffic", "write_fraction"): (0.1, "`0.1`"),
        ("Service", "latency"): (0.02, "`20ms`"),
        ("Service", "startup"): (20.0, "`20s`"),
        ("Service", "inflight_time"): (10.0, "`10s`"),
        ("Datastore", "latency"): (0.005, "`5ms`"),
        ("Cache", "warmup"): (120.0, "`2m`"),
        ("Cache", "latency"): (0.001, "`1ms`"),
        ("Migration", "online_factor"): (4.0, "`4`"),
        ("Slo", "interval"): (10.0, "`10s`"),
        ("Incident", "weight"): (1.0, "`1`"),
        ("SimCommand", "duration"): (10.0, "`10s`"),
        ("Verify", "hold"): (120.0, "`2m`"),
        ("Verify", "timeout"): (1800.0, "`30m`"),
    }
    for (model, name), (value, text) in expected.items():
        assert fields[(model, name)].default == value, f"{model}.{name} default changed"
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{name}` |")
                    and text in line), None)
        assert row is not None, f"no table row for `{name}` stating default {text}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_internal_links_resolve(doc: str) -> None:
    text = FENCE.sub("", doc)
    anchors = {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links, "expected internal links"
    assert not sorted(links - anchors), f"links to missing headings: {sorted(links - anchors)}"


# --------------------------------------------------------------------------- bounds


def _field_bounds(field: object) -> list[tuple[str, float]]:
    """(kind, value) of each bound a field declares (``le``, ``lt``, ``ge``, ``gt``,
    ``max_length``), also inside ``Annotated`` item types (``deviations.onset``)."""
    found: list[object] = [*field.metadata]  # type: ignore[attr-defined]
    found += spec._annotation_parts(field.annotation, metadata=True)  # type: ignore[attr-defined]
    out: list[tuple[str, float]] = []
    while found:
        item = found.pop()
        found += list(getattr(item, "metadata", []) or [])
        for kind in ("le", "lt", "ge", "gt", "max_length"):
            value = getattr(item, kind, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append((kind, value))
    return out


def _is_duration(field: object) -> bool:
    parts = [*field.metadata,  # type: ignore[attr-defined]
             *spec._annotation_parts(field.annotation, metadata=True)]  # type: ignore[attr-defined]
    return any(getattr(p, "func", None) is spec.parse_duration for p in parts)


def _bound_text(field: object, kind: str, value: float) -> str:
    if kind != "max_length" and _is_duration(field) and value > 0:
        return spec._duration_text(value)
    return spec._number_text(value)


def _upper_bounds() -> list[tuple[str, str, str]]:
    """(model, YAML name, bound as the doc writes it) for every field with an upper bound."""
    return [(m.__name__, f.alias or n, _bound_text(f, kind, value))
            for m in _models() for n, f in m.model_fields.items()
            for kind, value in _field_bounds(f) if kind in ("le", "lt", "max_length")]


def test_bounds_are_found() -> None:
    found = {(m, f) for m, f, _ in _upper_bounds()}
    assert {("Service", "startup"), ("Incident", "weight"), ("Deviations", "onset"),
            ("Service", "replicas"), ("Deployment", "services"), ("Verify", "timeout")} <= found


def test_every_bound_is_in_its_field_row(doc: str) -> None:
    """A field's table row states its upper bound (`startup` | duration, at most `1h` ...)."""
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    missing = []
    for model, name, text in _upper_bounds():
        mine = [r for r in rows if r.startswith(f"| `{name}` |")]
        if not any(text in r.split("|")[2] for r in mine):
            missing.append(f"{model}.{name} <= {text}")
    assert not missing, f"bounds not stated in the field rows: {sorted(set(missing))}"


def test_every_bound_is_in_the_bounds_section(doc: str) -> None:
    section = doc.split("\n## Bounds\n", 1)[1].split("\n### ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    missing = []
    for model, name, text in _upper_bounds():
        named = re.compile(rf"`(?:[a-z_]+\.)?{re.escape(name)}`")
        if not any(named.search(line) and text in line for line in lines):
            missing.append(f"{model}.{name} <= {text}")
    assert not missing, f"bounds not in the Bounds table: {sorted(set(missing))}"


def test_setting_bounds_are_documented(doc: str) -> None:
    """The numeric settings' bounds (spec._SETTING_MAX) appear in the actions table."""
    table = doc.split("### Actions", 1)[1].split("\n\n", 2)[1]
    for key, limit in spec._SETTING_MAX.items():
        text = (spec._duration_text(limit) if key in ("drain", "duration")
                else spec._number_text(limit))
        assert any(f"`{key}`" in row and text in row for row in table.splitlines()), (
            f"setting {key} <= {text} not in the actions table")


def test_the_simulator_limits_are_documented(doc: str) -> None:
    from shadowrl.shadow.sim import engine

    section = doc.split("### The simulator's limits", 1)[1].split("\n## ", 1)[0]
    assert f"{engine.MAX_SHADOW_S / 3600:g} hours" in section
    assert "timed_out" in section and "exit 2" in section


def test_python_names_are_not_accepted(doc: str) -> None:
    """The doc says the models' Python names are unknown fields; the loader agrees."""
    assert "for_, schema_, api_version" in doc
    for model in _models():
        config = model.model_config
        assert not config.get("populate_by_name") and not config.get("validate_by_name"), (
            f"{model.__name__} accepts Python field names")

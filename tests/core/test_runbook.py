"""shadowrl.core.runbook: the runbook format, its file:line errors, choose() and round trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shadowrl.core.runbook import (
    Condition,
    Observation,
    Runbook,
    is_runbook_file,
    load_runbook,
    runbook_from_data,
    runbook_to_data,
)
from shadowrl.core.spec import Problem, SpecError, procedure_to_data

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"


def book_data(checkout: Any, branches: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A valid checkout runbook: two branches and the configured procedure as default."""
    proc = procedure_to_data(checkout.procedure)
    if branches is None:
        branches = [
            {"name": "web-errors",
             "when": [{"component": "web", "metric": "error_rate", "above": 0.05},
                      {"rule": "edge-errors", "firing": True}],
             "procedure": proc},
            {"name": "slow-db",
             "when": [{"component": "db", "metric": "latency_ratio", "above": 1.5}],
             "procedure": proc},
        ]
    return {"apiVersion": "shadowrl/v1", "kind": "Runbook",
            "metadata": {"name": "rb", "scenario": "checkout"},
            "branches": branches, "default": {"procedure": proc}}


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "runbook.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def line_of(path: Path, text: str, after: str | None = None) -> int:
    """The 1-based line of the first line holding ``text`` (after the line holding
    ``after``)."""
    lines = path.read_text().splitlines()
    start = 0
    if after is not None:
        start = next(i for i, line in enumerate(lines) if after in line) + 1
    return next(i for i, line in enumerate(lines) if i >= start and text in line) + 1


def only_problem(info: pytest.ExceptionInfo[SpecError]) -> Problem:
    assert len(info.value.problems) == 1, info.value
    return info.value.problems[0]


def test_a_valid_runbook_loads(tmp_path, checkout) -> None:
    path = write(tmp_path, book_data(checkout))
    book = load_runbook(path, checkout)
    assert [b.name for b in book.branches] == ["web-errors", "slow-db"]
    assert book.name == "rb" and book.metadata.scenario == "checkout"
    assert [c.text() for c in book.branches[0].when] == ["web error_rate > 0.05",
                                                          "rule edge-errors firing"]
    assert is_runbook_file(path)
    assert not is_runbook_file(CHECKOUT)
    assert list(book.procedures()) == ["web-errors", "slow-db", "default"]


def test_unknown_key_in_a_condition_names_its_line(tmp_path, checkout) -> None:
    data = book_data(checkout)
    data["branches"][1]["when"][0]["colour"] = "red"
    path = write(tmp_path, data)
    with pytest.raises(SpecError) as info:
        load_runbook(path, checkout)
    p = only_problem(info)
    assert p.file == str(path)
    assert p.path == "branches[1].when[0].colour"
    assert p.line == line_of(path, "colour:")


@pytest.mark.parametrize(("condition", "message"), [
    ({"rule": "edge-errors", "firing": True, "step": "scale-web", "ran": False},
     "a condition tests one thing"),
    ({"component": "web", "metric": "error_rate", "above": 0.05, "at_most": 0.1},
     "exactly one of above or at_most"),
    ({"component": "web", "metric": "error_rate"}, "exactly one of above or at_most"),
    ({"rule": "edge-errors"}, "needs rule and firing"),
    ({"step": "scale-web"}, "needs step and ran"),
    ({"metric": "error_rate", "above": 0.1}, "needs component and metric"),
])
def test_a_condition_tests_one_thing(tmp_path, checkout, condition, message) -> None:
    data = book_data(checkout)
    data["branches"][1]["when"] = [condition]
    path = write(tmp_path, data)
    with pytest.raises(SpecError) as info:
        load_runbook(path, checkout)
    p = only_problem(info)
    assert message in p.message
    assert p.file == str(path) and p.path.startswith("branches[1].when[0]")
    first_key = next(iter(condition))
    assert p.line == line_of(path, f"{first_key}:", after="name: slow-db")


@pytest.mark.parametrize(("condition", "field", "message"), [
    ({"rule": "nope", "firing": True}, "rule", "unknown SLO rule 'nope'"),
    ({"component": "nope", "metric": "error_rate", "above": 0.1}, "component",
     "unknown component 'nope'"),
    ({"step": "nope", "ran": True}, "step", "unknown step 'nope'"),
])
def test_names_are_checked_against_the_scenario(tmp_path, checkout, condition, field,
                                                message) -> None:
    data = book_data(checkout)
    data["branches"][0]["when"].append(condition)
    path = write(tmp_path, data)
    assert load_runbook(path).branches[0].when[-1].to_data() == condition  # no scenario
    with pytest.raises(SpecError) as info:
        load_runbook(path, checkout)
    p = only_problem(info)
    assert message in p.message
    assert p.path == f"branches[0].when[2].{field}"
    assert p.line == line_of(path, f"{field}: nope")


def test_edge_is_a_component_of_every_scenario(tmp_path, checkout) -> None:
    data = book_data(checkout)
    data["branches"][0]["when"] = [{"component": "edge", "metric": "latency_ratio",
                                    "at_most": 2}]
    assert load_runbook(write(tmp_path, data), checkout).branches[0].when[0].at_most == 2


def test_a_procedure_leaving_out_a_required_step(tmp_path, checkout) -> None:
    data = book_data(checkout)
    proc = data["branches"][1]["procedure"] = dict(data["branches"][1]["procedure"])
    proc["steps"] = [s for s in proc["steps"] if s["name"] != "scale-web"]
    path = write(tmp_path, data)
    load_runbook(path)  # on its own it is a fine procedure
    with pytest.raises(SpecError) as info:
        load_runbook(path, checkout)
    p = only_problem(info)
    assert p.path == "branches[1].procedure.steps"
    assert "leaves out required steps ['scale-web']" in p.message
    assert p.line == line_of(path, "steps:", after="name: slow-db")


def test_an_optional_step_may_be_left_out(tmp_path, checkout) -> None:
    data = book_data(checkout)
    proc = data["default"]["procedure"] = dict(data["default"]["procedure"])
    proc["steps"] = [s for s in proc["steps"] if s["name"] != "warm-cache"]
    book = load_runbook(write(tmp_path, data), checkout)
    assert "warm-cache" not in {s.name for s in book.default.procedure.steps}


def test_a_bad_step_in_a_branch_procedure_names_its_line(tmp_path, checkout) -> None:
    data = book_data(checkout)
    proc = data["branches"][0]["procedure"] = dict(data["branches"][0]["procedure"])
    proc["steps"] = [dict(s) for s in proc["steps"]]
    proc["steps"][1]["target"] = "nowhere"
    path = write(tmp_path, data)
    with pytest.raises(SpecError) as info:
        load_runbook(path, checkout)
    p = only_problem(info)
    assert p.path == "branches[0].procedure.steps[1].target"
    assert "unknown component 'nowhere'" in p.message
    assert p.line == line_of(path, "target: nowhere")


def test_duplicate_branch_names(tmp_path, checkout) -> None:
    data = book_data(checkout)
    data["branches"][1]["name"] = "web-errors"
    path = write(tmp_path, data)
    with pytest.raises(SpecError) as info:
        load_runbook(path)
    p = only_problem(info)
    assert p.path == "branches[1].name" and "named twice" in p.message
    assert p.line == line_of(path, "name: web-errors", after="firing: true")

    data["branches"][1]["name"] = "default"
    path = write(tmp_path, data)
    with pytest.raises(SpecError, match=r"branches\[1\]\.name: 'default' is the default"):
        load_runbook(path)


def test_not_a_mapping_and_a_missing_default(tmp_path, checkout) -> None:
    path = tmp_path / "runbook.yaml"
    path.write_text("- a list\n")
    with pytest.raises(SpecError, match=r"runbook\.yaml:1: expected a mapping"):
        load_runbook(path)
    data = book_data(checkout)
    del data["default"]
    with pytest.raises(SpecError) as info:
        load_runbook(write(tmp_path, data))
    assert any(p.path == "default" for p in info.value.problems)


# --------------------------------------------------------------------------- semantics


def seen(**kw: Any) -> Observation:
    return Observation(**kw)


def test_conditions_hold() -> None:
    obs = seen(firing={"edge-errors"}, error_rate={"web": 0.07}, latency_ratio={"db": 2.0},
               ran={"scale-web"})
    assert Condition(rule="edge-errors", firing=True).holds(obs)
    assert not Condition(rule="edge-errors", firing=False).holds(obs)
    assert Condition(rule="db-latency", firing=False).holds(obs)
    assert Condition(component="web", metric="error_rate", above=0.05).holds(obs)
    assert not Condition(component="web", metric="error_rate", above=0.07).holds(obs)
    assert Condition(component="web", metric="error_rate", at_most=0.07).holds(obs)
    assert Condition(component="db", metric="latency_ratio", above=1.5).holds(obs)
    assert Condition(component="orders", metric="error_rate", at_most=0).holds(obs)  # unseen: 0
    assert Condition(step="scale-web", ran=True).holds(obs)
    assert Condition(step="revert-web", ran=False).holds(obs)
    assert Condition(step="revert-web", ran=True).text() == "step revert-web ran"
    assert Condition(component="db", metric="latency_ratio", at_most=1.5).text() == (
        "db latency_ratio <= 1.5")


def test_choose_first_match_wins_else_default(checkout) -> None:
    data = book_data(checkout)
    data["branches"].append({"name": "any-errors", "when": [{"rule": "edge-errors",
                                                             "firing": True}],
                             "procedure": data["default"]["procedure"]})
    book = runbook_from_data(data, "rb.yaml", scenario=checkout)
    both = seen(firing={"edge-errors"}, error_rate={"web": 0.1}, latency_ratio={"db": 3.0})
    assert book.choose(both)[0] == "web-errors"  # slow-db and any-errors hold too
    assert book.choose(seen(firing={"edge-errors"}, error_rate={"web": 0.01},
                            latency_ratio={"db": 3.0}))[0] == "slow-db"
    assert book.choose(seen(firing={"edge-errors"}))[0] == "any-errors"
    # every condition of a branch must hold: web errors without the rule firing
    name, proc = book.choose(seen(error_rate={"web": 0.5}))
    assert name == "default" and proc is book.default.procedure
    assert book.choose(seen(error_rate={"web": 0.5}, firing={"edge-errors"}))[1] is (
        book.branches[0].procedure)


def test_round_trip(tmp_path, checkout) -> None:
    data = book_data(checkout)
    data["metadata"]["description"] = "made by hand"
    proc = data["branches"][1]["procedure"] = dict(data["branches"][1]["procedure"])
    proc["steps"] = [s for s in proc["steps"] if s["name"] != "warm-cache"]
    book = load_runbook(write(tmp_path, data), checkout)
    again = runbook_from_data(runbook_to_data(book), "again.yaml", scenario=checkout)
    assert again == book
    assert runbook_to_data(again) == runbook_to_data(book)
    path = tmp_path / "dumped.yaml"
    path.write_text(yaml.safe_dump(runbook_to_data(book), sort_keys=False))
    assert load_runbook(path, checkout) == book
    assert isinstance(book, Runbook)


def test_cpu_and_load_conditions_hold() -> None:
    obs = Observation(cpu={"web": 0.9, "edge": 0.4}, load_ratio={"orders": 1.8})
    assert Condition(component="web", metric="cpu", above=0.8).holds(obs)
    assert not Condition(component="edge", metric="cpu", above=0.5).holds(obs)
    assert Condition(component="orders", metric="load_ratio", above=1.5).holds(obs)
    assert Condition(component="web", metric="load_ratio", at_most=0).holds(obs)  # unseen: 0
    assert obs.metric("cpu") is obs.cpu and obs.metric("load_ratio") is obs.load_ratio

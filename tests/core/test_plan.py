"""shadowrl.core.plan: step order (``after``), linear extensions, the dependency closure,
each step's setting combinations and the settings text.

Checked on small hand-made procedures and on the shipped checkout scenario.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from shadowrl.core.plan import (
    after_closure,
    configured_plan,
    describe_settings,
    linear_extensions,
    order_steps,
    ordered_steps,
    setting_combinations,
    validate_plan,
)
from shadowrl.core.spec import (
    Procedure,
    Step,
    load_scenario,
    parse_duration,
    setting_kind,
)

ROOT = Path(__file__).resolve().parents[2]


def _proc(*steps: dict[str, Any]) -> Procedure:
    return Procedure.model_validate({"name": "p", "steps": list(steps)})


# d after b, b after a; c free and optional: a -> b -> d is a chain, c goes anywhere
CHAIN = _proc({"name": "d", "action": "wait", "after": ["b"]},
              {"name": "c", "action": "wait", "optional": True},
              {"name": "b", "action": "wait", "after": ["a"]},
              {"name": "a", "action": "wait"})


def _names(steps: list[Step]) -> list[str]:
    return [s.name for s in steps]


def _respects_after(steps: list[Step], order: list[str]) -> bool:
    pos = {n: i for i, n in enumerate(order)}
    return all(pos[d] < pos[s.name] for s in steps for d in s.after if d in pos)


# --------------------------------------------------------------------------- order


def test_order_steps_defers_a_step_until_its_after_steps_are_placed() -> None:
    assert _names(order_steps(CHAIN.steps)) == ["c", "a", "b", "d"]
    assert _names(ordered_steps(CHAIN)) == ["c", "a", "b", "d"]
    assert [n for n, _ in configured_plan(CHAIN)] == ["c", "a", "b", "d"]


def test_order_steps_keeps_the_given_order_when_it_already_respects_after() -> None:
    steps = [CHAIN.step(n) for n in ("a", "c", "b", "d")]
    assert _names(order_steps(steps)) == ["a", "c", "b", "d"]
    assert order_steps([]) == []


def test_order_steps_ignores_after_steps_outside_the_given_ones() -> None:
    subset = [CHAIN.step(n) for n in ("d", "c", "a")]  # d's `after` (b) is not among them
    assert _names(order_steps(subset)) == ["d", "c", "a"]


def test_order_steps_rejects_a_cycle() -> None:
    cyclic = _proc({"name": "a", "action": "wait", "after": ["b"]},
                   {"name": "b", "action": "wait", "after": ["a"]})
    with pytest.raises(ValueError, match="cycle"):
        order_steps(cyclic.steps)


def test_ordered_steps_of_the_shipped_scenario_is_a_valid_plan() -> None:
    proc = load_scenario(ROOT / "envs" / "checkout.yaml").procedure
    order = _names(ordered_steps(proc))
    assert sorted(order) == sorted(s.name for s in proc.steps)
    assert _respects_after(proc.steps, order)
    validate_plan(proc, configured_plan(proc))


# --------------------------------------------------------------------------- linear extensions


def test_linear_extensions_are_exactly_the_orders_that_respect_after() -> None:
    orders = list(linear_extensions(CHAIN.steps))
    expected = {p for p in itertools.permutations(s.name for s in CHAIN.steps)
                if _respects_after(CHAIN.steps, list(p))}
    assert len(orders) == len(set(map(tuple, orders))) == 4  # c in any of 4 places
    assert set(map(tuple, orders)) == expected
    assert orders[0] == _names(order_steps(CHAIN.steps))


def test_linear_extensions_ignore_after_steps_outside_the_given_ones() -> None:
    subset = [CHAIN.step(n) for n in ("d", "a")]
    assert sorted(linear_extensions(subset)) == [["a", "d"], ["d", "a"]]
    assert list(linear_extensions([])) == [[]]


def test_linear_extensions_of_the_shipped_scenario_start_with_its_configured_order() -> None:
    proc = load_scenario(ROOT / "envs" / "checkout.yaml").procedure
    first = next(linear_extensions(proc.steps))
    assert first == [n for n, _ in configured_plan(proc)]


# --------------------------------------------------------------------------- closure


def test_after_closure_is_transitive() -> None:
    assert after_closure(CHAIN, "d") == {"a", "b"}
    assert after_closure(CHAIN, "b") == {"a"}
    assert after_closure(CHAIN, "a") == set()
    assert after_closure(CHAIN, "c") == set()
    assert after_closure(CHAIN, "nope") == set()


def test_after_closure_tells_which_step_may_run_first() -> None:
    for first, second in itertools.permutations([s.name for s in CHAIN.steps], 2):
        can = second not in after_closure(CHAIN, first)
        some_order = any(o.index(first) < o.index(second)
                         for o in linear_extensions(CHAIN.steps))
        assert can == some_order, (first, second)


# --------------------------------------------------------------------------- settings


def test_setting_combinations_follow_the_declared_order() -> None:
    step = Step.model_validate({"name": "s", "action": "rollback_version", "settings": {
        "batch": {"choices": [1, 2, 3], "default": 1},
        "drain": {"choices": [0.0, 30.0], "default": 30.0},
        "fixed": 7}})
    assert setting_combinations(step) == [
        {"batch": 1, "drain": 0.0, "fixed": 7}, {"batch": 1, "drain": 30.0, "fixed": 7},
        {"batch": 2, "drain": 0.0, "fixed": 7}, {"batch": 2, "drain": 30.0, "fixed": 7},
        {"batch": 3, "drain": 0.0, "fixed": 7}, {"batch": 3, "drain": 30.0, "fixed": 7}]


def test_setting_combinations_of_a_step_without_settings_is_one_empty_one() -> None:
    assert setting_combinations(CHAIN.step("a")) == [{}]


def test_setting_combinations_of_the_shipped_scenario() -> None:
    proc = load_scenario(ROOT / "envs" / "checkout.yaml").procedure
    for step in proc.steps:
        combos = setting_combinations(step)
        tunables = step.tunables()
        assert len(combos) == len({repr(c) for c in combos})
        assert len(combos) == max(1, len(list(itertools.product(
            *(t.choices for t in tunables.values())))))
        assert all(list(c) == list(tunables) for c in combos)
        assert step.default_settings() in combos


def test_describe_settings_spells_values_as_the_scenario_format() -> None:
    assert describe_settings({"batch": 2, "drain": 30.0, "online": False}) == (
        "batch=2, drain=30s, online=false")
    assert describe_settings({"drain": 1.5, "surge": 0, "online": True}) == (
        "drain=1500ms, surge=0, online=true")
    assert describe_settings({"duration": 120.0}) == "duration=2m"
    assert describe_settings({"flag": "new-checkout"}) == "flag=new-checkout"
    # with the action, a setting's kind decides: an int duration is still a duration
    assert describe_settings({"duration": 90}, "wait") == "duration=90s"
    assert describe_settings({"replicas": 9.0}, "scale") == "replicas=9"
    assert describe_settings({"replicas": 9}) == "replicas=9"
    assert describe_settings({}) == ""


def test_described_settings_read_back_as_the_same_values(checkout: Any) -> None:
    """What a user reads (``k=v``) pasted into a procedure's ``settings:`` is the same
    setting: each step of checkout, each of its setting combinations."""
    for step in checkout.procedure.steps:
        for combo in setting_combinations(step):
            text = describe_settings(combo, step.action)
            if not combo:
                assert text == ""
                continue
            pairs = dict(item.split("=", 1) for item in text.split(", "))
            assert list(pairs) == list(combo)
            for key, value in combo.items():
                written = yaml.safe_load(pairs[key])
                if setting_kind(step.action, key) == "duration":
                    assert parse_duration(written) == pytest.approx(value), (key, text)
                else:
                    assert written == value and type(written) is type(value), (key, text)
            assert describe_settings(combo) == text  # the kinds follow from the values

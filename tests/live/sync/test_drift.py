"""Drift: each kind of change between a scenario and the live deployment."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from shadowrl.core.spec import Scenario, load_scenario
from shadowrl.live.sync.drift import compare, is_removal
from shadowrl.live.sync.merge import merge_text
from shadowrl.live.sync.model import LiveComponent
from tests.live.sync.helpers import checkout_live

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def checkout() -> Scenario:
    return load_scenario(ROOT / "envs" / "checkout.yaml")


def fields(changes: list) -> list[tuple[str, str]]:
    return [(c.component, c.field) for c in changes]


def test_no_drift_when_the_live_side_matches(checkout: Scenario) -> None:
    assert compare(checkout, checkout_live()) == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"replicas": 7}, ("web", "replicas", 6, 7)),
    ({"version": "v43"}, ("web", "version", "v42", "v43")),
    ({"config": "cfg-9"}, ("web", "config", None, "cfg-9")),
    ({"flags": ("new-checkout", "dark-mode")}, ("web", "flags", ["new-checkout"],
                                                ["new-checkout", "dark-mode"])),
    ({"calls": ()}, ("web", "calls", ["orders"], [])),
    ({"previous_version": "v40"}, ("web", "previous-version", "v41", "v40")),
])
def test_each_kind_of_change(checkout: Scenario, change: dict, expected: tuple) -> None:
    (found,) = compare(checkout, checkout_live(**change))
    assert (found.component, found.field, found.scenario, found.live) == expected
    assert found.text().startswith("web: ")


def test_undeclared_calls_and_flags_are_not_drift(checkout: Scenario) -> None:
    assert compare(checkout, checkout_live(calls=None, flags=None)) == []


def test_components_added_removed_and_of_another_kind(checkout: Scenario) -> None:
    live = checkout_live()
    comps = [c for c in live.components if c.name != "cache"]
    comps.append(LiveComponent("search", replicas=1, version="1"))
    comps = [replace(c, kind="service") if c.name == "db" else c for c in comps]
    changes = compare(checkout, replace(live, components=tuple(comps)))
    assert fields(changes) == [("db", "kind"), ("search", "component"), ("cache", "component")]
    assert [is_removal(c) for c in changes] == [False, False, True]
    assert "gone from the live deployment" in changes[-1].text()


def test_an_image_change_under_the_same_version_is_drift(tmp_path: Path) -> None:
    path = tmp_path / "checkout.yaml"
    path.write_text(merge_text((ROOT / "envs" / "checkout.yaml").read_text(), checkout_live(),
                               synced_at="t"))
    sc = load_scenario(path)
    (found,) = compare(sc, checkout_live(image="shop/web:v42-rebuilt"))
    assert (found.field, found.scenario, found.live) == ("image", "shop/web:v42",
                                                         "shop/web:v42-rebuilt")

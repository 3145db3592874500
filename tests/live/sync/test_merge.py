"""Writing a live deployment into a scenario: a new one validates and rehearses; an
existing one keeps everything written by hand."""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from shadowrl.core.spec import Scenario, load_scenario, load_yaml, scenario_from_data
from shadowrl.live.sync.drift import compare
from shadowrl.live.sync.merge import merge_text, new_scenario_text
from shadowrl.rehearsal.runner import rehearse
from tests.live.sync.helpers import checkout_live, shop_live

ROOT = Path(__file__).resolve().parents[3]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
AT = "2026-01-01T00:00:00Z"


def scenario_of(text: str) -> Scenario:
    data, lines = load_yaml(text, "synced.yaml")
    return scenario_from_data(data, "synced.yaml", lines)


def test_a_new_scenario_validates_and_rehearses_on_the_simulator() -> None:
    text = new_scenario_text(shop_live(), "shop", synced_at=AT)
    sc = scenario_of(text)
    assert [s.name for s in sc.deployment.services] == ["web", "api"]
    assert sc.edge.name == "web" and [d.name for d in sc.deployment.datastores] == ["db"]
    assert {i.name for i in sc.incidents} == {"bad-web-release", "bad-api-release"}
    assert [s.action for s in sc.procedure.steps] == ["rollback_version"] * 2
    assert "STARTER" in text and "default: review" in text
    assert sc.metadata.annotations["shadowrl.io/synced-from"] == "docker:shop"
    assert compare(sc, shop_live()) == []  # what was written is in sync
    web = sc.deployment.services[0]
    # no previous version known yet: a placeholder, distinct (the Docker shadow's replicas
    # are told apart by it)
    assert (web.version.live, web.version.previous) == ("v2", "before-v2")
    for seed in (0, 1):
        assert rehearse(sc, seed).outcome == "recovered"


def test_merge_keeps_hand_written_fields_and_comments() -> None:
    text = CHECKOUT.read_text()
    merged = merge_text(text, checkout_live(version="v43", replicas=8, image="shop/web:v43"),
                        synced_at=AT)
    before, after = yaml.safe_load(text), yaml.safe_load(merged)
    web = after["deployment"]["services"][0]
    assert web["version"] == {"live": "v43", "previous": "v42"}
    assert web["replicas"] == 8
    assert (web["capacity_rps"], web["latency"], web["startup"], web["max_surge"]) == (
        100, "40ms", "20s", 3)
    for key in ("slo", "incidents", "deviations", "procedure"):
        assert after[key] == before[key]
    assert after["deployment"]["datastores"] == before["deployment"]["datastores"]
    # comments stay, and the lines not synced are byte for byte the same
    assert "# 6 x 100 = 600 rps -> 0.67 at 400 rps" in merged
    assert "# The team's runbook: kill switch first" in merged
    diff = [line for line in difflib.ndiff(text.splitlines(), merged.splitlines())
            if line[:1] in "+-"]
    removed = [line for line in diff if line.startswith("-")]
    added = [line for line in diff if line.startswith("+")]
    assert removed == ["-       replicas: 6", "-       version: {live: v42, previous: v41}"]
    assert len(added) == 2 + 7  # those two lines, and the annotations block
    assert scenario_of(merged).deployment.services[0].replicas == 8


def test_merge_adds_new_components_with_defaults_and_keeps_removed_ones() -> None:
    live = shop_live()
    live = type(live)(live.source, (*live.components[:2],), ())  # db gone
    text = new_scenario_text(shop_live(), "shop", synced_at=AT)
    from dataclasses import replace

    from shadowrl.live.sync.model import LiveComponent

    extra = (LiveComponent("search", replicas=1, image="shop/search:3", version="3"),
             LiveComponent("cache", kind="cache", image="redis:7"))
    grown = replace(live, components=(*live.components, *extra))
    merged = merge_text(text, grown, synced_at=AT)
    sc = scenario_of(merged)
    assert [s.name for s in sc.deployment.services] == ["web", "api", "search"]
    assert [c.name for c in sc.deployment.caches] == ["cache"]
    assert [d.name for d in sc.deployment.datastores] == ["db"]  # kept: its steps are yours
    added = merged.split("- name: search")[1]
    assert "capacity_rps: 100  # default: review" in added


def test_a_version_label_value_that_yaml_would_misread_is_quoted() -> None:
    text = new_scenario_text(shop_live(web_version="1.10"), "shop", synced_at=AT)
    assert scenario_of(text).deployment.services[0].version.live == "1.10"
    text = new_scenario_text(shop_live(web_version="on"), "shop", synced_at=AT)
    assert scenario_of(text).deployment.services[0].version.live == "on"


def test_checkout_itself_loads_with_annotations(tmp_path: Path) -> None:
    merged = merge_text(CHECKOUT.read_text(), checkout_live(), synced_at=AT)
    path = tmp_path / "checkout.yaml"
    path.write_text(merged)
    sc = load_scenario(path)
    assert sc.metadata.annotations["shadowrl.io/image.web"] == "shop/web:v42"
    assert compare(sc, checkout_live()) == []

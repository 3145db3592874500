"""``sync --watch`` without Docker: the loop syncs each new reading and rolls a shadow
(here a stand-in recording what it was asked)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from shadowrl.app.sync import SyncRequest, watch
from shadowrl.core.spec import load_scenario
from shadowrl.live.sync.drift import Change
from shadowrl.live.sync.model import LiveDeployment, SourceError
from shadowrl.live.sync.watch import follow, roll_shadow
from tests.live.sync.helpers import shop_live


class FakeShadow:
    def __init__(self) -> None:
        self.scenario = SimpleNamespace(deployment=SimpleNamespace(
            services=[SimpleNamespace(name="web"), SimpleNamespace(name="api")]))
        self.calls: list[tuple[Any, ...]] = []

    def roll_to(self, service: str, **kwargs: Any) -> Any:
        self.calls.append(("roll_to", service, kwargs["version"], kwargs["config"]))
        return SimpleNamespace(status="ok", start_s=0.0, end_s=40.0, message="")

    def run_step(self, step: Any, settings: dict[str, Any]) -> Any:
        self.calls.append(("scale", step.target, settings["replicas"]))
        return SimpleNamespace(status="ok")


def test_roll_shadow_rolls_then_scales_and_logs_topology_changes() -> None:
    shadow, logs = FakeShadow(), []
    live = shop_live(web_version="v3", web_replicas=3)
    changes = [Change("web", "version", "v2", "v3"), Change("web", "replicas", 2, 3),
               Change("web", "image", "shop/web:v2", "shop/web:v3"),
               Change("search", "component", None, "service")]
    roll_shadow(shadow, changes, live, logs.append)
    assert shadow.calls == [("roll_to", "web", "v3", None), ("scale", "web", 3)]
    assert any("keeps the topology" in line for line in logs)


def test_follow_syncs_each_new_reading_once_and_survives_a_bad_read() -> None:
    readings: list[Any] = [shop_live(), shop_live(), SourceError("daemon gone"),
                           shop_live(web_version="v3")]
    stop = threading.Event()
    applied: list[LiveDeployment] = []
    logs: list[str] = []

    def read() -> LiveDeployment:
        item = readings.pop(0) if readings else stop.set() or shop_live(web_version="v3")
        if isinstance(item, Exception):
            raise item
        return item

    def apply(live: LiveDeployment) -> list[Change]:
        applied.append(live)
        return [Change("web", "version", "v2", live.get("web").version)]

    rolled: list[Any] = []
    follow(read, apply, interval=0.001, stop=stop, log=logs.append,
           on_change=lambda changes, live: rolled.append(changes), last=shop_live())
    assert [a.get("web").version for a in applied] == ["v3"]
    assert any("daemon gone" in line for line in logs) and len(rolled) == 1


def test_watch_writes_the_scenario_as_the_source_changes(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yaml"
    compose.write_text("services:\n  web:\n    image: shop/web:v1\n    deploy: {replicas: 2}\n")
    scenario = tmp_path / "shop.yaml"
    stop = threading.Event()
    logs: list[str] = []

    def log(line: str) -> None:
        logs.append(line)
        if line.startswith("watching"):
            compose.write_text(compose.read_text().replace("v1", "v2"))
        if line.endswith("updated"):
            stop.set()

    request = SyncRequest(source=f"compose:{compose}", scenario=scenario, watch=True,
                          interval=0.01)
    first = watch(request, on_log=log, stop=stop)
    assert first.status == "created"
    assert any(line == "drift: web: version v1 -> v2" for line in logs), logs
    web = load_scenario(scenario).deployment.services[0]
    assert (web.version.live, web.version.previous) == ("v2", "v1")

"""A stand-in "live" deployment for demos and tests of ``shadowrl sync docker:PROJECT``.

Sync reads running containers by compose's labels, so a live deployment to read can be a few
idle containers of the shadow's app image that carry those labels
(``com.docker.compose.project``/``service``) and ``shadowrl.*`` labels, on the shadow's
daemon but on their own network, apart from any shadow. Everything is labelled with the
deployment's id and its owner process (``shadowrl.shadow``, ``shadowrl.owner``), so
:meth:`DemoDeployment.close` removes it by label, and a process killed before closing leaves
nothing the start-up sweep of the next shadow does not remove.
"""

from __future__ import annotations

import secrets
from typing import Any

from shadowrl.live.sync.docker_source import PROJECT_LABEL, SERVICE_LABEL
from shadowrl.shadow.docker import labels as lbl

ROLE = "live"  # the shadowrl.role of the stand-in's containers and network


class DemoDeployment:
    """A compose project ``live-<id>`` of idle containers; :meth:`start_shop` starts
    web (2) -> api (2) -> db, and :meth:`release_web` recreates web at another version."""

    def __init__(self, client: Any, image: str, live_id: str) -> None:
        self.client, self.image, self.id = client, image, live_id
        self.project = f"live-{live_id}"
        self.network = client.networks.create(f"shd-{live_id}", driver="bridge",
                                              internal=True, labels=lbl.labels(live_id, ROLE))
        self.containers: dict[str, list[Any]] = {}

    def run(self, service: str, replicas: int, feature: str = "a", **labels: str) -> None:
        """(Re)create ``service``'s replicas: the old containers go, new ones start.
        ``feature`` is an environment variable, so changing it changes the config identity."""
        for old in self.containers.pop(service, []):
            old.remove(force=True)
        self.containers[service] = [self.client.containers.run(
            self.image, ["sleep", "3600"], detach=True, init=True,
            name=f"{self.project}-{service}-{i + 1}-{secrets.token_hex(2)}",
            network=self.network.name, environment={"FEATURE": feature},
            labels={**lbl.labels(self.id, ROLE), PROJECT_LABEL: self.project,
                    SERVICE_LABEL: service, **labels})
            for i in range(replicas)]

    def start_shop(self, web_version: str = "v1") -> None:
        """web (2 replicas, the edge, calls api) -> api (2, v7, calls db) -> db (datastore)."""
        self.release_web(web_version)
        self.run("api", 2, **{"shadowrl.version": "v7", "shadowrl.calls": "db"})
        self.run("db", 1, **{"shadowrl.kind": "datastore"})

    def release_web(self, version: str, feature: str = "a") -> None:
        """Replace web's two replicas by ones labelled ``version``."""
        self.run("web", 2, feature=feature, **{"shadowrl.version": version,
                                               "shadowrl.calls": "api", "shadowrl.edge": "true"})

    def close(self) -> None:
        """Remove every container and the network, by label."""
        from shadowrl.shadow.docker.sweep import sweep

        self.containers.clear()
        sweep(self.client, shadow_id=self.id, only_dead_owners=False)
        try:
            self.network.remove()
        except Exception:  # noqa: BLE001 - the sweep removed it already
            pass

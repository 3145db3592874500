"""Live deployments the sync tests share."""

from __future__ import annotations

from dataclasses import replace

from shadowrl.live.sync.model import LiveComponent, LiveDeployment, deployment


def checkout_live(**web_changes: object) -> LiveDeployment:
    """envs/checkout.yaml's deployment as a live source would read it, ``web`` changed."""
    web = LiveComponent("web", replicas=6, image="shop/web:v42", version="v42",
                        flags=("new-checkout",), calls=("orders",), edge=True)
    return deployment("docker:checkout", [
        replace(web, **web_changes),  # type: ignore[arg-type]
        LiveComponent("orders", replicas=4, image="shop/orders:v17", version="v17",
                      calls=("db", "cache")),
        LiveComponent("db", kind="datastore", image="postgres:16"),
        LiveComponent("cache", kind="cache", image="redis:7"),
    ], [])


def shop_live(web_version: str = "v2", web_replicas: int = 2) -> LiveDeployment:
    """A small compose-style shop: web -> api -> db."""
    return deployment("docker:shop", [
        LiveComponent("web", replicas=web_replicas, image=f"shop/web:{web_version}",
                      version=web_version, calls=("api",), config="cfg-1"),
        LiveComponent("api", replicas=2, image="shop/api:7", version="7", calls=("db",)),
        LiveComponent("db", kind="datastore", image="postgres:16"),
    ], [])

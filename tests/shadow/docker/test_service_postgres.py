"""``shadowrl serve`` on PostgreSQL: the migrations, a job and its verdict, and the real
service answering from it (PostgreSQL from the shadow's app image, in a container on the
test daemon, removed by label)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shadowrl.shadow.docker import labels as lbl
from shadowrl.shadow.docker.images import POSTGRES_COMMAND, POSTGRES_DATABASE
from shadowrl.shadow.docker.sweep import sweep
from tests.service.conftest import WRITE_TOKEN, Service, service_config

pytestmark = pytest.mark.docker


@pytest.fixture
def postgres(docker_client: Any, image: str, shadow_id: str) -> Iterator[str]:
    """A PostgreSQL server's SQLAlchemy URL (pg8000, a pure-Python driver)."""
    try:
        # its own bridge (the test daemon may have no default one), reachable from this host
        network = docker_client.networks.create(f"shadowrl-pg-{shadow_id}", driver="bridge",
                                                labels=lbl.labels(shadow_id, "network"))
        container = docker_client.containers.run(
            image, [*POSTGRES_COMMAND], user="postgres", detach=True, stop_signal="SIGINT",
            network=network.name, labels=lbl.labels(shadow_id, "datastore"))
        deadline = time.monotonic() + 60
        while True:
            code, _ = container.exec_run(["psql", "-X", "-q", "-U", "postgres", "-d",
                                          POSTGRES_DATABASE, "-c", "select 1"],
                                         user="postgres")
            if code == 0:
                break
            assert time.monotonic() < deadline, container.logs(tail=20)
            time.sleep(0.2)
        container.reload()
        ip = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        yield f"postgresql+pg8000://postgres@{ip}:5432/{POSTGRES_DATABASE}"
    finally:
        sweep(docker_client, shadow_id=shadow_id, only_dead_owners=False)


def test_the_store_migrates_and_commits_on_postgresql(postgres: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from shadowrl.service.store import Base, Store, migrate

    store = Store(postgres)
    try:
        assert migrate(store.engine) == migrate(store.engine) == "0001"
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        store.upsert_deployment("checkout", "envs/checkout.yaml", "sim")
        job = store.add_job("checkout", "rehearse", "test", {"runs": 1}, total=1)
        assert store.start_job(job.id, 1, "/tmp/x")
        store.finish_job(job.id, "succeeded", result={"runs": 1},
                         verdict={"healthy": True, "job": job.id, "rehearsed_at": 1.0})
        assert store.latest_verdict("checkout")["job"] == job.id
        assert store.count_by_status() == {"succeeded": 1}
    finally:
        store.close()


def test_the_service_runs_on_postgresql(postgres: str, tmp_path: Path) -> None:
    config = service_config(tmp_path, runs=2, extra=f"database: {postgres}\n")
    svc = Service(config).start()
    try:
        startup = svc.wait_job(svc.get("/api/v1/jobs")[0]["id"])
        assert startup["status"] == "succeeded"
        status, job, _ = svc.request("POST", "/api/v1/deployments/checkout/rehearsals",
                                     token=WRITE_TOKEN, body={"runs": 1})
        assert status == 202 and svc.wait_job(job["id"])["status"] == "succeeded"
        assert svc.get("/api/v1/deployments/checkout/verdict")["job"] == job["id"]
        assert not (tmp_path / "data" / "shadowrl.db").exists()  # the state is in PostgreSQL
        assert "postgresql+pg8000://postgres@" in "".join(svc.log)
    finally:
        svc.stop()

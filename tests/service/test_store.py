"""The service's state on a real SQLite file: the migrations build exactly the models'
schema, and the job transitions the scheduler relies on are atomic and guarded."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from shadowrl.service.store import Base, JobRow, Store, VerdictRow, migrate


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    # a folder that does not exist yet: the store makes it
    s = Store(f"sqlite:///{tmp_path / 'state' / 'shadowrl.db'}")
    migrate(s.engine)
    yield s
    s.close()


def verdict(healthy: bool) -> dict[str, object]:
    return {"healthy": healthy, "status": "healthy" if healthy else "unhealthy", "runs": 3}


def test_a_fresh_database_migrates_to_head_and_matches_the_models(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'new' / 'fresh.db'}")
    try:
        assert migrate(s.engine) == "0001"
        assert migrate(s.engine) == "0001"  # again: nothing to do, nothing broken
        tables = set(inspect(s.engine).get_table_names())
        assert {"deployments", "jobs", "verdicts", "schedules", "alembic_version"} <= tables
        with s.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                             "compare_server_default": True})
            assert compare_metadata(context, Base.metadata) == []
            journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        assert journal == "wal"
    finally:
        s.close()
    # a plain SQLite client sees the same file (not an in-memory or temporary database)
    with sqlite3.connect(tmp_path / "new" / "fresh.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]


def test_compare_metadata_sees_a_schema_that_drifted(tmp_path: Path) -> None:
    """The comparison above can fail: a column the migrations lack is found."""
    s = Store(f"sqlite:///{tmp_path / 'drift.db'}")
    try:
        migrate(s.engine)
        with s.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE jobs ADD COLUMN extra TEXT")
        with s.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert [d[0] for d in diff] == ["remove_column"] and diff[0][3].name == "extra"
    finally:
        s.close()


def test_finish_job_writes_the_job_and_its_verdict_together(store: Store) -> None:
    job = store.add_job("checkout", "rehearse", "trigger", {"runs": 3}, total=3)
    assert job.id is not None and job.status == "queued" and job.revision == 1
    assert store.start_job(job.id, pid=123, out_dir="/tmp/out")
    assert not store.start_job(job.id, pid=124, out_dir="/tmp/other")  # only once
    store.finish_job(job.id, "succeeded", result={"runs": 3}, verdict=verdict(True))
    row = store.job(job.id)
    assert row is not None and row.status == "succeeded" and row.pid == 123
    assert row.revision == 3 and row.result == '{"runs": 3}'
    assert store.latest_verdict("checkout") == verdict(True)
    with store.session() as s:
        [stored] = s.query(VerdictRow).all()
        assert stored.job_id == job.id and stored.deployment == "checkout" and stored.healthy
        assert stored.created_at == row.finished_at  # one moment, one transaction


def test_finish_job_writes_neither_when_the_verdict_fails(store: Store) -> None:
    job = store.add_job("checkout", "rehearse", "trigger", {}, total=3)
    store.start_job(job.id, pid=1, out_dir="/tmp/out")
    with pytest.raises(KeyError):
        store.finish_job(job.id, "succeeded", verdict={"status": "no healthy key"})
    row = store.job(job.id)
    assert row is not None and row.status == "running" and row.finished_at is None
    assert row.revision == 2
    assert store.latest_verdict("checkout") is None
    # a job that does not exist gets no verdict either
    with pytest.raises(AssertionError):
        store.finish_job(9999, "succeeded", verdict=verdict(True))
    assert store.verdicts("checkout") == []
    with pytest.raises(AssertionError):
        store.finish_job(job.id, "running")  # not a final status


def test_mark_interrupted_touches_running_jobs_only(store: Store) -> None:
    ids = {}
    for status in ("queued", "running", "succeeded", "cancelled"):
        job = store.add_job("checkout", "rehearse", status, {})
        ids[status] = job.id
        if status != "queued":
            store.start_job(job.id, pid=1, out_dir="/tmp/out")
        if status in ("succeeded", "cancelled"):
            store.finish_job(job.id, status)
    before = {k: store.job(v) for k, v in ids.items()}
    store.mark_interrupted(list(ids.values()), "the service stopped")
    store.mark_interrupted([], "nothing")  # a no-op, not an error
    after = {k: store.job(v) for k, v in ids.items()}
    assert {k: r.status for k, r in after.items()} == {
        "queued": "queued", "running": "interrupted", "succeeded": "succeeded",
        "cancelled": "cancelled"}
    assert after["running"].error == "the service stopped"
    assert after["running"].finished_at is not None
    assert after["running"].revision == before["running"].revision + 1
    for k in ("queued", "succeeded", "cancelled"):
        assert after[k].revision == before[k].revision and after[k].error == before[k].error
    assert store.count_by_status() == {"queued": 1, "interrupted": 1, "succeeded": 1,
                                       "cancelled": 1}
    assert [r.id for r in store.running()] == []


def test_cancel_queued_only_cancels_a_queued_job(store: Store) -> None:
    queued = store.add_job("checkout", "rehearse", "trigger", {})
    running = store.add_job("checkout", "optimize", "trigger", {})
    store.start_job(running.id, pid=1, out_dir="/tmp/out")
    assert store.cancel_queued(queued.id) and not store.cancel_queued(queued.id)
    assert not store.cancel_queued(running.id)
    assert store.job(queued.id).status == "cancelled"
    assert store.job(running.id).status == "running"
    assert not store.start_job(queued.id, pid=2, out_dir="/tmp/out")  # cancelled stays so
    assert store.has_active("checkout", "optimize")
    assert not store.has_active("checkout", "rehearse")


def test_verdict_counts_and_history(store: Store) -> None:
    assert store.verdict_counts("checkout") == {}
    for dep, healthy in (("checkout", True), ("checkout", False), ("checkout", True),
                         ("payments", False)):
        job = store.add_job(dep, "rehearse", "trigger", {})
        store.start_job(job.id, pid=1, out_dir="/tmp/out")
        store.finish_job(job.id, "succeeded", verdict={**verdict(healthy), "job": job.id})
    assert store.verdict_counts("checkout") == {True: 2, False: 1}
    assert store.verdict_counts("payments") == {False: 1}
    assert store.verdict_counts("search") == {}
    history = store.verdicts("checkout")
    assert [v["healthy"] for v in history] == [True, False, True]  # newest first
    assert [v["job"] for v in history] == sorted((v["job"] for v in history), reverse=True)
    assert store.verdicts("checkout", limit=1) == history[:1]
    assert store.latest_verdict("checkout") == history[0]
    with store.session() as s:
        assert s.query(JobRow).count() == 4

"""The service's state in a real database: deployments, jobs, verdicts and schedules.

SQLite by default (WAL journal, full fsync at each commit, so a SIGKILL loses no committed
row), any SQLAlchemy URL otherwise (PostgreSQL works). The schema is created and upgraded by
the Alembic migrations in ``shadowrl/service/migrations``; the service process and its job
workers share the database, each with its own engine. Times are float seconds since the
Unix epoch (UTC); the API formats them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
FINAL = ("succeeded", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")


class Base(DeclarativeBase):
    pass


class DeploymentRow(Base):
    __tablename__ = "deployments"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    scenario: Mapped[str] = mapped_column(Text)
    backend: Mapped[str] = mapped_column(String(16))
    scenario_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    synced_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    drift: Mapped[int] = mapped_column(Integer, default=0)
    drift_changes: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list
    procedure_source: Mapped[str] = mapped_column(String(16), default="configured")
    procedure_job: Mapped[int | None] = mapped_column(Integer, nullable=True)
    procedure_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    published_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    params: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    out_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    revision: Mapped[int] = mapped_column(Integer, default=0)


class VerdictRow(Base):
    __tablename__ = "verdicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(String(64), index=True)
    job_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    healthy: Mapped[bool] = mapped_column(Boolean)
    payload: Mapped[str] = mapped_column(Text)  # JSON


class ScheduleRow(Base):
    __tablename__ = "schedules"

    deployment: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    next_at: Mapped[float | None] = mapped_column(Float, nullable=True)


def make_engine(url: str) -> Engine:
    """An engine that waits for locks instead of failing, and for SQLite commits durably
    in WAL mode (readers never block the writer)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> str:
    """Bring the schema to the newest migration; returns the revision it is at."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() or ""


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class Store:
    """Typed access to the state; every method is one short transaction."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ deployments

    def upsert_deployment(self, name: str, scenario: str, backend: str) -> None:
        with self.session() as s:
            row = s.get(DeploymentRow, name)
            if row is None:
                s.add(DeploymentRow(name=name, scenario=scenario, backend=backend, drift=0,
                                    procedure_source="configured"))
            else:
                row.scenario, row.backend = scenario, backend

    def deployment(self, name: str) -> DeploymentRow | None:
        with self.session() as s:
            return s.get(DeploymentRow, name)

    def set_scenario_hash(self, name: str, digest: str) -> str | None:
        """Record the scenario's content hash; returns the previous one."""
        with self.session() as s:
            row = s.get(DeploymentRow, name)
            assert row is not None
            before, row.scenario_hash = row.scenario_hash, digest
            return before

    def record_sync(self, name: str, changes: list[dict[str, Any]]) -> None:
        with self.session() as s:
            row = s.get(DeploymentRow, name)
            assert row is not None
            row.synced_at, row.drift = time.time(), len(changes)
            if changes:
                row.drift_changes = dumps(changes)

    def publish(self, name: str, job_id: int, procedure_path: str) -> None:
        with self.session() as s:
            row = s.get(DeploymentRow, name)
            assert row is not None
            row.procedure_source, row.procedure_job = "optimized", job_id
            row.procedure_path, row.published_at = procedure_path, time.time()

    def unpublish(self, name: str) -> None:
        """Back to the configured procedure (the deployment or its procedure changed)."""
        with self.session() as s:
            row = s.get(DeploymentRow, name)
            assert row is not None
            row.procedure_source, row.procedure_job = "configured", None
            row.procedure_path, row.published_at = None, None

    # ------------------------------------------------------------------ jobs

    def add_job(self, deployment: str, kind: str, reason: str, params: dict[str, Any],
                total: int = 0) -> JobRow:
        with self.session() as s:
            row = JobRow(deployment=deployment, kind=kind, reason=reason, status="queued",
                         params=dumps(params), done=0, total=total, created_at=time.time(),
                         revision=1, cancel_requested=False)
            s.add(row)
            s.flush()
            return row

    def job(self, job_id: int) -> JobRow | None:
        with self.session() as s:
            return s.get(JobRow, job_id)

    def jobs(self, deployment: str | None = None, status: str | None = None,
             limit: int = 50) -> list[JobRow]:
        with self.session() as s:
            q = select(JobRow).order_by(JobRow.id.desc()).limit(limit)
            if deployment is not None:
                q = q.where(JobRow.deployment == deployment)
            if status is not None:
                q = q.where(JobRow.status == status)
            return list(s.scalars(q))

    def queued(self) -> list[JobRow]:
        with self.session() as s:
            return list(s.scalars(select(JobRow).where(JobRow.status == "queued")
                                  .order_by(JobRow.id)))

    def running(self) -> list[JobRow]:
        with self.session() as s:
            return list(s.scalars(select(JobRow).where(JobRow.status == "running")))

    def count_by_status(self, since_id: int = 0) -> dict[str, int]:
        """Jobs by status (those with ``id >= since_id``)."""
        with self.session() as s:
            rows = s.execute(select(JobRow.status, func.count()).where(JobRow.id >= since_id)
                             .group_by(JobRow.status))
            return {status: n for status, n in rows}

    def next_job_id(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.max(JobRow.id))) or 0) + 1

    def count_by(self) -> list[tuple[str, str, str, int]]:
        """(deployment, kind, status, count) over every job."""
        with self.session() as s:
            rows = s.execute(select(JobRow.deployment, JobRow.kind, JobRow.status, func.count())
                             .group_by(JobRow.deployment, JobRow.kind, JobRow.status))
            return [(d, k, st, n) for d, k, st, n in rows]

    def has_active(self, deployment: str, kind: str) -> bool:
        with self.session() as s:
            q = select(func.count()).select_from(JobRow).where(
                JobRow.deployment == deployment, JobRow.kind == kind,
                JobRow.status.in_(ACTIVE))
            return bool(s.scalar(q))

    def update_job(self, job_id: int, **fields: Any) -> None:
        """Set fields (``params`` and ``result`` as Python values) and bump the revision
        that long polls wait on."""
        for key in ("params", "result"):
            if key in fields:
                fields[key] = dumps(fields[key])
        with self.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id)
                      .values(**fields, revision=JobRow.revision + 1))

    def start_job(self, job_id: int, pid: int, out_dir: str) -> bool:
        """queued -> running; False when the job is no longer queued (cancelled)."""
        with self.session() as s:
            done = s.execute(update(JobRow).where(JobRow.id == job_id,
                                                  JobRow.status == "queued")
                             .values(status="running", pid=pid, out_dir=out_dir,
                                     started_at=time.time(), revision=JobRow.revision + 1))
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def finish_job(self, job_id: int, status: str, *, result: Any = None,
                   error: str | None = None, verdict: dict[str, Any] | None = None) -> None:
        """The end of a job and its verdict, in one transaction: both or neither survive a
        crash."""
        assert status in FINAL
        now = time.time()
        with self.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(
                status=status, finished_at=now, error=error,
                result=None if result is None else dumps(result),
                revision=JobRow.revision + 1))
            if verdict is not None:
                row = s.get(JobRow, job_id)
                assert row is not None
                s.add(VerdictRow(deployment=row.deployment, job_id=job_id, created_at=now,
                                 healthy=bool(verdict["healthy"]), payload=dumps(verdict)))

    def cancel_queued(self, job_id: int) -> bool:
        with self.session() as s:
            done = s.execute(update(JobRow).where(JobRow.id == job_id,
                                                  JobRow.status == "queued")
                             .values(status="cancelled", finished_at=time.time(),
                                     error="cancelled before it started",
                                     revision=JobRow.revision + 1))
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def request_cancel(self, job_id: int) -> None:
        self.update_job(job_id, cancel_requested=True)

    def mark_interrupted(self, job_ids: list[int], why: str) -> None:
        if not job_ids:
            return
        with self.session() as s:
            s.execute(update(JobRow).where(JobRow.id.in_(job_ids),
                                           JobRow.status == "running")
                      .values(status="interrupted", finished_at=time.time(), error=why,
                              revision=JobRow.revision + 1))

    # ------------------------------------------------------------------ verdicts

    def latest_verdict(self, deployment: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.scalars(select(VerdictRow).where(VerdictRow.deployment == deployment)
                            .order_by(VerdictRow.id.desc()).limit(1)).first()
            return None if row is None else loads(row.payload)

    def verdict_counts(self, deployment: str) -> dict[bool, int]:
        with self.session() as s:
            rows = s.execute(select(VerdictRow.healthy, func.count())
                             .where(VerdictRow.deployment == deployment)
                             .group_by(VerdictRow.healthy))
            return {bool(ok): n for ok, n in rows}

    def verdicts(self, deployment: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(VerdictRow).where(VerdictRow.deployment == deployment)
                             .order_by(VerdictRow.id.desc()).limit(limit))
            return [loads(r.payload) for r in rows]

    # ------------------------------------------------------------------ schedules

    def next_at(self, deployment: str, kind: str) -> float | None:
        with self.session() as s:
            row = s.get(ScheduleRow, (deployment, kind))
            return None if row is None else row.next_at

    def set_next_at(self, deployment: str, kind: str, when: float | None) -> None:
        with self.session() as s:
            row = s.get(ScheduleRow, (deployment, kind))
            if row is None:
                s.add(ScheduleRow(deployment=deployment, kind=kind, next_at=when))
            else:
                row.next_at = when

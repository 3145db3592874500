"""Alembic's entry point for the service's schema: always run on a connection the service
hands over (``shadowrl.service.store.migrate``), never from an ini file."""

from __future__ import annotations

from alembic import context

from shadowrl.service.store import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the service's migrations through shadowrl.service.store.migrate")
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

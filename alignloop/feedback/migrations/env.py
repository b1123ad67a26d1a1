"""Alembic environment: run with a connection handed in by alignloop.feedback.db.migrate."""

from __future__ import annotations

from alembic import context

from alignloop.feedback.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through alignloop.feedback.db.migrate(engine)")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

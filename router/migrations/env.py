"""Alembic's environment for the router's store: migrations run on the connection the store passes
in ``config.attributes["connection"]``, inside the store's transaction (and, on PostgreSQL, under
its advisory lock, so routers starting together migrate one at a time)."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the router's migrations run through router.store.Store, which passes its connection")
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

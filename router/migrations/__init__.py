"""Alembic migrations of the router's store (run by ``router.store.Store`` on open: ``upgrade head``).

``versions/0001_v4_baseline.py`` is the schema of the SQLite files routers wrote before Alembic
(``schema_version`` 4, and the older layouts 1 to 3, which it brings to 4); a database without an
``alembic_version`` table goes through it, which creates only what is missing. Later revisions
change the schema for every database alike, SQLite and PostgreSQL.
"""

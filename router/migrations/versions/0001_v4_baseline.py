"""The store as routers wrote it before Alembic (schema_version 4): created where missing.

A new database gets every table; a SQLite file of schema version 4 already has them (the outbox
too, once a router opened it) and is only stamped; versions 1 to 3 get the columns and the table
they lack first. ``router.store.Store`` refuses a file of any other version before this runs.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

KINDS = "kind IN ('binary', 'open')"


def upgrade() -> None:
    bind = op.get_bind()
    tables = set(sa.inspect(bind).get_table_names())
    if "schema_version" not in tables:
        version_table = op.create_table("schema_version", sa.Column("version", sa.Integer, nullable=False))
        op.bulk_insert(version_table, [{"version": 4}])
    else:
        _legacy_columns(bind)
    if "programs" not in tables:
        op.create_table(
            "programs",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("source", sa.Text, nullable=False),
            sa.Column("digest", sa.Text, nullable=False),
            sa.Column("kind", sa.Text, sa.CheckConstraint(KINDS), nullable=False),
            sa.Column("lambda", sa.Float, sa.CheckConstraint('"lambda" >= 0'), nullable=False),
            sa.Column("algorithm", sa.Text, nullable=False),
            sa.Column("hyperparameters", sa.Text, nullable=False, server_default="{}"),
            sa.Column("call_sites", sa.Text, nullable=False),
            sa.Column("created_at", sa.Text, nullable=False),
            sa.Column("query", sa.Text),
            sa.Column("synthesis", sa.Text),
        )
    if "decisions" not in tables:
        op.create_table(
            "decisions",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("program_id", sa.Text, nullable=False),  # no foreign key: decisions outlive a program
            sa.Column("kind", sa.Text, sa.CheckConstraint(KINDS), nullable=False),
            sa.Column("frame_id", sa.Text),
            sa.Column("decision", sa.Text, nullable=False),
            sa.Column("fallback", sa.Integer, sa.CheckConstraint("fallback IN (0, 1)"), nullable=False),
            sa.Column("answer", sa.Text, nullable=False),
            sa.Column("error", sa.Text),
            sa.Column("trace", sa.Text, nullable=False),
            sa.Column("executed_sites", sa.Text, nullable=False),
            sa.Column("site_costs", sa.Text, nullable=False),
            sa.Column("cost", sa.Float, nullable=False),
            sa.Column("latency_s", sa.Float, nullable=False),
            sa.Column(
                "status",
                sa.Text,
                sa.CheckConstraint("status IN ('pending', 'answered', 'resolved', 'expired')"),
                nullable=False,
            ),
            sa.Column("created_at", sa.Text, nullable=False),
        )
        op.create_index("decisions_by_program", "decisions", ["program_id", "created_at"])
        op.create_index("decisions_by_status", "decisions", ["status", "created_at"])
    if "synthesized_programs" not in tables:
        op.create_table(
            "synthesized_programs",
            sa.Column("query", sa.Text, nullable=False),
            sa.Column("kind", sa.Text, sa.CheckConstraint(KINDS), nullable=False),
            sa.Column("api_version", sa.Text, nullable=False),
            sa.Column("synthesizer", sa.Text, nullable=False),
            sa.Column("source", sa.Text, nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("latency_s", sa.Float, nullable=False),
            sa.Column("created_at", sa.Text, nullable=False),
            sa.PrimaryKeyConstraint("query", "kind", "api_version", "synthesizer"),
        )
    if "feedback" not in tables:
        op.create_table(
            "feedback",
            sa.Column("decision_id", sa.Text, sa.ForeignKey("decisions.id"), primary_key=True),
            sa.Column("label", sa.Text, nullable=False),
            sa.Column("reward", sa.Float, nullable=False),
            sa.Column("created_at", sa.Text, nullable=False),
        )
    if "policy_dead_letters" not in tables:
        op.create_table(
            "policy_dead_letters",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("kind", sa.Text, nullable=False),
            sa.Column("program_id", sa.Text, nullable=False),
            sa.Column("payload", sa.Text, nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("created_at", sa.Text, nullable=False),
            sqlite_autoincrement=True,
        )
    if "policy_outbox" not in tables:
        op.create_table(
            "policy_outbox",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("kind", sa.Text, nullable=False),
            sa.Column("program_id", sa.Text, nullable=False),
            sa.Column("payload", sa.Text, nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
            sqlite_autoincrement=True,
        )
    op.execute("UPDATE schema_version SET version = 4")


def _legacy_columns(bind: sa.Connection) -> None:
    """Bring a file of schema version 1 to 3 to version 4's columns (4 added only a table)."""
    version = bind.execute(sa.text("SELECT version FROM schema_version")).scalar_one()
    if version < 2:
        op.add_column("programs", sa.Column("hyperparameters", sa.Text, nullable=False, server_default="{}"))
    if version < 3:
        op.add_column("programs", sa.Column("query", sa.Text))
        op.add_column("programs", sa.Column("synthesis", sa.Text))


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone")

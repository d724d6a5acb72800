"""Cost budgets: a program's budget per window (``programs.budget``) and what each program spent
per window (``program_spend``).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("programs") as programs:
        programs.add_column(sa.Column("budget", sa.Text))
    op.create_table(
        "program_spend",
        sa.Column("program_id", sa.Text, primary_key=True),
        sa.Column("window_start", sa.Text, primary_key=True),
        sa.Column("cost", sa.Float, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("program_spend")
    with op.batch_alter_table("programs") as programs:
        programs.drop_column("budget")

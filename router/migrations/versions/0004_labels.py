"""Labels without one on every frame: a program's label budget and teacher (``programs.labels``),
who gave each label (``feedback.source``: a client or the teacher) and the teacher's run behind
it (``feedback.teacher``).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("programs") as programs:
        programs.add_column(sa.Column("labels", sa.Text))
    with op.batch_alter_table("feedback") as feedback:
        feedback.add_column(sa.Column("source", sa.Text, nullable=False, server_default="client"))
        feedback.add_column(sa.Column("teacher", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as feedback:
        feedback.drop_column("teacher")
        feedback.drop_column("source")
    with op.batch_alter_table("programs") as programs:
        programs.drop_column("labels")

"""Where each program's lambda came from: its registration (``request``) or the router's
``default_lambda`` (``default``). Programs stored before were all registered with one.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("programs") as batch:
        batch.add_column(sa.Column("lambda_source", sa.Text, nullable=False, server_default="request"))


def downgrade() -> None:
    with op.batch_alter_table("programs") as batch:
        batch.drop_column("lambda_source")

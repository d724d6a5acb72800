"""Program names and what synthesis is unsure of: a program may be registered with a name for
people (``programs.name``; those registered before have none), and a synthesised program is cached
with the warnings of its dry run (``synthesized_programs.warnings``, a JSON list; none for those
cached before).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("programs") as programs:
        programs.add_column(sa.Column("name", sa.Text))
    with op.batch_alter_table("synthesized_programs") as synthesized:
        synthesized.add_column(sa.Column("warnings", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("synthesized_programs") as synthesized:
        synthesized.drop_column("warnings")
    with op.batch_alter_table("programs") as programs:
        programs.drop_column("name")

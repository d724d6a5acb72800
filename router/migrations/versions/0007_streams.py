"""Streams: a camera or video a router pulls frames from (``streams``, with the lease that says which
router owns it and its counters), the answers to its frames as events (``stream_events``), and per
decision what the reuse gate decided (``decisions.reuse``: its features, whether the last answer
was reused, the probability of that choice and the decision reused), and the events a stream's
webhook refused or never acknowledged after its retries (``stream_dead_letters``).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as decisions:
        decisions.add_column(sa.Column("reuse", sa.Text))
    op.create_table(
        "streams",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("program_id", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("owner", sa.Text),
        sa.Column("lease_until", sa.Text),
        sa.Column("counters", sa.Text, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False),
    )
    op.create_index("streams_program", "streams", ["program_id"])
    op.create_table(
        "stream_events",
        sa.Column("stream_id", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
    )

    op.create_table(
        "stream_dead_letters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("stream_id", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
    )
    op.create_index("stream_dead_letters_stream", "stream_dead_letters", ["stream_id", "seq"])


def downgrade() -> None:
    op.drop_index("stream_dead_letters_stream", table_name="stream_dead_letters")
    op.drop_table("stream_dead_letters")
    op.drop_table("stream_events")
    op.drop_index("streams_program", table_name="streams")
    op.drop_table("streams")
    with op.batch_alter_table("decisions") as decisions:
        decisions.drop_column("reuse")

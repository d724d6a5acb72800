"""Several routers on one database: exact label counts per program, indexes for the outbox's
claim and for retention, and schema_version 5 (routers from before Alembic refuse the file).

``program_quality`` starts from the labels already stored: each feedback row's decision is scored
again under the default rewards (``fmprog.rewards.score_answer``) to count it right or wrong.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import json
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

from fmprog.rewards import RewardConfig, is_yes, score_answer

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COUNTS = ("right", "wrong", "tp", "fp", "fn", "tn")


def upgrade() -> None:
    quality = op.create_table(
        "program_quality",
        sa.Column("program_id", sa.Text, primary_key=True),
        *(sa.Column(name, sa.BigInteger, nullable=False, server_default="0") for name in COUNTS),
    )
    op.create_index("feedback_by_time", "feedback", ["created_at"])
    op.create_index("decisions_by_time", "decisions", ["created_at"])
    op.create_index("outbox_by_program", "policy_outbox", ["program_id", "id"])
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTS, 0))
    rows = op.get_bind().execute(
        sa.text(
            "SELECT d.program_id, d.kind, d.answer, f.label FROM feedback f JOIN decisions d ON d.id = f.decision_id"
        )
    )
    rewards = RewardConfig()
    for program_id, kind, answer, label in rows:
        said = json.loads(answer)
        count = counts[program_id]
        count["right" if score_answer(kind, said, label, rewards).correct else "wrong"] += 1
        if kind == "binary":
            yes, truth = is_yes(said), is_yes(label)
            count[("tp" if truth else "fp") if yes else ("fn" if truth else "tn")] += 1
    if counts:
        op.bulk_insert(quality, [{"program_id": program_id, **count} for program_id, count in counts.items()])
    op.execute("UPDATE schema_version SET version = 5")


def downgrade() -> None:
    op.execute("UPDATE schema_version SET version = 4")
    op.drop_index("outbox_by_program", "policy_outbox")
    op.drop_index("decisions_by_time", "decisions")
    op.drop_index("feedback_by_time", "feedback")
    op.drop_table("program_quality")

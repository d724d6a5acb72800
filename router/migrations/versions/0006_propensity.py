"""Propensities: per decision the probability its policy gave the run that happened
(``decisions.propensity``) and the policy's decision as a whole, with its propensities and gates
(``decisions.policy_decision``), which off-policy evaluation reads back.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as decisions:
        decisions.add_column(sa.Column("propensity", sa.Float))
        decisions.add_column(sa.Column("policy_decision", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as decisions:
        decisions.drop_column("policy_decision")
        decisions.drop_column("propensity")

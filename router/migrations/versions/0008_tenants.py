"""Tenants: each program and stream belongs to the tenant that registered it (``programs.tenant``,
``streams.tenant``; those from before belong to ``default``, the tenant of the single shared key),
tenants' API keys kept as digests (``api_keys``), and per decision its tenant and size, added up per
tenant in ``tenant_usage`` for the stored-bytes quota (older decisions count as 0).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("programs") as programs:
        programs.add_column(sa.Column("tenant", sa.Text, nullable=False, server_default="default"))
    op.create_index("programs_tenant", "programs", ["tenant", "created_at"])
    with op.batch_alter_table("streams") as streams:
        streams.add_column(sa.Column("tenant", sa.Text, nullable=False, server_default="default"))
    with op.batch_alter_table("decisions") as decisions:
        decisions.add_column(sa.Column("tenant", sa.Text))
        decisions.add_column(sa.Column("stored_bytes", sa.BigInteger))
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("digest", sa.Text, nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("revoked_at", sa.Text),
    )
    op.create_index("api_keys_tenant", "api_keys", ["tenant"])
    op.create_table(
        "tenant_usage",
        sa.Column("tenant", sa.Text, primary_key=True),
        sa.Column("stored_bytes", sa.BigInteger, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("tenant_usage")
    op.drop_index("api_keys_tenant", "api_keys")
    op.drop_table("api_keys")
    with op.batch_alter_table("decisions") as decisions:
        decisions.drop_column("stored_bytes")
        decisions.drop_column("tenant")
    with op.batch_alter_table("streams") as streams:
        streams.drop_column("tenant")
    op.drop_index("programs_tenant", "programs")
    with op.batch_alter_table("programs") as programs:
        programs.drop_column("tenant")

"""The router's tables (SQLAlchemy Core), as the newest migration leaves them.

Times are ISO 8601 text in UTC and the structured fields JSON text, as the SQLite files of older
routers hold them, so the same rows read the same on SQLite and PostgreSQL. The migrations in
``router/migrations`` create and change the tables; this module only describes them to queries.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

programs = sa.Table(
    "programs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("digest", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("lambda", sa.Float, nullable=False),
    sa.Column("algorithm", sa.Text, nullable=False),
    sa.Column("hyperparameters", sa.Text, nullable=False),
    sa.Column("call_sites", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("query", sa.Text),
    sa.Column("synthesis", sa.Text),
    sa.Column("lambda_source", sa.Text, nullable=False, server_default="request"),
    sa.Column("labels", sa.Text),  # {"budget": LabelBudget | null, "teacher": Teacher | null}
    sa.Column("budget", sa.Text),  # CostBudget
    sa.Column("tenant", sa.Text, nullable=False, server_default="default"),  # who registered it: only they see it
    sa.Column("name", sa.Text),  # a name for people (None: registered without one, or before names)
)

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("program_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("frame_id", sa.Text),
    sa.Column("decision", sa.Text, nullable=False),
    sa.Column("fallback", sa.Integer, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("trace", sa.Text, nullable=False),
    sa.Column("executed_sites", sa.Text, nullable=False),
    sa.Column("site_costs", sa.Text, nullable=False),
    sa.Column("cost", sa.Float, nullable=False),
    sa.Column("latency_s", sa.Float, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("propensity", sa.Float),  # the probability the decision gave this run; None: not known
    sa.Column("policy_decision", sa.Text),  # the policy's PolicyDecision (None: the fallback's, or older rows)
    sa.Column("reuse", sa.Text),  # ReuseRecord: for a frame of a camera, what the reuse gate decided
    sa.Column("tenant", sa.Text),  # the program's tenant when answered (None: older rows, the default tenant's)
    sa.Column("stored_bytes", sa.BigInteger),  # what the row holds, counted in its tenant's tenant_usage
)

synthesized_programs = sa.Table(
    "synthesized_programs",
    metadata,
    sa.Column("query", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("api_version", sa.Text, primary_key=True),
    sa.Column("synthesizer", sa.Text, primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("latency_s", sa.Float, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("warnings", sa.Text),  # JSON list: what its dry run was unsure of (None: cached before warnings)
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("decision_id", sa.Text, sa.ForeignKey("decisions.id"), primary_key=True),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("reward", sa.Float, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False, server_default="client"),
    sa.Column("teacher", sa.Text),  # the teacher's run (TeacherRun) when the teacher gave the label
)

policy_dead_letters = sa.Table(
    "policy_dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("program_id", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
)

policy_outbox = sa.Table(
    "policy_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("program_id", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
)

# Labels counted per program since it was first labelled, updated in the transaction that stores
# each new label: exact whichever router took the label, and untouched by retention.
program_quality = sa.Table(
    "program_quality",
    metadata,
    sa.Column("program_id", sa.Text, primary_key=True),
    sa.Column("right", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("wrong", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("tp", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("fp", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("fn", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("tn", sa.BigInteger, nullable=False, server_default="0"),
)

# What each program with a cost budget spent per window, updated in the transaction that stores
# each answer (and each teacher run): exact whichever router answered.
program_spend = sa.Table(
    "program_spend",
    metadata,
    sa.Column("program_id", sa.Text, primary_key=True),
    sa.Column("window_start", sa.Text, primary_key=True),
    sa.Column("cost", sa.Float, nullable=False, server_default="0"),
)

# A stream: a source a router pulls frames from for one program; ``owner`` holds it until
# ``lease_until`` (renewed while it runs; another router takes over a stream whose lease ran out).
streams = sa.Table(
    "streams",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("program_id", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("settings", sa.Text, nullable=False),  # StreamCreate, less the source
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("owner", sa.Text),
    sa.Column("lease_until", sa.Text),
    sa.Column("counters", sa.Text, nullable=False),  # StreamCounters
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False, server_default="default"),  # its program's tenant
)

# The answers to a stream's frames, in order: what its event stream (SSE) replays from any point.
stream_events = sa.Table(
    "stream_events",
    metadata,
    sa.Column("stream_id", sa.Text, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("event", sa.Text, nullable=False),  # StreamEvent
    sa.Column("created_at", sa.Text, nullable=False),
)

# A stream's event its webhook refused, or never acknowledged after every retry: kept for an operator.
stream_dead_letters = sa.Table(
    "stream_dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("stream_id", sa.Text, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
)

# A tenant's API key: only its SHA-256 digest is kept; ``id`` is the key's public part, which names it
# in ``fmprog keys revoke`` and in logs. A revoked key stays, with when it was revoked.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("digest", sa.Text, nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("revoked_at", sa.Text),
)

# Bytes each tenant's stored decisions hold (``decisions.stored_bytes`` added up), updated in the
# transaction that stores each answer and in the one that prunes it: what its stored-bytes quota reads.
tenant_usage = sa.Table(
    "tenant_usage",
    metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("stored_bytes", sa.BigInteger, nullable=False, server_default="0"),
)

"""jobs API: Idempotency-Key rows of POST /v1/jobs, and an index to list a tenant's jobs

The `cancelled` job state needs no change: `jobs.state` is a plain string column.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_request_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_job_request_keys_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_job_request_keys_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_request_keys")),
        sa.UniqueConstraint("tenant_id", "key", name=op.f("uq_job_request_keys_tenant_id_key")),
    )
    with op.batch_alter_table("job_request_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_job_request_keys_created_at"), ["created_at"], unique=False
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_tenant_id_created_at", ["tenant_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_tenant_id_created_at")
    with op.batch_alter_table("job_request_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_request_keys_created_at"))
    op.drop_table("job_request_keys")

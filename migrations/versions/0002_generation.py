"""generation: registry, ledger, budgets, uploads

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("project", sa.String(length=100), nullable=False),
        sa.Column("monthly_usd", sa.Numeric(precision=14, scale=6), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budgets")),
        sa.UniqueConstraint("tenant_id", "project", name=op.f("uq_budgets_tenant_id_project")),
    )
    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_budgets_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "cost_entries",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("project", sa.String(length=100), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("image_index", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("gpu_seconds", sa.Float(), nullable=True),
        sa.Column("amount_usd", sa.Numeric(precision=14, scale=6), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cost_entries")),
        sa.UniqueConstraint(
            "job_id", "image_index", name=op.f("uq_cost_entries_job_id_image_index")
        ),
    )
    with op.batch_alter_table("cost_entries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_cost_entries_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_cost_entries_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_cost_entries_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "lora_adapters",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("licence_note", sa.Text(), nullable=False),
        sa.Column("registered_by", sa.String(length=200), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_lora_adapters")),
    )
    op.create_table(
        "model_registrations",
        sa.Column("folder", sa.String(length=1000), nullable=False),
        sa.Column("variant", sa.String(length=40), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("registered_by", sa.String(length=200), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("folder", name=op.f("pk_model_registrations")),
    )
    op.create_table(
        "provider_requests",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("image_index", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=False),
        sa.Column("polling_url", sa.String(length=2000), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_requests")),
        sa.UniqueConstraint(
            "job_id", "image_index", name=op.f("uq_provider_requests_job_id_image_index")
        ),
    )
    with op.batch_alter_table("provider_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_provider_requests_job_id"), ["job_id"], unique=False)

    op.create_table(
        "uploads",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("blob_sha256", sa.String(length=64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("uploaded_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_uploads_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_uploads")),
        sa.UniqueConstraint(
            "tenant_id", "blob_sha256", name=op.f("uq_uploads_tenant_id_blob_sha256")
        ),
    )
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_uploads_tenant_id"), ["tenant_id"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("steps", sa.Integer(), nullable=True))
        # Server defaults fill the rows of jobs created before this migration.
        batch_op.add_column(
            sa.Column("project", sa.String(length=100), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("input_image_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("loras", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(
            sa.Column(
                "estimated_cost_usd",
                sa.Numeric(precision=14, scale=6),
                nullable=False,
                server_default="0",
            )
        )
        batch_op.add_column(sa.Column("progress_step", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("progress_total", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("progress_total")
        batch_op.drop_column("progress_step")
        batch_op.drop_column("estimated_cost_usd")
        batch_op.drop_column("loras")
        batch_op.drop_column("input_image_sha256")
        batch_op.drop_column("project")
        batch_op.drop_column("steps")

    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_uploads_tenant_id"))

    op.drop_table("uploads")
    with op.batch_alter_table("provider_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_provider_requests_job_id"))

    op.drop_table("provider_requests")
    op.drop_table("model_registrations")
    op.drop_table("lora_adapters")
    with op.batch_alter_table("cost_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cost_entries_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_cost_entries_job_id"))
        batch_op.drop_index(batch_op.f("ix_cost_entries_created_at"))

    op.drop_table("cost_entries")
    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_budgets_tenant_id"))

    op.drop_table("budgets")

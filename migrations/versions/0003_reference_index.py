"""reference index: thresholds, negative exemplars, index versions, image checks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "index_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("checkpoint", sa.String(length=32), nullable=False),
        sa.Column("embedder", sa.String(length=300), nullable=False),
        sa.Column("dimension", sa.Integer(), nullable=False),
        sa.Column("vectors", sa.Integer(), nullable=False),
        sa.Column("exemplars", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("built_by", sa.String(length=10), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_index_versions")),
        sa.UniqueConstraint("checkpoint", name=op.f("uq_index_versions_checkpoint")),
    )
    with op.batch_alter_table("index_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_index_versions_active"), ["active"], unique=False)

    with op.batch_alter_table("job_images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("check", sa.JSON(), nullable=True))
        batch_op.drop_column("pdq_quality")
        batch_op.drop_column("pdq_hash")

    with op.batch_alter_table("protected_assets", schema=None) as batch_op:
        # Server defaults fill the rows that exist already.
        batch_op.add_column(sa.Column("thresholds", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(
            sa.Column(
                "updated_at",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default=sa.func.current_timestamp(),
            )
        )

    with op.batch_alter_table("reference_images", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("polarity", sa.String(length=10), nullable=False, server_default="positive")
        )
        batch_op.add_column(sa.Column("width", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("height", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("reference_images", schema=None) as batch_op:
        batch_op.drop_column("height")
        batch_op.drop_column("width")
        batch_op.drop_column("polarity")

    with op.batch_alter_table("protected_assets", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
        batch_op.drop_column("thresholds")

    with op.batch_alter_table("job_images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pdq_hash", sa.VARCHAR(length=64), nullable=True))
        batch_op.add_column(sa.Column("pdq_quality", sa.INTEGER(), nullable=True))
        batch_op.drop_column("check")

    with op.batch_alter_table("index_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_index_versions_active"))

    op.drop_table("index_versions")

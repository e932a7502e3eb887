"""release with provenance: the signed blobs (PNG and JPEG) of each released image

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("released_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("released_jpeg_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_images", schema=None) as batch_op:
        batch_op.drop_column("released_jpeg_sha256")
        batch_op.drop_column("released_sha256")

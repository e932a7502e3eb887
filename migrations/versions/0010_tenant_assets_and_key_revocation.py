"""tenant assets and admin API: tenants' own assets, exemplars and LoRA adapters, and their
prompt-policy overrides

`protected_assets`, `reference_images` and `lora_adapters` get a nullable `tenant_id`: None
is the shared catalogue (operators'), set is one tenant's own. An exemplar is unique per
asset, image and tenant, so two tenants' reviews may each keep the same image. API keys
already have `revoked_at` (0001); the admin API only starts setting it.

Downgrading deletes the tenants' own rows first: the older schema has no way to keep them
private, and must not turn them into everyone's.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TENANT_TABLES = ("protected_assets", "reference_images", "lora_adapters")
# SQLite rebuilds a table for what it cannot ALTER, and dropping the old `protected_assets`
# would cascade-delete every exemplar: columns are added and dropped in place (SQLite 3.35+);
# only `reference_images`, which nothing references, is rebuilt, for its unique constraint.


def upgrade() -> None:
    for table in _TENANT_TABLES:
        with op.batch_alter_table(table, recreate="never") as batch_op:
            batch_op.add_column(sa.Column("tenant_id", sa.String(length=32), nullable=True))
            batch_op.create_index(batch_op.f(f"ix_{table}_tenant_id"), ["tenant_id"], unique=False)
    with op.batch_alter_table("reference_images", schema=None) as batch_op:
        batch_op.drop_constraint("uq_reference_images_asset_id_blob_sha256", type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_reference_images_asset_id_blob_sha256_tenant_id"),
            ["asset_id", "blob_sha256", "tenant_id"],
        )
    op.create_table(
        "tenant_policy_overrides",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("rules_version", sa.String(length=100), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_policy_overrides")),
    )


def downgrade() -> None:
    op.drop_table("tenant_policy_overrides")
    # Exemplars first: a tenant's exemplars of shared assets go with it, and those of its own
    # assets would go by cascade only where foreign keys are enforced.
    for table in ("reference_images", "protected_assets", "lora_adapters"):
        rows = sa.table(table, sa.column("tenant_id"))
        op.execute(rows.delete().where(rows.c.tenant_id.is_not(None)))
    with op.batch_alter_table("reference_images", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("uq_reference_images_asset_id_blob_sha256_tenant_id"), type_="unique"
        )
        batch_op.create_unique_constraint(
            "uq_reference_images_asset_id_blob_sha256", ["asset_id", "blob_sha256"]
        )
    for table in reversed(_TENANT_TABLES):
        with op.batch_alter_table(table, recreate="never") as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_tenant_id"))
            batch_op.drop_column("tenant_id")

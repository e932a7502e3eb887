from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, new_id, utcnow

ASSET_KINDS = ("character", "logo", "brand", "person", "artwork")
RISKS = ("low", "medium", "high")
# An exemplar shows the asset (positive) or an approved look-alike that must not match it
# again (negative).
POLARITIES = ("positive", "negative")


class ProtectedAsset(Base):
    """An asset of the shared catalogue (`tenant_id` None: imported by operators, checked for
    every tenant, read-only to them) or a tenant's own (visible to, and matched for, that
    tenant only; its id is `<tenant name>:<id>`, so ids never collide across tenants)."""

    __tablename__ = "protected_assets"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    owner: Mapped[str] = mapped_column(String(200), default="")
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(Text, default="")
    risk: Mapped[str] = mapped_column(String(10), default="high")
    thresholds: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    references: Mapped[list[ReferenceImage]] = relationship(
        back_populates="asset", cascade="all, delete-orphan"
    )


class ReferenceImage(Base):
    """An exemplar image of a protected asset, with its PDQ hash (256 bits, 64 hex digits).
    `tenant_id` None: part of the shared catalogue. Set: that tenant's own, used for that
    tenant's checks only (every exemplar of a tenant's asset, and the exemplars a tenant's
    confirmed reviews add to a shared asset)."""

    __tablename__ = "reference_images"
    __table_args__ = (UniqueConstraint("asset_id", "blob_sha256", "tenant_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    asset_id: Mapped[str] = mapped_column(
        ForeignKey("protected_assets.id", ondelete="CASCADE"), index=True
    )
    tenant_id: Mapped[str | None] = mapped_column(String(32), index=True)
    blob_sha256: Mapped[str] = mapped_column(String(64))
    polarity: Mapped[str] = mapped_column(String(10), default="positive")
    width: Mapped[int] = mapped_column(default=0)
    height: Mapped[int] = mapped_column(default=0)
    pdq_hash: Mapped[str] = mapped_column(String(64))
    pdq_quality: Mapped[int]
    source: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    asset: Mapped[ProtectedAsset] = relationship(back_populates="references")


class IndexVersion(Base):
    """A built index: the CLIP vectors (FAISS), the keypoint descriptors and the text
    embeddings of the catalogue, in a folder of its own. Building writes a new folder and
    then switches `active` in one transaction, so readers never see a half-written index;
    workers reload when the active checkpoint moves."""

    __tablename__ = "index_versions"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    checkpoint: Mapped[str] = mapped_column(String(32), unique=True, default=new_id)
    embedder: Mapped[str] = mapped_column(String(300))
    dimension: Mapped[int]
    vectors: Mapped[int]
    exemplars: Mapped[int]
    kind: Mapped[str] = mapped_column(String(20))  # "flat" or "hnsw"
    path: Mapped[str] = mapped_column(String(1000))
    # "build" (everything re-embedded) or "add" (previous version plus new exemplars).
    built_by: Mapped[str] = mapped_column(String(10))
    active: Mapped[bool] = mapped_column(default=False, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

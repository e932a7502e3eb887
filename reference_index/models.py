from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, new_id, utcnow

ASSET_KINDS = ("character", "logo", "brand", "person", "artwork")
RISKS = ("low", "medium", "high")


class ProtectedAsset(Base):
    __tablename__ = "protected_assets"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    owner: Mapped[str] = mapped_column(String(200), default="")
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(Text, default="")
    risk: Mapped[str] = mapped_column(String(10), default="high")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    references: Mapped[list[ReferenceImage]] = relationship(
        back_populates="asset", cascade="all, delete-orphan"
    )


class ReferenceImage(Base):
    """An exemplar image of a protected asset, with its PDQ hash (256 bits, 64 hex digits)."""

    __tablename__ = "reference_images"
    __table_args__ = (UniqueConstraint("asset_id", "blob_sha256"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    asset_id: Mapped[str] = mapped_column(
        ForeignKey("protected_assets.id", ondelete="CASCADE"), index=True
    )
    blob_sha256: Mapped[str] = mapped_column(String(64))
    pdq_hash: Mapped[str] = mapped_column(String(64))
    pdq_quality: Mapped[int]
    source: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    asset: Mapped[ProtectedAsset] = relationship(back_populates="references")

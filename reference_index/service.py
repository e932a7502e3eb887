"""The protected-asset catalogue: assets, their exemplars and negative exemplars, YAML
import and export. Matching is `reference_index.checks`; the index is `reference_index.index`.

Two kinds of rows share the tables. The shared catalogue (`tenant_id` None) is imported by
operators, checked for every tenant, and read-only to tenants. A tenant's own assets and
exemplars (`tenant_id` set) are seen, changed and matched for that tenant only; a tenant's
asset id is `<tenant name>:<id>`, and shared ids have no ':', so no id is ever taken by
another tenant. Functions take the caller's `tenant_id`; None is an operator, who sees and
changes the shared catalogue only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from audit import service as audit
from core.blobs import BlobStore
from core.db import page
from core.errors import ConflictError, PermissionDeniedError, choices
from core.images import ImageError, decode_image, to_array
from reference_index import pdq
from reference_index.errors import AssetNotFoundError, CatalogueError
from reference_index.models import (
    ASSET_KINDS,
    POLARITIES,
    RISKS,
    ProtectedAsset,
    ReferenceImage,
)
from reference_index.schemas import ImportSummary

_ASSET_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
_TENANT_ASSET_ID = re.compile(r"[a-z0-9][a-z0-9._-]*:[a-z0-9][a-z0-9._-]*")
MAX_ASSET_ID = 100
# The same ranges as the settings they override (core/settings.py).
THRESHOLD_RANGES: dict[str, tuple[float, float]] = {
    "pdq_max_distance": (0, 256),
    "clip_min_image_score": (-1.0, 1.0),
    "clip_min_text_score": (-1.0, 1.0),
    "keypoint_min_inliers": (4, 10_000),
}


@dataclass(frozen=True)
class AssetFields:
    """An asset as a client describes it; validated by `validate_asset`."""

    name: str
    kind: str
    owner: str = ""
    aliases: tuple[str, ...] = ()
    description: str = ""
    risk: str = "high"
    thresholds: tuple[tuple[str, float], ...] = ()


def tenant_asset_id(tenant_name: str, asset_id: str) -> str:
    """The id of a tenant's own asset."""
    return f"{tenant_name}:{asset_id}"


def visible_to(
    column: InstrumentedAttribute[str | None], tenant_id: str | None
) -> ColumnElement[bool]:
    """Rows a tenant sees by their `tenant_id` column: the shared catalogue and its own."""
    if tenant_id is None:
        return column.is_(None)
    return column.is_(None) | (column == tenant_id)


def _validate_id(asset_id: str, tenant_id: str | None, where: str) -> None:
    if tenant_id is None and not _ASSET_ID.fullmatch(asset_id):
        raise CatalogueError(
            f"{where}: id {asset_id!r} is not allowed: use 1-100 lowercase letters, digits, "
            "'.', '_' or '-'",
            field="id",
        )
    if tenant_id is not None:
        if not _TENANT_ASSET_ID.fullmatch(asset_id):
            raise CatalogueError(
                f"{where}: id {asset_id!r} is not allowed: a tenant's asset id is "
                "'<tenant>:<id>', each part lowercase letters, digits, '.', '_' or '-'",
                field="id",
            )
        if len(asset_id) > MAX_ASSET_ID:
            prefix = asset_id.split(":", 1)[0]
            raise CatalogueError(
                f"{where}: id {asset_id!r} is {len(asset_id)} characters with the tenant's "
                f"prefix {prefix + ':'!r}; at most {MAX_ASSET_ID} are allowed",
                field="id",
            )


def validate_asset(
    asset_id: str, fields: AssetFields, where: str = "asset", tenant_id: str | None = None
) -> None:
    _validate_id(asset_id, tenant_id, where)
    if not fields.name.strip():
        raise CatalogueError(f"{where}: name is empty", field="name")
    if fields.kind not in ASSET_KINDS:
        raise CatalogueError(
            f"{where}: kind {fields.kind!r} is not one of {choices(ASSET_KINDS)}", field="kind"
        )
    if fields.risk not in RISKS:
        raise CatalogueError(
            f"{where}: risk {fields.risk!r} is not one of {choices(RISKS)}", field="risk"
        )
    for key, value in fields.thresholds:
        if key not in THRESHOLD_RANGES:
            raise CatalogueError(
                f"{where}: threshold {key!r} is not one of {choices(THRESHOLD_RANGES)}",
                field="thresholds",
            )
        low, high = THRESHOLD_RANGES[key]
        if not (math.isfinite(value) and low <= value <= high):
            raise CatalogueError(
                f"{where}: threshold {key} = {value} is out of range: use {low} to {high}",
                field="thresholds",
            )


def _apply(asset: ProtectedAsset, fields: AssetFields) -> None:
    asset.name = fields.name
    asset.kind = fields.kind
    asset.owner = fields.owner
    asset.aliases = list(fields.aliases)
    asset.description = fields.description
    asset.risk = fields.risk
    asset.thresholds = dict(fields.thresholds)


def save_asset(
    *,
    session: Session,
    asset_id: str,
    fields: AssetFields,
    actor: str,
    create_only: bool = False,
    tenant_id: str | None = None,
) -> tuple[ProtectedAsset, bool]:
    """Create or update an asset of the shared catalogue (`tenant_id` None) or of a tenant
    (its id from `tenant_asset_id`); the flag says whether it was created."""
    asset = session.get(ProtectedAsset, asset_id)
    if asset is not None:
        require_editable(asset, tenant_id)
        if create_only:
            raise ConflictError(f"asset {asset_id!r} already exists", field="id")
    validate_asset(asset_id, fields, tenant_id=tenant_id)
    created = asset is None
    if asset is None:
        asset = ProtectedAsset(id=asset_id, tenant_id=tenant_id)
        session.add(asset)
    _apply(asset, fields)
    session.flush()
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant_id,
        type="asset.created" if created else "asset.updated",
        subject=f"asset:{asset_id}",
        payload={
            "name": fields.name,
            "kind": fields.kind,
            "risk": fields.risk,
            "aliases": list(fields.aliases),
            "thresholds": dict(fields.thresholds),
        },
    )
    return asset, created


def get_asset(*, session: Session, asset_id: str, tenant_id: str | None = None) -> ProtectedAsset:
    """An asset the tenant sees; another tenant's is answered as one that does not exist."""
    asset = session.get(ProtectedAsset, asset_id)
    if asset is None or asset.tenant_id not in (None, tenant_id):
        raise AssetNotFoundError(f"asset {asset_id!r} does not exist", field="asset_id")
    return asset


def require_editable(asset: ProtectedAsset, tenant_id: str | None) -> None:
    """A tenant changes its own assets only; the shared catalogue is the operators'."""
    if asset.tenant_id == tenant_id:
        return
    if asset.tenant_id is None:
        raise PermissionDeniedError(
            f"asset {asset.id!r} is in the shared catalogue, which only operators change "
            "(`clearance assets import`); add an asset of your own with POST /v1/assets",
            field="asset_id",
        )
    raise AssetNotFoundError(f"asset {asset.id!r} does not exist", field="asset_id")


def visible_references(asset: ProtectedAsset, tenant_id: str | None) -> list[ReferenceImage]:
    """The exemplars of an asset that a tenant sees: the shared ones and its own."""
    return [r for r in asset.references if r.tenant_id in (None, tenant_id)]


def list_assets(
    *,
    session: Session,
    kind: str | None = None,
    offset: int = 0,
    limit: int = 50,
    tenant_id: str | None = None,
) -> tuple[list[ProtectedAsset], int]:
    query = select(ProtectedAsset).where(visible_to(ProtectedAsset.tenant_id, tenant_id))
    if kind is not None:
        if kind not in ASSET_KINDS:
            raise CatalogueError(
                f"kind {kind!r} is not one of {choices(ASSET_KINDS)}", field="kind"
            )
        query = query.where(ProtectedAsset.kind == kind)
    return page(session, query, ProtectedAsset.id, offset=offset, limit=limit)


def delete_asset(
    *, session: Session, asset_id: str, actor: str, tenant_id: str | None = None
) -> list[str]:
    """Delete an asset and its exemplars; returns the ids of the exemplars removed, which
    the caller takes out of the index."""
    asset = get_asset(session=session, asset_id=asset_id, tenant_id=tenant_id)
    require_editable(asset, tenant_id)
    removed = [r.id for r in asset.references]
    session.delete(asset)
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant_id,
        type="asset.deleted",
        subject=f"asset:{asset_id}",
        payload={"exemplars_removed": removed},
    )
    return removed


def add_reference_image(
    *,
    session: Session,
    blobs: BlobStore,
    asset_id: str,
    data: bytes,
    source: str,
    actor: str,
    polarity: str = "positive",
    tenant_id: str | None = None,
) -> tuple[ReferenceImage, bool]:
    """Store an exemplar (or, with polarity "negative", an approved look-alike) of an asset,
    as the tenant's own (`tenant_id`) or the shared catalogue's (None). A tenant may add its
    own to a shared asset (its confirmed reviews do); the API refuses that to tenants'
    callers (`require_editable`). Adding an image the tenant already sees on the asset
    returns that one; the flag says whether it was new. The caller adds new exemplars to the
    index (`reference_index.index.add`)."""
    if polarity not in POLARITIES:
        raise CatalogueError(
            f"polarity {polarity!r} is not one of {choices(POLARITIES)}", field="polarity"
        )
    get_asset(session=session, asset_id=asset_id, tenant_id=tenant_id)
    image = decode_image(data, field="exemplar")
    hashed = pdq.compute_array(to_array(image))
    sha256 = blobs.put(data)
    existing = session.scalar(
        select(ReferenceImage)
        .where(
            ReferenceImage.asset_id == asset_id,
            ReferenceImage.blob_sha256 == sha256,
            visible_to(ReferenceImage.tenant_id, tenant_id),
        )
        # The shared one first: a tenant does not need a copy of its own.
        .order_by(ReferenceImage.tenant_id.is_(None).desc())
        .limit(1)
    )
    if existing is not None:
        if existing.polarity != polarity:
            raise ConflictError(
                f"this image is already a {existing.polarity} exemplar of {asset_id!r} "
                f"({existing.id}); delete it first to store it as {polarity}",
                field="polarity",
            )
        return existing, False
    reference = ReferenceImage(
        asset_id=asset_id,
        tenant_id=tenant_id,
        blob_sha256=sha256,
        polarity=polarity,
        width=image.width,
        height=image.height,
        pdq_hash=hashed.hex,
        pdq_quality=hashed.quality,
        source=source,
    )
    session.add(reference)
    session.flush()
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant_id,
        type="reference.added",
        subject=f"asset:{asset_id}",
        payload={
            "reference_image_id": reference.id,
            "sha256": sha256,
            "pdq": hashed.hex,
            "polarity": polarity,
            "source": source,
        },
    )
    return reference, True


def delete_reference_image(
    *,
    session: Session,
    asset_id: str,
    reference_id: str,
    actor: str,
    tenant_id: str | None = None,
) -> None:
    """Delete an exemplar; a tenant deletes its own only (one its reviews added to a shared
    asset included), never the shared catalogue's. (Every exemplar of a tenant's asset is
    that tenant's, so the exemplar's own tenant decides.)"""
    reference = session.get(ReferenceImage, reference_id)
    if (
        reference is None
        or reference.asset_id != asset_id
        or reference.tenant_id not in (None, tenant_id)
    ):
        raise AssetNotFoundError(
            f"exemplar {reference_id!r} of asset {asset_id!r} does not exist", field="exemplar_id"
        )
    if reference.tenant_id != tenant_id:
        raise PermissionDeniedError(
            f"exemplar {reference_id!r} is in the shared catalogue, which only operators change",
            field="exemplar_id",
        )
    session.delete(reference)
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant_id,
        type="reference.deleted",
        subject=f"asset:{asset_id}",
        payload={"reference_image_id": reference_id, "sha256": reference.blob_sha256},
    )


# --- YAML ----------------------------------------------------------------------------------


def _fields_from_yaml(entry: dict[str, Any], where: str) -> AssetFields:
    for required in ("id", "name", "kind"):
        if entry.get(required) is None:
            raise CatalogueError(f"{where}: field {required!r} is required", field=required)
    aliases = entry.get("aliases") or []
    if not isinstance(aliases, list):
        raise CatalogueError(
            f"{where}: aliases must be a list, e.g. [Mickey, Steamboat Willie]", field="aliases"
        )
    thresholds = entry.get("thresholds") or {}
    if not isinstance(thresholds, dict):
        raise CatalogueError(f"{where}: thresholds must be a mapping", field="thresholds")
    try:
        threshold_items = tuple((str(k), float(v)) for k, v in thresholds.items())
    except (TypeError, ValueError) as e:
        raise CatalogueError(f"{where}: thresholds must be numbers", field="thresholds") from e
    return AssetFields(
        name=str(entry["name"]),
        kind=str(entry["kind"]),
        owner=str(entry.get("owner") or ""),
        aliases=tuple(str(a) for a in aliases),
        description=str(entry.get("description") or ""),
        risk=str(entry.get("risk", "high")),
        thresholds=threshold_items,
    )


def import_catalogue(
    *, session: Session, blobs: BlobStore, path: Path, actor: str
) -> ImportSummary:
    """Create or update the assets of a catalogue YAML file (the form of
    `shared/eval/catalogue.yaml`), adding the images listed under each asset's `exemplars:`
    and `negative_exemplars:` (paths relative to the file). All or nothing: the caller's
    transaction rolls back on error. `summary.new_reference_ids` are for the index."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise CatalogueError(f"{path}: cannot read the catalogue: {e}", field="file") from e
    entries = document.get("assets") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise CatalogueError(f"{path}: expected a top-level 'assets:' list", field="assets")
    created = updated = 0
    new_references: list[str] = []
    for position, entry in enumerate(entries, start=1):
        where = f"{path} asset #{position}"
        if not isinstance(entry, dict):
            raise CatalogueError(f"{where}: expected a mapping", field="assets")
        asset_id = str(entry.get("id") or "")
        if asset_id:
            where = f"{path} asset {asset_id!r}"
        fields = _fields_from_yaml(entry, where)
        validate_asset(asset_id, fields, where)
        _, was_created = save_asset(session=session, asset_id=asset_id, fields=fields, actor=actor)
        created += was_created
        updated += not was_created
        for key, polarity in (("exemplars", "positive"), ("negative_exemplars", "negative")):
            for exemplar in entry.get(key) or []:
                image_path = (path.parent / str(exemplar)).resolve()
                try:
                    data = image_path.read_bytes()
                    reference, is_new = add_reference_image(
                        session=session,
                        blobs=blobs,
                        asset_id=asset_id,
                        data=data,
                        source=str(exemplar),
                        actor=actor,
                        polarity=polarity,
                    )
                except OSError as e:
                    raise CatalogueError(f"{where}: exemplar {exemplar!r}: {e}", field=key) from e
                except ImageError as e:
                    raise CatalogueError(
                        f"{where}: exemplar {exemplar!r} is not a readable image ({e.detail})",
                        field=key,
                    ) from e
                except ConflictError as e:
                    raise CatalogueError(
                        f"{where}: exemplar {exemplar!r}: {e.detail}", field=key
                    ) from e
                if is_new:
                    new_references.append(reference.id)
    audit.append(
        session=session,
        actor=actor,
        type="catalogue.imported",
        subject=f"file:{path.name}",
        payload={"created": created, "updated": updated, "references_added": len(new_references)},
    )
    return ImportSummary(created, updated, len(new_references), tuple(new_references))


def export_catalogue(*, session: Session, blobs: BlobStore, folder: Path | None) -> str:
    """The shared catalogue as YAML in the import format (tenants' own assets and exemplars
    are theirs, not part of it). With a folder, exemplar images are written under
    folder/exemplars/ and listed; without one, the YAML lists no images."""
    assets = []
    for asset in session.scalars(
        select(ProtectedAsset).where(ProtectedAsset.tenant_id.is_(None)).order_by(ProtectedAsset.id)
    ):
        entry: dict[str, Any] = {
            "id": asset.id,
            "name": asset.name,
            "kind": asset.kind,
            "owner": asset.owner,
            "aliases": list(asset.aliases),
            "description": asset.description,
            "risk": asset.risk,
        }
        if asset.thresholds:
            entry["thresholds"] = dict(asset.thresholds)
        if folder is not None:
            for polarity, key in (("positive", "exemplars"), ("negative", "negative_exemplars")):
                paths = []
                for reference in sorted(visible_references(asset, None), key=lambda r: r.id):
                    if reference.polarity != polarity:
                        continue
                    relative = (
                        Path("exemplars") / f"{reference.blob_sha256}{_suffix(blobs, reference)}"
                    )
                    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                    (folder / relative).write_bytes(blobs.get(reference.blob_sha256))
                    paths.append(str(relative))
                if paths:
                    entry[key] = paths
        assets.append(entry)
    return yaml.safe_dump({"assets": assets}, sort_keys=False, allow_unicode=True)


def _suffix(blobs: BlobStore, reference: ReferenceImage) -> str:
    head = blobs.get(reference.blob_sha256)[:12]
    if head.startswith(b"\x89PNG"):
        return ".png"
    if head.startswith(b"\xff\xd8"):
        return ".jpg"
    if head[8:12] == b"WEBP":
        return ".webp"
    return ".img"

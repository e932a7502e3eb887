"""The protected-asset catalogue and PDQ matching against its reference images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit import service as audit
from core.blobs import BlobStore
from core.errors import choices
from reference_index import pdq
from reference_index.errors import AssetNotFoundError, CatalogueError, ImageDecodeError
from reference_index.models import ASSET_KINDS, RISKS, ProtectedAsset, ReferenceImage
from reference_index.schemas import ImportSummary, PdqMatch


def add_reference_image(
    *, session: Session, blobs: BlobStore, asset_id: str, data: bytes, source: str, actor: str
) -> tuple[ReferenceImage, bool]:
    """Store an exemplar of an asset. Adding the same image twice returns the first one;
    the flag says whether it was new."""
    if session.get(ProtectedAsset, asset_id) is None:
        raise AssetNotFoundError(f"asset {asset_id!r} does not exist", field="asset_id")
    hashed = pdq.compute(data)
    sha256 = blobs.put(data)
    existing = session.scalar(
        select(ReferenceImage).where(
            ReferenceImage.asset_id == asset_id, ReferenceImage.blob_sha256 == sha256
        )
    )
    if existing is not None:
        return existing, False
    reference = ReferenceImage(
        asset_id=asset_id,
        blob_sha256=sha256,
        pdq_hash=hashed.hex,
        pdq_quality=hashed.quality,
        source=source,
    )
    session.add(reference)
    session.flush()
    audit.append(
        session=session,
        actor=actor,
        type="reference.added",
        subject=f"asset:{asset_id}",
        payload={"reference_image_id": reference.id, "sha256": sha256, "pdq": hashed.hex},
    )
    return reference, True


def _field(entry: dict[str, Any], name: str, where: str, default: Any = None) -> Any:
    value = entry.get(name, default)
    if value is None:
        raise CatalogueError(f"{where}: field {name!r} is required", field=name)
    return value


def import_catalogue(
    *, session: Session, blobs: BlobStore, path: Path, actor: str
) -> ImportSummary:
    """Create or update the assets of a catalogue YAML file (the form of
    `shared/eval/catalogue.yaml`), adding the images listed under each asset's `exemplars:`
    (paths relative to the file). All or nothing: the caller's transaction rolls back on error."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise CatalogueError(f"{path}: cannot read the catalogue: {e}", field="file") from e
    entries = document.get("assets") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise CatalogueError(f"{path}: expected a top-level 'assets:' list", field="assets")
    created = updated = added = 0
    for position, entry in enumerate(entries, start=1):
        where = f"{path} asset #{position}"
        if not isinstance(entry, dict):
            raise CatalogueError(f"{where}: expected a mapping", field="assets")
        asset_id = str(_field(entry, "id", where))
        where = f"{path} asset {asset_id!r}"
        kind = _field(entry, "kind", where)
        if kind not in ASSET_KINDS:
            raise CatalogueError(
                f"{where}: kind {kind!r} is not one of {choices(ASSET_KINDS)}", field="kind"
            )
        risk = entry.get("risk", "high")
        if risk not in RISKS:
            raise CatalogueError(
                f"{where}: risk {risk!r} is not one of {choices(RISKS)}", field="risk"
            )
        aliases = entry.get("aliases") or []
        if not isinstance(aliases, list):
            raise CatalogueError(
                f"{where}: aliases must be a list, e.g. [Mickey, Steamboat Willie]", field="aliases"
            )
        values = {
            "name": str(_field(entry, "name", where)),
            "kind": kind,
            "owner": str(entry.get("owner") or ""),
            "aliases": [str(a) for a in aliases],
            "description": str(entry.get("description") or ""),
            "risk": risk,
        }
        asset = session.get(ProtectedAsset, asset_id)
        if asset is None:
            session.add(ProtectedAsset(id=asset_id, **values))
            created += 1
        else:
            for key, value in values.items():
                setattr(asset, key, value)
            updated += 1
        session.flush()
        for exemplar in entry.get("exemplars") or []:
            image_path = (path.parent / str(exemplar)).resolve()
            try:
                data = image_path.read_bytes()
            except OSError as e:
                raise CatalogueError(
                    f"{where}: exemplar {exemplar!r}: {e}", field="exemplars"
                ) from e
            try:
                _, is_new = add_reference_image(
                    session=session,
                    blobs=blobs,
                    asset_id=asset_id,
                    data=data,
                    source=str(exemplar),
                    actor=actor,
                )
            except ImageDecodeError as e:
                raise CatalogueError(
                    f"{where}: exemplar {exemplar!r} is not a readable image", field="exemplars"
                ) from e
            added += is_new
    audit.append(
        session=session,
        actor=actor,
        type="catalogue.imported",
        subject=f"file:{path.name}",
        payload={"created": created, "updated": updated, "references_added": added},
    )
    return ImportSummary(created, updated, added)


def match_pdq(*, session: Session, image_hash: str, max_distance: int) -> list[PdqMatch]:
    """Every reference image within `max_distance` bits, best first. One vectorised pass over
    all reference hashes; the FAISS binary index arrives with the reference-index work."""
    rows = session.execute(
        select(ReferenceImage.id, ReferenceImage.pdq_hash, ProtectedAsset.id, ProtectedAsset.name)
        .join(ProtectedAsset)
        .order_by(ReferenceImage.id)
    ).all()
    if not rows:
        return []
    found = pdq.distances(image_hash, [r[1] for r in rows])
    matches = [
        PdqMatch(
            asset_id=asset_id,
            asset_name=name,
            reference_image_id=ref_id,
            distance=int(distance),
            score=round(1 - int(distance) / pdq.HASH_BITS, 4),
        )
        for (ref_id, _hash, asset_id, name), distance in zip(rows, found, strict=True)
        if distance <= max_distance
    ]
    return sorted(matches, key=lambda m: m.distance)

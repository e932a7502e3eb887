"""HTTP routes of the protected-asset catalogue, the index and image checks.

A caller sees the shared catalogue (read-only; operators import it) and its tenant's own
assets; it creates, changes and deletes only its tenant's, and its checks match exactly
those two. Another tenant's asset answers 404, like one that does not exist."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query, Response, UploadFile
from sqlalchemy.orm import Session

from api.auth import Principal
from api.deps import Offset, PrincipalDep, ReadSessionDep, SettingsDep
from api.errors import ERRORS
from api.models import Tenant
from api.schemas import (
    AssetCreate,
    AssetIn,
    AssetOut,
    CheckOut,
    ExemplarOut,
    IndexOut,
    Page,
)
from core.blobs import BlobStore
from core.db import read_scope, session_scope
from core.errors import InvalidInputError
from core.settings import Settings
from reference_index import checks
from reference_index import index as index_versions
from reference_index import service as catalogue
from reference_index.models import ProtectedAsset, ReferenceImage

router = APIRouter()
# Who may change the catalogue; everyone with a key may read it and run checks.
EDITORS = ("legal", "admin")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff")
MAX_IMAGE_BYTES = 50 * 1024 * 1024


def asset_out(asset: ProtectedAsset, tenant_id: str) -> AssetOut:
    """The asset as `tenant_id` sees it: its exemplar counts leave out other tenants'."""
    references = catalogue.visible_references(asset, tenant_id)
    positives = sum(r.polarity == "positive" for r in references)
    return AssetOut(
        id=asset.id,
        scope="shared" if asset.tenant_id is None else "tenant",
        name=asset.name,
        kind=asset.kind,
        owner=asset.owner,
        aliases=asset.aliases,
        description=asset.description,
        risk=asset.risk,
        thresholds=asset.thresholds,
        exemplars=positives,
        negative_exemplars=len(references) - positives,
        created_at=asset.created_at,
        updated_at=asset.updated_at,
    )


def exemplar_out(reference: ReferenceImage) -> ExemplarOut:
    return ExemplarOut(
        id=reference.id,
        polarity=reference.polarity,
        sha256=reference.blob_sha256,
        width=reference.width,
        height=reference.height,
        pdq_quality=reference.pdq_quality,
        source=reference.source,
        created_at=reference.created_at,
    )


def _fields(body: AssetIn) -> catalogue.AssetFields:
    thresholds = {k: v for k, v in body.thresholds.model_dump().items() if v is not None}
    return catalogue.AssetFields(
        name=body.name,
        kind=body.kind,
        owner=body.owner,
        aliases=tuple(body.aliases),
        description=body.description,
        risk=body.risk,
        thresholds=tuple(thresholds.items()),
    )


async def read_image_upload(file: UploadFile, field: str = "file") -> bytes:
    if file.content_type not in IMAGE_TYPES:
        raise InvalidInputError(
            f"content type {file.content_type!r} is not accepted; send one of "
            f"{', '.join(IMAGE_TYPES)}",
            field=field,
        )
    data = await file.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidInputError(f"the file is over {MAX_IMAGE_BYTES // 2**20} MiB", field=field)
    return data


@router.get("/v1/assets", response_model=Page[AssetOut], responses=ERRORS)
def list_assets(
    principal: PrincipalDep,
    session: ReadSessionDep,
    kind: str | None = None,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Page[AssetOut]:
    """The shared catalogue and the caller's tenant's own assets."""
    assets, total = catalogue.list_assets(
        session=session, kind=kind, offset=offset, limit=limit, tenant_id=principal.tenant_id
    )
    return Page[AssetOut](
        items=[asset_out(a, principal.tenant_id) for a in assets],
        total=total,
        offset=offset,
        limit=limit,
    )


@router.post("/v1/assets", status_code=201, response_model=AssetOut, responses=ERRORS)
def create_asset(body: AssetCreate, principal: PrincipalDep) -> AssetOut:
    """An asset of the caller's tenant, matched in its checks and prompts only; its id is
    "<tenant name>:<id>"."""
    principal.require(*EDITORS)
    with session_scope() as session:
        tenant = session.get_one(Tenant, principal.tenant_id)
        asset, _ = catalogue.save_asset(
            session=session,
            asset_id=catalogue.tenant_asset_id(tenant.name, body.id),
            fields=_fields(body),
            actor=principal.actor,
            create_only=True,
            tenant_id=principal.tenant_id,
        )
        return asset_out(asset, principal.tenant_id)


@router.get("/v1/assets/{asset_id}", response_model=AssetOut, responses=ERRORS)
def get_asset(asset_id: str, principal: PrincipalDep, session: ReadSessionDep) -> AssetOut:
    asset = catalogue.get_asset(session=session, asset_id=asset_id, tenant_id=principal.tenant_id)
    return asset_out(asset, principal.tenant_id)


def _editable(session: Session, asset_id: str, principal: Principal) -> ProtectedAsset:
    """The caller's tenant's own asset: 403 for a shared one, 404 for another tenant's."""
    asset = catalogue.get_asset(session=session, asset_id=asset_id, tenant_id=principal.tenant_id)
    catalogue.require_editable(asset, principal.tenant_id)
    return asset


@router.put("/v1/assets/{asset_id}", response_model=AssetOut, responses=ERRORS)
def update_asset(
    asset_id: str, body: AssetIn, principal: PrincipalDep, settings: SettingsDep
) -> AssetOut:
    """Replace an asset's fields; its exemplars stay. The text side of the index follows."""
    principal.require(*EDITORS)
    with session_scope() as session:
        _editable(session, asset_id, principal)
        asset, _ = catalogue.save_asset(
            session=session,
            asset_id=asset_id,
            fields=_fields(body),
            actor=principal.actor,
            tenant_id=principal.tenant_id,
        )
        _reindex(session, settings, principal.actor, added=[])
        return asset_out(asset, principal.tenant_id)


@router.delete("/v1/assets/{asset_id}", status_code=204, responses=ERRORS)
def delete_asset(asset_id: str, principal: PrincipalDep, settings: SettingsDep) -> Response:
    principal.require(*EDITORS)
    with session_scope() as session:
        removed = catalogue.delete_asset(
            session=session,
            asset_id=asset_id,
            actor=principal.actor,
            tenant_id=principal.tenant_id,
        )
        session.flush()
        if removed:
            _rebuild(session, settings, principal.actor)
        else:
            _reindex(session, settings, principal.actor, added=[])
    return Response(status_code=204)


@router.get("/v1/assets/{asset_id}/exemplars", response_model=list[ExemplarOut], responses=ERRORS)
def list_exemplars(
    asset_id: str, principal: PrincipalDep, session: ReadSessionDep
) -> list[ExemplarOut]:
    asset = catalogue.get_asset(session=session, asset_id=asset_id, tenant_id=principal.tenant_id)
    references = catalogue.visible_references(asset, principal.tenant_id)
    return [exemplar_out(r) for r in sorted(references, key=lambda r: r.created_at)]


@router.post(
    "/v1/assets/{asset_id}/exemplars",
    status_code=201,
    response_model=ExemplarOut,
    responses=ERRORS,
)
async def add_exemplar(
    asset_id: str,
    file: UploadFile,
    principal: PrincipalDep,
    settings: SettingsDep,
    polarity: Annotated[Literal["positive", "negative"], Form()] = "positive",
) -> ExemplarOut:
    """An image of the asset, or (polarity "negative") an approved look-alike that must not
    match it again. It is added to the index at once, without a rebuild."""
    principal.require(*EDITORS)
    data = await read_image_upload(file)
    with session_scope() as session:
        _editable(session, asset_id, principal)
        reference, is_new = catalogue.add_reference_image(
            session=session,
            blobs=BlobStore(settings.blob_dir),
            asset_id=asset_id,
            data=data,
            source=file.filename or "upload",
            actor=principal.actor,
            polarity=polarity,
            tenant_id=principal.tenant_id,
        )
        if is_new:
            _reindex(session, settings, principal.actor, added=[reference.id])
        return exemplar_out(reference)


@router.delete("/v1/assets/{asset_id}/exemplars/{exemplar_id}", status_code=204, responses=ERRORS)
def delete_exemplar(
    asset_id: str, exemplar_id: str, principal: PrincipalDep, settings: SettingsDep
) -> Response:
    principal.require(*EDITORS)
    with session_scope() as session:
        catalogue.delete_reference_image(
            session=session,
            asset_id=asset_id,
            reference_id=exemplar_id,
            actor=principal.actor,
            tenant_id=principal.tenant_id,
        )
        session.flush()
        _rebuild(session, settings, principal.actor)
    return Response(status_code=204)


def _reindex(session: Session, settings: Settings, actor: str, added: list[str]) -> None:
    """New exemplars (or changed names and descriptions) reach the index in a new version
    made from the active one."""
    index_versions.add(
        session=session,
        settings=settings,
        blobs=BlobStore(settings.blob_dir),
        reference_ids=added,
        actor=actor,
    )


def _rebuild(session: Session, settings: Settings, actor: str) -> None:
    """FAISS's HNSW cannot forget a vector: a removal re-embeds the catalogue."""
    index_versions.build(
        session=session, settings=settings, blobs=BlobStore(settings.blob_dir), actor=actor
    )


@router.post("/v1/checks", response_model=CheckOut, responses=ERRORS)
async def check(file: UploadFile, principal: PrincipalDep, settings: SettingsDep) -> CheckOut:
    """Clear any image, generated here or not: matches against the shared catalogue and the
    caller's tenant's own assets (PDQ, keypoints, CLIP) and NSFW, with a decision
    approve | review | reject."""
    data = await read_image_upload(file)
    with read_scope() as session:
        result = checks.check_image(
            data,
            session=session,
            settings=settings,
            tenant_id=principal.tenant_id,
            field="file",
        )
    return CheckOut.model_validate(result.to_dict())


@router.get("/v1/index", response_model=IndexOut, responses=ERRORS)
def index_status(
    principal: PrincipalDep, session: ReadSessionDep, settings: SettingsDep
) -> IndexOut:
    """The active index version, counted for the caller's tenant: the shared catalogue's
    exemplars and its own."""
    figures = index_versions.stats(session=session, settings=settings, seen_by=principal.tenant_id)
    return IndexOut(**vars(figures))

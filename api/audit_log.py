"""HTTP routes of the audit log for legal: signed exports and the key that signs them."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from api.auth import Principal
from api.deps import PrincipalDep, SettingsDep
from api.errors import ERRORS
from api.models import Tenant
from audit import export, signing
from audit import service as audit
from core.db import read_scope, session_scope, utcnow
from core.errors import PermissionDeniedError
from core.settings import Settings

router = APIRouter()

EXPORT_ROLES = ("legal", "admin")


class PublicKeyOut(BaseModel):
    key_id: str
    public_key_pem: str


def _export_tenant(principal: Principal, tenant: str | None) -> tuple[str, str | None]:
    """(tenant id, name) to export: always the caller's own tenant. Keys belong to one tenant,
    so an admin key of one tenant must not read another's trail; an operator exports any
    tenant or all with `clearance audit export`."""
    with read_scope() as session:
        own = session.get(Tenant, principal.tenant_id)
        own_name = own.name if own else None
        if tenant is not None and tenant != own_name:
            raise PermissionDeniedError(
                f"tenant: role {principal.role!r} may export only its own tenant ({own_name!r})",
                field="tenant",
            )
        return principal.tenant_id, own_name


@router.get(
    "/v1/audit/export",
    response_class=FileResponse,
    responses={
        **ERRORS,
        200: {
            "content": {"application/zip": {}},
            "description": "A zip of the export and its signed manifest.",
        },
    },
)
def export_audit(
    principal: PrincipalDep,
    settings: SettingsDep,
    start: Annotated[
        str | None,
        Query(alias="from", description="ISO date or date-time (UTC unless zoned); inclusive."),
    ] = None,
    end: Annotated[
        str | None, Query(alias="to", description="Inclusive; a date includes the whole day.")
    ] = None,
    tenant: Annotated[
        str | None, Query(description="Tenant name; role legal: its own only (the default).")
    ] = None,
    format: Literal["jsonl", "csv"] = "jsonl",
) -> FileResponse:
    """Audit events in seq order, as `audit-export-TIME.FORMAT` with
    `audit-export-TIME.FORMAT.manifest.json` (signed: count, first and last hash, filter,
    sha256 of the export) in one zip. `clearance audit verify-export FILE.zip` checks it
    offline. Roles legal and admin, for their own tenant."""
    principal.require(*EXPORT_ROLES)
    # Bad dates are named before the tenant is looked up.
    export.make_filter(start=start, end=end, tenant_id=None, tenant=tenant, fmt=format)
    tenant_id, tenant_name = _export_tenant(principal, tenant)
    return export_archive(
        settings=settings,
        tenant_id=tenant_id,
        tenant_name=tenant_name,
        actor=principal.actor,
        start=start,
        end=end,
        fmt=format,
    )


def export_archive(
    *,
    settings: Settings,
    tenant_id: str,
    tenant_name: str | None,
    actor: str,
    start: str | None,
    end: str | None,
    fmt: str,
) -> FileResponse:
    """One tenant's signed export as a zip download, audited; this API and the dashboard's
    audit page both serve it."""
    wanted = export.make_filter(
        start=start, end=end, tenant_id=tenant_id, tenant=tenant_name, fmt=fmt
    )
    signer = signing.signer(settings)
    folder = Path(tempfile.mkdtemp(prefix="clearance-audit-export-"))
    try:
        name = f"audit-export-{utcnow():%Y%m%dT%H%M%SZ}.{fmt}"
        with (folder / name).open("wb") as file, read_scope() as session:
            manifest = export.write_export(
                session=session, filter=wanted, fmt=fmt, out=file, signer=signer
            )
        archive_path = folder / f"{name}.zip"
        with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.write(folder / name, name)
            archive.writestr(name + export.MANIFEST_SUFFIX, export.manifest_bytes(manifest))
        with session_scope() as session:
            audit.append(
                session=session,
                actor=actor,
                type="audit.exported",
                subject="audit",
                tenant_id=tenant_id,
                payload={k: manifest[k] for k in ("filter", "count", "sha256", "export_format")},
            )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(
        archive_path,
        media_type="application/zip",
        filename=archive_path.name,
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )


@router.get("/v1/audit/public-key", response_model=PublicKeyOut, responses=ERRORS)
def public_key(principal: PrincipalDep, settings: SettingsDep) -> PublicKeyOut:
    """The Ed25519 public key that signs checkpoints and exports: keep it to verify exports
    offline (`clearance audit verify-export FILE --public-key KEY.pem`). Roles legal, admin."""
    principal.require(*EXPORT_ROLES)
    signer = signing.signer(settings)
    return PublicKeyOut(key_id=signer.key_id, public_key_pem=signing.public_pem(signer.public_key))

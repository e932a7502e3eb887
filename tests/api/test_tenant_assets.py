"""Tenant isolation of the protected-asset catalogue, on SQLite and PostgreSQL: a tenant's own
assets and exemplars are seen, changed and matched for that tenant only, even for the very
image of its exemplar; the shared catalogue is seen and matched by every tenant and changed by
none of them."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from alembic import command
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image, ImageEnhance
from sqlalchemy import select

from api.cli import main
from audit.models import AuditEvent
from core.blobs import BlobStore
from core.db import get_engine, read_scope, session_scope
from core.settings import Settings
from migrations.config import alembic_config, upgrade
from pipeline.models import Job
from reference_index import index
from reference_index.service import add_reference_image, export_catalogue, import_catalogue
from tests.api.test_reviews import Desk
from tests.conftest import TenantKeys, make_tenant
from tests.reference_index.test_catalogue import photo_bytes

SHARED = "house-mascot"


@dataclass
class Tenants:
    a: TenantKeys
    b: TenantKeys
    client: TestClient
    settings: Settings

    def call(
        self, tenant: TenantKeys, method: str, path: str, role: str = "legal", **kw: Any
    ) -> Any:
        return self.client.request(method, path, headers=tenant.headers(role), **kw)

    def check(self, tenant: TenantKeys, image: bytes) -> dict[str, Any]:
        files = {"file": ("x.png", image, "image/png")}
        response = self.call(tenant, "POST", "/v1/checks", "requester", files=files)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def index_new(settings: Settings, reference_ids: list[str]) -> None:
    blobs = BlobStore(settings.blob_dir)
    with session_scope() as session:
        index.add(
            session=session,
            settings=settings,
            blobs=blobs,
            reference_ids=reference_ids,
            actor="test",
        )


@pytest.fixture
def tenants(client: TestClient, settings: Settings, tmp_path: Path) -> Tenants:
    """Two tenants, and a shared catalogue (what operators import) of one asset with one
    exemplar, indexed."""
    (tmp_path / "coffee.png").write_bytes(photo_bytes("coffee"))
    catalogue = tmp_path / "catalogue.yaml"
    asset = {"id": SHARED, "name": "House Mascot", "kind": "character", "exemplars": ["coffee.png"]}
    catalogue.write_text(yaml.safe_dump({"assets": [asset]}))
    with session_scope() as session:
        summary = import_catalogue(
            session=session, blobs=BlobStore(settings.blob_dir), path=catalogue, actor="test"
        )
    index_new(settings, list(summary.new_reference_ids))
    return Tenants(make_tenant("tenant-a"), make_tenant("tenant-b"), client, settings)


def own_asset(t: Tenants, exemplar: bytes) -> tuple[str, str]:
    """Tenant A's own asset with one exemplar: (asset id, exemplar id)."""
    body = {"id": "logo", "name": "Zorblax Cola", "kind": "logo", "aliases": ["Zorblax"]}
    created = t.call(t.a, "POST", "/v1/assets", json=body)
    assert created.status_code == 201, created.text
    assert (created.json()["id"], created.json()["scope"]) == ("tenant-a:logo", "tenant")
    files = {"file": ("mine.png", exemplar, "image/png")}
    added = t.call(t.a, "POST", "/v1/assets/tenant-a:logo/exemplars", files=files)
    assert added.status_code == 201, added.text
    return "tenant-a:logo", str(added.json()["id"])


def assert_nothing_of_a(text: str, asset_id: str, exemplar_id: str) -> None:
    for secret in (asset_id, "Zorblax", exemplar_id, "tenant-a"):
        assert secret not in text, secret


def test_a_tenants_assets_are_listed_read_and_changed_by_it_alone(tenants: Tenants) -> None:
    t = tenants
    asset_id, exemplar_id = own_asset(t, photo_bytes("astronaut"))
    mine = t.call(t.a, "GET", "/v1/assets").json()
    assert [(a["id"], a["scope"], a["exemplars"]) for a in mine["items"]] == [
        (SHARED, "shared", 1),
        (asset_id, "tenant", 1),
    ]
    for role in ("requester", "reviewer", "legal", "admin"):
        theirs = t.call(t.b, "GET", "/v1/assets", role)
        assert [a["id"] for a in theirs.json()["items"]] == [SHARED]
        assert theirs.json()["total"] == 1
        assert_nothing_of_a(theirs.text, asset_id, exemplar_id)

    png: dict[str, Any] = {"files": {"file": ("x.png", photo_bytes("astronaut"), "image/png")}}
    edit: dict[str, Any] = {"json": {"name": "Mine now", "kind": "logo"}}
    for method, path, kwargs in [
        ("GET", f"/v1/assets/{asset_id}", {}),
        ("GET", f"/v1/assets/{asset_id}/exemplars", {}),
        ("PUT", f"/v1/assets/{asset_id}", edit),
        ("DELETE", f"/v1/assets/{asset_id}", {}),
        ("POST", f"/v1/assets/{asset_id}/exemplars", png),
        ("DELETE", f"/v1/assets/{asset_id}/exemplars/{exemplar_id}", {}),
    ]:
        for role in ("legal", "admin"):
            response = t.call(t.b, method, path, role, **kwargs)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"] == "asset_not_found"
            assert "Zorblax" not in response.text  # the ids echoed are the ones asked for

    # The shared catalogue: every tenant reads it, none changes it.
    shared_exemplar = t.call(t.b, "GET", f"/v1/assets/{SHARED}/exemplars").json()[0]["id"]
    for tenant in (t.a, t.b):
        assert t.call(tenant, "GET", f"/v1/assets/{SHARED}").json()["scope"] == "shared"
        for method, path, kwargs in [
            ("PUT", f"/v1/assets/{SHARED}", edit),
            ("DELETE", f"/v1/assets/{SHARED}", {}),
            ("POST", f"/v1/assets/{SHARED}/exemplars", png),
            ("DELETE", f"/v1/assets/{SHARED}/exemplars/{shared_exemplar}", {}),
        ]:
            response = t.call(tenant, method, path, "admin", **kwargs)
            assert response.status_code == 403, (method, path, response.text)
            assert "shared catalogue" in response.json()["detail"]
    shared = t.call(t.a, "GET", f"/v1/assets/{SHARED}").json()
    assert (shared["name"], shared["exemplars"]) == ("House Mascot", 1)

    # A's asset is as A left it, and A still changes it.
    assert t.call(t.a, "GET", f"/v1/assets/{asset_id}").json()["name"] == "Zorblax Cola"
    assert t.call(t.a, "PUT", f"/v1/assets/{asset_id}", **edit).status_code == 200
    # The same id for B is B's own asset: no id is ever taken by another tenant.
    again = {"id": "logo", "name": "B's logo", "kind": "logo"}
    assert t.call(t.a, "POST", "/v1/assets", json=again).status_code == 409
    theirs_too = t.call(t.b, "POST", "/v1/assets", json=again)
    assert theirs_too.json()["id"] == "tenant-b:logo"

    with read_scope() as session:
        created = session.scalar(
            select(AuditEvent).where(
                AuditEvent.type == "asset.created", AuditEvent.subject == f"asset:{asset_id}"
            )
        )
        assert created is not None
        assert created.tenant_id == t.a.id
        # The operators' export is the shared catalogue alone.
        exported = export_catalogue(
            session=session, blobs=BlobStore(t.settings.blob_dir), folder=None
        )
    assert [a["id"] for a in yaml.safe_load(exported)["assets"]] == [SHARED]


def brighter(png: bytes) -> bytes:
    out = io.BytesIO()
    ImageEnhance.Brightness(Image.open(io.BytesIO(png)).convert("RGB")).enhance(1.15).save(
        out, format="PNG"
    )
    return out.getvalue()


def matched(result: dict[str, Any]) -> set[str]:
    return {m["asset_id"] for m in result["matches"]}


def test_checks_match_a_tenants_assets_for_it_alone(tenants: Tenants) -> None:
    t = tenants
    astronaut = photo_bytes("astronaut")
    asset_id, exemplar_id = own_asset(t, astronaut)

    # The exact exemplar: a copy for A, nothing of A's for B.
    for_a = t.check(t.a, astronaut)
    assert asset_id in matched(for_a)
    assert for_a["decision"] == "reject"
    for_b = t.check(t.b, astronaut)
    assert asset_id not in matched(for_b)
    assert_nothing_of_a(str(for_b), asset_id, exemplar_id)

    # `clearance check image` is an operator's: the shared catalogue, or a tenant's view.
    image_file = t.settings.data_dir / "astronaut.png"
    image_file.write_bytes(astronaut)
    for extra, found in (
        ([], False),
        (["--tenant", "tenant-b"], False),
        (["--tenant", "tenant-a"], True),
    ):
        result = CliRunner().invoke(main, ["check", "image", str(image_file), "--json", *extra])
        assert (asset_id in result.stdout) is found, (extra, result.output)

    # The shared catalogue is checked for both.
    coffee = photo_bytes("coffee")
    assert SHARED in matched(t.check(t.a, coffee))
    assert SHARED in matched(t.check(t.b, coffee))

    # A's confirmed review makes a look-alike a negative exemplar of the shared asset: A's
    # own. It silences that match for A and for no one else.
    look_alike = brighter(coffee)
    assert SHARED in matched(t.check(t.a, look_alike))
    blobs = BlobStore(t.settings.blob_dir)
    with session_scope() as session:
        negative, _ = add_reference_image(
            session=session,
            blobs=blobs,
            asset_id=SHARED,
            data=look_alike,
            source="review:test",
            actor="test",
            polarity="negative",
            tenant_id=t.a.id,
        )
        negative_id = negative.id
    index_new(t.settings, [negative_id])
    for_a = t.check(t.a, look_alike)
    assert SHARED not in matched(for_a)
    assert SHARED in {s["asset_id"] for s in for_a["suppressed"]}
    for_b = t.check(t.b, look_alike)
    assert SHARED in matched(for_b)
    assert for_b["suppressed"] == []
    # It is A's to see (and delete), not B's.
    listed_b = t.call(t.b, "GET", f"/v1/assets/{SHARED}/exemplars").json()
    assert negative_id not in [e["id"] for e in listed_b]
    assert t.call(t.b, "GET", f"/v1/assets/{SHARED}").json()["negative_exemplars"] == 0
    assert t.call(t.a, "GET", f"/v1/assets/{SHARED}").json()["negative_exemplars"] == 1
    path = f"/v1/assets/{SHARED}/exemplars/{negative_id}"
    assert t.call(t.b, "DELETE", path, "admin").status_code == 404
    assert t.call(t.a, "DELETE", path, "admin").status_code == 204
    assert SHARED in matched(t.check(t.a, look_alike))


def test_the_index_status_counts_what_the_tenant_sees(tenants: Tenants) -> None:
    """How many exemplars another tenant has is none of a tenant's business: /v1/index
    counts the shared catalogue and the caller's own; operators' `clearance index stats`
    counts the whole index."""
    t = tenants

    def counted(tenant: TenantKeys) -> tuple[int, int, int]:
        body = t.call(tenant, "GET", "/v1/index", "requester").json()
        return body["exemplars"], body["vectors"], body["pending_exemplars"]

    own_asset(t, photo_bytes("astronaut"))  # indexed as it is added
    assert (counted(t.a), counted(t.b)) == ((2, 2, 0), (1, 1, 0))
    with session_scope() as session:
        add_reference_image(
            session=session,
            blobs=BlobStore(t.settings.blob_dir),
            asset_id="tenant-a:logo",
            data=photo_bytes("chelsea"),
            source="test",
            actor="test",
            tenant_id=t.a.id,
        )
    assert (counted(t.a), counted(t.b)) == ((2, 2, 1), (1, 1, 0))
    result = CliRunner().invoke(main, ["index", "stats", "--json"])
    whole = json.loads(result.stdout)
    assert (whole["exemplars"], whole["vectors"], whole["pending_exemplars"]) == (2, 2, 1)


def test_jobs_of_another_tenant_never_see_a_tenants_asset(tenants: Tenants) -> None:
    """A's asset has the very image a job makes as its exemplar: the same job of B is
    released with nothing of A's in its record; A's is stopped by its own asset."""
    t = tenants
    desk_a, desk_b = Desk(t.client, t.a), Desk(t.client, t.b)
    first = desk_a.submit(seed=11)
    assert desk_a.job(first)["state"] == "released"
    with read_scope() as session:
        png = BlobStore(t.settings.blob_dir).get(session.get_one(Job, first).images[0].blob_sha256)
    asset_id, exemplar_id = own_asset(t, png)

    theirs = desk_b.submit(seed=11)
    job_b = t.call(t.b, "GET", f"/v1/jobs/{theirs}", "requester")
    assert job_b.json()["state"] == "released", job_b.json()
    assert job_b.json()["images"][0]["sha256"] == desk_a.job(first)["images"][0]["sha256"]
    assert_nothing_of_a(job_b.text, asset_id, exemplar_id)
    with read_scope() as session:
        stored = session.get_one(Job, theirs)
        assert_nothing_of_a(str([i.check for i in stored.images]), asset_id, exemplar_id)
        assert_nothing_of_a(str([d.reasons for d in stored.decisions]), asset_id, exemplar_id)

    mine = desk_a.submit(seed=11)
    job_a = t.call(t.a, "GET", f"/v1/jobs/{mine}", "requester")
    assert job_a.json()["state"] != "released", job_a.json()
    assert asset_id in job_a.text

    # Prompt policy too: A's asset is named in A's prompts only.
    prompt = {"prompt": "a can of Zorblax Cola on a table", "variant": "schnell"}
    for_a = t.call(t.a, "POST", "/v1/policy/check", "requester", json=prompt).json()
    assert for_a["decision"] == "block"
    assert asset_id in {r["asset_id"] for r in for_a["reasons"]}
    for_b = t.call(t.b, "POST", "/v1/policy/check", "requester", json=prompt)
    assert for_b.json()["decision"] == "allow"
    assert_nothing_of_a(for_b.text, asset_id, exemplar_id)


def test_downgrading_deletes_tenants_own_rows_and_never_shares_them(tenants: Tenants) -> None:
    """The schema before 0010 cannot keep a row private: a downgrade drops tenants' own
    assets and exemplars, and keeps the shared catalogue."""
    own_asset(tenants, photo_bytes("astronaut"))
    command.downgrade(alembic_config(), "0009")
    with get_engine().connect() as connection:
        assets = connection.execute(sa.text("SELECT id FROM protected_assets")).scalars().all()
        owners = connection.execute(sa.text("SELECT asset_id FROM reference_images")).scalars()
        assert (assets, owners.all()) == ([SHARED], [SHARED])
    upgrade()
    listed = tenants.call(tenants.b, "GET", "/v1/assets").json()["items"]
    assert [(a["id"], a["exemplars"]) for a in listed] == [(SHARED, 1)]

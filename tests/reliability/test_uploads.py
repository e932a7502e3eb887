"""Hostile files at the two endpoints that take an image from outside, POST /v1/uploads
(an image to edit, stored) and POST /v1/checks (an image to clear, not stored), on SQLite
and PostgreSQL: decompression bombs, truncated PNG and JPEG, SVG, an empty file, polyglots
and wrong content types. Each is refused with 422 and an error body naming the form field,
and nothing is stored; a polyglot that is a valid image is taken as that image."""

from __future__ import annotations

import functools
import io
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from audit.models import AuditEvent
from core.blobs import BlobStore
from core.settings import Settings
from pipeline.models import Upload
from tests.api.test_generation_api import (
    astronaut_png,
    blobs_stored,
    count,
    encode,
    photo,
    png_header_only,
)
from tests.conftest import TenantKeys

ENDPOINTS = ("/v1/uploads", "/v1/checks")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


def post(
    client: TestClient, tenant: TenantKeys, endpoint: str, data: bytes, content_type: str
) -> Any:
    return client.post(
        endpoint, files={"file": ("image", data, content_type)}, headers=tenant.headers()
    )


@functools.cache
def zeros_bomb() -> bytes:
    """A real decompression bomb: 7000 x 7000 black pixels (49 megapixels, 147 MB decoded)
    in a PNG of a few hundred kilobytes."""
    buffer = io.BytesIO()
    Image.new("RGB", (7000, 7000)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def small_png() -> bytes:
    return encode(photo("astronaut")[::8, ::8])


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo("astronaut")[::8, ::8]).save(buffer, format="GIF")
    return buffer.getvalue()


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.html", "<script>alert(1)</script>")
    return buffer.getvalue()


HTML = b"<html><body><script>alert(document.cookie)</script></body></html>"
SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
    b'<script>alert(1)</script><rect width="64" height="64"/></svg>'
)
JPEG = encode(photo("camera"), "JPEG")
PNG = astronaut_png()

# (data, content type, what the detail says)
REFUSED = [
    pytest.param(
        png_header_only(50_000, 50_000), "image/png", "2500.0 megapixels", id="bomb-header"
    ),
    pytest.param(None, "image/png", "49.0 megapixels", id="bomb-zeros"),
    pytest.param(PNG[: len(PNG) // 2], "image/png", "not a readable image", id="truncated-png"),
    pytest.param(JPEG[: len(JPEG) // 2], "image/jpeg", "truncated or corrupt", id="truncated-jpeg"),
    pytest.param(SVG, "image/png", "SVG is not accepted", id="svg-as-png"),
    pytest.param(SVG, "image/svg+xml", "'image/svg+xml' is not accepted", id="svg-type"),
    pytest.param(b"", "image/png", "the file is empty", id="empty"),
    pytest.param(PNG, "text/plain", "'text/plain' is not accepted", id="png-as-text"),
    pytest.param(b"just some text\n" * 20, "image/png", "not a readable image", id="text-as-png"),
    pytest.param(HTML + PNG, "image/png", "not a readable image", id="html-then-png"),
    pytest.param(zip_archive(), "image/png", "not a readable image", id="zip-as-png"),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("data", "content_type", "says"), REFUSED)
def test_hostile_files_are_refused_and_nothing_is_stored(
    client: TestClient,
    tenant: TenantKeys,
    settings: Settings,
    endpoint: str,
    data: bytes | None,
    content_type: str,
    says: str,
) -> None:
    events = count(AuditEvent)
    response = post(client, tenant, endpoint, zeros_bomb() if data is None else data, content_type)
    assert response.status_code == 422, response.text
    body = response.json()
    assert {"error", "detail", "field"} <= body.keys()
    assert body["field"] == "file"
    assert says in body["detail"]
    assert count(Upload) == 0
    assert blobs_stored(settings) == []
    assert count(AuditEvent) == events


POLYGLOTS = [
    pytest.param(small_png() + zip_archive(), "image/png", id="png+zip"),
    pytest.param(small_png() + HTML, "image/png", id="png+html"),
]


@pytest.mark.parametrize(("data", "content_type"), POLYGLOTS)
def test_an_upload_that_is_a_valid_image_with_a_tail_is_taken_as_that_image(
    client: TestClient, tenant: TenantKeys, settings: Settings, data: bytes, content_type: str
) -> None:
    """A PNG with an archive or a page after its IEND chunk is a valid PNG: it is accepted,
    decoded as the image alone. The bytes are kept as sent (an upload is addressed by the
    sha256 of what was sent), but they are only ever decoded as an image, never served."""
    response = post(client, tenant, "/v1/uploads", data, content_type)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (64, 64)
    assert count(Upload) == 1
    assert BlobStore(settings.blob_dir).get(body["sha256"]) == data


@pytest.mark.parametrize(
    ("data", "content_type"),
    [*POLYGLOTS, pytest.param(gif() + zip_archive(), "image/gif", id="gif+zip")],
)
def test_a_check_of_a_valid_image_with_a_tail_checks_that_image(
    client: TestClient, tenant: TenantKeys, settings: Settings, data: bytes, content_type: str
) -> None:
    """The same polyglots, and a GIF with a ZIP after it, are checked as the image they
    are; a check stores nothing."""
    events = count(AuditEvent)
    response = post(client, tenant, "/v1/checks", data, content_type)
    assert response.status_code == 200, response.text
    assert response.json()["decision"] in ("approve", "review", "reject")
    assert blobs_stored(settings) == []
    assert count(AuditEvent) == events


def test_a_gif_polyglot_is_not_an_upload(client: TestClient, tenant: TenantKeys) -> None:
    """Uploads take PNG, JPEG and WebP only: a GIF (with a ZIP after it) is refused by type."""
    response = post(client, tenant, "/v1/uploads", gif() + zip_archive(), "image/gif")
    assert response.status_code == 422
    assert response.json()["field"] == "file"
    assert count(Upload) == 0


def test_the_bomb_is_what_it_claims() -> None:
    """The zeros bomb is small on the wire and large decoded: the test above means something."""
    assert len(zeros_bomb()) < 1_000_000
    assert Image.open(io.BytesIO(zeros_bomb())).size == (7000, 7000)

"""Catalogue import and PDQ matching, on SQLite and PostgreSQL, with real photos."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import skimage.data
import yaml
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from audit.models import AuditEvent
from core.blobs import BlobStore
from core.db import session_scope
from core.settings import Settings
from reference_index import pdq
from reference_index.errors import CatalogueError
from reference_index.models import ASSET_KINDS, ProtectedAsset, ReferenceImage
from reference_index.service import import_catalogue, match_pdq

EVAL_CATALOGUE = Path("/work/shared/eval/catalogue.yaml")
MATCH_DISTANCE = 31


def photo(name: str) -> npt.NDArray[np.uint8]:
    array: npt.NDArray[np.uint8] = getattr(skimage.data, name)()
    return array


def encode(array: npt.NDArray[np.uint8], fmt: str = "PNG", **options: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def count(session: Session, model: type[Any]) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def counts() -> tuple[int, int, int]:
    """(assets, reference images, audit events) as committed."""
    with session_scope() as session:
        return (
            count(session, ProtectedAsset),
            count(session, ReferenceImage),
            count(session, AuditEvent),
        )


def write_catalogue(folder: Path, assets: Any, name: str = "catalogue.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump({"assets": assets}, allow_unicode=True), encoding="utf-8")
    return path


def write_photo(folder: Path, name: str, fmt: str = "PNG") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.{fmt.lower()}"
    path.write_bytes(encode(photo(name), fmt))
    return path


def run_import(settings: Settings, path: Path) -> Any:
    with session_scope() as session:
        return import_catalogue(
            session=session, blobs=BlobStore(settings.blob_dir), path=path, actor="test"
        )


def asset(asset_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": asset_id, "name": asset_id.title(), "kind": "character", **fields}


# --- import ----------------------------------------------------------------------------------


def test_import_creates_every_asset_of_the_eval_catalogue(settings: Settings) -> None:
    """Every asset of the evaluation catalogue is created with its fields, and the import is
    recorded in the audit log."""
    entries = yaml.safe_load(EVAL_CATALOGUE.read_text(encoding="utf-8"))["assets"]
    assert len(entries) > 20
    summary = run_import(settings, EVAL_CATALOGUE)
    assert (summary.assets_created, summary.assets_updated, summary.references_added) == (
        len(entries),
        0,
        0,
    )
    with session_scope() as session:
        assert count(session, ProtectedAsset) == len(entries)
        for entry in entries:
            stored = session.get(ProtectedAsset, entry["id"])
            assert stored is not None
            assert stored.name == entry["name"]
            assert stored.kind == entry["kind"]
            assert stored.owner == entry["owner"]
            assert stored.aliases == entry["aliases"]
            assert stored.description == entry["description"]
            assert stored.risk == "high"
        events = session.scalars(select(AuditEvent)).all()
    assert [e.type for e in events] == ["catalogue.imported"]
    assert events[0].subject == "file:catalogue.yaml"


def test_second_import_updates_instead_of_duplicating(settings: Settings, tmp_path: Path) -> None:
    """Importing again updates the existing rows in place: no duplicates, new values win."""
    entries = yaml.safe_load(EVAL_CATALOGUE.read_text(encoding="utf-8"))["assets"]
    run_import(settings, EVAL_CATALOGUE)
    summary = run_import(settings, EVAL_CATALOGUE)
    assert (summary.assets_created, summary.assets_updated) == (0, len(entries))
    assert counts()[0] == len(entries)

    changed = [dict(entries[0], name="Renamed", aliases=["Other"], risk="low")]
    summary = run_import(settings, write_catalogue(tmp_path / "edit", changed))
    assert (summary.assets_created, summary.assets_updated) == (0, 1)
    with session_scope() as session:
        stored = session.get(ProtectedAsset, entries[0]["id"])
        assert stored is not None
        assert (stored.name, stored.aliases, stored.risk) == ("Renamed", ["Other"], "low")
        assert count(session, ProtectedAsset) == len(entries)


def test_exemplars_are_added_with_pdq_hashes(settings: Settings, tmp_path: Path) -> None:
    """Exemplar images, relative to the YAML file, become reference images with the PDQ hash
    of their bytes, stored in the blob store and counted in the summary."""
    folder = tmp_path / "cat"
    astronaut = write_photo(folder / "images", "astronaut")
    coffee = write_photo(folder / "images", "coffee")
    chelsea = write_photo(folder / "images", "chelsea", "JPEG")
    path = write_catalogue(
        folder,
        [
            asset("astro", exemplars=["images/astronaut.png"]),
            asset("drinks", kind="brand", exemplars=["images/coffee.png", "images/chelsea.jpeg"]),
            asset("no-images"),
        ],
    )
    summary = run_import(settings, path)
    assert (summary.assets_created, summary.references_added) == (3, 3)
    blobs = BlobStore(settings.blob_dir)
    with session_scope() as session:
        references = session.scalars(select(ReferenceImage)).all()
        by_source = {r.source: r for r in references}
        assert set(by_source) == {
            "images/astronaut.png",
            "images/coffee.png",
            "images/chelsea.jpeg",
        }
        for file, asset_id in ((astronaut, "astro"), (coffee, "drinks"), (chelsea, "drinks")):
            reference = by_source[f"images/{file.name}"]
            data = file.read_bytes()
            expected = pdq.compute(data)
            assert reference.asset_id == asset_id
            assert reference.pdq_hash == expected.hex
            assert reference.pdq_quality == expected.quality
            assert blobs.get(reference.blob_sha256) == data
        added = session.scalars(
            select(AuditEvent).where(AuditEvent.type == "reference.added")
        ).all()
        assert len(added) == 3


def test_reimporting_the_same_exemplars_adds_nothing(settings: Settings, tmp_path: Path) -> None:
    """The same exemplar imported again (or listed twice) is not stored a second time."""
    folder = tmp_path / "cat"
    write_photo(folder, "astronaut")
    path = write_catalogue(folder, [asset("astro", exemplars=["astronaut.png", "./astronaut.png"])])
    first = run_import(settings, path)
    assert first.references_added == 1
    after_first = counts()
    second = run_import(settings, path)
    assert (second.assets_created, second.assets_updated, second.references_added) == (0, 1, 0)
    assets, references, events = counts()
    assert (assets, references) == after_first[:2] == (1, 1)
    # Only the second catalogue.imported event; no second reference.added.
    assert events == after_first[2] + 1


def test_same_image_may_illustrate_two_assets(settings: Settings, tmp_path: Path) -> None:
    """One image listed under two assets is a reference of each."""
    folder = tmp_path / "cat"
    write_photo(folder, "rocket")
    path = write_catalogue(
        folder,
        [asset("rocket-a", exemplars=["rocket.png"]), asset("rocket-b", exemplars=["rocket.png"])],
    )
    assert run_import(settings, path).references_added == 2


def test_string_aliases_are_not_split_into_letters(settings: Settings, tmp_path: Path) -> None:
    """`aliases: Mickey` (a string, not a list) is either refused on field aliases or kept
    as one alias; it must never become the one-letter aliases M, i, c, k, e, y, which an
    alias matcher would find in almost any prompt."""
    path = write_catalogue(tmp_path, [asset("mickey", aliases="Mickey")])
    refused: CatalogueError | None = None
    try:
        run_import(settings, path)
    except CatalogueError as e:
        refused = e
    if refused is not None:
        assert refused.field == "aliases"
        return
    with session_scope() as session:
        stored = session.get(ProtectedAsset, "mickey")
        assert stored is not None
        assert stored.aliases == ["Mickey"]


# --- errors ----------------------------------------------------------------------------------

VALID = asset("valid-first", exemplars=["astronaut.png"])
BAD_CATALOGUES: list[Any] = [
    pytest.param({"not_assets": []}, "assets", "'assets:'", id="no-assets-key"),
    pytest.param({"assets": {"id": "x"}}, "assets", "'assets:'", id="assets-not-a-list"),
    pytest.param(["just", "a", "list"], "assets", "'assets:'", id="top-level-list"),
    pytest.param({"assets": [VALID, "a string"]}, "assets", "mapping", id="asset-not-a-mapping"),
    pytest.param(
        {"assets": [VALID, {"name": "No Id", "kind": "logo"}]}, "id", "'id'", id="missing-id"
    ),
    pytest.param(
        {"assets": [VALID, {"id": "no-name", "kind": "logo"}]}, "name", "'name'", id="missing-name"
    ),
    pytest.param(
        {"assets": [VALID, {"id": "no-kind", "name": "No Kind"}]}, "kind", "'kind'", id="no-kind"
    ),
    pytest.param(
        {"assets": [VALID, asset("bad-kind", kind="mascot")]}, "kind", "'mascot'", id="bad-kind"
    ),
    pytest.param(
        {"assets": [VALID, asset("bad-risk", risk="extreme")]}, "risk", "'extreme'", id="bad-risk"
    ),
    pytest.param(
        {"assets": [VALID, asset("lost", exemplars=["missing/nowhere.png"])]},
        "exemplars",
        "missing/nowhere.png",
        id="missing-exemplar",
    ),
]


@pytest.mark.parametrize(("document", "field", "quoted"), BAD_CATALOGUES)
def test_bad_catalogue_raises_and_writes_nothing(
    settings: Settings, tmp_path: Path, document: Any, field: str, quoted: str
) -> None:
    """A malformed catalogue raises CatalogueError naming the field (and the bad value or
    what was expected); since it runs in the caller's transaction, the valid assets,
    exemplars and audit events before the error are rolled back with it."""
    write_photo(tmp_path, "astronaut")
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    with pytest.raises(CatalogueError) as caught:
        run_import(settings, path)
    assert caught.value.field == field
    assert quoted in caught.value.detail
    assert str(path) in caught.value.detail
    assert counts() == (0, 0, 0)


def test_bad_kind_lists_every_valid_kind(settings: Settings, tmp_path: Path) -> None:
    """The bad-kind message lists all asset kinds."""
    path = write_catalogue(tmp_path, [asset("x", kind="mascot")])
    with pytest.raises(CatalogueError) as caught:
        run_import(settings, path)
    for kind in ASSET_KINDS:
        assert repr(kind) in caught.value.detail


@pytest.mark.parametrize(
    "content",
    [pytest.param("", id="empty-file"), pytest.param("assets: [unclosed\n", id="bad-yaml")],
)
def test_unreadable_catalogue_file_is_refused(
    settings: Settings, tmp_path: Path, content: str
) -> None:
    """An empty file or broken YAML raises CatalogueError, not a YAML or type error."""
    path = tmp_path / "catalogue.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CatalogueError) as caught:
        run_import(settings, path)
    assert caught.value.field in {"file", "assets"}
    assert counts() == (0, 0, 0)


def test_missing_catalogue_file_is_refused(settings: Settings, tmp_path: Path) -> None:
    """A catalogue path that does not exist raises CatalogueError on field file."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(CatalogueError) as caught:
        run_import(settings, missing)
    assert caught.value.field == "file"
    assert str(missing) in caught.value.detail


def test_exemplar_that_is_not_an_image_names_the_file(settings: Settings, tmp_path: Path) -> None:
    """An exemplar file that is not an image is refused as a catalogue error naming the
    exemplar, so the author can tell which of many files to fix; nothing is written."""
    write_photo(tmp_path, "astronaut")
    (tmp_path / "notes.png").write_text("not really a picture", encoding="utf-8")
    path = write_catalogue(
        tmp_path,
        [asset("valid-first", exemplars=["astronaut.png"]), asset("b", exemplars=["notes.png"])],
    )
    with pytest.raises(CatalogueError) as caught:
        run_import(settings, path)
    assert caught.value.field == "exemplars"
    assert "notes.png" in caught.value.detail
    assert counts() == (0, 0, 0)


# --- match_pdq -------------------------------------------------------------------------------

INDEXED = ("astronaut", "coffee", "camera", "coins", "moon", "text")
NOT_INDEXED = ("rocket", "chelsea")


@pytest.fixture
def indexed(settings: Settings, tmp_path: Path) -> dict[str, str]:
    """One asset per photo, each with the photo as its exemplar: photo -> asset id."""
    folder = tmp_path / "indexed"
    for name in INDEXED:
        write_photo(folder, name)
    path = write_catalogue(
        folder, [asset(f"asset-{name}", exemplars=[f"{name}.png"]) for name in INDEXED]
    )
    assert run_import(settings, path).references_added == len(INDEXED)
    return {name: f"asset-{name}" for name in INDEXED}


def test_jpeg_copy_of_an_exemplar_matches_its_asset(indexed: dict[str, str]) -> None:
    """A re-encoded JPEG of an exemplar matches that asset (and only it) within the match
    distance, with score 1 - distance/256."""
    query = pdq.compute(encode(photo("astronaut"), "JPEG", quality=60)).hex
    with session_scope() as session:
        matches = match_pdq(session=session, image_hash=query, max_distance=MATCH_DISTANCE)
        reference = session.scalars(
            select(ReferenceImage).where(ReferenceImage.asset_id == indexed["astronaut"])
        ).one()
    assert [m.asset_id for m in matches] == [indexed["astronaut"]]
    (match,) = matches
    assert match.asset_name == "Asset-Astronaut"
    assert match.reference_image_id == reference.id
    assert 0 <= match.distance <= MATCH_DISTANCE
    assert match.distance == pdq.distances(query, [reference.pdq_hash])[0]
    assert match.score == pytest.approx(1 - match.distance / 256, abs=1e-4)
    assert match.matcher == "pdq"
    assert match.to_dict()["asset_id"] == indexed["astronaut"]


def test_identical_image_matches_at_distance_zero(indexed: dict[str, str]) -> None:
    """The exemplar's own hash matches at distance 0 with score 1.0, even at max_distance 0."""
    query = pdq.compute(encode(photo("coffee"))).hex
    with session_scope() as session:
        matches = match_pdq(session=session, image_hash=query, max_distance=0)
    assert [(m.asset_id, m.distance, m.score) for m in matches] == [(indexed["coffee"], 0, 1.0)]


def test_unrelated_photo_does_not_match(indexed: dict[str, str]) -> None:
    """Photos that are not in the index match nothing."""
    assert not set(NOT_INDEXED) & set(indexed)
    for name in NOT_INDEXED:
        query = pdq.compute(encode(photo(name))).hex
        with session_scope() as session:
            assert match_pdq(session=session, image_hash=query, max_distance=MATCH_DISTANCE) == []


def test_matches_are_sorted_best_first(indexed: dict[str, str]) -> None:
    """With a threshold that admits every reference, all come back in increasing distance,
    the near-duplicate first."""
    query = pdq.compute(encode(photo("camera"), "JPEG", quality=60)).hex
    with session_scope() as session:
        matches = match_pdq(session=session, image_hash=query, max_distance=256)
    assert len(matches) == len(INDEXED)
    distances = [m.distance for m in matches]
    assert distances == sorted(distances)
    assert len(set(distances)) > 3
    assert matches[0].asset_id == indexed["camera"]
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)


def test_threshold_is_inclusive(indexed: dict[str, str]) -> None:
    """A reference exactly max_distance away matches; one bit tighter, it does not."""
    query = pdq.compute(encode(photo("rocket"))).hex
    with session_scope() as session:
        everything = match_pdq(session=session, image_hash=query, max_distance=256)
        nearest = everything[0]
        at = match_pdq(session=session, image_hash=query, max_distance=nearest.distance)
        below = match_pdq(session=session, image_hash=query, max_distance=nearest.distance - 1)
    assert nearest.reference_image_id in {m.reference_image_id for m in at}
    assert nearest.reference_image_id not in {m.reference_image_id for m in below}


def test_empty_index_matches_nothing(settings: Settings) -> None:
    """With no reference images there are no matches."""
    query = pdq.compute(encode(photo("astronaut"))).hex
    with session_scope() as session:
        assert match_pdq(session=session, image_hash=query, max_distance=256) == []

"""The protected-asset catalogue on SQLite and PostgreSQL, with real photos: assets, their
exemplars and negative exemplars, YAML import and export."""

from __future__ import annotations

import functools
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import skimage.data
import yaml
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from audit.models import AuditEvent
from core.blobs import BlobStore
from core.db import session_scope
from core.errors import ConflictError
from core.images import ImageError
from core.settings import Settings
from reference_index import pdq
from reference_index.errors import AssetNotFoundError, CatalogueError
from reference_index.models import (
    ASSET_KINDS,
    POLARITIES,
    ProtectedAsset,
    ReferenceImage,
)
from reference_index.schemas import ImportSummary
from reference_index.service import (
    THRESHOLD_RANGES,
    AssetFields,
    add_reference_image,
    delete_asset,
    delete_reference_image,
    export_catalogue,
    get_asset,
    import_catalogue,
    list_assets,
    save_asset,
)

EVAL_CATALOGUE = Path("/work/shared/eval/catalogue.yaml")
Pixels = npt.NDArray[np.uint8]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The catalogue never generates images, so the `settings` fixture gets an empty model
    folder instead of a built tiny FLUX pipeline."""
    return tmp_path_factory.mktemp("no-models")


def photo(name: str) -> Pixels:
    array: Pixels = getattr(skimage.data, name)()
    return array


def encode(array: Pixels, fmt: str = "PNG", **options: Any) -> bytes:
    return encode_image(Image.fromarray(array), fmt, **options)


@functools.cache
def photo_bytes(name: str, fmt: str = "PNG") -> bytes:
    """A photo encoded once per test run (encoding dominates otherwise)."""
    return encode(photo(name), fmt)


def encode_image(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
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


def audit_types() -> list[str]:
    with session_scope() as session:
        return list(session.scalars(select(AuditEvent.type).order_by(AuditEvent.seq)))


def write_catalogue(folder: Path, assets: Any, name: str = "catalogue.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump({"assets": assets}, allow_unicode=True), encoding="utf-8")
    return path


def write_photo(folder: Path, name: str, fmt: str = "PNG") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.{fmt.lower()}"
    path.write_bytes(photo_bytes(name, fmt))
    return path


def blobs_of(settings: Settings) -> BlobStore:
    return BlobStore(settings.blob_dir)


def run_import(settings: Settings, path: Path, blobs: BlobStore | None = None) -> ImportSummary:
    with session_scope() as session:
        return import_catalogue(
            session=session, blobs=blobs or blobs_of(settings), path=path, actor="test"
        )


def asset(asset_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": asset_id, "name": asset_id.title(), "kind": "character", **fields}


def create(asset_id: str, kind: str = "character", **fields: Any) -> None:
    with session_scope() as session:
        save_asset(
            session=session,
            asset_id=asset_id,
            fields=AssetFields(name=asset_id.title(), kind=kind, **fields),
            actor="test",
        )


def add(
    settings: Settings, asset_id: str, data: bytes, polarity: str = "positive"
) -> tuple[str, bool, str]:
    """Add an exemplar; (reference id, whether it was new, stored polarity)."""
    with session_scope() as session:
        reference, is_new = add_reference_image(
            session=session,
            blobs=blobs_of(settings),
            asset_id=asset_id,
            data=data,
            source="test",
            actor="test",
            polarity=polarity,
        )
        return reference.id, is_new, reference.polarity


def references() -> dict[str, ReferenceImage]:
    with session_scope() as session:
        return {r.id: r for r in session.scalars(select(ReferenceImage))}


# --- import ----------------------------------------------------------------------------------


def test_import_creates_every_asset_of_the_eval_catalogue(settings: Settings) -> None:
    """Every asset of the evaluation catalogue is created with its fields; each creation and
    the import itself are recorded in the audit log."""
    entries = yaml.safe_load(EVAL_CATALOGUE.read_text(encoding="utf-8"))["assets"]
    assert len(entries) > 20
    summary = run_import(settings, EVAL_CATALOGUE)
    assert summary == ImportSummary(len(entries), 0, 0, ())
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
            assert stored.thresholds == {}
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
    assert [e.type for e in events] == ["asset.created"] * len(entries) + ["catalogue.imported"]
    assert {e.subject for e in events[:-1]} == {f"asset:{entry['id']}" for entry in entries}
    assert events[-1].subject == "file:catalogue.yaml"


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
    """Exemplar images, relative to the YAML file, become positive reference images with the
    PDQ hash and size of the image, their bytes in the blob store; the summary counts them
    and lists their ids for the index. One image may illustrate two assets."""
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
            asset("also-coffee", kind="logo", exemplars=["images/coffee.png"]),
        ],
    )
    summary = run_import(settings, path)
    assert (summary.assets_created, summary.references_added) == (4, 4)
    stored = references()
    assert sorted(summary.new_reference_ids) == sorted(stored)
    # One image may illustrate two assets: it is a reference of each.
    shared = [r for r in stored.values() if r.source == "images/coffee.png"]
    assert sorted(r.asset_id for r in shared) == ["also-coffee", "drinks"]
    by_source = {r.source: r for r in stored.values() if r.asset_id != "also-coffee"}
    assert set(by_source) == {"images/astronaut.png", "images/coffee.png", "images/chelsea.jpeg"}
    for file, asset_id in ((astronaut, "astro"), (coffee, "drinks"), (chelsea, "drinks")):
        reference = by_source[f"images/{file.name}"]
        data = file.read_bytes()
        expected = pdq.compute(data)
        height, width = photo(file.stem).shape[:2]
        assert reference.asset_id == asset_id
        assert reference.polarity == "positive"
        assert (reference.width, reference.height) == (width, height)
        assert reference.pdq_hash == expected.hex
        assert reference.pdq_quality == expected.quality
        assert reference.blob_sha256 == hashlib.sha256(data).hexdigest()
        assert blobs_of(settings).get(reference.blob_sha256) == data
    assert audit_types().count("reference.added") == 4


def test_reimporting_the_same_exemplars_adds_nothing(settings: Settings, tmp_path: Path) -> None:
    """The same exemplar imported again (or listed twice) is not stored a second time, and
    the second summary lists no new ids."""
    folder = tmp_path / "cat"
    write_photo(folder, "astronaut")
    path = write_catalogue(folder, [asset("astro", exemplars=["astronaut.png", "./astronaut.png"])])
    first = run_import(settings, path)
    assert first.references_added == len(first.new_reference_ids) == 1
    after_first = counts()
    second = run_import(settings, path)
    assert second == ImportSummary(0, 1, 0, ())
    assets, reference_count, events = counts()
    assert (assets, reference_count) == after_first[:2] == (1, 1)
    # asset.updated and catalogue.imported; no second reference.added.
    assert events == after_first[2] + 2
    assert audit_types()[-2:] == ["asset.updated", "catalogue.imported"]


def test_negative_exemplars_are_stored_as_negative(settings: Settings, tmp_path: Path) -> None:
    """Images under `negative_exemplars:` are stored with polarity "negative", beside the
    positive ones, listed in the summary, and the audit event says which polarity."""
    folder = tmp_path / "cat"
    write_photo(folder, "astronaut")
    write_photo(folder, "coffee")
    write_photo(folder, "chelsea")
    path = write_catalogue(
        folder,
        [
            asset(
                "astro",
                exemplars=["astronaut.png"],
                negative_exemplars=["coffee.png", "chelsea.png"],
            )
        ],
    )
    summary = run_import(settings, path)
    assert summary.references_added == 3
    stored = references()
    assert sorted(summary.new_reference_ids) == sorted(stored)
    assert {r.source: r.polarity for r in stored.values()} == {
        "astronaut.png": "positive",
        "coffee.png": "negative",
        "chelsea.png": "negative",
    }
    with session_scope() as session:
        payloads = session.scalars(
            select(AuditEvent.payload).where(AuditEvent.type == "reference.added")
        ).all()
    assert sorted(json.loads(p)["polarity"] for p in payloads) == [
        "negative",
        "negative",
        "positive",
    ]


def test_exemplar_moved_to_negative_is_not_silently_kept_positive(
    settings: Settings, tmp_path: Path
) -> None:
    """An exemplar re-listed under `negative_exemplars:` (a reviewer decided it is an approved
    look-alike) either becomes negative or is refused on that field; the catalogue must not
    keep matching it as the asset while the file says otherwise."""
    folder = tmp_path / "cat"
    write_photo(folder, "coffee")
    run_import(settings, write_catalogue(folder, [asset("cup", exemplars=["coffee.png"])]))
    moved = write_catalogue(folder, [asset("cup", negative_exemplars=["coffee.png"])])
    refused: CatalogueError | None = None
    try:
        run_import(settings, moved)
    except CatalogueError as e:
        refused = e
    if refused is not None:
        assert refused.field == "negative_exemplars"
        assert "coffee.png" in refused.detail
        return
    assert [r.polarity for r in references().values()] == ["negative"]


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
# (id, document, field, text the message must quote)
BAD_CATALOGUES: list[tuple[str, Any, str, str]] = [
    ("no-assets-key", {"not_assets": []}, "assets", "'assets:'"),
    ("assets-not-a-list", {"assets": {"id": "x"}}, "assets", "'assets:'"),
    ("top-level-list", ["just", "a", "list"], "assets", "'assets:'"),
    ("asset-not-a-mapping", {"assets": [VALID, "a string"]}, "assets", "mapping"),
    ("missing-id", {"assets": [VALID, {"name": "No Id", "kind": "logo"}]}, "id", "'id'"),
    ("missing-name", {"assets": [VALID, {"id": "no-name", "kind": "logo"}]}, "name", "'name'"),
    ("missing-kind", {"assets": [VALID, {"id": "no-kind", "name": "No Kind"}]}, "kind", "'kind'"),
    ("bad-kind", {"assets": [VALID, asset("bad-kind", kind="mascot")]}, "kind", "'mascot'"),
    ("bad-risk", {"assets": [VALID, asset("bad-risk", risk="extreme")]}, "risk", "'extreme'"),
    ("bad-id", {"assets": [VALID, asset("Mickey Mouse")]}, "id", "'Mickey Mouse'"),
    (
        "missing-exemplar",
        {"assets": [VALID, asset("lost", exemplars=["missing/nowhere.png"])]},
        "exemplars",
        "missing/nowhere.png",
    ),
    (
        "missing-negative-exemplar",
        {"assets": [VALID, asset("lost", negative_exemplars=["gone.png"])]},
        "negative_exemplars",
        "gone.png",
    ),
    (
        "unknown-threshold",
        {"assets": [VALID, asset("t", thresholds={"pdq_distance": 3})]},
        "thresholds",
        "'pdq_distance'",
    ),
    (
        "thresholds-not-a-mapping",
        {"assets": [VALID, asset("t", thresholds=[1, 2])]},
        "thresholds",
        "mapping",
    ),
    (
        "threshold-not-a-number",
        {"assets": [VALID, asset("t", thresholds={"pdq_max_distance": "close"})]},
        "thresholds",
        "number",
    ),
]


def test_bad_catalogues_raise_and_write_nothing(settings: Settings, tmp_path: Path) -> None:
    """A malformed catalogue raises CatalogueError naming the file, the field and the bad
    value (or what was expected); since it runs in the caller's transaction, the valid
    assets, exemplars and audit events before the error are rolled back with it."""
    write_photo(tmp_path, "astronaut")
    for case, document, field, quoted in BAD_CATALOGUES:
        path = tmp_path / f"{case}.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        with pytest.raises(CatalogueError) as caught:
            run_import(settings, path)
        assert caught.value.field == field, case
        assert quoted in caught.value.detail, case
        assert str(path) in caught.value.detail, case
        assert counts() == (0, 0, 0), case


def test_bad_kind_and_threshold_key_list_every_valid_choice(
    settings: Settings, tmp_path: Path
) -> None:
    """An unknown kind or threshold key, from a YAML file or through save_asset, is refused on
    its field with every valid choice listed."""
    cases: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
        ("kind", {"kind": "mascot"}, ASSET_KINDS),
        ("thresholds", {"thresholds": {"min_score": 0.5}}, tuple(THRESHOLD_RANGES)),
    ]
    for field, override, valid in cases:
        with pytest.raises(CatalogueError) as caught:
            run_import(settings, write_catalogue(tmp_path, [asset("x", **override)]))
        assert caught.value.field == field
        assert all(repr(choice) in caught.value.detail for choice in valid), field
    fields = AssetFields(name="X", kind="logo", thresholds=(("pdq", 3.0),))
    with pytest.raises(CatalogueError) as caught, session_scope() as session:
        save_asset(session=session, asset_id="x", fields=fields, actor="test")
    assert caught.value.field == "thresholds"
    assert all(repr(key) in caught.value.detail for key in THRESHOLD_RANGES)
    assert counts() == (0, 0, 0)


def test_threshold_values_outside_their_range_are_refused(
    settings: Settings, tmp_path: Path
) -> None:
    """Threshold values a matcher cannot use are refused on field thresholds rather than
    silently disabling (or widening) a check for that asset: a cosine above 1 (85 written for
    0.85), a negative or over-256 PDQ distance, NaN and infinity."""
    bad: list[dict[str, float]] = [
        {"clip_min_image_score": 85},
        {"clip_min_text_score": -3},
        {"pdq_max_distance": -1},
        {"pdq_max_distance": 300},
        {"keypoint_min_inliers": 0},
        {"pdq_max_distance": float("nan")},
        {"clip_min_image_score": float("inf")},
    ]
    not_refused: list[str] = []
    fields: list[str | None] = []
    for position, thresholds in enumerate(bad):
        path = write_catalogue(tmp_path, [asset("x", thresholds=thresholds)], f"{position}.yaml")
        try:
            run_import(settings, path)
        except CatalogueError as e:
            fields.append(e.field)
        except SQLAlchemyError as e:  # e.g. PostgreSQL refusing NaN in a JSON column
            not_refused.append(f"{thresholds}: database error {type(e).__name__}")
        else:
            not_refused.append(f"{thresholds}: accepted")
    assert not_refused == []
    assert fields == ["thresholds"] * len(bad)


def test_unreadable_or_missing_catalogue_file_is_refused(
    settings: Settings, tmp_path: Path
) -> None:
    """An empty file, broken YAML or a path that does not exist raises CatalogueError (not a
    YAML, type or OS error) naming the file; nothing is written."""
    for name, content in (("empty.yaml", ""), ("broken.yaml", "assets: [unclosed\n")):
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        with pytest.raises(CatalogueError) as caught:
            run_import(settings, path)
        assert caught.value.field in {"file", "assets"}, name
        assert str(path) in caught.value.detail
    missing = tmp_path / "nope.yaml"
    with pytest.raises(CatalogueError) as caught:
        run_import(settings, missing)
    assert caught.value.field == "file"
    assert str(missing) in caught.value.detail
    assert counts() == (0, 0, 0)


def test_exemplar_that_is_not_an_image_names_the_file(settings: Settings, tmp_path: Path) -> None:
    """An exemplar (positive or negative) that is not an image is refused as a catalogue
    error on that list, naming the file, so the author can tell which of many files to fix;
    nothing is written."""
    write_photo(tmp_path, "astronaut")
    (tmp_path / "notes.png").write_text("not really a picture", encoding="utf-8")
    (tmp_path / "drawing.svg").write_text("<svg></svg>", encoding="utf-8")
    for key in ("exemplars", "negative_exemplars"):
        for name in ("notes.png", "drawing.svg"):
            path = write_catalogue(
                tmp_path,
                [asset("valid-first", exemplars=["astronaut.png"]), asset("b", **{key: [name]})],
            )
            with pytest.raises(CatalogueError) as caught:
                run_import(settings, path)
            assert caught.value.field == key
            assert name in caught.value.detail
            assert counts() == (0, 0, 0)


# --- assets ----------------------------------------------------------------------------------

INVALID_IDS = [
    "Mickey",
    "mickey mouse",
    "-mickey",
    ".hidden",
    "_x",
    "a/b",
    "../etc",
    "café",
    "mickey\n",
    "",
    "a" * 101,
]
VALID_IDS = ["a", "0", "a" * 100, "mickey.mouse_2-x", "9lives"]


def test_asset_ids_must_match_the_pattern(settings: Settings, tmp_path: Path) -> None:
    """An asset id is 1-100 of [a-z0-9._-], starting with a letter or digit: others are
    refused on field id by save_asset and by import, valid ones are stored as given."""
    fields = AssetFields(name="Some Name", kind="logo")
    for bad in INVALID_IDS:
        with pytest.raises(CatalogueError) as caught, session_scope() as session:
            save_asset(session=session, asset_id=bad, fields=fields, actor="test")
        assert caught.value.field == "id", bad
        assert repr(bad) in caught.value.detail
    path = write_catalogue(tmp_path, [asset("Mickey")])
    with pytest.raises(CatalogueError) as caught:
        run_import(settings, path)
    assert caught.value.field == "id"
    assert counts() == (0, 0, 0)
    for good in VALID_IDS:
        create(good)
    with session_scope() as session:
        assert sorted(session.scalars(select(ProtectedAsset.id))) == sorted(VALID_IDS)


def test_save_asset_creates_updates_and_conflicts(settings: Settings) -> None:
    """save_asset creates (flag True, asset.created), then updates in place (flag False,
    asset.updated) with every field replaced; with create_only an existing id raises
    ConflictError on field id and changes nothing."""
    first = AssetFields(name="Cola", kind="brand", aliases=("Coke",), risk="medium")
    second = AssetFields(
        name="Cola Classic",
        kind="logo",
        owner="Cola Co",
        aliases=("Coke", "Classic"),
        description="red script",
        risk="high",
        thresholds=(("pdq_max_distance", 12.0),),
    )
    with session_scope() as session:
        _, created = save_asset(session=session, asset_id="cola", fields=first, actor="a")
    assert created is True
    with session_scope() as session:
        stored, created = save_asset(session=session, asset_id="cola", fields=second, actor="b")
        assert created is False
        assert (stored.name, stored.kind, stored.owner, stored.description, stored.risk) == (
            "Cola Classic",
            "logo",
            "Cola Co",
            "red script",
            "high",
        )
        assert stored.aliases == ["Coke", "Classic"]
        assert stored.thresholds == {"pdq_max_distance": 12.0}
    assert audit_types() == ["asset.created", "asset.updated"]

    with pytest.raises(ConflictError) as caught, session_scope() as session:
        save_asset(session=session, asset_id="cola", fields=first, actor="test", create_only=True)
    assert caught.value.field == "id"
    assert "'cola'" in caught.value.detail
    with session_scope() as session:
        assert get_asset(session=session, asset_id="cola").name == "Cola Classic"
        _, created = save_asset(
            session=session, asset_id="pepsi", fields=first, actor="test", create_only=True
        )
    assert created is True
    assert audit_types() == ["asset.created", "asset.updated", "asset.created"]


def test_list_assets_pages_and_filters_by_kind(settings: Settings) -> None:
    """list_assets pages in id order with the total of all matches, filters by kind, and
    refuses an unknown kind listing the valid ones."""
    kinds = {"a1": "character", "b2": "logo", "c3": "character", "d4": "logo", "e5": "brand"}
    for asset_id, kind in kinds.items():
        create(asset_id, kind=kind)
    with session_scope() as session:

        def page(**options: Any) -> tuple[list[str], int]:
            rows, total = list_assets(session=session, **options)
            return [a.id for a in rows], total

        assert page() == (sorted(kinds), 5)
        assert page(offset=0, limit=2) == (["a1", "b2"], 5)
        assert page(offset=2, limit=2) == (["c3", "d4"], 5)
        assert page(offset=4, limit=2) == (["e5"], 5)
        assert page(offset=9, limit=2) == ([], 5)
        assert page(kind="logo") == (["b2", "d4"], 2)
        assert page(kind="character", offset=1, limit=5) == (["c3"], 2)
        assert page(kind="artwork") == ([], 0)
        with pytest.raises(CatalogueError) as caught:
            list_assets(session=session, kind="mascot")
    assert caught.value.field == "kind"
    assert all(repr(kind) in caught.value.detail for kind in ASSET_KINDS)


def test_delete_asset_returns_and_removes_its_exemplars(settings: Settings) -> None:
    """delete_asset removes the asset and all its exemplars, returns the removed exemplar ids
    (for the index), leaves other assets' exemplars alone, and is audited; afterwards the
    asset is not found."""
    create("astro")
    create("other")
    removed_ids = {
        add(settings, "astro", photo_bytes("astronaut"))[0],
        add(settings, "astro", photo_bytes("coffee"), polarity="negative")[0],
    }
    kept, _, _ = add(settings, "other", photo_bytes("astronaut"))
    with session_scope() as session:
        removed = delete_asset(session=session, asset_id="astro", actor="test")
    assert set(removed) == removed_ids
    assert len(removed) == 2
    assert set(references()) == {kept}
    with session_scope() as session:
        assert session.get(ProtectedAsset, "astro") is None
        event = session.scalars(select(AuditEvent).where(AuditEvent.type == "asset.deleted")).one()
    assert event.subject == "asset:astro"
    assert set(json.loads(event.payload)["exemplars_removed"]) == removed_ids
    with pytest.raises(AssetNotFoundError) as caught, session_scope() as session:
        get_asset(session=session, asset_id="astro")
    assert "'astro'" in caught.value.detail
    with pytest.raises(AssetNotFoundError), session_scope() as session:
        delete_asset(session=session, asset_id="astro", actor="test")


def test_delete_reference_image_checks_the_asset(settings: Settings) -> None:
    """delete_reference_image removes one exemplar of the named asset; naming another asset,
    or an unknown exemplar, is not found and removes nothing."""
    create("astro")
    create("other")
    first, _, _ = add(settings, "astro", photo_bytes("astronaut"))
    second, _, _ = add(settings, "astro", photo_bytes("coffee"))
    for asset_id, reference_id in (("other", first), ("astro", "0" * 32), ("nobody", first)):
        with pytest.raises(AssetNotFoundError) as caught, session_scope() as session:
            delete_reference_image(
                session=session, asset_id=asset_id, reference_id=reference_id, actor="test"
            )
        assert caught.value.field == "exemplar_id"
    assert set(references()) == {first, second}
    with session_scope() as session:
        delete_reference_image(session=session, asset_id="astro", reference_id=first, actor="t")
    assert set(references()) == {second}
    assert audit_types()[-1] == "reference.deleted"


# --- add_reference_image ---------------------------------------------------------------------


def cmyk_jpeg() -> bytes:
    return encode_image(Image.fromarray(photo("astronaut")).convert("CMYK"), "JPEG", quality=95)


def rgba_png() -> bytes:
    rgba = np.dstack([photo("coffee"), np.full(photo("coffee").shape[:2], 160, np.uint8)])
    return encode(rgba)


def png_16_bit() -> bytes:
    grey = photo("camera").astype(np.uint16) * 200 + 1000
    return encode_image(Image.fromarray(grey), "PNG")


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(photo("chelsea"), "JPEG", quality=95, exif=exif.tobytes())


UNUSUAL_EXEMPLARS = [
    ("cmyk-jpeg", cmyk_jpeg, (512, 512)),
    ("rgba-png", rgba_png, (600, 400)),
    ("16-bit-png", png_16_bit, (512, 512)),
    ("exif-rotated", exif_rotated_jpeg, (300, 451)),
]


def test_unusual_exemplars_are_normalised(settings: Settings) -> None:
    """CMYK, RGBA, 16-bit and EXIF-rotated exemplars are accepted: the stored size is the
    upright image's, the PDQ hash that of the normalised image, the blob the original bytes."""
    create("astro")
    for case, make, size in UNUSUAL_EXEMPLARS:
        data = make()
        reference_id, is_new, polarity = add(settings, "astro", data)
        assert (is_new, polarity) == (True, "positive"), case
        stored = references()[reference_id]
        expected = pdq.compute(data)
        assert (stored.width, stored.height) == size, case
        assert (stored.pdq_hash, stored.pdq_quality) == (expected.hex, expected.quality), case
        assert stored.pdq_quality >= 50, case
        assert blobs_of(settings).get(stored.blob_sha256) == data, case


def test_16_bit_exemplar_hashes_like_its_8_bit_original() -> None:
    """A 16-bit exemplar is scaled, not clipped to white: its PDQ hash is near the hash of the
    8-bit photo it was made from."""
    original = pdq.compute(photo_bytes("camera")).hex
    assert pdq.distances(original, [pdq.compute(png_16_bit()).hex])[0] <= 31


def test_bad_exemplars_are_refused_and_write_nothing(settings: Settings) -> None:
    """SVG (with or without an XML prologue) and empty bytes raise ImageError on field
    exemplar; an unknown polarity is refused listing the valid ones; an unknown asset is not
    found. No row, blob or audit event is written for any of them."""
    create("astro")
    before = counts()
    for data in (
        b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>',
        b'<?xml version="1.0"?>\n<svg><rect/></svg>',
        b"",
    ):
        with pytest.raises(ImageError) as caught:
            add(settings, "astro", data)
        assert caught.value.field == "exemplar"
    with pytest.raises(CatalogueError) as refused:
        add(settings, "astro", photo_bytes("coffee"), polarity="neutral")
    assert refused.value.field == "polarity"
    assert all(repr(p) in refused.value.detail for p in POLARITIES)
    with pytest.raises(AssetNotFoundError):
        add(settings, "nobody", photo_bytes("coffee"))
    assert counts() == before
    assert not settings.blob_dir.exists() or not any(settings.blob_dir.rglob("*"))


def test_adding_the_same_exemplar_twice_returns_the_first(settings: Settings) -> None:
    """The same bytes for the same asset return the stored exemplar, flagged not new, with no
    second audit event."""
    create("astro")
    data = photo_bytes("astronaut")
    first, new_first, _ = add(settings, "astro", data)
    events = counts()[2]
    second, new_second, _ = add(settings, "astro", data)
    assert (second, new_first, new_second) == (first, True, False)
    assert counts()[1:] == (1, events)


def test_same_image_with_the_other_polarity_is_not_silently_ignored(settings: Settings) -> None:
    """Adding as negative an image stored as positive for the same asset either refuses
    (conflict or catalogue error on polarity) or stores it as negative; it never reports the
    positive exemplar back as if the negative one had been recorded."""
    create("astro")
    data = photo_bytes("coffee")
    add(settings, "astro", data)
    refused: ConflictError | CatalogueError | None = None
    try:
        _, _, polarity = add(settings, "astro", data, polarity="negative")
    except (ConflictError, CatalogueError) as e:
        refused = e
    if refused is not None:
        assert refused.field == "polarity"
        return
    assert polarity == "negative"


# --- export ----------------------------------------------------------------------------------


def snapshot() -> dict[str, Any]:
    """Everything an export must carry, per asset."""
    with session_scope() as session:
        return {
            a.id: {
                "name": a.name,
                "kind": a.kind,
                "owner": a.owner,
                "aliases": list(a.aliases),
                "description": a.description,
                "risk": a.risk,
                "thresholds": dict(a.thresholds),
                "exemplars": sorted(
                    (r.blob_sha256, r.polarity, r.pdq_hash, r.width, r.height) for r in a.references
                ),
            }
            for a in session.scalars(select(ProtectedAsset))
        }


def test_export_round_trips_through_import(settings: Settings, tmp_path: Path) -> None:
    """An export to a folder writes every exemplar under exemplars/ and a YAML that, imported
    into an emptied catalogue with a fresh blob store, gives back the same assets, aliases,
    thresholds, and exemplars (same sha256s and polarities). Without a folder the export
    lists no images."""
    source = tmp_path / "source"
    for name in ("astronaut", "coffee", "rocket"):
        write_photo(source, name)
    write_photo(source, "chelsea", "JPEG")
    run_import(
        settings,
        write_catalogue(
            source,
            [
                asset(
                    "astro",
                    owner="NASA",
                    aliases=["Spacewoman", "Eileen: the first"],
                    description="astronaut portrait\nwith flag",
                    risk="medium",
                    thresholds={"pdq_max_distance": 20, "clip_min_image_score": 0.9},
                    exemplars=["astronaut.png"],
                    negative_exemplars=["coffee.png"],
                ),
                asset("cat", kind="artwork", exemplars=["chelsea.jpeg", "rocket.png"]),
                asset("no-images", kind="logo", aliases=["Ünïcode ✓"]),
            ],
        ),
    )
    create("zz-extra", kind="person")
    add(settings, "zz-extra", cmyk_jpeg())
    add(settings, "zz-extra", photo_bytes("camera", "GIF"), polarity="negative")
    before = snapshot()
    assert len(before) == 4
    assert before["astro"]["thresholds"] == {"pdq_max_distance": 20.0, "clip_min_image_score": 0.9}
    assert before["no-images"]["aliases"] == ["Ünïcode ✓"]

    with session_scope() as session:
        bare = export_catalogue(session=session, blobs=blobs_of(settings), folder=None)
    for entry in yaml.safe_load(bare)["assets"]:
        assert "exemplars" not in entry
        assert "negative_exemplars" not in entry

    out = tmp_path / "export"
    out.mkdir()
    with session_scope() as session:
        text = export_catalogue(session=session, blobs=blobs_of(settings), folder=out)
    exported = out / "catalogue.yaml"
    exported.write_text(text, encoding="utf-8")
    files = sorted(p.relative_to(out).parts[0] for p in out.rglob("*") if p.is_file())
    assert set(files) == {"exemplars", "catalogue.yaml"}
    written = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "exemplars").iterdir()}
    assert written == {e[0] for a in before.values() for e in a["exemplars"]}

    with session_scope() as session:
        for asset_id in before:
            delete_asset(session=session, asset_id=asset_id, actor="test")
    assert counts()[:2] == (0, 0)
    summary = run_import(settings, exported, blobs=BlobStore(tmp_path / "fresh-blobs"))
    assert (summary.assets_created, summary.references_added) == (4, 6)
    assert snapshot() == before


def test_a_negative_silences_only_what_it_matches_as_well_as_the_exemplars() -> None:
    """An approved look-alike silences an asset for a matcher only when it matches (within
    the margin for saturated scores) at least as well as the asset's own exemplars."""
    from reference_index.checks import NEGATIVE_MARGIN, Match, _apply_negatives, _Candidate

    def candidate(score: float, negative: bool, matcher: str = "keypoints") -> _Candidate:
        return _Candidate(Match("logo", "Logo", matcher, score, "review"), negative)

    kept, suppressed = _apply_negatives([candidate(0.95, False), candidate(0.90, True)])
    assert ([m.score for m in kept], suppressed) == ([0.95], [])
    close = 0.95 - NEGATIVE_MARGIN / 2
    kept, suppressed = _apply_negatives([candidate(0.95, False), candidate(close, True)])
    assert (kept, [s["negative_score"] for s in suppressed]) == ([], [close])
    # A negative for another matcher silences nothing here.
    kept, _ = _apply_negatives([candidate(0.95, False), candidate(0.99, True, matcher="pdq")])
    assert [m.matcher for m in kept] == ["keypoints"]

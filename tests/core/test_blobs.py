"""The content-addressed blob store: names are sha256 digests, and only digests are accepted."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from core.blobs import BlobStore
from core.errors import NotFoundError


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def stored_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def test_put_returns_the_sha256_hex_digest(store: BlobStore) -> None:
    """The name of a blob is the sha256 of its bytes, in lowercase hex."""
    data = b"\x89PNG not really an image"

    name = store.put(data)

    assert name == hashlib.sha256(data).hexdigest()


def test_get_returns_the_bytes_that_were_put(store: BlobStore) -> None:
    """What comes back is byte for byte what went in, also for empty and binary data."""
    blobs = [b"", bytes(range(256)), b"image" * 10_000]

    names = [store.put(data) for data in blobs]

    assert [store.get(name) for name in names] == blobs
    assert all(store.exists(name) for name in names)


def test_same_bytes_twice_are_stored_once(store: BlobStore) -> None:
    """Putting identical bytes again (a redelivered task) keeps exactly one file and no temp."""
    first = store.put(b"the same image")
    second = store.put(b"the same image")

    assert first == second
    assert stored_files(store.root) == [store.root / first[:2] / first]


def test_different_bytes_are_stored_apart(store: BlobStore) -> None:
    """Two different blobs get two names and two files."""
    one, two = store.put(b"one"), store.put(b"two")

    assert one != two
    assert len(stored_files(store.root)) == 2
    assert (store.get(one), store.get(two)) == (b"one", b"two")


def test_a_missing_blob_raises_not_found(store: BlobStore) -> None:
    """A well-formed name that was never stored raises NotFoundError, and exists() says no."""
    absent = hashlib.sha256(b"never stored").hexdigest()

    with pytest.raises(NotFoundError, match=absent):
        store.get(absent)
    assert not store.exists(absent)


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "../../etc/passwd",
        "/etc/passwd",
        "",
        "not-a-digest",
        "A" * 64,
        "0" * 63,
        "0" * 65,
        "g" * 64,
        "../" + "0" * 61,
        pytest.param("0" * 64 + "\n", id="digest-then-newline"),
        "0" * 64 + "/../x",
    ],
)
def test_a_name_that_is_not_a_sha256_digest_is_refused(
    store: BlobStore, tmp_path: Path, name: str
) -> None:
    """Only 64 lowercase hex digits are accepted as a name, so no name can reach a file
    outside the store (path traversal), even one that exists."""
    (tmp_path / "x").write_bytes(b"secret outside the store")
    store.root.mkdir(parents=True)

    with pytest.raises(NotFoundError) as on_get:
        store.get(name)
    with pytest.raises(NotFoundError) as on_exists:
        store.exists(name)

    # The refusal comes from validating the name, not from a failed file lookup.
    assert on_get.value.field == "sha256"
    assert on_exists.value.field == "sha256"


def test_traversal_does_not_read_a_file_outside_the_store(store: BlobStore, tmp_path: Path) -> None:
    """`../x` from a blob folder would point at a real file here; get() refuses to read it."""
    store.root.mkdir(parents=True)
    (store.root / "x").write_bytes(b"not a blob")
    (tmp_path / "x").write_bytes(b"secret outside the store")

    for name in ("../x", "x", "../blobs/x"):
        with pytest.raises(NotFoundError):
            store.get(name)

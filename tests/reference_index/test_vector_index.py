"""The FAISS vector index: exact up to a limit, HNSW above it; cosine scores best first;
shape checks; save/load; HNSW recall against exact search."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt
import pytest

from reference_index.vector_index import HNSW_EF_SEARCH, VectorIndex

Vectors = npt.NDArray[np.float32]
DIM = 64


def normalised(vectors: npt.NDArray[np.float64]) -> Vectors:
    unit: Vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return unit


def random_vectors(count: int, seed: int = 0, dim: int = DIM) -> Vectors:
    return normalised(np.random.default_rng(seed).normal(size=(count, dim)))


def clustered(count: int, rng: np.random.Generator, centres: npt.NDArray[np.float64]) -> Vectors:
    """Vectors in wide, overlapping clusters around the centres: hard enough that a shallow
    HNSW search (efSearch 32) stays below 0.95 recall@10 on them."""
    picks = centres[rng.integers(0, len(centres), count)]
    return normalised(picks + 1.5 * rng.normal(size=picks.shape))


def ids_for(count: int, prefix: str = "ref") -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def build(vectors: Vectors, *, exact_limit: int = 10_000, embedder: str = "e") -> VectorIndex:
    index = VectorIndex.empty(
        embedder=embedder,
        dimension=vectors.shape[1],
        expected=len(vectors),
        exact_limit=exact_limit,
    )
    index.add(vectors, ids_for(len(vectors)))
    return index


@pytest.mark.parametrize(
    ("expected", "limit", "kind"),
    [
        (0, 10, "flat"),
        (9, 10, "flat"),
        (10, 10, "flat"),
        (11, 10, "hnsw"),
        (50_000, 10_000, "hnsw"),
    ],
)
def test_kind_is_flat_up_to_the_exact_limit_and_hnsw_above(
    expected: int, limit: int, kind: str
) -> None:
    """Up to and including exact_limit expected vectors the index is exact; above, HNSW."""
    index = VectorIndex.empty(embedder="e", dimension=DIM, expected=expected, exact_limit=limit)
    assert index.kind == kind
    assert len(index) == 0
    expected_type = faiss.IndexFlatIP if kind == "flat" else faiss.IndexHNSWFlat
    assert isinstance(index.index, expected_type)


@pytest.mark.parametrize("exact_limit", [10_000, 10], ids=["flat", "hnsw"])
def test_search_returns_ids_with_cosine_scores_best_first(exact_limit: int) -> None:
    """Results are (id, cosine similarity) pairs, highest first, and the scores are the
    cosines of the query with those vectors."""
    vectors = random_vectors(200)
    index = build(vectors, exact_limit=exact_limit)
    queries = random_vectors(5, seed=1)
    results = index.search(queries, 10)
    assert len(results) == len(queries)
    lookup = dict(zip(ids_for(200), vectors, strict=True))
    for query, hits in zip(queries, results, strict=True):
        assert len(hits) == 10
        scores = [score for _, score in hits]
        assert scores == sorted(scores, reverse=True)
        for ref_id, score in hits:
            assert score == pytest.approx(float(query @ lookup[ref_id]), abs=1e-5)
    exact = np.argsort(-(queries[0] @ vectors.T))[:10]
    if exact_limit == 10_000:
        assert [ref_id for ref_id, _ in results[0]] == [f"ref-{i}" for i in exact]


@pytest.mark.parametrize("exact_limit", [10_000, 10], ids=["flat", "hnsw"])
def test_identical_vector_scores_one(exact_limit: int) -> None:
    """A stored vector searched for itself comes back first with cosine 1.0."""
    vectors = random_vectors(300)
    index = build(vectors, exact_limit=exact_limit)
    for row in (0, 123, 299):
        (best, *_) = index.search(vectors[row : row + 1], 3)[0]
        assert best[0] == f"ref-{row}"
        assert best[1] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("exact_limit", [10_000, 2], ids=["flat", "hnsw"])
def test_k_larger_than_the_index_returns_every_vector(exact_limit: int) -> None:
    """Asking for more neighbours than there are vectors returns each vector once."""
    index = build(random_vectors(5), exact_limit=exact_limit)
    (hits,) = index.search(random_vectors(1, seed=3), 50)
    assert sorted(ref_id for ref_id, _ in hits) == ids_for(5)


def test_empty_index_returns_no_results() -> None:
    """An empty index answers every query with an empty list; no queries, no answers."""
    index = VectorIndex.empty(embedder="e", dimension=DIM, expected=0, exact_limit=10)
    assert index.search(random_vectors(3), 5) == [[], [], []]
    assert build(random_vectors(4)).search(np.zeros((0, DIM), np.float32), 5) == []


def test_add_appends_ids_in_order() -> None:
    """Vectors added in several calls keep their ids; adding nothing changes nothing."""
    vectors = random_vectors(6)
    index = VectorIndex.empty(embedder="e", dimension=DIM, expected=6, exact_limit=10)
    index.add(vectors[:4], ids_for(4))
    index.add(np.zeros((0, DIM), np.float32), [])
    index.add(vectors[4:], ["ref-4", "ref-5"])
    assert index.ids == ids_for(6)
    assert len(index) == index.index.ntotal == 6
    assert index.search(vectors[5:6], 1)[0][0][0] == "ref-5"


@pytest.mark.parametrize(
    ("shape", "count"),
    [
        pytest.param((3, DIM + 1), 3, id="wrong-dimension"),
        pytest.param((3, DIM - 1), 3, id="too-few-dimensions"),
        pytest.param((3, DIM), 2, id="fewer-ids-than-vectors"),
        pytest.param((2, DIM), 3, id="more-ids-than-vectors"),
        pytest.param((DIM,), 1, id="one-dimensional"),
    ],
)
def test_add_validates_shapes(shape: tuple[int, ...], count: int) -> None:
    """Vectors whose shape does not match the ids and the dimension raise ValueError and
    leave the index unchanged."""
    index = build(random_vectors(2))
    vectors = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match=f"{DIM}-dimension"):
        index.add(vectors, ids_for(count, "new"))
    assert len(index) == index.index.ntotal == 2


@pytest.mark.parametrize("exact_limit", [10_000, 10], ids=["flat", "hnsw"])
def test_search_validates_the_query_dimension(exact_limit: int) -> None:
    """Queries from another embedder (another dimension) raise ValueError naming the index's
    dimension, as add does, rather than faiss's bare AssertionError (which `python -O`
    strips, letting faiss read past the query buffer)."""
    index = build(random_vectors(20), exact_limit=exact_limit)
    for dim in (DIM // 2, DIM * 2):
        with pytest.raises(ValueError, match=f"{DIM}-dimension"):
            index.search(random_vectors(2, dim=dim), 5)


@pytest.mark.parametrize("exact_limit", [10_000, 10], ids=["flat", "hnsw"])
def test_save_and_load_round_trip(tmp_path: Path, exact_limit: int) -> None:
    """A saved index loads with the same kind, ids, embedder, dimension and answers."""
    vectors = random_vectors(500)
    index = build(vectors, exact_limit=exact_limit, embedder="tiny-random (not a semantic check)")
    index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    assert loaded.kind == index.kind
    assert loaded.ids == index.ids
    assert (loaded.embedder, loaded.dimension) == (index.embedder, index.dimension)
    queries = random_vectors(20, seed=9)
    assert loaded.search(queries, 10) == index.search(queries, 10)


def test_loaded_hnsw_gets_the_search_depth_back(tmp_path: Path) -> None:
    """efSearch is set to the module's value on load, whatever the saved index carried."""
    index = build(random_vectors(100), exact_limit=10)
    built = index.index
    assert isinstance(built, faiss.IndexHNSWFlat)
    assert built.hnsw.efSearch == HNSW_EF_SEARCH
    built.hnsw.efSearch = 4
    index.save(tmp_path)
    saved = faiss.read_index(str(tmp_path / "vectors.faiss"))
    assert isinstance(saved, faiss.IndexHNSWFlat)
    assert saved.hnsw.efSearch == 4
    loaded = VectorIndex.load(tmp_path).index
    assert isinstance(loaded, faiss.IndexHNSWFlat)
    assert loaded.hnsw.efSearch == HNSW_EF_SEARCH


def test_load_refuses_ids_that_do_not_match_the_vectors(tmp_path: Path) -> None:
    """A folder whose id list and vectors disagree is refused, not served misaligned."""
    index = build(random_vectors(10))
    index.save(tmp_path)
    index.ids.pop()
    index.save(tmp_path)  # rewrites vectors.json with 9 ids; vectors.faiss still holds 10
    with pytest.raises(ValueError, match="10 vectors but 9 ids"):
        VectorIndex.load(tmp_path)


def test_hnsw_recall_at_10_against_exact_search() -> None:
    """On 20,000 clustered vectors, HNSW's top 10 share at least 95% with exact search."""
    rng = np.random.default_rng(42)
    centres = rng.normal(size=(300, DIM))
    vectors = clustered(20_000, rng, centres)
    queries = clustered(200, rng, centres)
    hnsw = build(vectors)
    assert hnsw.kind == "hnsw"
    flat = build(vectors, exact_limit=len(vectors))
    assert flat.kind == "flat"
    found = hnsw.search(queries, 10)
    exact = flat.search(queries, 10)
    recall = np.mean(
        [len({i for i, _ in a} & {i for i, _ in b}) / 10 for a, b in zip(found, exact, strict=True)]
    )
    assert recall >= 0.95

"""FAISS over L2-normalised CLIP vectors: inner product is cosine similarity.

Exact `IndexFlatIP` up to a limit (10k vectors by default), HNSW above it, where exact
search gets slow. Each row carries the id of the reference image it came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 120
# Enough for recall@10 >= 0.95 against exact search at a million vectors (bench/index_eval.py).
HNSW_EF_SEARCH = 128


@dataclass
class VectorIndex:
    index: faiss.Index
    ids: list[str]
    embedder: str
    dimension: int

    @property
    def kind(self) -> str:
        return "hnsw" if isinstance(self.index, faiss.IndexHNSWFlat) else "flat"

    @classmethod
    def empty(
        cls, *, embedder: str, dimension: int, expected: int, exact_limit: int
    ) -> VectorIndex:
        if expected <= exact_limit:
            index: faiss.Index = faiss.IndexFlatIP(dimension)
        else:
            index = faiss.IndexHNSWFlat(dimension, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = HNSW_EF_SEARCH
        return cls(index, [], embedder, dimension)

    def add(self, vectors: np.ndarray, ids: list[str]) -> None:
        if vectors.shape != (len(ids), self.dimension):
            raise ValueError(
                f"{vectors.shape[0]}x{vectors.shape[1] if vectors.ndim == 2 else '?'} vectors "
                f"for {len(ids)} ids into a {self.dimension}-dimension index"
            )
        if len(ids):
            self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
            self.ids.extend(ids)

    def search(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """For each query row, up to k (reference image id, cosine) pairs, best first."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension or k < 1:
            raise ValueError(
                f"query of shape {vectors.shape} with k={k} for a {self.dimension}-dimension index"
            )
        if not self.ids or len(vectors) == 0:
            return [[] for _ in range(len(vectors))]
        scores, rows = self.index.search(
            np.ascontiguousarray(vectors, dtype=np.float32), min(k, len(self.ids))
        )
        return [
            [(self.ids[r], float(s)) for r, s in zip(row, score, strict=True) if r >= 0]
            for row, score in zip(rows, scores, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, folder: Path) -> None:
        """Into a folder that is not live yet; the caller switches versions atomically."""
        faiss.write_index(self.index, str(folder / "vectors.faiss"))
        (folder / "vectors.json").write_text(
            json.dumps({"ids": self.ids, "embedder": self.embedder, "dimension": self.dimension})
        )

    @classmethod
    def load(cls, folder: Path) -> VectorIndex:
        meta = json.loads((folder / "vectors.json").read_text())
        index = faiss.read_index(str(folder / "vectors.faiss"))
        if isinstance(index, faiss.IndexHNSWFlat):
            index.hnsw.efSearch = HNSW_EF_SEARCH
        if index.ntotal != len(meta["ids"]):
            raise ValueError(f"{folder}: {index.ntotal} vectors but {len(meta['ids'])} ids")
        return cls(index, list(meta["ids"]), meta["embedder"], int(meta["dimension"]))

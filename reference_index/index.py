"""Index versions: build, add to, load.

A version is a folder under DATA_DIR/index holding the CLIP vectors of every exemplar
(FAISS), their keypoint descriptors, the text embeddings of every asset's names and
description, and which exemplar is which. A build or an addition writes a new folder, then
switches the active version in one transaction: a reader sees the old index or the new one,
never half of one. Each process keeps the active version loaded and reloads it when the
active checkpoint moves; it refuses an index built by another embedder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from audit import service as audit
from core.blobs import BlobStore
from core.images import decode_image, to_array
from core.settings import Settings
from reference_index.embedders import Embedder, get_embedder
from reference_index.errors import IndexUnusableError
from reference_index.keypoints import KeypointIndex
from reference_index.models import IndexVersion, ProtectedAsset, ReferenceImage
from reference_index.service import visible_to
from reference_index.vector_index import VectorIndex

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
_EMBED_BATCH = 32
# Older version folders are deleted; a process still reading the previous one keeps working.
KEEP_VERSIONS = 3


@dataclass(frozen=True)
class Exemplar:
    asset_id: str
    polarity: str


@dataclass
class LoadedIndex:
    checkpoint: str
    embedder: str
    vectors: VectorIndex
    keypoints: KeypointIndex
    exemplars: dict[str, Exemplar]
    # One row per (asset, text): its name, each alias, its description.
    text_assets: list[str]
    text_labels: list[str]
    text_vectors: np.ndarray


def active_version(session: Session) -> IndexVersion | None:
    return session.scalar(select(IndexVersion).where(IndexVersion.active))


@dataclass(frozen=True)
class IndexStats:
    checkpoint: str | None
    embedder: str | None
    current_embedder: str
    dimension: int | None
    vectors: int
    exemplars: int
    kind: str | None
    built_by: str | None
    created_at: datetime | None
    # Exemplars of the catalogue that the active index does not hold.
    pending_exemplars: int


def stats(*, session: Session, settings: Settings, seen_by: str | None = None) -> IndexStats:
    """The active version and what it holds. `seen_by`: a tenant, whose counts cover only
    what it sees (the shared catalogue and its own exemplars: how many exemplars other
    tenants have is not its business); None: the whole index, for operators."""
    version = active_version(session)
    if seen_by is None:
        total = session.scalar(select(func.count()).select_from(ReferenceImage)) or 0
        indexed = version.exemplars if version else 0
        vectors = version.vectors if version else 0
    else:
        visible = set(
            session.scalars(
                select(ReferenceImage.id).where(visible_to(ReferenceImage.tenant_id, seen_by))
            )
        )
        total = len(visible)
        # One vector per exemplar.
        held = _metadata(Path(version.path))["exemplars"] if version else {}
        indexed = vectors = len(visible & held.keys())
    return IndexStats(
        checkpoint=version.checkpoint if version else None,
        embedder=version.embedder if version else None,
        current_embedder=get_embedder(settings).name,
        dimension=version.dimension if version else None,
        vectors=vectors,
        exemplars=indexed,
        kind=version.kind if version else None,
        built_by=version.built_by if version else None,
        created_at=version.created_at if version else None,
        pending_exemplars=max(0, total - indexed),
    )


def _metadata(folder: Path) -> dict[str, Any]:
    """A version's index.json: its exemplar table and the asset texts."""
    meta: dict[str, Any] = json.loads((folder / "index.json").read_text())
    return meta


def _exemplar_table(meta: dict[str, Any]) -> dict[str, Exemplar]:
    return {i: Exemplar(**e) for i, e in meta["exemplars"].items()}


def _asset_texts(session: Session) -> tuple[list[str], list[str]]:
    assets, labels = [], []
    for asset in session.scalars(select(ProtectedAsset).order_by(ProtectedAsset.id)):
        for text in [asset.name, *asset.aliases, asset.description]:
            if text.strip():
                assets.append(asset.id)
                labels.append(text)
    return assets, labels


def _keypoint_group(reference: ReferenceImage) -> str:
    """The keypoint index keeps the best match per group; an asset's negative exemplars are
    a group of their own, so a look-alike matching a negative is never hidden behind a
    slightly better match to one of the asset's exemplars (checks.py compares the two).
    A tenant's own exemplars of a shared asset are a group of their own too: checks drop
    them for other tenants, and they must not hide the shared exemplars' match."""
    group = reference.asset_id
    if reference.tenant_id is not None:
        group += f"@{reference.tenant_id}"
    if reference.polarity == "negative":
        group += "/negative"
    return group


def _embed_references(
    references: list[ReferenceImage],
    blobs: BlobStore,
    embedder: Embedder,
    keypoints: KeypointIndex,
    vectors: VectorIndex,
    progress: Progress | None,
    done: int = 0,
    total: int | None = None,
) -> None:
    total = total if total is not None else len(references)
    for start in range(0, len(references), _EMBED_BATCH):
        batch = references[start : start + _EMBED_BATCH]
        images = [decode_image(blobs.get(r.blob_sha256), field="exemplar") for r in batch]
        vectors.add(embedder.embed_images(images), [r.id for r in batch])
        for reference, image in zip(batch, images, strict=True):
            keypoints.add(reference.id, _keypoint_group(reference), to_array(image))
        if progress is not None:
            progress(done + start + len(batch), total)


def _publish(
    session: Session,
    settings: Settings,
    *,
    vectors: VectorIndex,
    keypoints: KeypointIndex,
    exemplars: dict[str, Exemplar],
    built_by: str,
    actor: str,
) -> IndexVersion:
    """Write a version folder next to the live ones, then make it the active version."""
    text_assets, text_labels = _asset_texts(session)
    text_vectors = get_embedder(settings).embed_texts(text_labels)
    settings.index_dir.mkdir(parents=True, exist_ok=True)
    version = IndexVersion(
        embedder=vectors.embedder,
        dimension=vectors.dimension,
        vectors=len(vectors),
        exemplars=len(exemplars),
        kind=vectors.kind,
        path="",
        built_by=built_by,
    )
    staging = Path(tempfile.mkdtemp(dir=settings.index_dir, prefix=".staging-"))
    try:
        vectors.save(staging)
        keypoints.save(staging / "keypoints.npz")
        np.save(staging / "texts.npy", text_vectors)
        (staging / "index.json").write_text(
            json.dumps(
                {
                    "exemplars": {i: vars(e) for i, e in exemplars.items()},
                    "text_assets": text_assets,
                    "text_labels": text_labels,
                }
            )
        )
        session.add(version)
        session.flush()
        final = settings.index_dir / f"v{version.id:06d}-{version.checkpoint}"
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    version.path = str(final)
    session.execute(update(IndexVersion).where(IndexVersion.id != version.id).values(active=False))
    version.active = True
    _prune(session, keep=KEEP_VERSIONS)
    audit.append(
        session=session,
        actor=actor,
        type=f"index.{built_by}",
        subject=f"index:{version.checkpoint}",
        payload={
            "embedder": version.embedder,
            "dimension": version.dimension,
            "vectors": version.vectors,
            "kind": version.kind,
        },
    )
    return version


def _prune(session: Session, keep: int) -> None:
    versions = list(session.scalars(select(IndexVersion).order_by(IndexVersion.id.desc())))
    for old in versions[keep:]:
        if old.path:
            shutil.rmtree(old.path, ignore_errors=True)
            old.path = ""


def build(
    *,
    session: Session,
    settings: Settings,
    blobs: BlobStore,
    actor: str,
    progress: Progress | None = None,
) -> IndexVersion:
    """Embed every exemplar again into a new version and make it active."""
    embedder = get_embedder(settings)
    references = list(session.scalars(select(ReferenceImage).order_by(ReferenceImage.id)))
    vectors = VectorIndex.empty(
        embedder=embedder.name,
        dimension=embedder.dimension,
        expected=len(references),
        exact_limit=settings.matching.exact_index_limit,
    )
    keypoints = KeypointIndex()
    _embed_references(references, blobs, embedder, keypoints, vectors, progress)
    exemplars = {r.id: Exemplar(r.asset_id, r.polarity) for r in references}
    return _publish(
        session,
        settings,
        vectors=vectors,
        keypoints=keypoints,
        exemplars=exemplars,
        built_by="build",
        actor=actor,
    )


def add(
    *,
    session: Session,
    settings: Settings,
    blobs: BlobStore,
    reference_ids: Iterable[str],
    actor: str,
) -> IndexVersion:
    """The active version plus these exemplars, as a new active version; nothing already
    indexed is embedded again. Without an active version this is a full build."""
    # Locked: two additions at once would each publish the old version plus only their own.
    current = session.scalar(select(IndexVersion).where(IndexVersion.active).with_for_update())
    if current is None:
        return build(session=session, settings=settings, blobs=blobs, actor=actor)
    embedder = get_embedder(settings)
    folder = Path(current.path)
    vectors = VectorIndex.load(folder)
    if vectors.embedder != embedder.name:
        raise IndexUnusableError(
            f"the active index was built with {vectors.embedder!r} and this process embeds "
            f"with {embedder.name!r}; vectors of two embedders do not mix: run "
            "`clearance index build`"
        )
    keypoints = KeypointIndex.load(folder / "keypoints.npz")
    exemplars = _exemplar_table(_metadata(folder))
    wanted = set(reference_ids) - set(exemplars)
    references = list(
        session.scalars(
            select(ReferenceImage).where(ReferenceImage.id.in_(wanted)).order_by(ReferenceImage.id)
        )
    )
    if (
        vectors.kind == "flat"
        and len(vectors) + len(references) > settings.matching.exact_index_limit
    ):
        vectors = _as_hnsw(vectors)
    _embed_references(references, blobs, embedder, keypoints, vectors, progress=None)
    exemplars |= {r.id: Exemplar(r.asset_id, r.polarity) for r in references}
    return _publish(
        session,
        settings,
        vectors=vectors,
        keypoints=keypoints,
        exemplars=exemplars,
        built_by="add",
        actor=actor,
    )


def _as_hnsw(flat: VectorIndex) -> VectorIndex:
    """Past the exact-search limit: the same vectors (read back, not re-embedded) in HNSW."""
    stored = flat.index.reconstruct_n(0, len(flat))
    hnsw = VectorIndex.empty(
        embedder=flat.embedder, dimension=flat.dimension, expected=len(flat) + 1, exact_limit=0
    )
    hnsw.add(stored, list(flat.ids))
    return hnsw


_loaded: LoadedIndex | None = None
_loaded_lock = threading.Lock()


def load_active(*, session: Session, settings: Settings) -> LoadedIndex | None:
    """The active version, loaded once per process and again whenever the checkpoint moves."""
    global _loaded
    current = active_version(session)
    if current is None:
        return None
    with _loaded_lock:
        if _loaded is not None and _loaded.checkpoint == current.checkpoint:
            return _loaded
        embedder = get_embedder(settings)
        if current.embedder != embedder.name:
            raise IndexUnusableError(
                f"the active index was built with {current.embedder!r}, but this process "
                f"embeds with {embedder.name!r}; vectors of two embedders do not mix: run "
                "`clearance index build`"
            )
        folder = Path(current.path)
        meta = _metadata(folder)
        _loaded = LoadedIndex(
            checkpoint=current.checkpoint,
            embedder=current.embedder,
            vectors=VectorIndex.load(folder),
            keypoints=KeypointIndex.load(folder / "keypoints.npz"),
            exemplars=_exemplar_table(meta),
            text_assets=meta["text_assets"],
            text_labels=meta["text_labels"],
            text_vectors=np.load(folder / "texts.npy", allow_pickle=False),
        )
        log.info(
            "loaded index %s: %d vectors (%s)", current.checkpoint, current.vectors, current.kind
        )
        return _loaded

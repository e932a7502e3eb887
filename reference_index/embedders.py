"""CLIP embeddings of images and of asset names and descriptions (open_clip, wrapped).

Production loads the configured model (ViT-L-14) from a local checkpoint file. Without
one, a tiny open_clip model with random weights stands in so the whole path runs offline;
its name says what it is, and its scores never decide anything (`semantic` is False).
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.settings import Settings

log = logging.getLogger(__name__)

TINY_MODEL = "tiny-random-clip"
TINY_EMBEDDER = "tiny-random (not a semantic check)"
_TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# Fixed, so every process and machine builds the same tiny weights.
_TINY_SEED = 20240801
_BATCH = 32


@dataclass
class Embedder:
    name: str
    dimension: int
    # False for the random-weight stand-in: its similarities mean nothing.
    semantic: bool
    model: Any
    preprocess: Any
    tokenizer: Any

    def embed_images(self, images: list[Any]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per PIL image."""
        import torch

        rows = []
        for start in range(0, len(images), _BATCH):
            batch = torch.stack([self.preprocess(i) for i in images[start : start + _BATCH]])
            with torch.inference_mode():
                rows.append(self.model.encode_image(batch).float().numpy())
        return _normalised(np.concatenate(rows) if rows else np.zeros((0, self.dimension)))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        rows = []
        for start in range(0, len(texts), _BATCH):
            tokens = self.tokenizer(texts[start : start + _BATCH])
            with torch.inference_mode():
                rows.append(self.model.encode_text(tokens).float().numpy())
        return _normalised(np.concatenate(rows) if rows else np.zeros((0, self.dimension)))


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    result: np.ndarray = vectors / np.maximum(norms, 1e-12)
    return result


_cached: dict[tuple[str, str], Embedder] = {}
_lock = threading.Lock()


def get_embedder(settings: Settings) -> Embedder:
    """The configured embedder, loaded once per process."""
    clip = settings.matching.clip
    key = (clip.model_name, str(clip.checkpoint)) if clip.checkpoint else (TINY_MODEL, "")
    with _lock:
        embedder = _cached.get(key)
        if embedder is None:
            embedder = _cached[key] = _load(settings)
        return embedder


def _load(settings: Settings) -> Embedder:
    import open_clip

    clip = settings.matching.clip
    if clip.checkpoint is None:
        _register_tiny()
        import torch

        # Seeded without disturbing the process's own random state.
        with torch.random.fork_rng():
            torch.manual_seed(_TINY_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL)
        name, semantic, tokenizer_name = TINY_EMBEDDER, False, TINY_MODEL
    else:
        if not clip.checkpoint.is_file():
            from reference_index.errors import EmbedderUnavailableError

            raise EmbedderUnavailableError(
                f"CLEARANCE_MATCHING__CLIP__CHECKPOINT = {str(clip.checkpoint)!r} is not a file"
            )
        model, _, preprocess = open_clip.create_model_and_transforms(
            clip.model_name, pretrained=str(clip.checkpoint)
        )
        name, semantic, tokenizer_name = (
            f"open_clip {clip.model_name} ({clip.checkpoint.name})",
            True,
            clip.model_name,
        )
    model.eval()
    dimension = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else 0
    dimension = dimension or int(_TINY_CONFIG["embed_dim"])  # type: ignore[call-overload]
    log.info("CLIP embedder: %s, %d dimensions", name, dimension)
    return Embedder(
        name, dimension, semantic, model, preprocess, open_clip.get_tokenizer(tokenizer_name)
    )


_registered = False


def _register_tiny() -> None:
    """open_clip finds model configs in folders; add ours once per process."""
    global _registered
    if _registered:
        return
    import open_clip

    folder = Path(tempfile.mkdtemp(prefix="clearance-clip-"))
    (folder / f"{TINY_MODEL}.json").write_text(json.dumps(_TINY_CONFIG))
    open_clip.add_model_config(folder)
    _registered = True

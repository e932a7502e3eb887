"""The CLIP embedder: without a checkpoint, the tiny random-weight open_clip model, named as
what it is; its vectors are normalised and the same in every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import skimage.data
from PIL import Image

from core.settings import ClipSettings, MatchingSettings, Settings
from reference_index.embedders import TINY_EMBEDDER, Embedder, get_embedder
from reference_index.errors import EmbedderUnavailableError

REPO = Path(__file__).resolve().parents[2]


def photo(name: str) -> Image.Image:
    array: npt.NDArray[np.uint8] = getattr(skimage.data, name)()
    return Image.fromarray(array)


_EMBED_IN_ANOTHER_PROCESS = """
import json, sys
import numpy as np, skimage.data
from PIL import Image
from core.settings import MatchingSettings, Settings
from reference_index.embedders import get_embedder
embedder = get_embedder(Settings(data_dir=sys.argv[1], matching=MatchingSettings()))
image = embedder.embed_images([Image.fromarray(skimage.data.astronaut())])[0]
text = embedder.embed_texts(["Mickey Mouse"])[0]
print(json.dumps({"name": embedder.name, "image": image.tolist(), "text": text.tolist()}))
"""


@pytest.fixture(scope="module")
def other_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[subprocess.Popen[str]]:
    """A second process embedding a fixed image and text; started before this process loads
    its own model so the two loads overlap."""
    process = subprocess.Popen(
        [sys.executable, "-c", _EMBED_IN_ANOTHER_PROCESS, str(tmp_path_factory.mktemp("other"))],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def embedder(
    other_process: subprocess.Popen[str], tmp_path_factory: pytest.TempPathFactory
) -> Embedder:
    # Explicit default matching settings: a checkpoint in the environment must not leak in.
    return get_embedder(
        Settings(data_dir=tmp_path_factory.mktemp("data"), matching=MatchingSettings())
    )


def test_default_is_the_tiny_random_embedder_named_as_such(embedder: Embedder) -> None:
    """Without a checkpoint the embedder is the tiny random model: it says so in its name,
    claims no semantics and has 64 dimensions."""
    assert embedder.name == TINY_EMBEDDER == "tiny-random (not a semantic check)"
    assert embedder.semantic is False
    assert embedder.dimension == 64


def test_embedder_is_loaded_once_per_process(embedder: Embedder, tmp_path: Path) -> None:
    """Asking again (even with other settings that pick the same model) gives the same
    loaded embedder."""
    assert get_embedder(Settings(data_dir=tmp_path, matching=MatchingSettings())) is embedder


def assert_normalised(vectors: npt.NDArray[np.float32], rows: int) -> None:
    assert vectors.dtype == np.float32
    assert vectors.shape == (rows, 64)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_image_vectors_are_l2_normalised_float32(embedder: Embedder) -> None:
    """One L2-normalised float32 row per image, for images of any size and mode; different
    photos give different vectors."""
    images = [photo("astronaut"), photo("coffee"), photo("camera").convert("RGB")]
    vectors = embedder.embed_images(images)
    assert_normalised(vectors, 3)
    assert len({row.tobytes() for row in vectors}) == 3
    assert embedder.embed_images([]).shape == (0, 64)


def test_image_vectors_do_not_depend_on_batching(embedder: Embedder) -> None:
    """An image's vector is the same embedded alone or among 40 others (more than a batch)."""
    images = [photo("astronaut"), photo("coffee")] * 20
    together = embedder.embed_images(images)
    alone = embedder.embed_images([photo("coffee")])
    np.testing.assert_allclose(together[1], alone[0], atol=1e-5)
    np.testing.assert_allclose(together[39], alone[0], atol=1e-5)


def test_text_vectors_one_normalised_row_per_text(embedder: Embedder) -> None:
    """embed_texts returns one normalised float32 row per text, in order, and deterministic."""
    texts = ["Mickey Mouse", "a red soda can", "", "x" * 2000]
    vectors = embedder.embed_texts(texts)
    assert_normalised(vectors, len(texts))
    np.testing.assert_allclose(embedder.embed_texts(texts[1:2])[0], vectors[1], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    assert embedder.embed_texts([]).shape == (0, 64)


def test_tiny_weights_are_the_same_in_another_process(
    embedder: Embedder, other_process: subprocess.Popen[str]
) -> None:
    """A separate process builds the same tiny weights: identical image and text vectors,
    so an index built by one worker is valid for another."""
    stdout, stderr = other_process.communicate(timeout=180)
    assert other_process.returncode == 0, stderr
    other = json.loads(stdout.strip().splitlines()[-1])
    assert other["name"] == embedder.name
    here_image = embedder.embed_images([photo("astronaut")])[0]
    here_text = embedder.embed_texts(["Mickey Mouse"])[0]
    np.testing.assert_allclose(np.array(other["image"]), here_image, atol=1e-6)
    np.testing.assert_allclose(np.array(other["text"]), here_text, atol=1e-6)


@pytest.mark.parametrize("kind", ["missing-file", "directory"])
def test_configured_checkpoint_that_is_not_a_file_is_unavailable(tmp_path: Path, kind: str) -> None:
    """A configured checkpoint that is not a file raises EmbedderUnavailableError naming the
    setting and the path, rather than silently falling back to random weights."""
    checkpoint = tmp_path / "ViT-L-14.pt" if kind == "missing-file" else tmp_path
    settings = Settings(
        data_dir=tmp_path,
        matching=MatchingSettings(clip=ClipSettings(checkpoint=checkpoint)),
    )
    with pytest.raises(EmbedderUnavailableError) as caught:
        get_embedder(settings)
    assert "CLEARANCE_MATCHING__CLIP__CHECKPOINT" in caught.value.detail
    assert str(checkpoint) in caught.value.detail
    assert caught.value.to_dict()["error"] == "embedder_unavailable"

"""Request validation, model resolution, registered model folders, and generation with the
real tiny FLUX pipeline."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from core.db import read_scope, session_scope
from core.settings import Settings
from generation.errors import GenerationRequestError, ModelIntegrityError, ModelUnavailableError
from generation.models import ModelRegistration
from generation.schemas import MAX_IMAGES_PER_JOB, MAX_SEED, MIN_SIDE, GenerationSpec
from generation.service import (
    ModelCheck,
    check_available,
    generate,
    register_model,
    resolve_model,
    validate_spec,
    verify_models,
)
from generation.tiny import TINY_MODEL_LABEL
from generation.variants import get_variant

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LOCAL_MODELS_ENV = "CLEARANCE_GENERATION__LOCAL_MODELS"


def spec(**changes: Any) -> GenerationSpec:
    base = GenerationSpec(
        prompt="a lighthouse on a cliff at dusk",
        variant="schnell",
        width=256,
        height=256,
        seed=1234,
        n_images=1,
    )
    return dataclasses.replace(base, **changes)


class SettingsFactory(Protocol):
    def __call__(
        self,
        local_models: dict[str, Path] | None = None,
        allow_tiny_fallback: bool | None = None,
    ) -> Settings: ...


def pixels(png: bytes) -> npt.NDArray[np.int16]:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


@pytest.fixture
def make_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path
) -> SettingsFactory:
    """Build Settings from the environment, as the service does, with the session's tiny
    model and optional local model folders."""

    def build(
        local_models: dict[str, Path] | None = None, allow_tiny_fallback: bool | None = None
    ) -> Settings:
        monkeypatch.setenv("CLEARANCE_DATA_DIR", str(tmp_path / "var"))
        monkeypatch.setenv("CLEARANCE_GENERATION__TINY_MODEL_DIR", str(tiny_model_dir))
        if local_models is None:
            monkeypatch.delenv(LOCAL_MODELS_ENV, raising=False)
        else:
            monkeypatch.setenv(
                LOCAL_MODELS_ENV, json.dumps({k: str(v) for k, v in local_models.items()})
            )
        if allow_tiny_fallback is None:
            monkeypatch.delenv("CLEARANCE_GENERATION__ALLOW_TINY_FALLBACK", raising=False)
        else:
            monkeypatch.setenv(
                "CLEARANCE_GENERATION__ALLOW_TINY_FALLBACK", str(allow_tiny_fallback).lower()
            )
        return Settings()

    return build


@pytest.fixture
def tiny_settings(make_settings: SettingsFactory) -> Settings:
    """Default settings: no local folders, tiny fallback allowed."""
    return make_settings()


# --- validate_spec ---------------------------------------------------------------------------


def test_valid_spec_returns_its_variant() -> None:
    """A valid request passes and yields the catalogue entry of its variant."""
    assert validate_spec(spec()) == get_variant("schnell")
    assert validate_spec(spec(width=1024, height=1024, n_images=4, seed=MAX_SEED)).name == (
        "schnell"
    )
    assert validate_spec(spec(variant="pro-ultra", width=2048, height=1440, seed=0)).name == (
        "pro-ultra"
    )


@pytest.mark.parametrize("field", ["width", "height"])
@pytest.mark.parametrize(
    "value",
    [
        pytest.param(250, id="not-multiple-of-16"),
        pytest.param(264, id="multiple-of-8-only"),
        pytest.param(240, id="below-minimum"),
        pytest.param(0, id="zero"),
        pytest.param(-256, id="negative"),
        pytest.param(1040, id="above-schnell-maximum"),
    ],
)
def test_bad_side_names_the_field_and_the_allowed_range(field: str, value: int) -> None:
    """A side that is not a multiple of 16 within MIN_SIDE..max of the variant is refused,
    naming the field, the value and the allowed range."""
    with pytest.raises(GenerationRequestError) as caught:
        validate_spec(spec(**{field: value}))
    error = caught.value
    assert error.field == field
    assert f"{field} {value}" in error.detail
    assert "multiple of 16" in error.detail
    assert f"from {MIN_SIDE} to 1024" in error.detail


def test_side_maximum_depends_on_the_variant() -> None:
    """1440 is too wide for schnell but allowed for pro; 2048 only for pro-ultra, and the
    message states the limit of the variant asked for."""
    with pytest.raises(GenerationRequestError) as caught:
        validate_spec(spec(width=1440))
    assert "to 1024" in caught.value.detail
    assert validate_spec(spec(variant="pro", width=1440)).name == "pro"
    with pytest.raises(GenerationRequestError) as caught:
        validate_spec(spec(variant="pro", height=2048))
    assert caught.value.field == "height"
    assert "to 1440" in caught.value.detail
    assert validate_spec(spec(variant="pro-ultra", height=2048)).name == "pro-ultra"


@pytest.mark.parametrize("n_images", [0, MAX_IMAGES_PER_JOB + 1, -1])
def test_bad_image_count_names_the_field_and_range(n_images: int) -> None:
    """n_images outside 1..8 is refused on field n_images, stating the range."""
    assert MAX_IMAGES_PER_JOB == 8
    with pytest.raises(GenerationRequestError) as caught:
        validate_spec(spec(n_images=n_images))
    assert caught.value.field == "n_images"
    assert f"n_images {n_images}" in caught.value.detail
    assert "1 to 8" in caught.value.detail


def test_up_to_eight_images_are_allowed() -> None:
    """Every count from 1 to 8 passes validation."""
    for n_images in range(1, 9):
        assert validate_spec(spec(n_images=n_images)).name == "schnell"


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 2**63])
def test_seed_out_of_range_names_the_field_and_range(seed: int) -> None:
    """Seeds must fit in 32 unsigned bits; others are refused on field seed."""
    with pytest.raises(GenerationRequestError) as caught:
        validate_spec(spec(seed=seed))
    assert caught.value.field == "seed"
    assert str(seed) in caught.value.detail
    assert f"0 to {MAX_SEED}" in caught.value.detail
    assert MAX_SEED == 4294967295


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t "])
def test_empty_prompt_is_refused(prompt: str) -> None:
    """A prompt with no visible text is refused on field prompt."""
    with pytest.raises(GenerationRequestError) as caught:
        validate_spec(spec(prompt=prompt))
    assert caught.value.field == "prompt"
    assert "empty" in caught.value.detail


def test_unknown_variant_is_refused_before_anything_else() -> None:
    """An unknown variant is reported as such, even when other fields are also bad."""
    with pytest.raises(GenerationRequestError) as caught:
        validate_spec(spec(variant="flux-max", width=7, prompt=""))
    assert caught.value.field == "variant"


# --- resolve_model ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pro", "pro-ultra"])
def test_api_variants_are_unavailable_locally(name: str, tiny_settings: Settings) -> None:
    """API-only variants cannot run here, and never fall back to the tiny model."""
    with pytest.raises(ModelUnavailableError) as caught:
        resolve_model(get_variant(name), tiny_settings)
    assert caught.value.field == "variant"
    assert repr(name) in caught.value.detail
    assert "API" in caught.value.detail


def test_without_fallback_a_missing_folder_is_an_error(make_settings: SettingsFactory) -> None:
    """With allow_tiny_fallback off and no folder configured, resolution fails and the
    message shows how to configure the variant's weights."""
    settings = make_settings(allow_tiny_fallback=False)
    assert settings.generation.allow_tiny_fallback is False
    with pytest.raises(ModelUnavailableError) as caught:
        resolve_model(get_variant("dev"), settings)
    detail = caught.value.detail
    assert LOCAL_MODELS_ENV in detail
    assert "'dev'" in detail
    assert "black-forest-labs/FLUX.1-dev" in detail


def test_default_falls_back_to_the_labelled_tiny_model(tiny_settings: Settings) -> None:
    """By default a local variant with no folder resolves to the tiny model, labelled as an
    offline fallback."""
    source = resolve_model(get_variant("schnell"), tiny_settings)
    assert source.folder == tiny_settings.tiny_model_dir
    assert source.label == TINY_MODEL_LABEL
    assert "offline fallback" in source.label
    assert "not FLUX.1" in source.label


def test_configured_folder_is_used_and_named(
    make_settings: SettingsFactory, tiny_model_dir: Path
) -> None:
    """A configured folder with model_index.json resolves to itself, labelled with the
    variant title and the folder."""
    settings = make_settings(local_models={"schnell": tiny_model_dir})
    source = resolve_model(get_variant("schnell"), settings)
    assert source.folder == tiny_model_dir
    assert source.label == f"FLUX.1 [schnell] from {tiny_model_dir}"
    # Other local variants are unaffected by schnell's folder.
    assert resolve_model(get_variant("dev"), settings).label == TINY_MODEL_LABEL


def test_check_available_validates_before_resolving(tiny_settings: Settings) -> None:
    """check_available reports a bad request before looking for a model."""
    with pytest.raises(GenerationRequestError):
        check_available(spec(variant="pro", width=100), tiny_settings)
    with pytest.raises(ModelUnavailableError):
        check_available(spec(variant="pro"), tiny_settings)
    assert check_available(spec(), tiny_settings).label == TINY_MODEL_LABEL


# --- generate with the tiny pipeline --------------------------------------------------------


def test_generate_returns_pngs_of_the_requested_size_with_consecutive_seeds(
    tiny_settings: Settings,
) -> None:
    """n_images PNGs of exactly the requested size, image i with seed seed + i, labelled as
    the tiny fallback."""
    result = generate(spec(n_images=3, seed=41), tiny_settings)
    assert result.model == TINY_MODEL_LABEL
    assert "offline fallback" in result.model
    assert [image.index for image in result.images] == [0, 1, 2]
    assert [image.seed for image in result.images] == [41, 42, 43]
    for image in result.images:
        assert image.png.startswith(PNG_SIGNATURE)
        assert (image.width, image.height) == (256, 256)
        with Image.open(io.BytesIO(image.png)) as decoded:
            assert decoded.format == "PNG"
            assert decoded.size == (256, 256)


def test_generate_keeps_width_and_height_apart(tiny_settings: Settings) -> None:
    """A non-square request comes back width x height, not transposed."""
    result = generate(spec(width=320, height=256), tiny_settings)
    (image,) = result.images
    assert (image.width, image.height) == (320, 256)
    with Image.open(io.BytesIO(image.png)) as decoded:
        assert decoded.size == (320, 256)


def test_same_seed_gives_byte_identical_png(tiny_settings: Settings) -> None:
    """The same spec twice yields the same bytes: generation is reproducible from its seed."""
    first = generate(spec(seed=7, n_images=2), tiny_settings)
    second = generate(spec(seed=7, n_images=2), tiny_settings)
    assert [i.png for i in first.images] == [i.png for i in second.images]


def test_different_seeds_give_different_images(tiny_settings: Settings) -> None:
    """Images within a job, and jobs with different seeds, are different pictures."""
    batch = generate(spec(seed=7, n_images=2), tiny_settings)
    other = generate(spec(seed=9), tiny_settings)
    a, b, c = (
        pixels(batch.images[0].png),
        pixels(batch.images[1].png),
        pixels(other.images[0].png),
    )
    assert np.abs(a - b).mean() > 5
    assert np.abs(a - c).mean() > 5
    assert np.abs(b - c).mean() > 5


def test_an_image_of_a_batch_is_reproduced_alone_from_its_seed(tiny_settings: Settings) -> None:
    """Image i of a batch, regenerated alone with its recorded seed, is the same picture.
    Batched float arithmetic may differ in the last bit, so pixels may differ by rounding
    (under one level on average), far less than between two seeds."""
    batch = generate(spec(seed=100, n_images=2), tiny_settings)
    alone = generate(spec(seed=batch.images[1].seed), tiny_settings)
    again = pixels(alone.images[0].png)
    assert np.abs(pixels(batch.images[1].png) - again).mean() < 1
    assert np.abs(pixels(batch.images[0].png) - again).mean() > 5


def test_seeds_wrap_around_past_the_maximum(tiny_settings: Settings) -> None:
    """A batch starting at MAX_SEED continues at 0, so every recorded seed is valid."""
    result = generate(spec(seed=MAX_SEED, n_images=2), tiny_settings)
    assert [image.seed for image in result.images] == [MAX_SEED, 0]
    for image in result.images:
        validate_spec(spec(seed=image.seed))


def test_generate_refuses_bad_requests_before_loading_a_model(tiny_settings: Settings) -> None:
    """Bad requests and API-only variants fail with their own errors, not a model error."""
    with pytest.raises(GenerationRequestError) as caught:
        generate(spec(width=300), tiny_settings)
    assert caught.value.field == "width"
    with pytest.raises(ModelUnavailableError):
        generate(spec(variant="pro"), tiny_settings)


# --- registered local folders (database on SQLite and PostgreSQL) ---------------------------

WEIGHT_FILES = [
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "text_encoder_2/model.safetensors",
]


def register(folder: Path, variant: str = "schnell") -> ModelRegistration:
    with session_scope() as session:
        return register_model(session=session, variant=variant, folder=folder, actor="test")


def verify(settings: Settings) -> list[ModelCheck]:
    """What worker start does: check every configured folder against its registration."""
    with read_scope() as session:
        return verify_models(session=session, settings=settings)


def copy_of_tiny(tiny_model_dir: Path, folder: Path) -> Path:
    shutil.copytree(tiny_model_dir, folder)
    return folder


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_registered_and_verified_folder_is_loaded_and_labelled_with_its_path(
    settings: Settings, make_settings: SettingsFactory, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A configured folder (a copy of the tiny weights), once registered and verified, is
    loaded through the same from_pretrained path: the same pixels as the fallback for the
    same seed, but labelled with the variant title and the folder."""
    folder = copy_of_tiny(tiny_model_dir, tmp_path / "flux-schnell")
    registration = register(folder)
    assert registration.variant == "schnell"
    assert set(registration.manifest) >= {"model_index.json", *WEIGHT_FILES}
    configured = make_settings(local_models={"schnell": folder})
    assert verify(configured) == [ModelCheck("schnell", folder, None)]

    expected = generate(spec(seed=5), make_settings())
    result = generate(spec(seed=5), configured)
    assert result.model == f"FLUX.1 [schnell] from {folder}"
    assert "fallback" not in result.model
    assert result.images[0].png == expected.images[0].png


def test_unregistered_folder_is_not_loaded(
    settings: Settings, make_settings: SettingsFactory, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A configured folder nobody registered is reported by verify_models with the command
    that registers it, and generate refuses it (never falling back to the tiny model)."""
    folder = copy_of_tiny(tiny_model_dir, tmp_path / "unregistered")
    configured = make_settings(local_models={"schnell": folder})
    (check,) = verify(configured)
    assert check.problem is not None
    assert "is not registered" in check.problem
    assert f"clearance models register --variant schnell {folder}" in check.problem
    with pytest.raises(ModelIntegrityError) as caught:
        generate(spec(), configured)
    assert "was not verified" in caught.value.detail
    assert str(folder) in caught.value.detail


def test_registered_folder_must_also_be_verified_in_this_process(
    settings: Settings, make_settings: SettingsFactory, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Registration alone does not let a folder load: the process must have verified it
    (worker start does), else ModelIntegrityError says it was not verified."""
    folder = copy_of_tiny(tiny_model_dir, tmp_path / "registered-only")
    register(folder)
    configured = make_settings(local_models={"schnell": folder})
    with pytest.raises(ModelIntegrityError) as caught:
        generate(spec(), configured)
    assert caught.value.field == "variant"
    assert "was not verified" in caught.value.detail
    verify(configured)
    assert len(generate(spec(), configured).images) == 1


def test_folder_without_model_index_is_reported_by_verify(
    settings: Settings, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A local_models folder that is not a diffusers folder resolves to itself (never to the
    tiny model); verify_models reports it, naming the setting, the folder and the missing
    model_index.json; registering it is refused; generate refuses to load it."""
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    configured = make_settings(local_models={"schnell": empty})
    source = resolve_model(get_variant("schnell"), configured)
    assert source.folder == empty
    assert not source.is_fallback

    (check,) = verify(configured)
    assert check.problem is not None
    assert LOCAL_MODELS_ENV in check.problem
    assert str(empty) in check.problem
    assert "model_index.json" in check.problem

    with pytest.raises(ModelUnavailableError) as refused:
        register(empty)
    assert refused.value.field == "folder"
    assert "model_index.json" in refused.value.detail
    with pytest.raises(ModelIntegrityError):
        generate(spec(), configured)


def test_folder_missing_a_weights_file_is_reported_by_verify(
    settings: Settings, make_settings: SettingsFactory, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A folder whose component lacks its weights is incomplete, named by the missing file."""
    folder = copy_of_tiny(tiny_model_dir, tmp_path / "no-vae-weights")
    (folder / "vae/diffusion_pytorch_model.safetensors").unlink()
    (check,) = verify(make_settings(local_models={"schnell": folder}))
    assert check.problem is not None
    assert "incomplete" in check.problem
    assert "vae/*.safetensors (no weights)" in check.problem


@pytest.mark.parametrize("weights", WEIGHT_FILES)
def test_weights_changed_since_verification_are_refused_by_name(
    weights: str,
    settings: Settings,
    make_settings: SettingsFactory,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """A file of a verified folder corrupted afterwards (any component) makes generate raise
    ModelIntegrityError naming that file, before any weights are read; verify_models then
    reports the same file."""
    folder = copy_of_tiny(tiny_model_dir, tmp_path / "verified-then-corrupted")
    register(folder)
    configured = make_settings(local_models={"schnell": folder})
    assert [check.problem for check in verify(configured)] == [None]
    truncate(folder / weights)

    with pytest.raises(ModelIntegrityError) as caught:
        generate(spec(), configured)
    assert "changed since the worker verified it" in caught.value.detail
    assert weights in caught.value.detail
    (check,) = verify(configured)
    assert check.problem is not None
    assert f"changed: {weights}" in check.problem


def test_same_size_change_and_added_file_are_caught_before_loading(
    settings: Settings, make_settings: SettingsFactory, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A change that keeps the file size is still caught (its mtime moved, so it is hashed
    again), and so is a file added to the folder after verification."""
    folder = copy_of_tiny(tiny_model_dir, tmp_path / "flipped")
    register(folder)
    configured = make_settings(local_models={"schnell": folder})
    verify(configured)
    config = folder / "transformer/config.json"
    text = config.read_text()
    config.write_text(text.replace('"num_layers": 1', '"num_layers": 2'))
    assert len(config.read_text()) == len(text)
    with pytest.raises(ModelIntegrityError) as caught:
        generate(spec(), configured)
    assert "changed: transformer/config.json" in caught.value.detail

    other = copy_of_tiny(tiny_model_dir, tmp_path / "added")
    register(other)
    extra = make_settings(local_models={"schnell": other})
    verify(extra)
    (other / "transformer/extra.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ModelIntegrityError) as caught:
        generate(spec(), extra)
    assert "not in the manifest: transformer/extra.safetensors" in caught.value.detail


@pytest.mark.parametrize("weights", WEIGHT_FILES)
def test_weights_corrupted_before_registration_raise_model_unavailable(
    weights: str,
    settings: Settings,
    make_settings: SettingsFactory,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """A folder registered with a truncated weights file (a valid manifest of bad files)
    passes verification, and the loader's failure is reported as ModelUnavailableError
    naming the model, never as a raw loader exception."""
    folder = copy_of_tiny(tiny_model_dir, tmp_path / "broken-schnell")
    truncate(folder / weights)
    register(folder)
    configured = make_settings(local_models={"schnell": folder})
    assert [check.problem for check in verify(configured)] == [None]
    with pytest.raises(ModelUnavailableError) as caught:
        generate(spec(), configured)
    assert f"FLUX.1 [schnell] from {folder}" in caught.value.detail


def test_folder_configured_through_a_symlink_loads_once_verified(
    settings: Settings, make_settings: SettingsFactory, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Deployments point the setting at a link (models/current -> models/flux-2024-11).
    Registered and verified through the link, the folder loads: verification and loading
    must agree on which folder it is."""
    real = copy_of_tiny(tiny_model_dir, tmp_path / "flux-schnell-2024-11")
    link = tmp_path / "current"
    link.symlink_to(real, target_is_directory=True)
    register(link)
    configured = make_settings(local_models={"schnell": link})
    assert [check.problem for check in verify(configured)] == [None]
    result = generate(spec(), configured)
    assert len(result.images) == 1

"""Local generation with the real tiny FLUX pipeline, in this process: steps, progress,
out-of-memory recovery, the memory plan, Kontext editing, prompt length, and LoRA adapters.

Out-of-memory is injected by replacing `FluxPipeline.__call__` (no GPU here can be made to
run out on demand); everything else runs the real pipeline.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import struct
import subprocess
import sys
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import skimage.data
import torch
from diffusers import FluxPipeline
from PIL import Image
from sqlalchemy import select

from audit.models import AuditEvent
from core.db import read_scope, session_scope
from core.errors import UnavailableError
from core.images import ImageError, decode_image
from core.settings import Settings
from generation import memory
from generation.errors import (
    GenerationRequestError,
    ModelIntegrityError,
    OutOfGpuMemoryError,
)
from generation.models import LoraAdapter
from generation.schemas import MAX_INPUT_PIXELS, GenerationResult, GenerationSpec, LoraUse
from generation.service import (
    check_available,
    generate,
    register_lora,
    resolve_loras,
)
from generation.variants import get_variant
from tests.generation.lora_helpers import build_tiny_lora, tiny_lora_fixture  # noqa: F401

GIB = 1024**3


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


def pixels(png: bytes) -> npt.NDArray[np.int16]:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def mean_diff(a: bytes, b: bytes) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def photo(name: str) -> npt.NDArray[np.uint8]:
    """A photo that ships with scikit-image."""
    array: npt.NDArray[np.uint8] = getattr(skimage.data, name)()
    return array


def encode(array: npt.NDArray[np.uint8], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def photo_png() -> bytes:
    return encode(photo("astronaut"))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` in its header and holds no pixels: what a
    decompression bomb looks like before it is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture
def tiny_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path
) -> Settings:
    """Default settings with the session's tiny model: no local folders, fallback allowed."""
    monkeypatch.setenv("CLEARANCE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CLEARANCE_GENERATION__TINY_MODEL_DIR", str(tiny_model_dir))
    monkeypatch.delenv("CLEARANCE_GENERATION__LOCAL_MODELS", raising=False)
    return Settings()


def test_every_process_builds_the_same_tiny_pipeline(tmp_path: Path) -> None:
    """A seed gives the same image on every machine and in every process: the tiny folders
    two processes build are the same byte for byte, tokenizers included."""
    script = (
        "import sys; from pathlib import Path; "
        "from generation.tiny import ensure_tiny_flux; ensure_tiny_flux(Path(sys.argv[1]))"
    )
    built = []
    for name in ("first", "second"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True)
        files = sorted(p for p in (tmp_path / name).rglob("*") if p.is_file())
        built.append({str(p.relative_to(tmp_path / name)): p.read_bytes() for p in files})
    assert built[0].keys() == built[1].keys()
    assert [k for k in built[0] if built[0][k] != built[1][k]] == []


# --- steps and progress --------------------------------------------------------------------


def test_steps_override_changes_the_image(tiny_settings: Settings) -> None:
    """Fewer denoising steps than the variant's default give a different picture; asking
    for the default number explicitly gives the default picture byte for byte."""
    default = generate(spec(seed=3), tiny_settings).images[0].png
    explicit = generate(spec(seed=3, steps=get_variant("schnell").default_steps), tiny_settings)
    fewer = generate(spec(seed=3, steps=1), tiny_settings)
    assert explicit.images[0].png == default
    # Well beyond batch rounding (under one level), if less than between two seeds.
    assert mean_diff(fewer.images[0].png, default) > 2


@pytest.mark.parametrize(
    ("variant", "steps", "allowed"),
    [("schnell", 0, "1 to 8"), ("schnell", 9, "1 to 8"), ("dev", 51, "1 to 50")],
)
def test_steps_outside_the_variant_range_are_refused(
    variant: str, steps: int, allowed: str, tiny_settings: Settings
) -> None:
    """Steps outside the variant's range are refused on field steps, stating the range,
    before any model runs."""
    with pytest.raises(GenerationRequestError) as caught:
        generate(spec(variant=variant, steps=steps), tiny_settings)
    assert caught.value.field == "steps"
    assert f"steps {steps}" in caught.value.detail
    assert allowed in caught.value.detail
    assert repr(variant) in caught.value.detail


@pytest.mark.parametrize("steps", [1, 3, None])
def test_on_step_is_called_once_per_step(steps: int | None, tiny_settings: Settings) -> None:
    """on_step(done, total) follows every denoising step, 1..N of N (N: the steps asked
    for, or the variant's default)."""
    calls: list[tuple[int, int]] = []
    generate(
        spec(steps=steps), tiny_settings, on_step=lambda done, total: calls.append((done, total))
    )
    n = steps or get_variant("schnell").default_steps
    assert calls == [(i, n) for i in range(1, n + 1)]


def test_placement_is_reported(tiny_settings: Settings) -> None:
    """The result says where the weights were placed: all on the GPU for the tiny model
    when there is one, else the CPU."""
    result = generate(spec(), tiny_settings)
    assert result.placement == (memory.GPU if torch.cuda.is_available() else memory.CPU)


# --- out of GPU memory (fault injection) ----------------------------------------------------


def inject_oom(monkeypatch: pytest.MonkeyPatch, fails: Callable[[int], bool]) -> list[int]:
    """Make the pipeline raise CUDA out-of-memory when `fails(batch)`; returns the batch
    sizes it was called with."""
    original = FluxPipeline.__call__
    batches: list[int] = []

    def call(self: FluxPipeline, *args: Any, **kwargs: Any) -> Any:
        batch = int(kwargs.get("num_images_per_prompt", 1))
        batches.append(batch)
        if fails(batch):
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)"
            )
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FluxPipeline, "__call__", call)
    return batches


def test_out_of_memory_retries_at_half_the_batch_with_the_same_seeds(
    monkeypatch: pytest.MonkeyPatch, tiny_settings: Settings
) -> None:
    """When the whole batch runs out of memory, the service retries at half the batch and
    returns every image, with the seeds, sizes and (up to batch rounding) pixels of a run
    that did not fail."""
    normal = generate(spec(seed=20, n_images=2), tiny_settings)
    batches = inject_oom(monkeypatch, lambda batch: batch > 1)
    retried = generate(spec(seed=20, n_images=2), tiny_settings)
    assert batches == [2, 1, 1]
    assert [(i.index, i.seed, i.width, i.height) for i in retried.images] == [
        (i.index, i.seed, i.width, i.height) for i in normal.images
    ]
    assert [i.seed for i in retried.images] == [20, 21]
    for got, expected in zip(retried.images, normal.images, strict=True):
        assert mean_diff(got.png, expected.png) < 1
    assert mean_diff(retried.images[0].png, retried.images[1].png) > 5


def test_progress_covers_every_batch_after_a_retry(
    monkeypatch: pytest.MonkeyPatch, tiny_settings: Settings
) -> None:
    """After a retry in smaller batches, on_step counts through all batches: 1..2N of 2N
    for two batches of N steps, never restarting at 1 within the run that succeeded."""
    batches = inject_oom(monkeypatch, lambda batch: batch > 2)
    calls: list[tuple[int, int]] = []
    result = generate(
        spec(seed=7, n_images=4, steps=2),
        tiny_settings,
        on_step=lambda done, total: calls.append((done, total)),
    )
    assert batches == [4, 2, 2]
    assert [i.seed for i in result.images] == [7, 8, 9, 10]
    assert calls == [(i, 4) for i in range(1, 5)]


def test_out_of_memory_at_every_batch_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, tiny_settings: Settings
) -> None:
    """If even the smaller batch runs out of memory, OutOfGpuMemoryError (a 503-kind error)
    says so, with the size, the batch and what to do; the pipeline still works after."""
    with monkeypatch.context() as patch:
        batches = inject_oom(patch, lambda batch: True)
        with pytest.raises(OutOfGpuMemoryError) as caught:
            generate(spec(n_images=3, width=320), tiny_settings)
    assert batches == [3, 1]
    error = caught.value
    assert isinstance(error, UnavailableError)
    assert error.code == "out_of_gpu_memory"
    assert "out of GPU memory at 320x256" in error.detail
    assert "even at batch 1" in error.detail
    assert "ask for fewer or smaller images" in error.detail
    assert isinstance(error.__cause__, torch.cuda.OutOfMemoryError)
    assert len(generate(spec(n_images=3), tiny_settings).images) == 3


# --- memory plan -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("need", "largest", "free", "placement"),
    [
        (10 * GIB, 5 * GIB, None, memory.CPU),
        (10 * GIB, 5 * GIB, 80 * GIB, memory.GPU),
        # 90% of what is free is usable: exactly that fits, a byte more does not.
        (72 * GIB, 30 * GIB, 80 * GIB, memory.GPU),
        (72 * GIB + 1, 30 * GIB, 80 * GIB, memory.MODEL_OFFLOAD),
        # 24 GiB free: 21.6 GiB usable.
        (40 * GIB, 21 * GIB, 24 * GIB, memory.MODEL_OFFLOAD),
        (40 * GIB, 22 * GIB, 24 * GIB, memory.SEQUENTIAL_OFFLOAD),
    ],
)
def test_choose_picks_the_fastest_placement_that_fits(
    need: int, largest: int, free: int | None, placement: str
) -> None:
    """All on the GPU when everything fits in 90% of free memory, else one component at a
    time when the largest fits, else layer by layer; no GPU means the CPU."""
    assert memory.choose(need, largest, free) == placement


def test_plan_counts_the_parameters_of_the_tiny_folder_from_headers(tiny_model_dir: Path) -> None:
    """The plan's parameter counts, read from safetensors headers alone, equal the real
    parameter counts of the loaded components; the estimate adds activations and overhead."""
    counted = memory.component_parameters(tiny_model_dir)
    pipeline = FluxPipeline.from_pretrained(tiny_model_dir, local_files_only=True)
    real = {
        name: sum(p.numel() for p in getattr(pipeline, name).parameters())
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2")
    }
    assert counted == real

    plan = memory.plan(
        tiny_model_dir, dtype_bytes=2, width=1024, height=1024, batch=1, free_bytes=80 * GIB
    )
    activations = memory.ACTIVATION_BYTES_PER_MEGAPIXEL
    assert plan.need_bytes == sum(real.values()) * 2 + activations + memory.OVERHEAD_BYTES
    assert plan.largest_component_bytes == (
        max(real.values()) * 2 + activations + memory.OVERHEAD_BYTES
    )
    assert plan.placement == memory.GPU
    assert "80.0 GiB free" in plan.describe()


def write_header_only_model(folder: Path, parameters: dict[str, int]) -> Path:
    """Safetensors files with a header and no data: the plan reads nothing else."""
    for component, count in parameters.items():
        header = json.dumps(
            {
                "__metadata__": {"format": "pt"},
                "weight": {"dtype": "BF16", "shape": [count], "data_offsets": [0, 2 * count]},
            }
        ).encode()
        (folder / component).mkdir(parents=True)
        weights = folder / component / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(struct.pack("<Q", len(header)) + header)
    return folder


# Parameter counts of the FLUX.1 [dev] / [schnell] components.
FLUX_PARAMETERS = {
    "transformer": 11_901_408_320,
    "text_encoder_2": 4_762_310_656,
    "text_encoder": 123_060_480,
    "vae": 83_819_683,
}


@pytest.mark.parametrize(
    ("free_gib", "batch", "placement"),
    [
        (80, 1, memory.GPU),  # H100: all on the GPU (~35 GiB needed)
        (40, 1, memory.GPU),
        (40, 4, memory.MODEL_OFFLOAD),  # four images need ~5.7 GiB more
        (32, 1, memory.MODEL_OFFLOAD),
        (24, 1, memory.SEQUENTIAL_OFFLOAD),  # the transformer alone does not fit
    ],
)
def test_plan_for_flux_sized_weights_follows_free_memory(
    free_gib: int, batch: int, placement: str, tmp_path: Path
) -> None:
    """With FLUX.1-sized weights on disk (bf16, 1024x1024), the placement follows the
    memory free on the device and the batch size."""
    folder = write_header_only_model(tmp_path / "flux", FLUX_PARAMETERS)
    plan = memory.plan(
        folder, dtype_bytes=2, width=1024, height=1024, batch=batch, free_bytes=free_gib * GIB
    )
    assert plan.placement == placement
    extra_images = (batch - 1) * memory.ACTIVATION_BYTES_PER_MEGAPIXEL
    # The anchor: FLUX.1 needs ~34 GiB at 1024x1024 in bf16 for one image.
    assert 34 * GIB < plan.need_bytes - extra_images < 36 * GIB


# --- Kontext editing -------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(256, 256), (384, 256)])
def test_kontext_edits_an_input_image_at_the_requested_size(
    width: int, height: int, tiny_settings: Settings
) -> None:
    """kontext-dev with an uploaded photo returns n_images PNGs of the requested size, one
    per consecutive seed."""
    result = generate(
        spec(
            variant="kontext-dev",
            prompt="make the sky purple",
            input_image=photo_png(),
            width=width,
            height=height,
            steps=2,
            n_images=2,
            seed=5,
        ),
        tiny_settings,
    )
    assert [(i.seed, i.width, i.height) for i in result.images] == [
        (5, width, height),
        (6, width, height),
    ]
    for image in result.images:
        with Image.open(io.BytesIO(image.png)) as decoded:
            assert decoded.size == (width, height)


def test_kontext_without_an_input_image_is_refused(tiny_settings: Settings) -> None:
    """An editing variant without an image to edit is refused on field input_image."""
    with pytest.raises(GenerationRequestError) as caught:
        check_available(spec(variant="kontext-dev"), tiny_settings)
    assert caught.value.field == "input_image"
    assert "upload one" in caught.value.detail


def test_an_input_image_for_a_text_to_image_variant_is_refused(tiny_settings: Settings) -> None:
    """schnell takes no input image: refused on field input_image, naming the editing
    variants."""
    with pytest.raises(GenerationRequestError) as caught:
        check_available(spec(input_image=photo_png()), tiny_settings)
    assert caught.value.field == "input_image"
    assert "'kontext-dev'" in caught.value.detail


def test_decode_input_image_returns_rgb_for_png_and_jpeg() -> None:
    """PNG and JPEG uploads decode to RGB images of their own size, greyscale too."""
    astronaut = decode_image(photo_png())
    assert (astronaut.mode, astronaut.size) == ("RGB", (512, 512))
    camera = decode_image(encode(photo("camera"), "JPEG"))
    assert (camera.mode, camera.size) == ("RGB", (512, 512))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        pytest.param(b"GIF89a? not really", "not a readable image", id="not-an-image"),
        pytest.param(b"", "the file is empty", id="empty"),
        pytest.param(photo_png()[:2000], "not a readable image", id="truncated-png"),
    ],
)
def test_decode_input_image_refuses_what_is_not_an_image(data: bytes, why: str) -> None:
    """Bytes that are not a whole image are refused on field input_image."""
    with pytest.raises(ImageError) as caught:
        decode_image(data, field="input_image", max_pixels=MAX_INPUT_PIXELS)
    assert caught.value.field == "input_image"
    assert why in caught.value.detail


def test_decode_input_image_refuses_more_than_40_megapixels_from_the_header() -> None:
    """An image whose header claims more than 40 megapixels is refused on field
    input_image, stating its size and the limit, without decoding it."""
    assert MAX_INPUT_PIXELS == 40_000_000
    with pytest.raises(ImageError) as caught:
        decode_image(png_header_only(8000, 6000), field="input_image", max_pixels=MAX_INPUT_PIXELS)
    assert caught.value.field == "input_image"
    assert "8000x6000" in caught.value.detail
    assert "48.0 megapixels" in caught.value.detail
    assert "at most 40 megapixels" in caught.value.detail


# --- prompt length ---------------------------------------------------------------------------


def test_a_prompt_longer_than_the_variant_reads_is_refused(tiny_settings: Settings) -> None:
    """schnell reads 256 T5 tokens: a prompt of 256 tokens passes, one of 257 is refused on
    field prompt naming both numbers; dev reads 512 and takes it."""
    # The tiny T5 tokenizer spends one token per character here, plus the end token.
    assert check_available(spec(prompt="a" * 255), tiny_settings).kind == "local"
    with pytest.raises(GenerationRequestError) as caught:
        check_available(spec(prompt="a" * 256), tiny_settings)
    assert caught.value.field == "prompt"
    assert "257 tokens" in caught.value.detail
    assert "reads at most 256" in caught.value.detail
    assert check_available(spec(variant="dev", prompt="a" * 400), tiny_settings).kind == "local"


# --- LoRA adapters (database on SQLite and PostgreSQL) ---------------------------------------


def unique(prefix: str) -> str:
    """Adapter names are cached per process with the loaded pipeline: one name per test."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def register(name: str, path: Path, licence_note: str = "CC-BY-4.0, ours") -> LoraAdapter:
    with session_scope() as session:
        return register_lora(
            session=session, name=name, path=path, licence_note=licence_note, actor="test"
        )


def resolve(*requested: tuple[str, float]) -> tuple[LoraUse, ...]:
    with read_scope() as session:
        return resolve_loras(session=session, requested=list(requested))


def test_register_lora_records_the_file_hash_and_licence(
    settings: Settings, tiny_lora: Path
) -> None:
    """A valid adapter is stored with its sha256 and licence note, and the registration is
    in the audit log."""
    import hashlib

    name = unique("style")
    adapter = register(name, tiny_lora)
    assert adapter.sha256 == hashlib.sha256(tiny_lora.read_bytes()).hexdigest()
    assert adapter.path == str(tiny_lora.resolve())
    (use,) = resolve((name, 0.5))
    assert use == LoraUse(name, str(tiny_lora.resolve()), adapter.sha256, 0.5)
    with read_scope() as session:
        stored = session.get_one(LoraAdapter, name)
        assert stored.licence_note == "CC-BY-4.0, ours"
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.subject == f"lora:{name}")
        ).all()
    assert [e.type for e in events] == ["lora.registered"]


def test_register_lora_refuses_what_is_not_an_adapter(
    settings: Settings, tiny_lora: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Refused, each naming its field: a file that is not .safetensors, a missing file,
    a .safetensors that is not one, one without LoRA tensors (plain model weights), and an
    adapter without a licence note. Nothing is registered."""
    not_safetensors = tmp_path / "adapter.bin"
    shutil.copy(tiny_lora, not_safetensors)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    plain = tmp_path / "plain.safetensors"
    shutil.copy(tiny_model_dir / "transformer/diffusion_pytorch_model.safetensors", plain)

    for path, says in [
        (not_safetensors, "is not a .safetensors file"),
        (tmp_path / "missing.safetensors", "is not a .safetensors file"),
        (garbage, "is not a safetensors file"),
        (plain, "holds no LoRA weights"),
    ]:
        with pytest.raises(GenerationRequestError) as caught:
            register(unique("bad"), path)
        assert caught.value.field == "path"
        assert says in caught.value.detail
    with pytest.raises(GenerationRequestError) as caught:
        register(unique("bad"), tiny_lora, licence_note="  ")
    assert caught.value.field == "licence_note"
    with read_scope() as session:
        assert session.scalars(select(LoraAdapter)).all() == []


def test_resolve_loras_refuses_unknown_names_listing_registered_ones(
    settings: Settings, tiny_lora: Path
) -> None:
    """An unknown adapter name is refused on field loras, listing what is registered (or
    saying none is)."""
    with pytest.raises(GenerationRequestError) as caught:
        resolve(("anything", 1.0))
    assert caught.value.field == "loras"
    assert "registered: none" in caught.value.detail
    register("watercolour", tiny_lora)
    register("ink", tiny_lora)
    with pytest.raises(GenerationRequestError) as caught:
        resolve(("ink", 1.0), ("oil", 1.0))
    assert caught.value.field == "loras"
    assert "LoRA 'oil' is not registered" in caught.value.detail
    assert "'ink' or 'watercolour'" in caught.value.detail


def images_with(
    settings: Settings, loras: tuple[LoraUse, ...] = (), seed: int = 11
) -> GenerationResult:
    return generate(spec(seed=seed, loras=loras), settings)


def test_lora_changes_the_image_and_is_switched_off_after(
    settings: Settings, tiny_lora: Path
) -> None:
    """At scale 1 the adapter changes the picture; at scale 0 it is the plain picture; a job
    without adapters after one with it gets the plain picture again (adapter disabled)."""
    name = unique("style")
    register(name, tiny_lora)
    plain = images_with(settings).images[0].png
    (full,) = resolve((name, 1.0))
    (off,) = resolve((name, 0.0))

    styled = images_with(settings, (full,)).images[0].png
    assert mean_diff(styled, plain) > 5
    assert images_with(settings, (off,)).images[0].png == plain
    assert images_with(settings, (full,)).images[0].png == styled
    assert images_with(settings).images[0].png == plain


def test_lora_file_changed_after_registration_is_refused(
    settings: Settings, tiny_lora: Path, tmp_path: Path
) -> None:
    """An adapter whose file differs from the registered hash is not loaded:
    ModelIntegrityError on field loras, naming the adapter."""
    path = tmp_path / "adapter.safetensors"
    shutil.copy(tiny_lora, path)
    name = unique("swapped")
    register(name, path)
    (use,) = resolve((name, 1.0))
    build_tiny_lora(settings.tiny_model_dir, tmp_path / "other", seed=1).replace(path)
    with pytest.raises(ModelIntegrityError) as caught:
        images_with(settings, (use,))
    assert caught.value.field == "loras"
    assert repr(name) in caught.value.detail
    assert "changed since it was registered" in caught.value.detail


def test_a_name_registered_again_with_another_file_uses_the_new_file(
    settings: Settings, tiny_lora: Path, tmp_path: Path
) -> None:
    """Registering an existing name with a new file replaces the adapter: a worker that
    already loaded the old file generates with the new one, exactly as under a fresh name."""
    name = unique("house-style")
    register(name, tiny_lora)
    (old,) = resolve((name, 1.0))
    with_old = images_with(settings, (old,)).images[0].png

    newer = build_tiny_lora(settings.tiny_model_dir, tmp_path / "v2", seed=1)
    register(name, newer)
    fresh = unique("house-style-v2")
    register(fresh, newer)
    (replaced,) = resolve((name, 1.0))
    assert replaced.sha256 != old.sha256
    expected = images_with(settings, resolve((fresh, 1.0))).images[0].png
    assert mean_diff(expected, with_old) > 5
    got = images_with(settings, (replaced,)).images[0].png
    assert got != with_old, "the worker kept the adapter weights of the old file"
    assert got == expected

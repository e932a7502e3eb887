"""Validate generation requests and run them on the backend that serves the variant.

Local variants run a diffusers `FluxPipeline` (or `FluxKontextPipeline` for editing) loaded
from a folder in Hugging Face layout, always offline. Pipelines are cached per worker process:
loading real FLUX.1 weights takes minutes and tens of GiB, so it happens once per process,
not once per job. API variants go to the Black Forest Labs API (`generation.bfl`).
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from audit import service as audit
from core.errors import ConflictError, choices
from core.images import decode_image
from core.settings import Settings
from generation import bfl, manifest, memory
from generation.errors import (
    GenerationRequestError,
    ModelIntegrityError,
    ModelUnavailableError,
    OutOfGpuMemoryError,
)
from generation.models import LoraAdapter, ModelRegistration
from generation.schemas import (
    LORA_SCALE_RANGE,
    MAX_IMAGES_PER_JOB,
    MAX_INPUT_PIXELS,
    MAX_LORAS_PER_JOB,
    MAX_SEED,
    MIN_SIDE,
    SIDE_MULTIPLE,
    GeneratedImage,
    GenerationResult,
    GenerationSpec,
    LoraUse,
)
from generation.tiny import TINY_MODEL_LABEL, ensure_tiny_flux
from generation.variants import VARIANTS, Variant, get_variant

log = logging.getLogger(__name__)

# Never reach for the hub: a missing file must be an error now, not a 45-second hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

StepCallback = Callable[[int, int], None]


# --- validation ----------------------------------------------------------------------------


def validate_spec(spec: GenerationSpec) -> Variant:
    """Reject a request before any model runs, naming the field and what is allowed."""
    variant = get_variant(spec.variant)
    for name, value, limit in (
        ("width", spec.width, variant.max_width),
        ("height", spec.height, variant.max_height),
    ):
        if not MIN_SIDE <= value <= limit or value % SIDE_MULTIPLE:
            raise GenerationRequestError(
                f"{name} {value} is not allowed for variant {variant.name!r}: use a multiple of "
                f"{SIDE_MULTIPLE} from {MIN_SIDE} to {limit}",
                field=name,
            )
    if not 1 <= spec.n_images <= MAX_IMAGES_PER_JOB:
        raise GenerationRequestError(
            f"n_images {spec.n_images} is not allowed: use 1 to {MAX_IMAGES_PER_JOB}",
            field="n_images",
        )
    if not 0 <= spec.seed <= MAX_SEED:
        raise GenerationRequestError(
            f"seed {spec.seed} is out of range: use 0 to {MAX_SEED}", field="seed"
        )
    if spec.steps is not None and not variant.min_steps <= spec.steps <= variant.max_steps:
        raise GenerationRequestError(
            f"steps {spec.steps} is out of range for variant {variant.name!r}: use "
            f"{variant.min_steps} to {variant.max_steps}",
            field="steps",
        )
    if not spec.prompt.strip():
        raise GenerationRequestError("prompt is empty", field="prompt")
    editing = variant.pipeline == "flux-kontext"
    if editing and spec.input_image is None:
        raise GenerationRequestError(
            f"variant {variant.name!r} edits an image: upload one and pass its id as input_image",
            field="input_image",
        )
    if not editing and spec.input_image is not None:
        editors = [v.name for v in VARIANTS.values() if v.pipeline == "flux-kontext"]
        raise GenerationRequestError(
            f"variant {variant.name!r} does not take an input image; editing variants: "
            f"{choices(editors)}",
            field="input_image",
        )
    if len(spec.loras) > MAX_LORAS_PER_JOB:
        raise GenerationRequestError(
            f"{len(spec.loras)} LoRA adapters requested: use at most {MAX_LORAS_PER_JOB}",
            field="loras",
        )
    low, high = LORA_SCALE_RANGE
    for lora in spec.loras:
        if not low <= lora.scale <= high:
            raise GenerationRequestError(
                f"LoRA {lora.name!r} scale {lora.scale} is out of range: use {low} to {high}",
                field="loras",
            )
    return variant


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["local", "api"]
    label: str
    folder: Path | None = None

    @property
    def is_fallback(self) -> bool:
        return self.label == TINY_MODEL_LABEL


def resolve_model(variant: Variant, settings: Settings) -> ModelSource:
    """Where `variant` runs in this deployment, or why it cannot."""
    bfl_settings = settings.generation.bfl
    if variant.backend == "api" or variant.name in bfl_settings.variants:
        if variant.api_endpoint is None:
            raise ModelUnavailableError(
                f"variant {variant.name!r} is not offered by the Black Forest Labs API; "
                "remove it from CLEARANCE_GENERATION__BFL__VARIANTS",
                field="variant",
            )
        if bfl_settings.api_key is None:
            raise ModelUnavailableError(
                f"variant {variant.name!r} runs on the Black Forest Labs API, and no API key "
                "is configured (CLEARANCE_GENERATION__BFL__API_KEY)",
                field="variant",
            )
        return ModelSource("api", f"{variant.title} via the Black Forest Labs API")
    configured = settings.generation.local_models.get(variant.name)
    if configured is not None:
        # Resolved, as verify_models records it: a symlink or a relative path is one folder.
        folder = configured.resolve()
        return ModelSource("local", f"{variant.title} from {folder}", folder)
    if not settings.generation.allow_tiny_fallback:
        example = json.dumps({variant.name: f"/models/{variant.hub_repo}"})
        raise ModelUnavailableError(
            f"no local weights are configured for variant {variant.name!r}: set "
            f"CLEARANCE_GENERATION__LOCAL_MODELS='{example}'",
            field="variant",
        )
    return ModelSource("local", TINY_MODEL_LABEL, settings.tiny_model_dir)


_tokenizers: dict[Path, Any] = {}


def _t5_tokenizer(folder: Path) -> Any:
    tokenizer = _tokenizers.get(folder)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True)
        _tokenizers[folder] = tokenizer
    return tokenizer


def check_prompt_length(prompt: str, variant: Variant, source: ModelSource) -> None:
    """FLUX reads at most `max_sequence_length` T5 tokens and silently drops the rest, so a
    longer prompt is refused instead of half-followed."""
    if source.kind != "local" or source.folder is None:
        return
    if source.is_fallback:
        ensure_tiny_flux(source.folder)
    tokens = len(_t5_tokenizer(source.folder)(prompt).input_ids)
    if tokens > variant.max_sequence_length:
        raise GenerationRequestError(
            f"prompt is {tokens} tokens long; variant {variant.name!r} reads at most "
            f"{variant.max_sequence_length}",
            field="prompt",
        )


# The BFL API's own limits: sides a multiple of 32 up to 1440, except Ultra, which takes an
# aspect ratio between 9:21 and 21:9 instead of a size.
API_SIDE_MULTIPLE = 32
API_MAX_SIDE = 1440
ULTRA_ASPECT_RANGE = (9 / 21, 21 / 9)


def check_api_limits(spec: GenerationSpec, variant: Variant) -> None:
    """Refuse here what the provider would refuse after the job was queued."""
    if variant.name == "pro-ultra":
        low, high = ULTRA_ASPECT_RANGE
        if not low <= spec.width / spec.height <= high:
            raise GenerationRequestError(
                f"width/height {spec.width}x{spec.height} is not allowed for 'pro-ultra': the "
                "aspect ratio must lie between 9:21 and 21:9",
                field="width",
            )
        return
    for name, value in (("width", spec.width), ("height", spec.height)):
        if value > API_MAX_SIDE or value % API_SIDE_MULTIPLE:
            raise GenerationRequestError(
                f"{name} {value} is not allowed for variant {variant.name!r} on the API: use a "
                f"multiple of {API_SIDE_MULTIPLE} from {MIN_SIDE} to {API_MAX_SIDE}",
                field=name,
            )


def check_available(spec: GenerationSpec, settings: Settings) -> ModelSource:
    """Everything that can be known before a job is queued: the request is valid, its
    variant can run here, its prompt fits, its input image is an image."""
    variant = validate_spec(spec)
    source = resolve_model(variant, settings)
    if source.kind == "api":
        check_api_limits(spec, variant)
    check_prompt_length(spec.prompt, variant, source)
    if spec.input_image is not None:
        decode_image(spec.input_image, field="input_image", max_pixels=MAX_INPUT_PIXELS)
    return source


# --- registered models and adapters --------------------------------------------------------


def register_model(
    *, session: Session, variant: str, folder: Path, actor: str
) -> ModelRegistration:
    """Record a model folder and the sha256 of each of its files."""
    get_variant(variant)
    folder = folder.resolve()
    lacking = manifest.missing_files(folder)
    if lacking:
        raise ModelUnavailableError(
            f"{folder} is not a complete diffusers model folder; missing: {', '.join(lacking)}",
            field="folder",
        )
    files = manifest.build_manifest(folder)
    registration = session.get(ModelRegistration, str(folder))
    if registration is None:
        registration = ModelRegistration(
            folder=str(folder), variant=variant, manifest=files, registered_by=actor
        )
        session.add(registration)
    else:
        registration.variant, registration.manifest, registration.registered_by = (
            variant,
            files,
            actor,
        )
    audit.append(
        session=session,
        actor=actor,
        type="model.registered",
        subject=f"model:{folder}",
        payload={
            "variant": variant,
            "files": len(files),
            "sha256": {name: entry["sha256"] for name, entry in files.items()},
        },
    )
    return registration


@dataclass(frozen=True)
class ModelCheck:
    variant: str
    folder: Path
    problem: str | None


# Fingerprints of folders verified in this process, to notice files touched since.
_verified: dict[Path, tuple[dict[str, Any], dict[str, tuple[int, int]]]] = {}


def verify_models(*, session: Session, settings: Settings) -> list[ModelCheck]:
    """Check every configured local model folder: complete, registered, and every file's
    sha256 unchanged. Worker start refuses to run on any problem."""
    checks = []
    problem: str | None
    for variant, folder in sorted(settings.generation.local_models.items()):
        folder = folder.resolve()
        setting = f"CLEARANCE_GENERATION__LOCAL_MODELS[{variant!r}]"
        lacking = manifest.missing_files(folder)
        registration = session.get(ModelRegistration, str(folder))
        if lacking:
            problem = f"{setting} = {str(folder)!r} is incomplete; missing: {', '.join(lacking)}"
        elif registration is None:
            problem = (
                f"{setting} = {str(folder)!r} is not registered: run "
                f"`clearance models register --variant {variant} {folder}`"
            )
        else:
            diff = manifest.compare(folder, registration.manifest)
            problem = (
                None if diff.ok else f"{folder} differs from its registration: {diff.describe()}"
            )
            if diff.ok:
                _verified[folder] = (registration.manifest, manifest.fingerprint(folder))
        checks.append(ModelCheck(variant, folder, problem))
    return checks


def _check_unchanged(folder: Path) -> None:
    """Before loading: only folders verified in this process load, and any file whose size
    or mtime moved since is hashed again."""
    if folder not in _verified:
        raise ModelIntegrityError(
            f"{folder} was not verified when this worker started; restart the worker",
            field="variant",
        )
    files, seen = _verified[folder]
    now = manifest.fingerprint(folder)
    touched = {name for name in set(now) | set(seen) if now.get(name) != seen.get(name)}
    if touched:
        diff = manifest.compare(folder, files, only=touched)
        if not diff.ok:
            raise ModelIntegrityError(
                f"{folder} changed since the worker verified it: {diff.describe()}",
                field="variant",
            )


def register_lora(
    *,
    session: Session,
    name: str,
    path: Path,
    licence_note: str,
    actor: str,
    tenant_id: str | None = None,
    within: Path | None = None,
) -> LoraAdapter:
    """Register an adapter for every tenant (`tenant_id` None: an operator's) or for one
    tenant's jobs only (its name is `<tenant name>:<name>`, so it never replaces another's).
    With `within`, the file must lie inside that folder, symlinks resolved: the API lets a
    tenant's admin name files of the folder the operator set aside, never any other."""
    if tenant_id is None and ":" in name:
        raise GenerationRequestError(
            f"LoRA name {name!r}: names with ':' are tenants' own adapters; choose another",
            field="name",
        )
    existing = session.get(LoraAdapter, name)
    if existing is not None and existing.tenant_id != tenant_id:
        raise ConflictError(f"LoRA {name!r} is registered already", field="name")
    path = path.resolve()
    # A tenant's admin is told paths inside the folder, not where the folder lies.
    shown = path
    if within is not None:
        if not path.is_relative_to(within.resolve()):
            raise GenerationRequestError(
                f"path {path.name!r} is not inside the adapter folder set by the operator; "
                "give a path relative to it",
                field="path",
            )
        shown = path.relative_to(within.resolve())
    if not path.is_file() or path.suffix != ".safetensors":
        raise GenerationRequestError(f"{shown} is not a .safetensors file", field="path")
    try:
        keys = list(memory.read_header(path))
    except (OSError, ValueError) as e:
        raise GenerationRequestError(f"{shown} is not a safetensors file: {e}", field="path") from e
    if not any("lora" in key for key in keys):
        raise GenerationRequestError(
            f"{shown} holds no LoRA weights (no 'lora' tensors)", field="path"
        )
    if not licence_note.strip():
        raise GenerationRequestError(
            "say under which licence the adapter may be used", field="licence_note"
        )
    adapter = LoraAdapter(
        name=name,
        tenant_id=tenant_id,
        path=str(path),
        sha256=manifest.sha256_file(path),
        licence_note=licence_note,
        registered_by=actor,
    )
    adapter = session.merge(adapter)
    session.flush()
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant_id,
        type="lora.registered",
        subject=f"lora:{name}",
        payload={"path": str(path), "sha256": adapter.sha256, "licence_note": licence_note},
    )
    return adapter


def visible_loras(tenant_id: str | None) -> Select[tuple[LoraAdapter]]:
    """The adapters a tenant's jobs may use: the operators' and its own."""
    tenant = LoraAdapter.tenant_id
    mine = tenant.is_(None) if tenant_id is None else tenant.is_(None) | (tenant == tenant_id)
    return select(LoraAdapter).where(mine).order_by(LoraAdapter.name)


def resolve_loras(
    *, session: Session, requested: list[tuple[str, float]], tenant_id: str | None = None
) -> tuple[LoraUse, ...]:
    """The adapters a job of `tenant_id` asks for; another tenant's is not registered for it
    (None: the operators' adapters only)."""
    uses = []
    for name, scale in requested:
        adapter = session.get(LoraAdapter, name)
        if adapter is None or adapter.tenant_id not in (None, tenant_id):
            known = [a.name for a in session.scalars(visible_loras(tenant_id))]
            raise GenerationRequestError(
                f"LoRA {name!r} is not registered; registered: {choices(known) or 'none'}",
                field="loras",
            )
        uses.append(LoraUse(adapter.name, adapter.path, adapter.sha256, scale))
    return tuple(uses)


# --- local generation ----------------------------------------------------------------------


@dataclass
class _Loaded:
    pipeline: Any
    plan: memory.MemoryPlan
    kontext: Any = None
    loras: set[str] = field(default_factory=set)


_loaded: dict[Path, _Loaded] = {}
_load_lock = threading.Lock()


def _device() -> tuple[str, Any, int | None]:
    """(device, dtype, free bytes): bf16 on CUDA, float32 on CPU."""
    import torch

    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return "cuda", torch.bfloat16, free
    return "cpu", torch.float32, None


def _load(source: ModelSource, variant: Variant) -> _Loaded:
    assert source.folder is not None
    with _load_lock:
        loaded = _loaded.get(source.folder)
        if loaded is None:
            loaded = _loaded[source.folder] = _load_pipeline(source, variant)
        return loaded


def _load_pipeline(source: ModelSource, variant: Variant) -> _Loaded:
    from diffusers import FluxPipeline
    from safetensors import SafetensorError

    assert source.folder is not None
    if source.is_fallback:
        ensure_tiny_flux(source.folder)
    else:
        _check_unchanged(source.folder)
    device, dtype, free = _device()
    plan = memory.plan(
        source.folder,
        dtype_bytes=2 if device == "cuda" else 4,
        width=variant.max_width,
        height=variant.max_height,
        batch=1,
        free_bytes=free,
    )
    log.info("loading %s on %s: %s", source.label, device, plan.describe())
    try:
        pipeline = FluxPipeline.from_pretrained(source.folder, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, SafetensorError) as e:
        raise ModelUnavailableError(f"cannot load {source.label}: {e}") from e
    if plan.placement == memory.GPU:
        pipeline.to(device)
    elif plan.placement == memory.MODEL_OFFLOAD:
        pipeline.enable_model_cpu_offload()
    elif plan.placement == memory.SEQUENTIAL_OFFLOAD:
        pipeline.enable_sequential_cpu_offload()
    pipeline.set_progress_bar_config(disable=True)
    return _Loaded(pipeline, plan)


def _for_variant(loaded: _Loaded, variant: Variant) -> Any:
    if variant.pipeline != "flux-kontext":
        return loaded.pipeline
    if loaded.kontext is None:
        from diffusers import FluxKontextPipeline

        # Same components, no second copy of the weights.
        loaded.kontext = FluxKontextPipeline.from_pipe(loaded.pipeline)
        loaded.kontext.set_progress_bar_config(disable=True)
    return loaded.kontext


def _adapter_name(lora: LoraUse) -> str:
    # Keyed by content too: a name registered again with another file is another adapter.
    return f"{lora.name}-{lora.sha256[:12]}"


def _apply_loras(loaded: _Loaded, loras: tuple[LoraUse, ...]) -> None:
    pipeline = loaded.pipeline
    for lora in loras:
        if _adapter_name(lora) not in loaded.loras:
            if manifest.sha256_file(Path(lora.path)) != lora.sha256:
                raise ModelIntegrityError(
                    f"LoRA {lora.name!r} at {lora.path} changed since it was registered",
                    field="loras",
                )
            pipeline.load_lora_weights(lora.path, adapter_name=_adapter_name(lora))
            loaded.loras.add(_adapter_name(lora))
    if loras:
        pipeline.enable_lora()
        pipeline.set_adapters(
            [_adapter_name(lora) for lora in loras],
            adapter_weights=[lora.scale for lora in loras],
        )
    elif loaded.loras:
        pipeline.disable_lora()


def _to_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    # Level 1: a 1024x1024 photo encodes in ~0.12 s instead of ~0.45 s at the default level,
    # for files ~13% larger; at 0.8 s per FLUX image the default would cost a third of it.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _generate_local(
    spec: GenerationSpec, variant: Variant, source: ModelSource, on_step: StepCallback | None
) -> GenerationResult:
    import torch

    loaded = _load(source, variant)
    pipeline = _for_variant(loaded, variant)
    _apply_loras(loaded, spec.loras)
    steps = spec.steps or variant.default_steps
    seeds = [(spec.seed + i) % (MAX_SEED + 1) for i in range(spec.n_images)]
    extra: dict[str, Any] = {}
    if spec.input_image is not None:
        extra["image"] = decode_image(
            spec.input_image, field="input_image", max_pixels=MAX_INPUT_PIXELS
        )
        # Kontext derives the output size from an area and the aspect ratio of width/height.
        extra["max_area"] = spec.width * spec.height

    def run(batch: int) -> list[Any]:
        chunks = [seeds[i : i + batch] for i in range(0, len(seeds), batch)]
        images: list[Any] = []
        for number, chunk in enumerate(chunks):

            def step_end(
                _pipe: Any, step: int, _t: Any, kwargs: dict[str, Any], number: int = number
            ) -> dict[str, Any]:
                if on_step is not None:
                    on_step(number * steps + step + 1, len(chunks) * steps)
                return kwargs

            with torch.inference_mode():
                output = pipeline(
                    prompt=spec.prompt,
                    width=spec.width,
                    height=spec.height,
                    num_inference_steps=steps,
                    guidance_scale=variant.guidance_scale,
                    max_sequence_length=variant.max_sequence_length,
                    num_images_per_prompt=len(chunk),
                    # One generator per image: each image follows from its own recorded seed.
                    generator=[torch.Generator(device="cpu").manual_seed(s) for s in chunk],
                    callback_on_step_end=step_end,
                    **extra,
                )
            images.extend(output.images)
        return images

    started = time.perf_counter()
    try:
        images = run(batch=len(seeds))
    except torch.cuda.OutOfMemoryError:
        # Memory use varies between identical requests (fragmentation): free what the
        # allocator holds and try once more with half the batch.
        smaller = max(1, len(seeds) // 2)
        log.warning("out of GPU memory at batch %d; retrying at batch %d", len(seeds), smaller)
        gc.collect()
        torch.cuda.empty_cache()
        try:
            images = run(batch=smaller)
        except torch.cuda.OutOfMemoryError as e:
            gc.collect()
            torch.cuda.empty_cache()
            raise OutOfGpuMemoryError(
                f"out of GPU memory at {spec.width}x{spec.height}, even at batch {smaller} "
                f"({loaded.plan.describe()}); ask for fewer or smaller images"
            ) from e
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    generated = [
        GeneratedImage(index, seed, _to_png(image), image.width, image.height)
        for index, (image, seed) in enumerate(zip(images, seeds, strict=True))
    ]
    return GenerationResult(source.label, "local", generated, seconds, loaded.plan.placement)


def generate(
    spec: GenerationSpec,
    settings: Settings,
    *,
    on_step: StepCallback | None = None,
    known_requests: Mapping[int, bfl.ProviderRequest] | None = None,
    record_request: Callable[[bfl.ProviderRequest], None] | None = None,
) -> GenerationResult:
    """Run the spec on the backend that serves its variant.

    Local: image i uses seed `spec.seed + i` with its own generator; `on_step(done, total)`
    follows the denoising steps. API: `known_requests` are requests the provider already
    accepted for this job (resumed, never paid twice); `record_request` must store each new
    one before it is polled."""
    variant = validate_spec(spec)
    source = resolve_model(variant, settings)
    if source.kind == "local":
        return _generate_local(spec, variant, source, on_step)
    if record_request is None:
        raise ValueError("API generation needs record_request, or a retry could pay twice")
    with bfl.BflClient(settings.generation.bfl) as client:
        images = bfl.generate_via_api(
            spec, variant, client, known=known_requests or {}, record=record_request
        )
    return GenerationResult(source.label, "api", images)

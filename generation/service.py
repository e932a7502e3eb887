"""Validate generation requests and run them on the backend that serves the variant.

Local variants run a diffusers `FluxPipeline` loaded from a folder in Hugging Face layout,
always offline. Pipelines are cached per worker process: loading real FLUX.1 weights takes
minutes and tens of GiB, so it happens once per process, not once per job.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.settings import Settings
from generation.errors import GenerationRequestError, ModelUnavailableError
from generation.schemas import (
    MAX_IMAGES_PER_JOB,
    MAX_SEED,
    MIN_SIDE,
    SIDE_MULTIPLE,
    GeneratedImage,
    GenerationResult,
    GenerationSpec,
)
from generation.tiny import TINY_MODEL_LABEL, ensure_tiny_flux
from generation.variants import Variant, get_variant

log = logging.getLogger(__name__)

# Never reach for the hub: a missing file must be an error now, not a 45-second hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def validate_spec(spec: GenerationSpec) -> Variant:
    """Reject a request before any model runs, naming the field and what is allowed."""
    variant = get_variant(spec.variant)
    for field, value, limit in (
        ("width", spec.width, variant.max_width),
        ("height", spec.height, variant.max_height),
    ):
        if not MIN_SIDE <= value <= limit or value % SIDE_MULTIPLE:
            raise GenerationRequestError(
                f"{field} {value} is not allowed for variant {variant.name!r}: use a multiple of "
                f"{SIDE_MULTIPLE} from {MIN_SIDE} to {limit}",
                field=field,
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
    if not spec.prompt.strip():
        raise GenerationRequestError("prompt is empty", field="prompt")
    return variant


@dataclass(frozen=True)
class ModelSource:
    folder: Path
    label: str


def resolve_model(variant: Variant, settings: Settings) -> ModelSource:
    """Where the weights for `variant` live, or why it cannot run in this deployment."""
    if variant.backend != "local":
        raise ModelUnavailableError(
            f"variant {variant.name!r} runs only on the Black Forest Labs API, and no API "
            "backend is configured in this deployment",
            field="variant",
        )
    configured = settings.generation.local_models.get(variant.name)
    if configured is not None:
        if not (configured / "model_index.json").is_file():
            raise ModelUnavailableError(
                f"CLEARANCE_GENERATION__LOCAL_MODELS[{variant.name!r}] = {str(configured)!r} "
                "is not a diffusers model folder: model_index.json is missing",
                field="variant",
            )
        return ModelSource(configured, f"{variant.title} from {configured}")
    if not settings.generation.allow_tiny_fallback:
        example = json.dumps({variant.name: f"/models/{variant.hub_repo}"})
        raise ModelUnavailableError(
            f"no local weights are configured for variant {variant.name!r}: set "
            f"CLEARANCE_GENERATION__LOCAL_MODELS='{example}'",
            field="variant",
        )
    return ModelSource(settings.tiny_model_dir, TINY_MODEL_LABEL)


def check_available(spec: GenerationSpec, settings: Settings) -> ModelSource:
    """Validation plus model resolution: everything that can be known before a job runs."""
    return resolve_model(validate_spec(spec), settings)


_pipelines: dict[Path, Any] = {}
_pipelines_lock = threading.Lock()


def _device_and_dtype() -> tuple[str, Any]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def _load_pipeline(source: ModelSource) -> Any:
    with _pipelines_lock:
        pipeline = _pipelines.get(source.folder)
        if pipeline is not None:
            return pipeline
        if source.label == TINY_MODEL_LABEL:
            ensure_tiny_flux(source.folder)
        from diffusers import FluxPipeline
        from safetensors import SafetensorError

        device, dtype = _device_and_dtype()
        log.info("loading %s on %s (%s)", source.label, device, dtype)
        try:
            pipeline = FluxPipeline.from_pretrained(
                source.folder, local_files_only=True, dtype=dtype
            ).to(device)
        except (OSError, ValueError, SafetensorError) as e:
            raise ModelUnavailableError(f"cannot load {source.label}: {e}") from e
        pipeline.set_progress_bar_config(disable=True)
        _pipelines[source.folder] = pipeline
        return pipeline


def generate(spec: GenerationSpec, settings: Settings) -> GenerationResult:
    """Run the spec. Image i uses seed `spec.seed + i` with its own generator, so any one
    image can be reproduced alone from its recorded seed."""
    import torch

    variant = validate_spec(spec)
    source = resolve_model(variant, settings)
    pipeline = _load_pipeline(source)
    seeds = [(spec.seed + i) % (MAX_SEED + 1) for i in range(spec.n_images)]
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    with torch.inference_mode():
        output = pipeline(
            prompt=spec.prompt,
            width=spec.width,
            height=spec.height,
            num_inference_steps=variant.default_steps,
            guidance_scale=variant.guidance_scale,
            max_sequence_length=variant.max_sequence_length,
            num_images_per_prompt=spec.n_images,
            generator=generators,
        )
    images = []
    for index, (image, seed) in enumerate(zip(output.images, seeds, strict=True)):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        images.append(GeneratedImage(index, seed, buffer.getvalue(), image.width, image.height))
    return GenerationResult(model=source.label, images=images)

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Latent packing needs sides divisible by 16 (VAE 8x, then 2x2 patches).
SIDE_MULTIPLE = 16
MIN_SIDE = 256
MAX_IMAGES_PER_JOB = 8
MAX_SEED = 2**32 - 1
MAX_LORAS_PER_JOB = 4
LORA_SCALE_RANGE = (-2.0, 2.0)
# Input images for editing: above this many pixels an upload is refused (decompression bombs).
MAX_INPUT_PIXELS = 40_000_000


@dataclass(frozen=True)
class LoraUse:
    """A registered adapter, resolved for one job: the file, its expected hash, the scale."""

    name: str
    path: str
    sha256: str
    scale: float


@dataclass(frozen=True)
class GenerationSpec:
    prompt: str
    variant: str
    width: int
    height: int
    seed: int
    n_images: int
    # None: the variant's default number of denoising steps.
    steps: int | None = None
    # PNG/JPEG bytes of the image to edit; Kontext variants only.
    input_image: bytes | None = None
    loras: tuple[LoraUse, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class GeneratedImage:
    index: int
    seed: int
    png: bytes
    width: int
    height: int


@dataclass(frozen=True)
class GenerationResult:
    model: str
    kind: Literal["local", "api"]
    images: list[GeneratedImage]
    # Time spent inside the model (local backends); what a GPU second of cost is counted on.
    seconds: float = 0.0
    placement: str = ""

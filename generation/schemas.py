from __future__ import annotations

from dataclasses import dataclass

# Latent packing needs sides divisible by 16 (VAE 8x, then 2x2 patches).
SIDE_MULTIPLE = 16
MIN_SIDE = 256
MAX_IMAGES_PER_JOB = 4
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class GenerationSpec:
    prompt: str
    variant: str
    width: int
    height: int
    seed: int
    n_images: int


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
    images: list[GeneratedImage]

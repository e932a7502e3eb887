"""Where a pipeline's weights live while it runs: all on the GPU, one component at a time
(`enable_model_cpu_offload`), or one layer at a time (`enable_sequential_cpu_offload`).

FLUX.1 needs ~34 GiB at 1024² in bf16 on an H100 (the GPU anchors), and users see 24 GiB
cards fail. So the need is estimated from the weights actually on disk and the image size,
compared with the memory free on the device, and the fastest placement that fits is used.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GIB = 1024**3
# Activations per image at 1024x1024 in bf16: the anchors grow 5.7 GiB from batch 1 to 4.
ACTIVATION_BYTES_PER_MEGAPIXEL = int(1.9 * GIB)
# CUDA context, allocator slack, the VAE decode.
OVERHEAD_BYTES = 2 * GIB
# Leave room for fragmentation: plan with 90% of what the device reports free.
USABLE_FRACTION = 0.9

GPU = "gpu"
MODEL_OFFLOAD = "model_cpu_offload"
SEQUENTIAL_OFFLOAD = "sequential_cpu_offload"
CPU = "cpu"


def read_header(path: Path) -> dict[str, Any]:
    """A safetensors file's header: tensor names, dtypes and shapes, without the weights."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError("implausible header length")
        header: dict[str, Any] = json.loads(f.read(length))
    return header


def _parameters(path: Path) -> int:
    """Parameter count of a safetensors file, from its header alone (no weights read)."""
    header = read_header(path)
    count = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        numel = 1
        for dim in tensor["shape"]:
            numel *= dim
        count += numel
    return count


def component_parameters(folder: Path) -> dict[str, int]:
    """Parameters per component folder (transformer, text encoders, VAE)."""
    counts: dict[str, int] = {}
    for weights in sorted(folder.glob("*/*.safetensors")):
        component = weights.parent.name
        counts[component] = counts.get(component, 0) + _parameters(weights)
    return counts


@dataclass(frozen=True)
class MemoryPlan:
    placement: str
    need_bytes: int
    largest_component_bytes: int
    free_bytes: int | None

    def describe(self) -> str:
        free = "n/a" if self.free_bytes is None else f"{self.free_bytes / GIB:.1f} GiB free"
        return (
            f"{self.placement}: needs ~{self.need_bytes / GIB:.1f} GiB in all, largest "
            f"component ~{self.largest_component_bytes / GIB:.1f} GiB ({free})"
        )


def estimate(
    folder: Path, *, dtype_bytes: int, width: int, height: int, batch: int
) -> tuple[int, int]:
    """(bytes for everything on the device, bytes for the largest component plus activations)."""
    counts = component_parameters(folder)
    activations = int(ACTIVATION_BYTES_PER_MEGAPIXEL * batch * width * height / 1024**2)
    weights = sum(counts.values()) * dtype_bytes
    largest = max(counts.values(), default=0) * dtype_bytes
    return weights + activations + OVERHEAD_BYTES, largest + activations + OVERHEAD_BYTES


def choose(need_bytes: int, largest_bytes: int, free_bytes: int | None) -> str:
    """The fastest placement that fits; None free bytes means no GPU."""
    if free_bytes is None:
        return CPU
    usable = free_bytes * USABLE_FRACTION
    if need_bytes <= usable:
        return GPU
    if largest_bytes <= usable:
        return MODEL_OFFLOAD
    return SEQUENTIAL_OFFLOAD


def plan(
    folder: Path, *, dtype_bytes: int, width: int, height: int, batch: int, free_bytes: int | None
) -> MemoryPlan:
    need, largest = estimate(
        folder, dtype_bytes=dtype_bytes, width=width, height=height, batch=batch
    )
    return MemoryPlan(choose(need, largest, free_bytes), need, largest, free_bytes)

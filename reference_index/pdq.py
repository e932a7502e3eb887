"""PDQ perceptual hashes: Meta's ThreatExchange algorithm, computed in a few matrix products.

The reference implementation (ThreatExchange's C++, which the `pdqhash` package wraps) blurs
the full-size luma with two passes of 1-D box filters along each axis (a tent filter,
"Jarosz filter"), samples a 64x64 grid of the blurred image, and keeps the signs of 16x16 DCT
coefficients against their median. It runs its column passes down a row-major float buffer,
a cache miss per pixel: ~50 ms of a 1024x1024 image on this project's machines, a quarter of
an image check. Every step but the median is linear, and the 64x64 samples need only 64 rows
and 64 columns of the blur, so here blur-and-sample is a thin matrix per axis (built once
per image size): 64 x H by the H x W luma by W x 64, ~2.5 ms. Same filter, same samples,
same DCT and median as the reference; the sums only run in another order, so a coefficient
within float rounding of the median can come out the other way: on photos, crops and logos
the hashes are identical, except for images only a few pixels high, whose 64 sampled rows repeat and
leave many coefficients at zero, a rounding's sign in either implementation
(tests/reference_index/test_pdq.py compares with `pdqhash`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import numpy.typing as npt

from core.images import decode_image, to_array

HASH_BITS = 256
SAMPLES = 64  # the blurred image is sampled on a SAMPLES x SAMPLES grid
COEFFICIENTS = 16  # DCT coefficients 1..16 along each axis make the 256 bits
MIN_SIDE = 5  # smaller images hash to zeros with quality 0, as in the reference
_LUMA = np.array([[0.299, 0.587, 0.114]], np.float32)  # ITU-R BT.601, as in the reference

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PdqHash:
    hex: str
    quality: int


def decode_rgb(data: bytes) -> np.ndarray:
    """An image file as HxWx3 uint8 (see core.images for what is accepted)."""
    return to_array(decode_image(data))


def _box(rows: Floats, window: int) -> Floats:
    """rows @ B for the reference's 1-D box filter B of `window` (box1DFloat): output i is
    the mean of inputs i - (window - half) .. i + half - 1, clipped to the vector, where
    half = (window + 2) // 2. Column j of rows @ B gathers rows[:, i] / len(i) over the i
    whose window holds j, a running sum."""
    n = rows.shape[1]
    half = (window + 2) // 2
    before = window - half
    i = np.arange(n)
    lengths = np.minimum(n, i + half) - np.maximum(0, i - before)
    sums = np.zeros((rows.shape[0], n + 1))
    np.cumsum(rows / lengths, axis=1, out=sums[:, 1:])
    return sums[:, np.minimum(n, i + before + 1)] - sums[:, np.maximum(0, i - half + 1)]


@lru_cache(maxsize=16)
def _sampling(n: int) -> npt.NDArray[np.float32]:
    """(SAMPLES, n): the reference's two box-filter passes along an axis of n pixels, then
    its decimation to SAMPLES centres, as one matrix."""
    window = (n + 2 * SAMPLES - 1) // (2 * SAMPLES)
    picked = ((np.arange(SAMPLES) + 0.5) * n / SAMPLES).astype(np.int64)
    one_hot = np.zeros((SAMPLES, n))
    one_hot[np.arange(SAMPLES), picked] = 1.0
    return _box(_box(one_hot, window), window).astype(np.float32)


# Rows 1..16 of the 64-point DCT-II matrix (row 0, the mean, is left out).
_DCT: Floats = np.sqrt(2.0 / SAMPLES) * np.cos(
    np.pi / 2 / SAMPLES * np.arange(1, COEFFICIENTS + 1)[:, None] * (2 * np.arange(SAMPLES) + 1)
)


def _quality(grid: Floats) -> int:
    """The reference's gradient heuristic: truncated differences between neighbours, summed."""
    down = np.trunc((grid[:-1, :] - grid[1:, :]) * 100 / 255)
    across = np.trunc((grid[:, :-1] - grid[:, 1:]) * 100 / 255)
    return min(100, int(np.abs(down).sum() + np.abs(across).sum()) // 90)


def compute_array(rgb: np.ndarray) -> PdqHash:
    """The PDQ hash of an HxWx3 uint8 image."""
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        return PdqHash(hex="0" * (HASH_BITS // 4), quality=0)
    luma = cv2.transform(np.asarray(rgb, np.float32), _LUMA)
    grid64 = (_sampling(height) @ (luma @ _sampling(width).T)).astype(np.float64)
    coefficients = _DCT @ grid64 @ _DCT.T
    # The reference's median (Torben's) is the 128th smallest of the 256.
    median = np.partition(coefficients.ravel(), HASH_BITS // 2 - 1)[HASH_BITS // 2 - 1]
    # Bit i * 16 + j of the reference's hash is coefficient (i, j); its hex is written from
    # the highest bit down.
    bits = (coefficients.ravel() > median)[::-1]
    return PdqHash(hex=np.packbits(bits).tobytes().hex(), quality=_quality(grid64))


def compute(data: bytes) -> PdqHash:
    return compute_array(decode_rgb(data))


def hex_to_bits(hashes: list[str]) -> np.ndarray:
    """Hex digests -> (n, 256) array of 0/1 bits."""
    if not hashes:
        return np.zeros((0, HASH_BITS), dtype=np.uint8)
    packed = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), dtype=np.uint8)
    return np.unpackbits(packed.reshape(len(hashes), HASH_BITS // 8), axis=1)


def distances(query_hex: str, reference_hexes: list[str]) -> np.ndarray:
    """Hamming distance from one hash to each reference hash."""
    query = hex_to_bits([query_hex])
    counts: np.ndarray = (hex_to_bits(reference_hexes) != query).sum(axis=1)
    return counts

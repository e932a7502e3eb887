"""PDQ perceptual hashes: Meta's ThreatExchange algorithm, reading only the pixels it needs.

The reference implementation (ThreatExchange's C++, which the `pdqhash` package wraps) blurs
the full-size luma with two passes of 1-D box filters along each axis (a tent filter,
"Jarosz filter"), samples a 64x64 grid of the blurred image, and keeps the signs of 16x16 DCT
coefficients against their median. It blurs every pixel, its column passes running down a
row-major float buffer: 30-50 ms of a 1024x1024 image on this project's machines, a sixth of
an image check. Every step but the median is linear, and each of the 64 samples along an
axis is a fixed weighted sum of about two windows of pixels (_taps), so here the image is
read once, tap by tap: ~4 ms. Same filter, same samples, same DCT and median as the
reference; the sums only run in another order, so a coefficient within float rounding of
the median could come out the other way. On photos, crops and odd sizes the hashes and
qualities are identical (tests/reference_index/test_pdq.py compares with `pdqhash`), except
for images only a few pixels high: their 64 sampled rows repeat and leave many coefficients
at zero, a rounding's sign in either implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from core.images import LUMA, decode_image, to_array

HASH_BITS = 256
SAMPLES = 64  # the blurred image is sampled on a SAMPLES x SAMPLES grid
COEFFICIENTS = 16  # DCT coefficients 1..16 along each axis make the 256 bits
MIN_SIDE = 5  # smaller images hash to zeros with quality 0, as in the reference

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
def _taps(n: int) -> tuple[npt.NDArray[np.int64], Floats]:
    """The reference's two box-filter passes along an axis of n pixels, then its decimation
    to SAMPLES centres, as taps: sample s is the sum over t of weights[t, s] times pixel
    indices[t, s]. Each sample reads ~2 windows of pixels, so an image costs about one
    multiply-add per pixel and channel, whatever its size."""
    window = (n + 2 * SAMPLES - 1) // (2 * SAMPLES)
    picked = ((np.arange(SAMPLES) + 0.5) * n / SAMPLES).astype(np.int64)
    one_hot = np.zeros((SAMPLES, n))
    one_hot[np.arange(SAMPLES), picked] = 1.0
    dense = _box(_box(one_hot, window), window)  # (SAMPLES, n), zero outside the support
    used = dense != 0
    first = used.argmax(axis=1)
    last = n - 1 - used[:, ::-1].argmax(axis=1)
    reach = first + np.arange((last - first).max() + 1)[:, None]  # (taps, SAMPLES)
    indices = np.minimum(reach, n - 1)
    weights = np.where(reach <= last, dense[np.arange(SAMPLES), indices], 0.0)
    return indices, weights


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
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {rgb.dtype} of shape {rgb.shape}")
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        return PdqHash(hex="0" * (HASH_BITS // 4), quality=0)
    # Sampled down the rows, then across, then luma: each step is linear, so the order only
    # changes the cost. The pass over the whole image is in float32 (float64 triples it).
    rows, row_weights = _taps(height)
    sampled_rows = sum(
        w[:, None, None] * rgb[i] for i, w in zip(rows, row_weights.astype(np.float32), strict=True)
    )
    columns, column_weights = _taps(width)
    sampled = sum(
        w[None, :, None] * sampled_rows[:, i] for i, w in zip(columns, column_weights, strict=True)
    )
    # A weighted sum, not a matrix product: OpenBLAS would wake its threads for that, and
    # they spin for a while afterwards, slowing the keypoint search that runs next (~25%).
    grid = (np.asarray(sampled, np.float64) * LUMA).sum(axis=2)
    coefficients = _DCT @ grid @ _DCT.T
    # The reference's median (Torben's) is the 128th smallest of the 256.
    median = np.partition(coefficients.ravel(), HASH_BITS // 2 - 1)[HASH_BITS // 2 - 1]
    # Bit i * 16 + j of the reference's hash is coefficient (i, j); its hex is written from
    # the highest bit down.
    bits = (coefficients.ravel() > median)[::-1]
    return PdqHash(hex=np.packbits(bits).tobytes().hex(), quality=_quality(grid))


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

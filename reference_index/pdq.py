"""PDQ perceptual hashes (Meta's ThreatExchange algorithm, via `pdqhash`)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import pdqhash
from PIL import Image

from reference_index.errors import ImageDecodeError

HASH_BITS = 256
# Refuse to decode absurdly large images (decompression bombs): PIL only warns below twice
# its limit, so the warning is turned into an error in `decode_rgb`.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass(frozen=True)
class PdqHash:
    hex: str
    quality: int


def decode_rgb(data: bytes) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return np.asarray(image.convert("RGB"))
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as e:
        raise ImageDecodeError(f"not a readable image: {e}", field="image") from e


def compute(data: bytes) -> PdqHash:
    bits, quality = pdqhash.compute(decode_rgb(data))
    return PdqHash(hex=np.packbits(bits.astype(np.uint8)).tobytes().hex(), quality=int(quality))


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

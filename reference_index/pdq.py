"""PDQ perceptual hashes (Meta's ThreatExchange algorithm, via `pdqhash`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pdqhash

from core.images import decode_image, to_array

HASH_BITS = 256


@dataclass(frozen=True)
class PdqHash:
    hex: str
    quality: int


def decode_rgb(data: bytes) -> np.ndarray:
    """An image file as HxWx3 uint8 (see core.images for what is accepted)."""
    return to_array(decode_image(data))


def compute_array(rgb: np.ndarray) -> PdqHash:
    bits, quality = pdqhash.compute(rgb)
    return PdqHash(hex=np.packbits(bits.astype(np.uint8)).tobytes().hex(), quality=int(quality))


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

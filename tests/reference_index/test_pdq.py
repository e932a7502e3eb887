"""PDQ hashing of real photos, and refusing what is not a safely decodable image."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import numpy.typing as npt
import pdqhash
import pytest
import skimage.data
from PIL import Image

from core.images import DEFAULT_MAX_PIXELS, ImageError
from reference_index import pdq

# Meta's HMA threshold for a PDQ match, also the service default.
MATCH_DISTANCE = 31
PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket")


def photo(name: str) -> npt.NDArray[np.uint8]:
    array: npt.NDArray[np.uint8] = getattr(skimage.data, name)()
    return array


def encode(array: npt.NDArray[np.uint8], fmt: str = "PNG", **options: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def resized(array: npt.NDArray[np.uint8], factor: float) -> bytes:
    image = Image.fromarray(array)
    size = (round(image.width * factor), round(image.height * factor))
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.BILINEAR).save(buffer, format="PNG")
    return buffer.getvalue()


def popcount_distance(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png_claiming(width: int, height: int, rows: int) -> bytes:
    """A well-formed 8-bit RGB PNG whose header says width x height, holding `rows` rows of
    black pixels: cheap to build whatever size it claims."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = (b"\x00" + b"\x00" * 3 * width) * rows
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("name", PHOTOS)
def test_hash_is_64_hex_digits_with_full_quality(name: str) -> None:
    """A hash is 256 bits as 64 lowercase hex digits; real photos have high quality."""
    hashed = pdq.compute(encode(photo(name)))
    assert re.fullmatch(r"[0-9a-f]{64}", hashed.hex)
    assert 50 <= hashed.quality <= 100


def test_hash_is_deterministic() -> None:
    """The same bytes hash the same; so do the same pixels in another lossless format."""
    image = photo("chelsea")
    first = pdq.compute(encode(image))
    assert pdq.compute(encode(image)) == first
    assert pdq.compute(encode(image, "BMP")).hex == first.hex


def reference_hash(rgb: npt.NDArray[np.uint8]) -> pdq.PdqHash:
    """Meta's C++ implementation, as the `pdqhash` package wraps it."""
    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb))
    return pdq.PdqHash(np.packbits(bits.astype(np.uint8)).tobytes().hex(), int(quality))


def odd_sizes() -> list[npt.NDArray[np.uint8]]:
    """Photos whole, cut to random sizes (64 pixels a side and more) and resized to sizes
    whose box-filter windows and sample positions fall unevenly."""
    rng = np.random.default_rng(7)
    images = []
    for name in PHOTOS:
        whole = photo(name)
        rgb = whole if whole.ndim == 3 else np.dstack([whole] * 3)
        images.append(rgb)
        height, width = rgb.shape[:2]
        for _ in range(4):
            h, w = int(rng.integers(64, height + 1)), int(rng.integers(64, width + 1))
            y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            images.append(rgb[y : y + h, x : x + w])
        for size in ((1024, 1024), (1023, 517), (64, 300), (1999, 1201)):
            images.append(np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)))
    return images


def test_hashes_and_qualities_are_the_reference_implementations() -> None:
    """reference_index.pdq gives Meta's reference hash and quality bit for bit, whatever the
    image's size; so an exemplar hashed by either matches the same queries."""
    for rgb in odd_sizes():
        assert pdq.compute_array(rgb) == reference_hash(rgb), rgb.shape


def test_flat_and_tiny_images_hash_as_the_reference_does() -> None:
    """A flat image has quality 0 (never matched); under 5 pixels a side, a zero hash."""
    flat = np.full((300, 200, 3), 90, np.uint8)
    assert pdq.compute_array(flat).quality == reference_hash(flat).quality == 0
    tiny = photo("coffee")[:4, :100]
    assert pdq.compute_array(tiny) == reference_hash(tiny) == pdq.PdqHash("0" * 64, 0)


@pytest.mark.parametrize(
    "array",
    [
        pytest.param(photo("camera"), id="grey-2d"),
        pytest.param(np.dstack([photo("coffee"), photo("coffee")[..., :1]]), id="four-channels"),
        pytest.param(photo("coffee").astype(np.float32), id="float"),
    ],
)
def test_only_rgb_bytes_are_hashed(array: npt.NDArray[np.generic]) -> None:
    """Anything but HxWx3 uint8 is refused rather than hashed as something else (decode_rgb
    gives every decodable image that shape)."""
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        pdq.compute_array(array)


@pytest.mark.parametrize("name", PHOTOS)
def test_jpeg_reencoding_stays_within_match_distance(name: str) -> None:
    """A photo and its JPEG re-encoding are near-duplicates under PDQ."""
    original = pdq.compute(encode(photo(name))).hex
    jpeg = pdq.compute(encode(photo(name), "JPEG", quality=70)).hex
    assert popcount_distance(original, jpeg) <= MATCH_DISTANCE


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("factor", [0.9, 0.5, 1.25])
def test_resized_copy_stays_within_match_distance(name: str, factor: float) -> None:
    """A photo and a resized copy of it are near-duplicates under PDQ."""
    original = pdq.compute(encode(photo(name))).hex
    scaled = pdq.compute(resized(photo(name), factor)).hex
    assert popcount_distance(original, scaled) <= MATCH_DISTANCE


def test_different_photos_are_far_apart() -> None:
    """Every pair of different photos is further apart than the match distance."""
    hashes = {name: pdq.compute(encode(photo(name))).hex for name in PHOTOS}
    for i, a in enumerate(PHOTOS):
        for b in PHOTOS[i + 1 :]:
            assert popcount_distance(hashes[a], hashes[b]) > MATCH_DISTANCE, (a, b)


def test_distances_are_hamming_distances() -> None:
    """distances() gives the number of differing bits to each reference, in order."""
    hashes = [pdq.compute(encode(photo(name))).hex for name in PHOTOS]
    query = hashes[0]
    found = pdq.distances(query, hashes)
    assert found.tolist() == [popcount_distance(query, h) for h in hashes]
    assert found[0] == 0
    flipped = f"{int(query, 16) ^ 0b1011:064x}"
    assert pdq.distances(query, [flipped]).tolist() == [3]
    assert pdq.distances(query, ["f" * 64]).tolist() == [popcount_distance(query, "f" * 64)]
    assert pdq.distances(query, []).tolist() == []


def test_hex_to_bits_round_trips() -> None:
    """Hex digests unpack to 256 bits, most significant bit first."""
    bits = pdq.hex_to_bits(["80" + "00" * 31, "00" * 31 + "01"])
    assert bits.shape == (2, pdq.HASH_BITS)
    assert bits[0].tolist() == [1] + [0] * 255
    assert bits[1].tolist() == [0] * 255 + [1]
    assert pdq.hex_to_bits([]).shape == (0, pdq.HASH_BITS)


@pytest.mark.parametrize("name", ["camera", "astronaut"])
def test_decode_rgb_gives_height_width_3(name: str) -> None:
    """Grayscale and colour images decode to (height, width, 3) uint8 RGB."""
    array = photo(name)
    decoded = pdq.decode_rgb(encode(array))
    assert decoded.shape == (*array.shape[:2], 3)
    assert decoded.dtype == np.uint8


def test_decode_rgb_flattens_alpha_and_palette() -> None:
    """RGBA and palette PNGs decode to 3 channels too."""
    rgba = np.dstack([photo("coffee"), np.full(photo("coffee").shape[:2], 128, np.uint8)])
    assert pdq.decode_rgb(encode(rgba)).shape == (400, 600, 3)
    buffer = io.BytesIO()
    Image.fromarray(photo("coffee")).convert("P").save(buffer, format="PNG")
    assert pdq.decode_rgb(buffer.getvalue()).shape == (400, 600, 3)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"this is plain text, not an image", id="text"),
        pytest.param(b"%PDF-1.7\n" + b"\x00" * 200, id="pdf-header"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, id="png-signature-only"),
    ],
)
def test_non_images_are_refused(data: bytes) -> None:
    """Bytes that are not an image raise ImageError on field image."""
    with pytest.raises(ImageError) as caught:
        pdq.decode_rgb(data)
    assert caught.value.field == "image"
    assert caught.value.to_dict()["error"] == "invalid_image"
    with pytest.raises(ImageError):
        pdq.compute(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images_are_refused(fmt: str) -> None:
    """An image cut short is refused rather than decoded with missing pixels."""
    data = encode(photo("astronaut"), fmt)
    for cut in (len(data) // 2, len(data) - 64):
        with pytest.raises(ImageError) as caught:
            pdq.decode_rgb(data[:cut])
        assert caught.value.field == "image"


def test_crafted_png_helper_makes_readable_images() -> None:
    """The header-crafting helper below builds a valid PNG when it holds every row, so the
    refusals that follow are about the claimed size, not a malformed file."""
    decoded = pdq.decode_rgb(png_claiming(64, 32, rows=32))
    assert decoded.shape == (32, 64, 3)
    assert not decoded.any()


@pytest.mark.parametrize(
    ("width", "height"),
    [
        pytest.param(8_000, 5_001, id="just-above-limit"),
        pytest.param(10_000, 10_000, id="where-pil-warns"),
        pytest.param(40_000, 40_000, id="where-pil-refuses"),
    ],
)
def test_decompression_bombs_are_refused(width: int, height: int) -> None:
    """An image claiming more pixels than accepted is refused as an ImageError on field
    image: just above the limit, where PIL only warns, and where PIL itself refuses. (The
    wording, and that no pixels are decoded, are tested in tests/core/test_images.py.)"""
    assert width * height > DEFAULT_MAX_PIXELS
    with pytest.raises(ImageError) as caught:
        pdq.decode_rgb(png_claiming(width, height, rows=1))
    assert caught.value.field == "image"
    assert caught.value.to_dict()["error"] == "invalid_image"

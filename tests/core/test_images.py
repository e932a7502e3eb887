"""decode_image: every accepted upload becomes an upright 8-bit RGB image; everything else is
refused with ImageError naming the field, before any pixel of a too-large image is decoded."""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import skimage.data
from PIL import Image

from core.images import ACCEPTED, DEFAULT_MAX_PIXELS, ImageError, decode_image, to_array

REPO = Path(__file__).resolve().parents[2]
FIELD = "upload"
Pixels = npt.NDArray[np.uint8]


def astronaut() -> Pixels:
    array: Pixels = getattr(skimage.data, "astronaut")()  # noqa: B009 (skimage is untyped)
    return array


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decoded(data: bytes, **options: Any) -> Pixels:
    """Decode and check the invariant every accepted image keeps: RGB, 8 bits."""
    image = decode_image(data, **options)
    assert image.mode == "RGB"
    array = to_array(image)
    assert array.dtype == np.uint8
    assert array.shape == (image.height, image.width, 3)
    return array


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png_claiming(width: int, height: int, rows: int = 1) -> bytes:
    """A well-formed 8-bit RGB PNG whose header says width x height, holding `rows` rows of
    black pixels: as cheap to build as it is expensive to decode."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = (b"\x00" + b"\x00" * 3 * width) * rows
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def refused(data: bytes, **options: Any) -> ImageError:
    with pytest.raises(ImageError) as caught:
        decode_image(data, field=FIELD, **options)
    error = caught.value
    assert error.field == FIELD
    assert error.code == "invalid_image"
    assert error.to_dict()["error"] == "invalid_image"
    assert error.to_dict()["field"] == FIELD
    assert error.detail.strip()
    return error


# --- accepted formats ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "options", "tolerance"),
    [
        pytest.param("PNG", {}, 0.0, id="png"),
        pytest.param("JPEG", {"quality": 90}, 6.0, id="jpeg"),
        pytest.param("WEBP", {"lossless": True}, 0.0, id="webp-lossless"),
        pytest.param("WEBP", {"quality": 90}, 6.0, id="webp-lossy"),
        pytest.param("GIF", {}, 8.0, id="gif"),
        pytest.param("BMP", {}, 0.0, id="bmp"),
        pytest.param("TIFF", {}, 0.0, id="tiff"),
    ],
)
def test_accepted_formats_decode_to_the_same_rgb_pixels(
    fmt: str, options: dict[str, Any], tolerance: float
) -> None:
    """Each accepted format decodes to RGB uint8 of the original size; lossless formats give
    back the exact pixels, lossy ones pixels close to them."""
    original = astronaut()
    array = decoded(encode(Image.fromarray(original), fmt, **options))
    assert array.shape == original.shape
    assert np.abs(array.astype(int) - original).mean() <= tolerance


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        pytest.param("GIF", {}, id="gif"),
        pytest.param("PNG", {}, id="apng"),
        pytest.param("WEBP", {"lossless": True}, id="webp"),
    ],
)
def test_animation_decodes_to_its_first_frame(fmt: str, options: dict[str, Any]) -> None:
    """An animation decodes to its first frame, whatever frame PIL would otherwise show."""
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
    frames = [Image.new("RGB", (32, 16), colour) for colour in colours]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], **options)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    array = decoded(data)
    assert array.shape == (16, 32, 3)
    assert (array == colours[0]).all()


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    """A CMYK JPEG decodes to RGB with the colours of the picture it was made from."""
    original = astronaut()
    data = encode(Image.fromarray(original).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    array = decoded(data)
    assert np.abs(array.astype(int) - original).mean() < 6


def gradient16(low: int, high: int) -> npt.NDArray[np.uint16]:
    values: npt.NDArray[np.uint16] = (
        np.linspace(low, high, 64 * 32).reshape(32, 64).round().astype(np.uint16)
    )
    return values


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_greyscale_is_scaled_not_clipped(fmt: str) -> None:
    """A 16-bit greyscale gradient whose values are all above 255 (which a plain 8-bit
    conversion clips to white) keeps its gradient: grey, increasing, spanning the range."""
    data = encode(Image.fromarray(gradient16(30_000, 35_000)), fmt)
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "I;16"
    assert set(np.unique(np.asarray(opened.convert("RGB")))) == {255}  # what clipping gives
    array = decoded(data)
    assert (array[..., 0] == array[..., 1]).all()
    assert (array[..., 1] == array[..., 2]).all()
    grey = array[..., 0].ravel().astype(int)
    assert (np.diff(grey) >= 0).all()
    assert grey[0] == 0
    assert grey[-1] >= 250
    assert len(np.unique(grey)) > 200
    # Linear: the pixel at position 16*64+32 of the 2048-step ramp lands at that fraction.
    assert abs(int(array[16, 32, 0]) - 255 * (16 * 64 + 32) / 2047) <= 1


def test_16_bit_range_maps_onto_the_full_8_bit_range() -> None:
    """The darkest 16-bit value becomes 0 and the brightest 255 (scaling rounds, it does not
    truncate the brightest pixel to 254)."""
    for low, high in ((30_000, 35_000), (1_000, 3_000), (0, 65_535), (12_345, 54_321)):
        grey = decoded(encode(Image.fromarray(gradient16(low, high)), "PNG"))[..., 0]
        assert (int(grey.min()), int(grey.max())) == (0, 255), (low, high)


@pytest.mark.parametrize(
    ("low", "high"),
    [pytest.param(0.0, 1.0, id="unit-range"), pytest.param(-1.0, 1.0, id="signed")],
)
def test_float_tiff_is_scaled_to_8_bits(low: float, high: float) -> None:
    """A 32-bit float ("F") TIFF is scaled from its own range: a 0..1 image is not black."""
    values = np.linspace(low, high, 64 * 32, dtype=np.float32).reshape(32, 64)
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    grey = decoded(data)[..., 0].ravel().astype(int)
    assert (np.diff(grey) >= 0).all()
    assert grey[0] == 0
    assert grey[-1] >= 254
    assert len(np.unique(grey)) > 200


def test_greyscale_becomes_three_equal_channels() -> None:
    """An 8-bit greyscale image keeps its values, copied into R, G and B."""
    camera: Pixels = getattr(skimage.data, "camera")()  # noqa: B009 (skimage is untyped)
    array = decoded(encode(Image.fromarray(camera), "PNG"))
    for channel in range(3):
        assert (array[..., channel] == camera).all()


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    return image


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode(palette_with_transparency(), "PNG", transparency=0), id="png-palette"),
        pytest.param(encode(palette_with_transparency(), "GIF", transparency=0), id="gif-palette"),
    ],
)
def test_palette_transparency_is_composited_on_white(data: bytes) -> None:
    """The transparent palette entry (black here) shows as white; opaque entries keep their
    colour."""
    array = decoded(data)
    assert tuple(array[0, 0]) == (255, 255, 255)
    assert tuple(array[1, 1]) == (255, 0, 0)


def test_rgba_is_composited_on_white() -> None:
    """A fully transparent pixel becomes white (whatever colour it stores), an opaque one keeps
    its colour, a half-transparent one is blended half-way to white."""
    image = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    image.putpixel((1, 1), (10, 20, 30, 255))
    image.putpixel((2, 2), (10, 20, 30, 128))
    array = decoded(encode(image, "PNG"))
    assert tuple(array[0, 0]) == (255, 255, 255)
    assert tuple(array[1, 1]) == (10, 20, 30)
    expected = [c + (255 - c) * 127 / 255 for c in (10, 20, 30)]
    assert np.abs(array[2, 2].astype(float) - expected).max() <= 2


def test_greyscale_alpha_and_rgb_colour_key_are_composited_on_white() -> None:
    """Transparency in other forms (greyscale + alpha, an RGB PNG's transparent colour) also
    shows as white."""
    grey_alpha = Image.new("LA", (4, 4), (50, 0))
    grey_alpha.putpixel((1, 1), (50, 255))
    array = decoded(encode(grey_alpha, "PNG"))
    assert (tuple(array[0, 0]), tuple(array[1, 1])) == ((255, 255, 255), (50, 50, 50))

    keyed = Image.new("RGB", (4, 4), (1, 2, 3))
    keyed.putpixel((0, 0), (9, 9, 9))
    array = decoded(encode(keyed, "PNG", transparency=(1, 2, 3)))
    assert (tuple(array[0, 0]), tuple(array[1, 1])) == ((9, 9, 9), (255, 255, 255))


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        pytest.param("JPEG", {"quality": 95}, id="jpeg"),
        pytest.param("PNG", {}, id="png"),
        pytest.param("WEBP", {"lossless": True}, id="webp"),
        pytest.param("TIFF", {}, id="tiff"),
    ],
)
def test_exif_orientation_6_is_rotated_upright(fmt: str, options: dict[str, Any]) -> None:
    """EXIF orientation 6 (stored rotated; turn 90 degrees clockwise to view) is applied:
    width and height swap and the stored top-left corner ends up top-right."""
    stored = Image.new("RGB", (40, 20), (0, 0, 0))
    stored.paste((255, 0, 0), (0, 0, 20, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    array = decoded(encode(stored, fmt, exif=exif.tobytes(), **options))
    assert array.shape == (40, 20, 3)
    top_right = array[2:8, 12:18].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200
    assert top_right[1:].max() < 40
    for corner in (array[2:8, 2:8], array[32:38, 2:8], array[32:38, 12:18]):
        assert corner.max() < 40


# --- refusals -------------------------------------------------------------------------------


def test_empty_file_is_refused() -> None:
    """No bytes at all: refused, saying the file is empty."""
    assert "empty" in refused(b"").detail


def test_random_bytes_are_refused_listing_accepted_formats() -> None:
    """Bytes that are no image format: refused, naming the formats that are accepted."""
    noise = np.random.default_rng(7).bytes(4096)
    assert ACCEPTED in refused(noise).detail
    assert ACCEPTED in refused(b"%PDF-1.7\n" + noise).detail


@pytest.mark.parametrize(("fmt", "options"), [("PNG", {}), ("JPEG", {"quality": 90})])
def test_truncated_images_are_refused(fmt: str, options: dict[str, Any]) -> None:
    """A PNG or JPEG cut short anywhere after its header is refused as truncated, never
    decoded with missing pixels."""
    data = encode(Image.fromarray(astronaut()), fmt, **options)
    for cut in (100, len(data) // 3, len(data) // 2, len(data) - 64):
        assert "truncated" in refused(data[:cut]).detail, cut


SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<rect width="10" height="10" fill="red"/></svg>'
)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(SVG, id="plain"),
        pytest.param(b'<?xml version="1.0" encoding="UTF-8"?>\n' + SVG, id="xml-prologue"),
        pytest.param(b"\n\n  \t " + SVG, id="leading-whitespace"),
        pytest.param(b'  \r\n<?xml version="1.0"?>\n' + SVG, id="whitespace-and-prologue"),
        pytest.param(
            b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "svg11.dtd">\n' + SVG, id="doctype"
        ),
        pytest.param(SVG.upper(), id="upper-case"),
    ],
)
def test_svg_is_refused_as_svg(data: bytes) -> None:
    """SVG text is refused with a message that says SVG is not accepted and what is."""
    detail = refused(data).detail
    assert "SVG" in detail
    assert ACCEPTED in detail


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xef\xbb\xbf" + SVG, id="utf8-bom"),
        pytest.param(b"<!-- drawn by hand -->\n" + SVG, id="leading-comment"),
        pytest.param(b" " * 300 + SVG, id="long-leading-whitespace"),
    ],
)
def test_other_svg_shapes_are_refused(data: bytes) -> None:
    """SVG in shapes the prefix check does not recognise is refused all the same."""
    refused(data)


@pytest.mark.parametrize(
    ("width", "height"), [pytest.param(0, 16, id="width-0"), pytest.param(16, 0, id="height-0")]
)
def test_zero_size_image_is_refused(width: int, height: int) -> None:
    """A PNG whose header says it has no pixels (PIL will not write one, so the IHDR is
    crafted) is refused."""
    with pytest.raises(ValueError, match="empty"):
        encode(Image.new("RGB", (width, height)), "PNG")
    refused(png_claiming(width, height, rows=0))


_HEADER_PROBE = """
import json, resource, sys
from core.images import ImageError, decode_image
data = open(sys.argv[1], "rb").read()
# Room for what is already mapped plus 64 MiB: far less than the claimed pixels would take.
with open("/proc/self/status") as status:
    size_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize"))
limit = (size_kib + 64 * 1024) * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    decode_image(data, field="upload")
except ImageError as e:
    print(json.dumps({"refused": True, "field": e.field, "detail": e.detail}))
else:
    print(json.dumps({"refused": False}))
"""


@pytest.mark.parametrize(
    ("width", "height"),
    [
        pytest.param(9_000, 9_000, id="81-megapixels"),
        pytest.param(50_000, 50_000, id="2500-megapixels"),
    ],
)
def test_oversized_header_is_refused_without_allocating(
    tmp_path: Path, width: int, height: int
) -> None:
    """An image whose header claims more pixels than accepted is refused from the header, in
    a process that could not allocate those pixels if it tried."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(width, height))
    result = subprocess.run(
        [sys.executable, "-c", _HEADER_PROBE, str(path)],
        cwd=REPO,
        env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["refused"] is True
    assert outcome["field"] == "upload"


def stated_limit(detail: str) -> float:
    """The pixel limit a refusal message states ("at most 40 megapixels", "... 100,000
    pixels")."""
    found = re.search(r"at most ([\d.,]+) (mega)?pixels", detail)
    assert found, detail
    value = float(found.group(1).replace(",", ""))
    return value * 1e6 if found.group(2) else value


@pytest.mark.parametrize(
    ("width", "height"),
    [
        pytest.param(8_000, 5_001, id="just-above-limit"),
        pytest.param(9_000, 9_000, id="81-megapixels"),
        pytest.param(12_000, 12_000, id="144-megapixels"),
        pytest.param(50_000, 50_000, id="2500-megapixels"),
    ],
)
def test_oversized_header_message_names_size_and_limit(width: int, height: int) -> None:
    """However large the claim, the refusal says the image is too large: its size and the
    limit, not that the file is truncated or corrupt (the file is well-formed)."""
    assert width * height > DEFAULT_MAX_PIXELS
    detail = refused(png_claiming(width, height)).detail
    assert f"{width}x{height}" in detail
    assert stated_limit(detail) == pytest.approx(DEFAULT_MAX_PIXELS, rel=0.05)
    assert "corrupt" not in detail
    assert "truncated" not in detail


def test_custom_max_pixels_is_the_limit() -> None:
    """max_pixels is inclusive: an image of exactly that many pixels is accepted, one pixel
    fewer allowed refuses it."""
    data = encode(Image.fromarray(astronaut()), "PNG")
    assert decoded(data, max_pixels=512 * 512).shape == (512, 512, 3)
    detail = refused(data, max_pixels=512 * 512 - 1).detail
    assert "512x512" in detail


@pytest.mark.parametrize("max_pixels", [100_000, 250_000, 2_500_000])
def test_custom_limit_message_states_that_limit(max_pixels: int) -> None:
    """The refusal under a custom limit states that limit (not a rounding of it such as
    "at most 0 megapixels")."""
    data = encode(Image.fromarray(np.zeros((2_000, 1_500, 3), np.uint8)), "PNG")
    detail = refused(data, max_pixels=max_pixels).detail
    assert stated_limit(detail) == pytest.approx(max_pixels, rel=0.05)


@pytest.mark.parametrize("field", ["image", "exemplar", "files[2]"])
def test_refusals_carry_the_given_field(field: str) -> None:
    """Every kind of refusal names the field it was given (default "image")."""
    cases = [b"", b"not an image", SVG, png_claiming(50_000, 50_000), png_claiming(0, 4, 0)]
    for data in cases:
        with pytest.raises(ImageError) as caught:
            decode_image(data, field=field)
        assert caught.value.field == field
    with pytest.raises(ImageError) as caught:
        decode_image(b"")
    assert caught.value.field == "image"

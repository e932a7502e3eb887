"""Reference-index benchmark: the logo matchers (PDQ, keypoints, both) and FAISS at scale.

Matching. Makes N synthetic logos (polygons, stars, circles, rings, bars, letters drawn with
PIL's default font scaled up; two or three colours on a background; no two within PDQ match
distance of each other) and indexes them with PDQ and with `reference_index.keypoints`. Then,
for a sample of logos per transform, it queries with a transformed copy and prints recall@1 of
PDQ alone, keypoints alone and combined (either finds the right asset at rank 1) (with
--transforms held-out, a set kept apart from the issue's: resize 25%, crop 20%, JPEG q20,
blur, lighting, rotate 45, logo at 7% in a photo, tilted in a photo, 40% occluded); queries
with distractors that hold no indexed logo (photo crops, textures, text, and synthetic scenes:
photos with unindexed logos and shapes drawn on them) and prints the false-positive rate (any
match at all); and prints the check latency (PDQ + keypoint search) per 1024x1024 image.

FAISS. For 10k, 100k and 1M L2-normalised vectors with a low intrinsic dimension and
cluster structure (like image embeddings, so neither trivial nor hopeless), it builds the
service's indexes (`reference_index.vector_index`: exact IndexFlatIP and HNSW, M=32) and prints
recall@10 against exact search, single-query latency (median, p99) and index memory, for a few
efSearch values including the service's. Rows are --faiss-dim (768 by default, ViT-L-14's
embedding size); the 1M row holds ~10 GiB at its peak and its HNSW takes ~4-8 min to build on
2 cores.

Targets: combined recall@1 >= 0.98 on every transform at <= 1% false positives, check latency
<= 150 ms per 1024x1024 image with 1,000 logos indexed, FAISS at 1M p99 <= 5 ms at
recall@10 >= 0.95. Figures only: no pass/fail, not part of the test suite.

    python bench/index_eval.py                          # everything (~25 min on 2 cores)
    python bench/index_eval.py --seed 2                 # other logos, crops and parameters
    python bench/index_eval.py --faiss-sizes 10000,100000
    python bench/index_eval.py --skip-faiss
    python bench/index_eval.py --skip-faiss --transforms held-out   # harsher and other kinds
    python bench/index_eval.py --quick                  # small and fast: exercises the code
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import string
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import skimage.data
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from reference_index import pdq, vector_index
from reference_index.keypoints import KeypointIndex
from reference_index.vector_index import VectorIndex

Rgb = npt.NDArray[np.uint8]
Box = tuple[int, int, int, int]
Rng = np.random.Generator

SCENE_SIDE = 1024
PDQ_MAX_DISTANCE = 31  # the service default (core.settings.MatchingSettings)
# Logos closer than this in PDQ bits would be near-duplicates of each other.
LOGO_MIN_PDQ_DISTANCE = 48


# --- synthetic logos ----------------------------------------------------------------------


def _colour(rng: Rng, away_from: Sequence[tuple[int, int, int]]) -> tuple[int, int, int]:
    """A random colour whose luminance differs from each of `away_from` by >= 60 of 255, so
    each logo still has visible edges in grayscale."""
    while True:
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        luma = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
        if all(abs(luma - (0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2])) >= 60 for a in away_from):
            return c[0], c[1], c[2]


def _polygon(rng: Rng, cx: float, cy: float, r: float, star: bool) -> list[tuple[float, float]]:
    sides = int(rng.integers(5, 9)) if star else int(rng.integers(3, 8))
    start = rng.uniform(0, 2 * np.pi)
    points = []
    for i in range(sides * (2 if star else 1)):
        angle = start + i * np.pi / sides * (1 if star else 2)
        radius = r * (rng.uniform(0.35, 0.55) if star and i % 2 else rng.uniform(0.75, 1.0))
        points.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
    return points


def _text(rng: Rng, draw: ImageDraw.ImageDraw, w: int, h: int, fill: tuple[int, int, int]) -> None:
    letters = "".join(rng.choice(list(string.ascii_uppercase + string.digits), rng.integers(1, 5)))
    size = int(rng.uniform(0.18, 0.4) * min(w, h))
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = draw.textbbox((0, 0), letters, font=font)
    x = rng.uniform(0, max(1, w - (right - left))) - left
    y = rng.uniform(0, max(1, h - (bottom - top))) - top
    draw.text((x, y), letters, fill=fill, font=font)


def make_logo(rng: Rng) -> Rgb:
    """One logo: a background colour, two or three shape elements and usually some letters,
    in two or three colours."""
    w, h = (int(v) for v in rng.integers(220, 400, 2))
    background = _colour(rng, [])
    colours = [_colour(rng, [background])]
    if rng.random() < 0.6:
        colours.append(_colour(rng, [background, colours[0]]))
    image = Image.new("RGB", (w, h), background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 4))):
        fill = colours[int(rng.integers(len(colours)))]
        r = rng.uniform(0.15, 0.4) * min(w, h)
        cx, cy = rng.uniform(r * 0.6, w - r * 0.6), rng.uniform(r * 0.6, h - r * 0.6)
        kind = rng.choice(["polygon", "star", "circle", "ring", "bar", "arc"])
        if kind in ("polygon", "star"):
            draw.polygon(_polygon(rng, cx, cy, r, kind == "star"), fill=fill)
        elif kind == "circle":
            draw.ellipse((cx - r, cy - r * rng.uniform(0.6, 1), cx + r, cy + r), fill=fill)
        elif kind == "ring":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=int(r * 0.3))
        elif kind == "bar":
            draw.rectangle((cx - r, cy - r * 0.25, cx + r, cy + r * 0.25), fill=fill)
        else:
            start = float(rng.uniform(0, 360))
            draw.arc(
                (cx - r, cy - r, cx + r, cy + r),
                start,
                start + float(rng.uniform(90, 270)),
                fill=fill,
                width=int(r * 0.25),
            )
    if rng.random() < 0.8:
        _text(rng, draw, w, h, colours[int(rng.integers(len(colours)))])
    return np.asarray(image)


def pdq_bits(rgb: Rgb) -> npt.NDArray[np.uint8]:
    bits: npt.NDArray[np.uint8] = pdq.hex_to_bits([pdq.compute_array(rgb).hex])[0]
    return bits


def make_logos(n: int, rng: Rng) -> list[Rgb]:
    """`n` logos, no two within LOGO_MIN_PDQ_DISTANCE bits: distinct, not near-duplicates."""
    logos: list[Rgb] = []
    hashes = np.zeros((0, pdq.HASH_BITS), dtype=np.uint8)
    while len(logos) < n:
        logo = make_logo(rng)
        bits = pdq_bits(logo)
        if len(logos) and (hashes != bits).sum(axis=1).min() < LOGO_MIN_PDQ_DISTANCE:
            continue
        logos.append(logo)
        hashes = np.vstack([hashes, bits])
    return logos


# --- photos -------------------------------------------------------------------------------


def photos() -> list[Rgb]:
    """The real photos and textures that ship with scikit-image, as RGB."""
    names = [
        "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
        "retina", "colorwheel", "camera", "brick", "grass", "gravel", "moon", "coins", "clock",
        "page", "text", "cell", "checkerboard",
    ]  # fmt: skip
    found: list[Rgb] = []
    for name in names:
        array = np.asarray(getattr(skimage.data, name)())
        found.append(np.stack([array] * 3, axis=-1) if array.ndim == 2 else array[..., :3])
    motorcycle: Callable[[], tuple[Rgb, Rgb, object]] = skimage.data.stereo_motorcycle
    left, right, _disparity = motorcycle()
    return [*found, left, right]


def resize(rgb: Rgb, w: int, h: int) -> Rgb:
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.LANCZOS))


def photo_crop(rng: Rng, pool: Sequence[Rgb], side: int = SCENE_SIDE) -> Rgb:
    """A random sub-crop (40-100% of the shorter side) of a random photo, resized to
    side x side."""
    photo = pool[int(rng.integers(len(pool)))]
    h, w = photo.shape[:2]
    crop = int(min(h, w) * rng.uniform(0.4, 1.0))
    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    return resize(photo[y : y + crop, x : x + crop], side, side)


# --- transforms ---------------------------------------------------------------------------
# Each takes a logo and returns the query image and where the logo is in it. Parameters are
# drawn from the seeded generator, so another --seed also means other transform parameters.


@dataclass(frozen=True)
class Query:
    image: Rgb
    box: Box  # where the logo is, in the query's pixels


def _whole(image: Rgb) -> Query:
    return Query(image, (0, 0, image.shape[1], image.shape[0]))


def resize_half(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    return _resized(logo, rng, 0.45, 0.55)


def _resized(logo: Rgb, rng: Rng, low: float, high: float) -> Query:
    h, w = logo.shape[:2]
    f = rng.uniform(low, high)
    return _whole(resize(logo, round(w * f), round(h * f)))


def crop_10(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    return _cropped(logo, rng, 0.1)


def _cropped(logo: Rgb, rng: Rng, share: float) -> Query:
    """Cuts `share` of the width and of the height, split at random between the two sides."""
    h, w = logo.shape[:2]
    left, top = int(rng.uniform(0, share) * w), int(rng.uniform(0, share) * h)
    right, bottom = left + round((1 - share) * w), top + round((1 - share) * h)
    return Query(logo[top:bottom, left:right], (-left, -top, w - left, h - top))


def jpeg_40(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    return _jpeg(logo, 40)


def _jpeg(logo: Rgb, quality: int) -> Query:
    buffer = io.BytesIO()
    Image.fromarray(logo).save(buffer, format="JPEG", quality=quality)
    return _whole(np.asarray(Image.open(buffer).convert("RGB")))


def hue_shift(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    hsv = np.asarray(Image.fromarray(logo).convert("HSV")).copy()
    shift = int(rng.uniform(20, 110)) * int(rng.choice([-1, 1]))  # of 256 = 28..155 degrees
    hsv[..., 0] = (hsv[..., 0].astype(int) + shift) % 256
    return _whole(np.asarray(Image.fromarray(hsv, "HSV").convert("RGB")))


def gaussian_noise(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    noise = rng.normal(0, rng.uniform(10, 20), logo.shape)
    return _whole(np.clip(logo + noise, 0, 255).astype(np.uint8))


def _fill(rng: Rng) -> tuple[int, int, int]:
    c = rng.integers(0, 256, 3)
    return int(c[0]), int(c[1]), int(c[2])


def rotate_15(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    return _rotated(logo, rng, 13, 17)


def _rotated(logo: Rgb, rng: Rng, low: float, high: float) -> Query:
    angle = rng.uniform(low, high) * rng.choice([-1, 1])
    image = Image.fromarray(logo).rotate(
        angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=_fill(rng)
    )
    # With expand=True the logo's corners touch the new canvas' edges.
    return Query(np.asarray(image), (0, 0, image.width, image.height))


def perspective_tilt(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    """The logo seen from the side: one edge shrinks toward its middle by 15-30% and the
    picture is placed on a larger canvas, as if printed on a tilted sign."""
    h, w = logo.shape[:2]
    pad = int(0.15 * max(w, h))
    canvas_w, canvas_h = w + 2 * pad, h + 2 * pad
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    dst = src + pad
    squeeze = rng.uniform(0.15, 0.3)
    edge = int(rng.integers(4))  # which edge recedes: top, right, bottom, left
    a, b = edge, (edge + 1) % 4
    mid = (dst[a] + dst[b]) / 2
    dst[a] += (mid - dst[a]) * squeeze * 2
    dst[b] += (mid - dst[b]) * squeeze * 2
    dst += rng.uniform(-0.03, 0.03, dst.shape) * max(w, h)
    # PIL's perspective transform maps output pixels to input pixels: solve for dst -> src.
    coefficients = _perspective_coefficients(dst, src)
    image = Image.fromarray(logo).transform(
        (canvas_w, canvas_h),
        Image.Transform.PERSPECTIVE,
        coefficients,
        resample=Image.Resampling.BICUBIC,
        fillcolor=_fill(rng),
    )
    x0, y0 = dst.min(axis=0)
    x1, y1 = dst.max(axis=0)
    return Query(np.asarray(image), (int(x0), int(y0), int(x1), int(y1)))


def _perspective_coefficients(
    out: npt.NDArray[np.float64], into: npt.NDArray[np.float64]
) -> tuple[float, ...]:
    rows = []
    for (x, y), (u, v) in zip(out, into, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    solution = np.linalg.solve(np.array(rows), into.reshape(8))
    return tuple(float(c) for c in solution)


def in_scene(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    """The logo at 10% of the width of a 1024x1024 photo, somewhere inside it."""
    return _in_photo(logo, rng, pool, 0.1)


def _in_photo(logo: Rgb, rng: Rng, pool: Sequence[Rgb], share: float) -> Query:
    """The logo at `share` of the width of a 1024x1024 photo, somewhere inside it."""
    scene = photo_crop(rng, pool).copy()
    h, w = logo.shape[:2]
    new_w = round(SCENE_SIDE * share)
    new_h = round(h * new_w / w)
    small = resize(logo, new_w, new_h)
    x, y = int(rng.integers(0, SCENE_SIDE - new_w)), int(rng.integers(0, SCENE_SIDE - new_h))
    scene[y : y + new_h, x : x + new_w] = small
    return Query(scene, (x, y, x + new_w, y + new_h))


def occlude_30(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    return _occluded(logo, rng, pool, 0.3)


def _occluded(logo: Rgb, rng: Rng, pool: Sequence[Rgb], share: float) -> Query:
    """A photo patch covering `share` of the logo's area, at a random place."""
    h, w = logo.shape[:2]
    aspect = rng.uniform(0.5, 2.0)
    ow = min(w, round(np.sqrt(share * w * h * aspect)))
    oh = min(h, round(share * w * h / ow))
    x, y = int(rng.integers(0, w - ow + 1)), int(rng.integers(0, h - oh + 1))
    image = logo.copy()
    image[y : y + oh, x : x + ow] = photo_crop(rng, pool, side=max(ow, oh))[:oh, :ow]
    return _whole(image)


def grayscale(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    return _whole(np.asarray(Image.fromarray(logo).convert("L").convert("RGB")))


TRANSFORMS: dict[str, Callable[[Rgb, Rng, Sequence[Rgb]], Query]] = {
    "resize 50%": resize_half,
    "crop 10%": crop_10,
    "jpeg q40": jpeg_40,
    "hue shift": hue_shift,
    "gauss noise": gaussian_noise,
    "rotate 15": rotate_15,
    "perspective": perspective_tilt,
    "in scene 10%": in_scene,
    "occlude 30%": occlude_30,
    "grayscale": grayscale,
}


# Held out (--transforms held-out): harsher versions of the kinds above and kinds they lack
# (blur, lighting), kept apart from the thresholds' tuning so that the benchmark can show
# whether the matchers generalise. (Seeds 11, 21 and 31 of this set have been looked at,
# and the misses with a general cause mended; seeds no one has looked at are the held-out
# measure.)


def resize_quarter(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    return _resized(logo, rng, 0.22, 0.28)


def crop_20(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    return _cropped(logo, rng, 0.2)


def jpeg_20(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    return _jpeg(logo, 20)


def blur(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    radius = rng.uniform(1.5, 2.5)
    return _whole(np.asarray(Image.fromarray(logo).filter(ImageFilter.GaussianBlur(radius))))


def lighting(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    """Contrast scaled by 0.6-0.8 or 1.2-1.4 about mid-grey, brightness moved by up to 30."""
    gain = rng.uniform(0.6, 0.8) if rng.random() < 0.5 else rng.uniform(1.2, 1.4)
    shift = rng.uniform(-30, 30)
    return _whole(np.clip((logo - 128.0) * gain + 128 + shift, 0, 255).astype(np.uint8))


def rotate_45(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    return _rotated(logo, rng, 40, 50)


def in_scene_small(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    """The logo at 7% of the width of a 1024x1024 photo (72 pixels)."""
    return _in_photo(logo, rng, pool, 0.07)


def in_scene_tilted(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    """The logo tilted (see perspective_tilt) at 15% of the width of a 1024x1024 photo."""
    tilted = perspective_tilt(logo, rng, pool)
    x0, y0, x1, y1 = tilted.box
    return _in_photo(tilted.image[y0:y1, x0:x1], rng, pool, 0.15)


def occlude_40(logo: Rgb, rng: Rng, pool: Sequence[Rgb]) -> Query:
    return _occluded(logo, rng, pool, 0.4)


HELD_OUT: dict[str, Callable[[Rgb, Rng, Sequence[Rgb]], Query]] = {
    "resize 25%": resize_quarter,
    "crop 20%": crop_20,
    "jpeg q20": jpeg_20,
    "blur": blur,
    "lighting": lighting,
    "rotate 45": rotate_45,
    "in scene 7%": in_scene_small,
    "in scene tilt": in_scene_tilted,
    "occlude 40%": occlude_40,
}


# --- distractors --------------------------------------------------------------------------


def synthetic_scene(rng: Rng, pool: Sequence[Rgb], unindexed: Sequence[Rgb]) -> Rgb:
    """A photo with unindexed logos, shapes and letters drawn on it: everything an indexed
    logo is made of, but none of the indexed logos."""
    scene = photo_crop(rng, pool).copy()
    for _ in range(int(rng.integers(1, 4))):
        logo = unindexed[int(rng.integers(len(unindexed)))]
        new_w = int(SCENE_SIDE * rng.uniform(0.08, 0.4))
        new_h = max(8, round(logo.shape[0] * new_w / logo.shape[1]))
        x, y = int(rng.integers(0, SCENE_SIDE - new_w)), int(rng.integers(0, SCENE_SIDE - new_h))
        scene[y : y + new_h, x : x + new_w] = resize(logo, new_w, new_h)
    image = Image.fromarray(scene)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        r = rng.uniform(20, 120)
        cx, cy = rng.uniform(0, SCENE_SIDE, 2)
        draw.polygon(_polygon(rng, cx, cy, r, bool(rng.random() < 0.5)), fill=_fill(rng))
    _text(rng, draw, SCENE_SIDE, SCENE_SIDE, _fill(rng))
    return np.asarray(image)


def distractors(n: int, rng: Rng, pool: Sequence[Rgb], unindexed: Sequence[Rgb]) -> list[Rgb]:
    """`n` images holding no indexed logo: a quarter whole photos at their own size, a quarter
    photo crops at random sizes, half synthetic scenes."""
    images: list[Rgb] = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            images.append(pool[i // 4 % len(pool)])
        elif kind == 1:
            images.append(photo_crop(rng, pool, side=int(rng.integers(128, SCENE_SIDE + 1))))
        else:
            images.append(synthetic_scene(rng, pool, unindexed))
    return images


# --- matching evaluation ------------------------------------------------------------------

PDQ_MIN_QUALITY = 50  # the service default (core.settings.MatchingSettings)
KEYPOINT_MIN_INLIERS = 12  # the service default: a homography with fewer is not reported


@dataclass
class PdqIndex:
    """The service's PDQ check (reference_index.checks): references and queries of quality
    >= PDQ_MIN_QUALITY, a match within PDQ_MAX_DISTANCE bits, nearest first."""

    hexes: list[str]
    assets: list[str]

    @classmethod
    def build(cls, logos: Sequence[Rgb]) -> PdqIndex:
        hexes, assets = [], []
        for i, logo in enumerate(logos):
            hashed = pdq.compute_array(np.ascontiguousarray(logo))
            if hashed.quality >= PDQ_MIN_QUALITY:
                hexes.append(hashed.hex)
                assets.append(asset_id(i))
        return cls(hexes, assets)

    def search(self, rgb: Rgb) -> list[str]:
        hashed = pdq.compute_array(np.ascontiguousarray(rgb))
        if hashed.quality < PDQ_MIN_QUALITY or not self.hexes:
            return []
        distances = pdq.distances(hashed.hex, self.hexes)
        order = np.argsort(distances, kind="stable")
        return [self.assets[i] for i in order if distances[i] <= PDQ_MAX_DISTANCE]


def asset_id(i: int) -> str:
    return f"asset-{i:05d}"


@dataclass
class Checked:
    pdq: list[str]  # asset ids, best first
    keypoints: list[str]
    seconds: float  # PDQ + keypoint search


def check(image: Rgb, pdq_index: PdqIndex, keypoints: KeypointIndex) -> Checked:
    """What the service's PDQ and keypoint matchers report for one image, and how long the
    two took."""
    start = time.perf_counter()
    by_pdq = pdq_index.search(image)
    hits = keypoints.search(image)
    seconds = time.perf_counter() - start
    found = [h.asset_id for h in hits if h.inliers >= KEYPOINT_MIN_INLIERS or not h.fitted]
    return Checked(by_pdq, found, seconds)


def _rate(hits: int, n: int) -> str:
    return f"{hits / n:6.3f}" if n else "   n/a"


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def evaluate_matching(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    pool = photos()
    unindexed_n = max(20, args.logos // 10)
    start = time.perf_counter()
    logos = make_logos(args.logos + unindexed_n, rng)
    indexed, unindexed = logos[: args.logos], logos[args.logos :]
    print(
        f"made {len(indexed)} indexed + {len(unindexed)} unindexed logos in "
        f"{time.perf_counter() - start:.1f} s"
    )
    start = time.perf_counter()
    pdq_index = PdqIndex.build(indexed)
    print(
        f"PDQ: {len(pdq_index.hexes)} of {len(indexed)} logos have quality >= "
        f"{PDQ_MIN_QUALITY} ({time.perf_counter() - start:.1f} s)"
    )
    start = time.perf_counter()
    keypoints = KeypointIndex.build(
        (f"exemplar-{i:05d}", asset_id(i), logo) for i, logo in enumerate(indexed)
    )
    print(f"keypoints: indexed {len(keypoints)} logos in {time.perf_counter() - start:.1f} s")

    latencies: list[float] = []  # per 1024x1024 image
    print()
    print(
        f"recall@1 ({args.per_transform} queries per transform; combined = either matcher "
        "has the right asset at rank 1)"
    )
    print(
        "  wrong = share of queries where either matcher also reports an asset that is not in "
        "the image"
    )
    print(
        f"  {'transform':14s} {'PDQ':>6s} {'keyp.':>6s} {'comb.':>6s} {'wrong':>6s}   "
        "keyp. ms p50/max"
    )
    totals = [0, 0, 0, 0, 0]
    transforms = HELD_OUT if args.transforms == "held-out" else TRANSFORMS
    for name, transform in transforms.items():
        hits = [0, 0, 0, 0]
        seconds: list[float] = []
        for _ in range(args.per_transform):
            target = int(rng.integers(len(indexed)))
            query = transform(indexed[target], rng, pool)
            checked = check(query.image, pdq_index, keypoints)
            seconds.append(checked.seconds)
            if query.image.shape[:2] == (SCENE_SIDE, SCENE_SIDE):
                latencies.append(checked.seconds)
            want = asset_id(target)
            by_pdq = checked.pdq[:1] == [want]
            by_keypoints = checked.keypoints[:1] == [want]
            hits[0] += by_pdq
            hits[1] += by_keypoints
            hits[2] += by_pdq or by_keypoints
            hits[3] += any(found != want for found in checked.pdq + checked.keypoints)
            if args.verbose and not (by_pdq and by_keypoints):
                print(
                    f"    miss {name}: logo {target} pdq={checked.pdq[:3]} "
                    f"keypoints={checked.keypoints[:3]}"
                )
        n = args.per_transform
        for i in range(4):
            totals[i] += hits[i]
        totals[4] += n
        print(
            f"  {name:14s} {_rate(hits[0], n)} {_rate(hits[1], n)} {_rate(hits[2], n)} "
            f"{_rate(hits[3], n)}   "
            f"{1000 * statistics.median(seconds):5.0f}/{1000 * max(seconds):.0f}"
        )
    n = totals[4]
    print(
        f"  {'all':14s} {_rate(totals[0], n)} {_rate(totals[1], n)} {_rate(totals[2], n)} "
        f"{_rate(totals[3], n)}"
    )

    images = distractors(args.distractors, rng, pool, unindexed)
    kinds = ["whole photo", "photo crop", "scene", "scene"]
    false = {k: [0, 0, 0, 0] for k in ("whole photo", "photo crop", "scene", "all")}
    for i, image in enumerate(images):
        checked = check(image, pdq_index, keypoints)
        if image.shape[:2] == (SCENE_SIDE, SCENE_SIDE):
            latencies.append(checked.seconds)
        flags = (bool(checked.pdq), bool(checked.keypoints))
        for kind in (kinds[i % 4], "all"):
            false[kind][0] += flags[0]
            false[kind][1] += flags[1]
            false[kind][2] += flags[0] or flags[1]
            false[kind][3] += 1
        if args.verbose and (flags[0] or flags[1]):
            print(
                f"    false positive: distractor {i} ({kinds[i % 4]}, {image.shape[1]}x"
                f"{image.shape[0]}) pdq={checked.pdq[:3]} keypoints={checked.keypoints[:3]}"
            )
    print()
    print(
        f"false-positive rate on {len(images)} distractors (any match at all; photos, photo "
        f"crops, scenes with {len(unindexed)} unindexed logos, shapes and letters)"
    )
    print(f"  {'distractors':14s} {'n':>5s} {'PDQ':>6s} {'keyp.':>6s} {'comb.':>6s}")
    for kind, (p, k, c, count) in false.items():
        print(f"  {kind:14s} {count:5d} {_rate(p, count)} {_rate(k, count)} {_rate(c, count)}")

    print()
    print(
        f"check latency per {SCENE_SIDE}x{SCENE_SIDE} image (PDQ + keypoint search, "
        f"{len(keypoints)} logos indexed, {len(latencies)} images: logo-in-scene queries and "
        "distractors)"
    )
    if latencies:
        ms = [1000 * s for s in latencies]
        print(
            f"  mean {statistics.fmean(ms):.0f} ms, p50 {_percentile(ms, 50):.0f} ms, "
            f"p95 {_percentile(ms, 95):.0f} ms, max {max(ms):.0f} ms"
        )


# --- FAISS at scale -----------------------------------------------------------------------

LATENT_DIMENSION = 48
CLUSTERS = 2000
QUERIES = 200


@dataclass(frozen=True)
class Embedding:
    """A fixed random model of image embeddings: vectors near CLUSTERS cluster centres (of
    Zipf-like popularity) in a LATENT_DIMENSION-d subspace, a direction shared by all of them
    (real embeddings are far from isotropic: unrelated images still have cosine ~0.2), and
    weaker noise in every dimension; L2-normalised."""

    basis: npt.NDArray[np.float32]  # (latent, dimension)
    centres: npt.NDArray[np.float32]  # (clusters, latent)
    weights: npt.NDArray[np.float64]  # cluster popularity
    shared: npt.NDArray[np.float32]  # (dimension,)

    @classmethod
    def make(cls, dimension: int, rng: Rng) -> Embedding:
        basis = rng.standard_normal((LATENT_DIMENSION, dimension)).astype(np.float32)
        basis /= np.linalg.norm(basis, axis=1, keepdims=True)
        centres = rng.standard_normal((CLUSTERS, LATENT_DIMENSION)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        weights = 1.0 / np.arange(1, CLUSTERS + 1) ** 0.8
        shared = rng.standard_normal(dimension).astype(np.float32)
        shared /= np.linalg.norm(shared)
        return cls(basis, centres, weights / weights.sum(), shared)

    def sample(self, n: int, rng: Rng) -> npt.NDArray[np.float32]:
        dimension = self.basis.shape[1]
        out = np.empty((n, dimension), np.float32)
        for start in range(0, n, 50_000):
            m = min(50_000, n - start)
            cluster = rng.choice(CLUSTERS, size=m, p=self.weights)
            spread = rng.uniform(0.3, 0.7, (m, 1)).astype(np.float32)
            latent = self.centres[cluster] + spread * rng.standard_normal(
                (m, LATENT_DIMENSION), dtype=np.float32
            ) / np.sqrt(LATENT_DIMENSION)
            vectors = latent @ self.basis + 0.5 * self.shared
            vectors += (
                0.35 * rng.standard_normal((m, dimension), dtype=np.float32) / np.sqrt(dimension)
            )
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            out[start : start + m] = vectors
        return out


def _hnsw_bytes(index: Any) -> int:
    """What an HNSW index holds: the vectors and the graph (neighbour lists, levels, offsets)."""
    hnsw = index.hnsw
    return int(
        index.ntotal * index.d * 4
        + hnsw.neighbors.size() * 4
        + hnsw.levels.size() * 4
        + hnsw.offsets.size() * 8
    )


def _single_queries(
    index: VectorIndex, queries: npt.NDArray[np.float32], k: int
) -> tuple[list[float], npt.NDArray[np.int64]]:
    """Per-query latency (ms), one query at a time as the service asks, and the rows found."""
    times: list[float] = []
    found = np.full((len(queries), k), -1, np.int64)
    position = {identifier: row for row, identifier in enumerate(index.ids)}
    for i, query in enumerate(queries):
        start = time.perf_counter()
        hits = index.search(query[None], k)[0]
        times.append(1000 * (time.perf_counter() - start))
        found[i, : len(hits)] = [position[identifier] for identifier, _ in hits]
    return times, found


def _recall(found: npt.NDArray[np.int64], exact: npt.NDArray[np.int64]) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact, strict=True)]))


def evaluate_faiss(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    k = 10
    print()
    print(
        f"FAISS: L2-normalised vectors ({CLUSTERS} clusters in a {LATENT_DIMENSION}-d subspace "
        f"plus noise), {QUERIES} held-out queries, k={k}, faiss {faiss.__version__}, "
        f"{faiss.omp_get_max_threads()} threads"
    )
    print(
        f"service: exact IndexFlatIP up to {args.exact_limit:,} vectors, HNSW "
        f"(M={vector_index.HNSW_NEIGHBOURS}, efConstruction={vector_index.HNSW_EF_CONSTRUCTION},"
        f" efSearch={vector_index.HNSW_EF_SEARCH}) above"
    )
    print(
        f"  {'vectors':>9s} {'dim':>4s} {'index':18s} {'recall@10':>9s} {'p50 ms':>7s} "
        f"{'p99 ms':>7s} {'memory':>9s} {'build s':>8s}"
    )
    dimension = args.faiss_dim
    for size in args.faiss_sizes:
        model = Embedding.make(dimension, np.random.default_rng(args.seed))
        vectors = model.sample(size, rng)
        queries = model.sample(QUERIES, rng)
        ids = [str(i) for i in range(size)]
        exact_index = faiss.IndexFlatIP(dimension)
        exact_index.add(vectors)
        _, exact = exact_index.search(queries, k)
        del exact_index

        def row(
            name: str,
            times: list[float],
            recall: float,
            memory: str,
            build: str,
            size: int = size,
            dimension: int = dimension,
        ) -> None:
            print(
                f"  {size:9,d} {dimension:4d} {name:18s} {recall:9.3f} "
                f"{_percentile(times, 50):7.2f} {_percentile(times, 99):7.2f} {memory:>9s} "
                f"{build:>8s}"
            )

        flat = VectorIndex.empty(
            embedder="bench", dimension=dimension, expected=size, exact_limit=size
        )
        start = time.perf_counter()
        flat.add(vectors, ids)
        build = time.perf_counter() - start
        flat_queries = queries if size <= 100_000 else queries[:50]
        times, found = _single_queries(flat, flat_queries, k)
        memory = f"{flat.index.ntotal * dimension * 4 / 2**20:.0f} MiB"  # the vectors, no more
        service = "  <- service" if size <= args.exact_limit else ""
        row(
            "IndexFlatIP" + ("*" if service else ""),
            times,
            _recall(found, exact[: len(found)]),
            memory,
            f"{build:.1f}",
        )
        del flat

        hnsw = VectorIndex.empty(
            embedder="bench", dimension=dimension, expected=size, exact_limit=0
        )
        start = time.perf_counter()
        hnsw.add(vectors, ids)
        build = time.perf_counter() - start
        memory = f"{_hnsw_bytes(hnsw.index) / 2**20:.0f} MiB"
        for ef in args.ef_search:
            graph: Any = hnsw.index
            graph.hnsw.efSearch = ef
            times, found = _single_queries(hnsw, queries, k)
            default = ef == vector_index.HNSW_EF_SEARCH
            name = f"HNSW ef={ef}" + ("*" if default and size > args.exact_limit else "")
            row(
                name,
                times,
                _recall(found, exact),
                memory if default else "",
                f"{build:.1f}" if default else "",
            )
        del hnsw, vectors
        sys.stdout.flush()
    print(
        "  * what the service uses at that size; memory: the index's own (the vectors for "
        "Flat; vectors + graph for HNSW)"
    )


# --- main ---------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--logos", type=int, default=1000, help="logos indexed")
    parser.add_argument("--per-transform", type=int, default=100, help="queries per transform")
    parser.add_argument("--distractors", type=int, default=400)
    parser.add_argument("--faiss-sizes", type=_sizes, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--faiss-dim", type=int, default=768)
    parser.add_argument("--ef-search", type=_sizes, default=[32, 64, 128, 256])
    parser.add_argument("--exact-limit", type=int, default=10_000, help="service's Flat limit")
    parser.add_argument(
        "--transforms",
        choices=["benchmark", "held-out"],
        default="benchmark",
        help="the issue's transforms, or harsher and other ones kept apart from tuning",
    )
    parser.add_argument("--skip-faiss", action="store_true")
    parser.add_argument("--skip-matching", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small and fast: checks the code")
    parser.add_argument("--verbose", action="store_true", help="print each miss and false hit")
    args = parser.parse_args(argv)
    if args.quick:
        args.logos, args.per_transform, args.distractors = 60, 5, 24
        args.faiss_sizes = [5_000, 20_000]
        args.ef_search = [64, 128]
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"parameters: seed={args.seed} logos={args.logos} per_transform={args.per_transform} "
        f"distractors={args.distractors} transforms={args.transforms} "
        f"faiss_sizes={args.faiss_sizes} "
        f"faiss_dim={args.faiss_dim} "
        f"ef_search={args.ef_search} skip_faiss={args.skip_faiss} "
        f"pdq: max distance {PDQ_MAX_DISTANCE}, min quality {PDQ_MIN_QUALITY}; keypoints: "
        f"min inliers {KEYPOINT_MIN_INLIERS}"
    )
    sys.stdout.flush()
    if not args.skip_matching:
        evaluate_matching(args)
        sys.stdout.flush()
    if not args.skip_faiss:
        evaluate_faiss(args)


if __name__ == "__main__":
    main()

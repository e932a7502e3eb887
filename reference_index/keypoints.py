"""Logo and character matching with local features: ORB keypoints, one descriptor index for
every exemplar, and a RANSAC homography per candidate.

PDQ finds an exemplar that fills the image; this finds one that is small, rotated, seen at an
angle, partly covered, or printed somewhere inside a larger picture, and says where.

How a search works:

1. ORB features of the query (upscaled when tiny, downscaled when huge), picked per cell of a
   grid at each pyramid level so a small logo keeps its features next to a busy photo; on
   luma and on HSL lightness, which a hue rotation leaves alone (a recoloured copy can lose
   its luma edges). Exemplars are described on both too. A logo a tenth of a photo wide has
   few corners a 31-pixel patch describes without the scene around it; the query's graphic
   regions (flat colours meeting at sharp steps, as logos and signs are drawn) are also
   described enlarged, their features put back at their places and sizes in the query.
2. For each query descriptor, its nearest exemplar descriptors (Hamming) from one faiss binary
   index over all exemplars: exact while the index is small, an inverted file (IVF) once it is
   big enough to train one. Exemplars are never compared one at a time.
3. Each correspondence votes for (exemplar, rotation, scale) from the two keypoints' angles
   and sizes; a true logo puts many votes in one cell, chance matches scatter. The best cells
   are candidates, up to two distinct poses of one exemplar (a logo with round or repeated
   shapes also matches itself turned, and that pose can outvote the true one), verified best
   first until max_candidates of them have found no new logo.
   Besides, the query may be a copy of an exemplar as a whole: a simple logo with a part
   covered can be left with plain corners that many logos share, which win no votes. The
   exemplars of the query's aspect ratio whose colour layout agrees best with it (and the
   one whose layout of lightness does: a copy with its hues turned) are candidates too, at
   that pose; they go straight to the checks of steps 5 and 6, with the
   pairs guided matching finds at that pose as inliers. So is, for each quadrilateral
   outline in the query, the exemplar whose layout agrees best with its inside, in any of
   its four turns, at the pose that puts its frame on it: a logo of round shapes, turned or
   seen at an angle, has few corners, but its frame keeps four (_quads; a shape inside
   touching the frame near a corner cuts that corner off the outline, which is mended).
   An outline may be found a few pixels off: when that pose fails, it is aligned to the
   exemplar's pixels (enhanced correlation coefficient maximisation) and tried again.
4. Per candidate: a RANSAC homography, then checks that it describes a real, whole logo: enough
   distinct inliers, a high inlier ratio, the exemplar's outline projected to a convex,
   unmirrored, not collapsed or wildly skewed quad, and inliers that cover a good part of the
   exemplar (a shared letter or corner is not the logo). When that homography fails the
   checks below and throws a corner of the outline far from where an affine fit to the same
   pairs puts it (inliers in one part of a small logo fix a homography poorly elsewhere),
   the affine fit, if it explains nearly as many pairs, is judged as well. A homography that
   nearly fits the pixels of step 6 (most in their region's colour, most of the exemplar's
   edges found) but fails is taken for a few pixels off: aligned to the exemplar's pixels
   as an outline's pose is, it is judged again.
5. Then the query, warped back into the exemplar's frame, must look like it: its colours must
   fall into the exemplar's colour regions (_agreement), and its edges must run where the
   exemplar's do and nowhere else, cell by cell, whatever their colours (_structure). The
   share of features found (coverage) times the share of agreeing cells must reach
   min_evidence: a true copy scores well on both; a look-alike that shares a letter, a ring
   or a shape scores low on both, and chance alignments in photo texture fail the edge check.
6. Finally, pixel by pixel (_residual): set aside the largest blob the exemplar does not
   explain; everywhere else the query must have the exemplar's region colours and edges and
   no others. A copy passes nearly perfectly; a look-alike sharing one shape leaves the rest
   unexplained. A copy partly covered by something else fails the coarser checks of step 5,
   so when the blob set aside (filled to its convex hull) covers 10-60% of it and mostly shows
   colours foreign to the exemplar (something in front of it, not a look-alike's missing
   shape showing the background), a near-perfect match of the rest is enough on its own,
   with the share of features found judged against what the cover leaves (the features
   under it cannot be found).
   Either way, the colours of the regions shown outside that blob must be one recolouring
   of the exemplar's (_recolouring_error): a hue rotation, grey, a change of light. A copy is
   recoloured as a whole; a look-alike sharing a shape or two has a palette of its own.
   Where one region alone is shown (a cover over the rest), it must have the exemplar's own
   colour: one colour cannot show a recolouring. (Limitation: a copy repainted in a free
   colour scheme, or inverted, is not matched here; register that variant as an exemplar of
   its own.)

The two channels' features, halves of the descriptor batch and the candidates run on
SEARCH_THREADS threads (see there).

Invariant: a match is only reported when its homography passed every check; a query without
usable keypoints (blank, tiny, flat) gives no match rather than an error.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import operator
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import faiss
import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from core.images import LUMA

DESCRIPTOR_BYTES = 32  # ORB: 256-bit binary descriptors
FORMAT_VERSION = 2
# Below this many exemplar descriptors an exact search is fast enough and an IVF could not be
# trained well; at it, the IVF is trained once on what is there and later adds go into its
# lists without retraining.
IVF_TRAIN_AT = 50_000
IVF_TRAIN_SAMPLE_PER_LIST = 64
# Edge padding so that corners near an image border still get a descriptor (ORB drops points
# closer to the border than its patch).
PAD = 32
# Each exemplar's colour regions, for the appearance check: up to LABELS k-means colour
# clusters on a LABEL_SIDE x LABEL_SIDE thumbnail; NO_LABEL pads a non-square exemplar.
LABELS = 4
LABEL_SIDE = 128
NO_LABEL = 255
MIN_CONTRAST = 20.0  # RGB distance between two regions' typical colours
# A query pixel is explained by its region (KeypointIndex._residual) within this RGB distance
# of the region's typical query colour: above noise and JPEG error, below a different colour.
COLOUR_TOLERANCE = 40.0
# A region's typical query colour is taken near the homography's inliers, within this many
# thumbnail pixels of one where it can: there the query is known to show the exemplar.
ANCHOR_RADIUS = 8
# The recolouring check (_recolouring_error): colours with less chroma (brightest minus darkest
# channel) than this are grey, and their hue means nothing; brightness and contrast may change
# by a factor of 1/MIN_GAIN either way; LUMA (core.images) weighs R, G, B into grey.
GREY_CHROMA = 25.0
MIN_GAIN = 0.5
CLIPPED = 2  # a channel this near 0 or 255 may be clipped, see _gain_error
MIN_UNCLIPPED = 4  # unclipped values such a fit needs
LIGHTING_TOLERANCE = 10.0  # RGB units, see _recolouring_error
MIN_REGION_PIXELS = 16  # thumbnail pixels of a region the query must show for its colour
# The structure check (KeypointIndex._structure): edge orientation fields compared per cell
# of a STRUCTURE_CELLS x STRUCTURE_CELLS grid over the thumbnail, after smoothing the structure
# tensor by STRUCTURE_SIGMA thumbnail pixels; STRUCTURE_MARGIN pixels along the exemplar's
# outline are left out (the query has an edge there, the exemplar's frame does not).
STRUCTURE_CELLS = 8
STRUCTURE_SIGMA = 1.5
STRUCTURE_MARGIN = 4
ANGLE_BINS = 12  # 30 degrees each
# Guided matching pairs an exemplar feature with query features turned at most GUIDED_TURN
# degrees from what the homography predicts; it finds them by orientation bin (see _near).
GUIDED_TURN = 30.0
GUIDED_ANGLE_BINS = 12
NEAR_FEATURES = 64  # per orientation bin, see _near
LOG2_SCALE_BIN = 1.0  # factor 2 per scale bin
POSES = 64 * 65536  # scale bins x position cells, see KeypointIndex._candidates
POSES_PER_EXEMPLAR = 2  # see KeypointIndex._candidates
VOTE_BUCKET_BITS = 20  # 2^20 hash buckets counting votes, see KeypointIndex._candidates
VOTE_HASH = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: 2^64 / golden ratio, odd
# The whole-exemplar hypotheses (KeypointIndex._framed_candidates): each exemplar's colour
# layout on a LAYOUT_SIDE x LAYOUT_SIDE grid (cells of ~20 pixels of an exemplar); an
# exemplar is a copy candidate of a query whose aspect ratio is within LAYOUT_ASPECT of its
# own (resizing keeps it, up to rounding).
LAYOUT_SIDE = 16
LAYOUT_ASPECT = 0.03
LAYOUT_SHORTLIST = 32  # see KeypointIndex._best_layouts
# ... and of a quadrilateral outline in the query (see _quads): a logo on a sign, a label or
# a page seen at an angle, or turned, keeps its frame's four corners. Outlines in the edges
# of the query at half size (Canny on each channel), and of its flat regions, of at least
# QUAD_MIN_SIDE squared pixels (working frame) whose convex hull is within QUAD_TOLERANCE
# of its perimeter of a quadrilateral with edges along QUAD_SUPPORT of its sides; at most
# QUADS, those around graphics first. An exemplar's frame is put on one whose aspect ratio
# (mean lengths of opposite sides) is within a factor QUAD_ASPECT of its own: a tilt
# foreshortens one direction. A pentagonal hull is a quadrilateral with a corner cut off
# when that corner makes up at most QUAD_MAX_CUT of its area (see _quadrilateral).
QUAD_MIN_SIDE = 32
QUAD_TOLERANCE = 0.02
QUAD_MAX_CUT = 0.1
QUAD_SUPPORT = 0.8
QUADS = 4
QUAD_ASPECT = 2.0
# A sign's background cut into pieces by the shapes on it is one outline too (see
# _one_colour): of the flat regions (half size) of at least PIECE_MIN pixels, the PIECES
# largest, those within PIECE_COLOUR of one another in every channel of their mean colour
# and within their largest's own width and height of it are taken together.
PIECE_MIN = 16
PIECES = 200
PIECE_COLOUR = 16
# Graphic regions (see _graphic_regions), on the query at half size: GRAPHIC_BLOCK-pixel
# blocks (of the working frame) where at least GRAPHIC_FLAT of the pixels are flat (colour
# range over 3x3 below GRAPHIC_FLAT_RANGE) and at least GRAPHIC_EDGES sit on a sharp step
# (range above GRAPHIC_STEP_RANGE); regions of at least GRAPHIC_MIN_BLOCKS of them. A
# region is described enlarged with a block's margin around it (ORB's patches need some),
# on ZOOM_LEVELS pyramid levels: the scales the query's own pyramid does not reach.
GRAPHIC_BLOCK = 16
GRAPHIC_FLAT_RANGE = 12
GRAPHIC_STEP_RANGE = 60
GRAPHIC_FLAT = 0.4
GRAPHIC_EDGES = 0.04
# Six: a sign 80 pixels wide, dense with shapes, has fewer than ten graphic blocks.
GRAPHIC_MIN_BLOCKS = 6
ZOOM_LEVELS = 4
# Enlarged more than this, a small region's edges are only blurred further and its corners
# fade (a 96-pixel sign enlarged 4x to 384 was not found, 3x was).
ZOOM_MAX_FACTOR = 3.0
# An outline's pose is aligned to the exemplar's pixels (see KeypointIndex._aligned) in at
# most ALIGN_ITERATIONS steps, on both images blurred over ALIGN_BLUR pixels (so a start a
# few pixels off still sees the edges it must move to).
ALIGN_ITERATIONS = 50
ALIGN_BLUR = 5

Array = npt.NDArray[Any]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1
# A search's independent parts (the two channels' features, halves of the descriptor batch,
# the candidates) run on this many threads: OpenCV, faiss, scipy and most of numpy release
# the GIL, so on a 2-core machine a search takes about 2/3 as long (506 -> 324 ms a check on
# the benchmark). More would only compete with the other searches of a worker that runs one
# process per core.
SEARCH_THREADS = 2

_NO_DESCRIPTORS = np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
_ALONG = np.linspace(0, 1, 32, endpoint=False)[None, :, None]  # points along a side, see _support


@dataclass(frozen=True)
class KeypointThresholds:
    """Tuning of the matcher; the defaults are the ones the benchmark measures."""

    # Exemplars are scaled so their longer side is this, and described over a deep pyramid
    # (down to 1/7.5 of that) so they match logos several times smaller in a query.
    exemplar_side: int = 320
    exemplar_features: int = 500
    exemplar_levels: int = 10
    # Queries larger than this (longer side) are scaled down, bounding latency; smaller than
    # query_min_side are scaled up so a thumbnail still has corners ORB can describe.
    query_side: int = 1024
    query_min_side: int = 256
    query_features: int = 5000
    query_levels: int = 8
    # Queries and exemplars are also described on HSL lightness (see _lightness), which a
    # hue rotation leaves alone; the query with this share of query_features.
    lightness_share: float = 0.5
    # At most this many features per cell of `cell` pixels (scaled with the pyramid level).
    cell: int = 64
    per_cell: int = 40
    fast_threshold: int = 10
    # Nearest exemplar descriptors per query descriptor; a neighbour counts when it is within
    # max_hamming bits and within hamming_slack of the nearest one.
    neighbours: int = 5
    max_hamming: int = 64
    hamming_slack: int = 8
    nprobe: int = 8
    # Candidates (exemplar, rotation, scale cells) are verified best first until this many
    # have found no new asset (see search); a candidate needs min_votes.
    max_candidates: int = 20
    min_votes: int = 5
    ransac_px: float = 4.0
    # A candidate's seed correspondences need this many inliers of an affine fit (within
    # seed_px); guided matching then looks for each exemplar feature near where that fit, and
    # then a homography, put it: finally within guided_px.
    min_seed_inliers: int = 5
    seed_px: float = 6.0
    guided_px: float = 8.0
    # A match needs this many inliers (at distinct positions) after guided matching, making up
    # this share of the exemplar features the query could show (of a partly covered copy:
    # this share of the part not covered, see _judge).
    min_inliers: int = 12
    min_coverage: float = 0.1
    # ... and the exemplar's colour regions must explain this share of the colour variance of
    # the query where the homography puts the exemplar (see KeypointIndex._agreement).
    min_agreement: float = 0.6
    # ... and the query must show the exemplar's edges (see KeypointIndex._structure): this
    # share of the cells with edges in either must agree, the query must show this share of
    # the exemplar's edges (whole or partly covered), and coverage x structure (two
    # independent kinds of evidence: the features and the edges between them) must reach
    # min_evidence.
    min_structure: float = 0.25
    min_shown: float = 0.5
    # ... or this share, of a crop: a copy the image's frame cuts, filling at least
    # min_crop_fill of the image, that matches pixel for pixel where it is shown (see _judge).
    min_shown_cropped: float = 0.3
    min_crop_fill: float = 0.5
    min_evidence: float = 0.1
    # ... and pixel by pixel (see KeypointIndex._residual), outside the largest part the
    # exemplar does not explain: this share of the pixels must have their region's colour,
    # this share of the exemplar's edges must be in the query, and this share of the query's
    # edges must be the exemplar's.
    min_colours: float = 0.85
    min_edges_found: float = 0.85
    min_edges_explained: float = 0.5
    # A partly covered copy: when that unexplained part is one blob, set aside over at least
    # min_covered of the exemplar shown, the blob and the image's frame together hide at
    # most max_covered of the exemplar, and at least min_foreign_covered of what the blob
    # hides has colours the exemplar does not have at all (see _residual), the rest alone
    # may decide, but only if it matches almost perfectly (the other *_covered thresholds);
    # the coarser checks above, which the covered part drags down, are then not needed.
    min_covered: float = 0.1
    max_covered: float = 0.6
    min_foreign_covered: float = 0.3
    min_colours_covered: float = 0.97
    min_edges_found_covered: float = 0.97
    min_edges_explained_covered: float = 0.9
    # A whole copy (less than min_covered set aside) whose pixels match at those *_covered
    # levels needs only this coverage (see _judge): a logo small in a photo keeps few of its
    # features, and a look-alike that shares shapes does not match pixel for pixel.
    min_coverage_exact: float = 0.05
    # Either way, the colours of the exemplar's regions the query shows must be one recolouring
    # of the exemplar's (see _recolouring_error) within this many RGB units; with min_covered
    # or more of it covered or outside the query, within max_recolouring_covered: its own
    # colours, or them in another light (a ring recoloured, the rest taken for a cover or
    # cut away, is any ring).
    max_recolouring: float = 40.0
    max_recolouring_covered: float = 10.0
    # The projected outline: smallest side (query pixels), smallest corner angle (degrees),
    # largest ratio between opposite sides.
    min_side_px: float = 12.0
    min_corner_deg: float = 30.0
    max_side_ratio: float = 4.0
    # An affine fit is judged as well when the homography puts a corner of the outline this
    # share of the outline's size away from where the affine fit puts it, and the affine fit
    # has at least min_affine_share of its inliers (see _verify).
    min_thrown_corner: float = 0.25
    min_affine_share: float = 0.9
    # A query that is an exemplar as a whole (its copy, resized, recompressed or partly
    # covered) is verified at that pose for the whole_candidates exemplars whose colour
    # layouts agree best with it (and the whole_recoloured_candidates whose layouts of
    # lightness do), and each quadrilateral outline in it for the
    # outline_candidates that agree best with its inside, on at least min_layout of the
    # grid's cells (see _framed_candidates).
    whole_candidates: int = 2
    whole_recoloured_candidates: int = 1
    outline_candidates: int = 1
    min_layout: float = 0.5
    # A logo much smaller than the query (a sign in a street photo) has few corners ORB's
    # 31-pixel patches describe without the scene around it. Up to zoom_regions graphic
    # regions (see _graphic_regions) no longer than zoom_max_share of the query's longer
    # side are also described enlarged to zoom_side (their margin around that; at most
    # ZOOM_MAX_FACTOR times), with up to zoom_features features each.
    zoom_regions: int = 2
    zoom_max_share: float = 0.25
    zoom_side: int = 384
    zoom_features: int = 1000
    # A fitted pose that fails the checks above yet nearly fits (min_colours of the pixels
    # have their region's colour and min_edges_found_to_align of the exemplar's edges are
    # found, in one recolouring of it) is taken for a few pixels off, as a homography from
    # inliers in one part of a small or tilted logo can be: it is aligned to the exemplar's
    # pixels (see KeypointIndex._aligned) and judged again there, as an outline's pose is.
    min_edges_found_to_align: float = 0.7


@dataclass(frozen=True)
class KeypointMatch:
    asset_id: str
    exemplar_id: str
    inliers: int
    score: float  # 0..1, grows with the inlier count and with the inlier ratio
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the query image's pixels
    # True: `inliers` are those of a homography fitted to them. False: the exemplar was
    # found as a whole, its frame on the image's own or on a quadrilateral outline in it;
    # that gave the pose, and `inliers` are the features found where it puts them (fewer
    # than a fitted homography needs may do; see KeypointIndex._verify_framed).
    fitted: bool


@dataclass
class _Features:
    geometry: Array  # (n, 4) float32: x, y, angle (degrees), size, in the image's own pixels
    descriptors: Array  # (n, 32) uint8


@dataclass(frozen=True)
class _Residual:
    """See KeypointIndex._residual; the shares 0..1."""

    cover: Array  # (s, s) bool over the exemplar's thumbnail frame: set aside as covered
    covered: float  # share of the exemplar shown that is set aside as covered
    unseen: float  # share of the exemplar not shown: under the cover, or outside the query
    foreign: float  # of its pixels unlike their region: share unlike every region shown
    recolouring: float  # RGB error of the one recolouring that best explains the regions' colours
    colours: float  # outside it: pixels with their region's colour
    edges_found: float  # the exemplar's edges found in the query
    edges_explained: float  # the query's edges that are the exemplar's


@dataclass(frozen=True)
class _Judgement:
    """See KeypointIndex._judge."""

    match: KeypointMatch | None
    close: bool = False  # no match, but worth aligning (see min_edges_found_to_align)


@dataclass
class _Query:
    features: _Features  # in the working frame: the query scaled by `scale`
    scale: float
    colour: Array  # (h, w, 3) uint8, the query in the working frame
    shape: tuple[int, int]  # the query's own height, width
    # The smallest feature size described all over the query, and the regions described
    # enlarged (see KeypointIndex._zoom_boxes) with the smallest there.
    smallest: float
    zoomed: list[tuple[Box, float]]
    pyramid: dict[int, Array] = field(default_factory=dict)  # see shrunk
    # The features' positions in k-d trees, one per GUIDED_ANGLE_BINS orientation bin, with
    # the features' indices (see _near).
    trees: list[tuple[cKDTree, Array]] = field(init=False)

    def __post_init__(self) -> None:
        width = 360.0 / GUIDED_ANGLE_BINS
        angle_bin = np.floor(np.mod(self.features.geometry[:, 2], 360.0) / width)
        self.trees = []
        for b in range(GUIDED_ANGLE_BINS):
            members = np.flatnonzero(angle_bin == b)
            self.trees.append((cKDTree(self.features.geometry[members, :2]), members))

    def shrunk(self, factor: float) -> tuple[Array, float]:
        """The colour image shrunk by about `factor` (< 1, never more than asked, in steps of
        sqrt(2)), cached: one query's candidates share a few sizes (two search threads may both
        make one; they make the same). (image, its factor)."""
        step = int(np.floor(-2 * np.log2(factor)))
        actual = float(2.0 ** (-step / 2))
        if step not in self.pyramid:
            self.pyramid[step] = cv2.resize(
                self.colour, None, fx=actual, fy=actual, interpolation=cv2.INTER_AREA
            )
        return self.pyramid[step], actual


def _rgb(rgb: np.ndarray) -> Array:
    array = np.asarray(rgb)
    if array.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[..., :3])
    raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {array.shape}")


def _gray(rgb: np.ndarray) -> Array:
    array = np.asarray(rgb)
    if array.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {array.dtype}")
    if array.ndim == 2:
        return np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        gray: Array = cv2.cvtColor(np.ascontiguousarray(array[..., :3]), cv2.COLOR_RGB2GRAY)
        return gray
    raise ValueError(f"expected an HxW or HxWx3 image, got shape {array.shape}")


def _lightness(rgb: Array) -> Array | None:
    """HSL lightness, (max + min) / 2 of R, G and B: unchanged when the hues are rotated
    (a recoloured copy), where luma can lose an edge or flip its polarity. None for a grey
    image, where it is the luma."""
    if rgb.ndim == 2:
        return None
    # OpenCV's per-channel max/min: numpy's reductions over the last axis of an HxWx3 array
    # take ~10x as long, a sizeable share of a whole search.
    red, green, blue = cv2.split(rgb)
    high = cv2.max(cv2.max(red, green), blue)
    low = cv2.min(cv2.min(red, green), blue)
    if np.array_equal(high, low):
        return None
    lightness: Array = ((high.astype(np.uint16) + low + 1) // 2).astype(np.uint8)
    return lightness


def _join(found: list[_Features]) -> _Features | None:
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    return _Features(
        np.concatenate([f.geometry for f in found]), np.concatenate([f.descriptors for f in found])
    )


def _orb(features: int, levels: int, fast_threshold: int, scale: float) -> Any:
    return cv2.ORB.create(
        nfeatures=features,
        scaleFactor=scale,
        nlevels=levels,
        edgeThreshold=15,
        patchSize=31,
        fastThreshold=fast_threshold,
    )


def _describe(orb: Any, gray: Array, keypoints: Any) -> _Features | None:
    keypoints, descriptors = orb.compute(gray, keypoints)
    if descriptors is None or not len(keypoints):
        return None
    geometry = np.empty((len(keypoints), 4), np.float32)
    geometry[:, :2] = _positions(keypoints) - PAD
    geometry[:, 2] = _attribute(keypoints, "angle")
    geometry[:, 3] = _attribute(keypoints, "size")
    return _Features(geometry, descriptors)


# A query has tens of thousands of keypoints: reading them into a tuple per keypoint took a
# tenth of a search, these about a seventh of that.
def _positions(keypoints: Any) -> Array:
    """(n, 2) x, y of every keypoint."""
    return np.asarray(cv2.KeyPoint.convert(keypoints), np.float64).reshape(-1, 2)


def _attribute(keypoints: Any, name: str) -> Array:
    """One attribute of every keypoint."""
    getter = operator.attrgetter(name)
    return np.fromiter(map(getter, keypoints), np.float64, len(keypoints))


def _padded(gray: Array) -> Array:
    padded: Array = cv2.copyMakeBorder(gray, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE)
    return padded


def _spread(keypoints: Any, cell: int, per_cell: int, limit: int, scale: float) -> list[Any]:
    """The strongest `per_cell` keypoints of each grid cell at each pyramid level, then the
    strongest `limit` of those: a busy texture cannot crowd out a small logo elsewhere."""
    if not keypoints:
        return []
    points = _positions(keypoints)
    response = _attribute(keypoints, "response")
    octave = _attribute(keypoints, "octave")
    size = cell * scale**octave
    column = np.floor(points[:, 0] / size).astype(np.int64)
    line = np.floor(points[:, 1] / size).astype(np.int64)
    cells = (octave.astype(np.int64) * 4096 + column) * 4096 + line
    _, cell_of = np.unique(cells, return_inverse=True)
    order = np.lexsort((-response, cell_of.ravel()))
    sorted_cells = cell_of.ravel()[order]
    starts = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    kept = order[rank < per_cell]
    kept = kept[np.argsort(-response[kept], kind="stable")][:limit]
    return [keypoints[i] for i in kept]


def _outline_ok(quad: Array, t: KeypointThresholds) -> bool:
    """Convex, counter-clockwise as the exemplar's corners are (a mirror image is not the
    logo), no side too short, no corner too sharp, opposite sides of similar length."""
    edges = np.roll(quad, -1, axis=0) - quad
    cross = (
        edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1]
        - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    )
    if not (cross > 0).all():
        return False
    lengths = np.linalg.norm(edges, axis=1)
    if lengths.min() < t.min_side_px:
        return False
    if max(lengths[0] / lengths[2], lengths[2] / lengths[0]) > t.max_side_ratio:
        return False
    if max(lengths[1] / lengths[3], lengths[3] / lengths[1]) > t.max_side_ratio:
        return False
    incoming = -np.roll(edges, 1, axis=0)
    cosines = (edges * incoming).sum(axis=1) / (lengths * np.roll(lengths, 1))
    angles = np.degrees(np.arccos(np.clip(cosines, -1, 1)))
    return bool(angles.min() >= t.min_corner_deg)


def _homography(
    source: Array, target: Array, corners: Array, t: KeypointThresholds
) -> tuple[Array, Array, Array] | None:
    """(homography, inlier mask, projected outline) from guided pairs, or None when no
    plausible one is found. Plain RANSAC first; its best model can be degenerate when many
    pairs lie on one line (a word of text), projecting the outline somewhere absurd, so then
    MAGSAC++, which rejects such samples, gets a second try. When the pairs sit in one part of
    the exemplar (a logo whose only features are one small shape), every homography that fits
    them can still throw the far corners anywhere; an affine fit, which cannot, gets the last
    try, and the next, tighter guided pass and the checks decide whether it is the logo."""
    for method in (cv2.RANSAC, cv2.USAC_MAGSAC):
        found, mask = cv2.findHomography(
            source, target, method, t.ransac_px, maxIters=1000, confidence=0.995
        )
        if found is None:
            continue
        quad = cv2.perspectiveTransform(corners, found)[0]
        if _outline_ok(quad, t):
            return found, mask.ravel().astype(bool), quad
    return _affine(source, target, corners, t, t.ransac_px)


def _affine(
    source: Array, target: Array, corners: Array, t: KeypointThresholds, px: float
) -> tuple[Array, Array, Array] | None:
    """(affine map as a 3x3 homography, inlier mask within `px`, projected outline) from
    pairs, or None when RANSAC finds none or the outline it projects is not plausible."""
    affine, mask = cv2.estimateAffine2D(source, target, method=cv2.RANSAC, ransacReprojThreshold=px)
    if affine is None:
        return None
    found = np.vstack([affine, [0, 0, 1]])
    quad = cv2.perspectiveTransform(corners, found)[0]
    if _outline_ok(quad, t):
        return found, mask.ravel().astype(bool), quad
    return None


def _fitted(size: tuple[float, float]) -> tuple[int, int]:
    """(width, height) of an exemplar of `size` in the LABEL_SIDE thumbnail frame, placed at
    its top left corner."""
    w, h = size
    fit = LABEL_SIDE / max(w, h)
    return max(1, round(w * fit)), max(1, round(h * fit))


def _colour_regions(rgb: Array, size: tuple[float, float]) -> Array:
    """(LABEL_SIDE, LABEL_SIDE) uint8: the exemplar's colour cluster at each thumbnail pixel,
    NO_LABEL on region boundaries and where the (non-square) exemplar does not reach.
    Deterministic k-means on a quarter-size copy: the centres start at the colours farthest
    from those already picked."""
    tw, th = _fitted(size)
    thumbnail = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA).reshape(-1, 3)
    pixels = thumbnail.astype(np.float64)
    sample = cv2.resize(rgb, (max(1, tw // 2), max(1, th // 2)), interpolation=cv2.INTER_AREA)
    sample = sample.reshape(-1, 3).astype(np.float64)
    centres = [sample.mean(axis=0)]
    for _ in range(LABELS - 1):
        nearest = np.min([((sample - c) ** 2).sum(axis=1) for c in centres], axis=0)
        centres.append(sample[int(nearest.argmax())])
    centre = np.array(centres)
    for _ in range(10):
        assigned = ((sample[:, None] - centre[None]) ** 2).sum(axis=2).argmin(axis=1)
        for k in range(LABELS):
            if (assigned == k).any():
                centre[k] = sample[assigned == k].mean(axis=0)
    # Clusters of one colour (k-means splits a two-colour logo into four) become one.
    counts = np.bincount(assigned, minlength=LABELS)
    distinct: list[Array] = []
    for c in centre[np.argsort(-counts, kind="stable")]:
        if all(np.linalg.norm(c - d) >= MIN_CONTRAST * 2 for d in distinct):
            distinct.append(c)
    merged = np.array(distinct)
    labels = np.full((LABEL_SIDE, LABEL_SIDE), NO_LABEL, dtype=np.uint8)
    nearest_centre = ((pixels[:, None] - merged[None]) ** 2).sum(axis=2).argmin(axis=1)
    labels[:th, :tw] = nearest_centre.reshape(th, tw)
    # Only pixels inside a region: those on a boundary are mixtures of two colours in any
    # resampled copy, and where a homography is a pixel off they would disagree.
    square = np.ones((3, 3), np.uint8)
    boundary = cv2.dilate(labels, square) != cv2.erode(labels, square)
    labels[boundary] = NO_LABEL
    return labels


def _thumbnail(rgb: Array, size: tuple[float, float]) -> Array:
    """(LABEL_SIDE, LABEL_SIDE, 3) uint8: the exemplar placed as in _colour_regions, the rest
    filled by repeating its edge pixels (no edge where it ends)."""
    tw, th = _fitted(size)
    small = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
    thumbnail: Array = cv2.copyMakeBorder(
        small, 0, LABEL_SIDE - th, 0, LABEL_SIDE - tw, cv2.BORDER_REPLICATE
    )
    return thumbnail


def _layout(rgb: Array) -> Array:
    """(LAYOUT_SIDE, LAYOUT_SIDE, 3) float32: the image's mean colour in each cell of a grid
    stretched over it, whatever its aspect ratio."""
    layout: Array = cv2.resize(
        rgb, (LAYOUT_SIDE, LAYOUT_SIDE), interpolation=cv2.INTER_AREA
    ).astype(np.float32)
    return layout


def _grey(layouts: Array) -> Array:
    """(..., 3) colour layouts as grey ones of the same shape: each cell's HSL lightness (see
    _lightness) in all three channels, which a hue rotation leaves as it was. (Compared with
    _agreement, two cells then agree within COLOUR_TOLERANCE / sqrt(3) of lightness.)"""
    lightness = (layouts.max(axis=-1) + layouts.min(axis=-1)) / 2
    grey: Array = np.repeat(lightness[..., None], 3, axis=-1)
    return grey


def _coarse(layouts: Array) -> Array:
    """(n, cells / 4, 3): (n, LAYOUT_SIDE, LAYOUT_SIDE, 3) colour layouts on a grid half as
    fine, each cell the mean of four."""
    n, side = len(layouts), LAYOUT_SIDE // 2
    coarse: Array = layouts.reshape(n, side, 2, side, 2, 3).mean(axis=(2, 4))
    return coarse.reshape(n, side * side, 3)


def _agreement(layouts: Array, layout: Array) -> Array:
    """(n,) for (n, cells, 3) layouts: the share of their cells within COLOUR_TOLERANCE of
    the (cells, 3) `layout`'s."""
    difference = layouts - layout
    difference *= difference
    # Channel by channel: numpy's reduction over a last axis of 3 takes several times as long.
    squared = difference[..., 0] + difference[..., 1] + difference[..., 2]
    agreeing: Array = np.count_nonzero(squared < COLOUR_TOLERANCE**2, axis=1) / layout.shape[0]
    return agreeing


def _quad_layout(rgb: Array, quad: Array) -> Array:
    """The colour layout (see _layout) of the part of the image within `quad` ((4, 2),
    clockwise from the corner taken as its top left), as if that part were stretched to a
    rectangle: what an exemplar's layout is when its frame is on the quad."""
    side = 4 * LAYOUT_SIDE  # sampled 4x4 per cell, then averaged
    square = np.array([[0, 0], [side, 0], [side, side], [0, side]], np.float64)
    warped = cv2.warpPerspective(rgb, _pose(quad, square), (side, side), flags=cv2.INTER_LINEAR)
    return _layout(warped)


def _pose(source: Array, target: Array) -> Array:
    """The homography taking the four (4, 2) corners `source` to `target`, float64."""
    pose: Array = cv2.getPerspectiveTransform(
        source.astype(np.float32), target.astype(np.float32)
    ).astype(np.float64)
    return pose


def _quads(rgb: Array) -> list[Array]:
    """Up to QUADS quadrilateral outlines in the image: (4, 2) float64 corners, clockwise on
    screen from any of them (see QUAD_MIN_SIDE). Those around graphics (see _graphic)
    first, the largest first: a sign in a photo is outnumbered by the outlines of the
    photo's own windows, boxes and shadows, most of them larger."""
    half = cv2.resize(rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    edges = np.zeros(half.shape[:2], np.uint8)
    for channel in cv2.split(half):
        edges |= cv2.Canny(channel, 50, 150)
    # Joins an outline's edge pixels where a corner or a weak step breaks it.
    edges = cv2.dilate(edges, np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(edges, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    # ... which also joins a small sign's frame to the shapes near it, splitting its inside
    # into pieces; the sign's background is still one flat region (a sign 72 pixels wide,
    # its disc and ring near its sides, had no outline of its own among the edges).
    spread = _colour_range(half)
    flat = (spread < GRAPHIC_FLAT_RANGE).astype(np.uint8)
    # Their outer outlines (a region in a hole of another is a region too: a sign on a wall).
    outlines, hierarchy = cv2.findContours(flat, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    parents: Iterable[int] = hierarchy.reshape(-1, 4)[:, 3] if len(outlines) else []
    regions = [outline for outline, parent in zip(outlines, parents, strict=True) if parent < 0]
    regions += _one_colour(half, flat, regions)
    # A hull runs along the outside of an outline's pixels: a side is on an edge within 2.
    near_edges = cv2.dilate(edges, np.ones((3, 3), np.uint8))
    smallest = (QUAD_MIN_SIDE / 2) ** 2
    largest = 0.9 * half.shape[0] * half.shape[1]  # the image's own frame is tried anyway
    found = []
    for contour in itertools.chain(contours, regions):
        area = cv2.contourArea(contour)
        if not smallest <= area <= largest:
            continue
        # Around its convex hull: a shape inside the frame that touches it, or texture
        # outside meeting it, joins its outline; the hull's sides are still the frame's.
        hull = cv2.convexHull(contour)
        polygon = cv2.approxPolyDP(hull, QUAD_TOLERANCE * cv2.arcLength(hull, True), True)
        corners = _quadrilateral(polygon.reshape(-1, 2).astype(np.float64), near_edges)
        # ... but the hull of a jagged outline has sides across nothing: most of the
        # quadrilateral's sides must be edges.
        if corners is not None and _support(corners, near_edges) >= QUAD_SUPPORT:
            found.append((_graphic(spread, corners), _area(corners), corners))
    found.sort(key=lambda f: (not f[0], -f[1]))
    quads: list[Array] = []
    for _, _, corners in found:
        # Pixel centres at half size: x there is (x + 0.5) * 2 - 0.5 here.
        quad = corners * 2 + 0.5
        x, y = quad[:, 0], quad[:, 1]
        if np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) < 0:  # counter-clockwise
            quad = quad[::-1]
        # A dilated edge has an outline on each side: the same quadrilateral twice.
        if any(_same_corners(quad, other) for other in quads):
            continue
        quads.append(quad)
        if len(quads) == QUADS:
            break
    return quads


def _one_colour(rgb: Array, flat: Array, regions: list[Array]) -> list[Array]:
    """The outlines of flat regions of one colour close together, joined (see PIECE_MIN):
    a tilted sign whose shapes cross its sides leaves its background in pieces, none of
    them with the sign's outline. `regions`: the outer outlines of the regions of `flat`
    (cv2.findContours, one a region); a joined outline is theirs, concatenated."""
    if not regions:  # noise everywhere
        return []
    count, labels, stats, _ = cv2.connectedComponentsWithStats(flat, connectivity=8)
    starts = np.array([region[0, 0] for region in regions])
    pieces = labels[starts[:, 1], starts[:, 0]]  # the region of each outline
    area = stats[pieces, cv2.CC_STAT_AREA]
    order = np.argsort(-area, kind="stable")[:PIECES]
    order = order[area[order] >= PIECE_MIN]
    # Mean colours from every other pixel each way: a quarter of the work, as good.
    sampled = labels[::2, ::2].ravel()
    counts = np.bincount(sampled, minlength=count)[pieces[order]]
    order = order[counts > 0]
    if len(order) < 2:
        return []
    sums = [np.bincount(sampled, rgb[::2, ::2, c].ravel(), count) for c in range(3)]
    colour = np.stack(sums, axis=1)[pieces[order]] / counts[counts > 0, None]
    x, y, w, h = stats[pieces[order], :4].T
    # near[i, j]: piece j may be more of the background that piece i (larger) is part of.
    near = (np.abs(colour[:, None] - colour[None]).max(axis=2) <= PIECE_COLOUR) & (
        (x[None] >= x[:, None] - w[:, None])
        & (y[None] >= y[:, None] - h[:, None])
        & (x[None] + w[None] <= x[:, None] + 2 * w[:, None])
        & (y[None] + h[None] <= y[:, None] + 2 * h[:, None])
    )
    free = np.ones(len(order), bool)
    joined = []
    for i in range(len(order)):
        if not free[i]:
            continue
        members = np.flatnonzero(near[i] & free)
        free[members] = False
        if len(members) > 1:
            joined.append(np.concatenate([regions[order[j]] for j in members]))
    return joined


def _support(corners: Array, edges: Array) -> float:
    """The share of points along a polygon's sides ((n, 2) corners) on `edges` (non-zero
    pixels); 0 when a side leaves the image."""
    sides = corners[:, None] + _ALONG * (np.roll(corners, -1, axis=0) - corners)[:, None]
    x, y = np.round(sides).astype(int).reshape(-1, 2).T
    if not ((x >= 0) & (y >= 0) & (x < edges.shape[1]) & (y < edges.shape[0])).all():
        return 0.0
    return float((edges[y, x] > 0).mean())


def _quadrilateral(polygon: Array, edges: Array) -> Array | None:
    """The (4, 2) quadrilateral a convex polygon ((n, 2), in order) outlines: the polygon
    itself when it has four corners. A shape inside a logo's frame that touches it near a
    corner (an arc, a ring) joins the frame's inner outline there, and the hull of that
    outline cuts the corner off: of a pentagon, the quadrilateral made by extending the
    two sides next to one side until they meet beyond it, adding at most QUAD_MAX_CUT of
    its area, with the most of its sides on `edges` (a frame's sides are edges all along;
    a wrong side extended runs across the sign). None for any other polygon. (Whether
    enough of its sides are edges is the caller's check.) In Python floats: a few small
    solves, done for many outlines a search."""
    if len(polygon) == 4:
        return polygon
    if len(polygon) != 5:
        return None
    points = polygon.tolist()
    area = _area(polygon)
    quads = []
    for i in range(5):
        (ax, ay), (bx, by), (cx, cy), (dx, dy) = (points[(i + k) % 5] for k in (-1, 0, 1, 2))
        # Side a-b extended (a + u r) meets side c-d extended (c + v t) at the cut corner:
        # past b (u >= 1) and before c (v <= 0).
        rx, ry, tx, ty = bx - ax, by - ay, dx - cx, dy - cy
        cross = rx * ty - ry * tx
        if abs(cross) < 0.1 * math.hypot(rx, ry) * math.hypot(tx, ty):
            continue  # nearly parallel: no corner
        gx, gy = cx - ax, cy - ay
        u, v = (gx * ty - gy * tx) / cross, (gx * ry - gy * rx) / cross
        if u < 1 or v > 0:
            continue
        corner = (ax + u * rx, ay + u * ry)
        added = abs((corner[0] - bx) * (cy - by) - (corner[1] - by) * (cx - bx)) / 2
        if added <= QUAD_MAX_CUT * (area + added):
            quads.append(np.array([corner, *(points[(i + k) % 5] for k in (2, 3, 4))]))
    return max(quads, key=lambda quad: _support(quad, edges), default=None)


def _area(polygon: Array) -> float:
    """The area of a simple (n, 2) polygon (shoelace formula; in Python floats, as a few
    corners are quicker so)."""
    points = polygon.tolist()
    twice = sum(
        x0 * y1 - x1 * y0
        for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True)
    )
    return abs(float(twice)) / 2


def _same_corners(a: Array, b: Array) -> bool:
    """Whether two quads have their corners within a few pixels, in whatever order."""
    distance = np.linalg.norm(a[:, None] - b[None], axis=2)
    return bool(distance.min(axis=1).max() <= 12)


def _colour_range(rgb: Array) -> Array:
    """(h, w) uint8: the largest range of a channel over each pixel's 3x3 neighbourhood."""
    kernel = np.ones((3, 3), np.uint8)
    spread = cv2.subtract(cv2.dilate(rgb, kernel), cv2.erode(rgb, kernel))
    largest: Array = cv2.max(cv2.max(spread[..., 0], spread[..., 1]), spread[..., 2])
    return largest


def _graphic(spread: Array, polygon: Array) -> bool:
    """Whether the inside of a convex polygon ((n, 2), pixels of `spread`, see
    _colour_range) looks like graphics rather than photo, as a graphic region's blocks do
    (see _graphic_regions)."""
    x0, y0 = np.maximum(np.floor(polygon.min(axis=0)).astype(int), 0)
    x1, y1 = np.ceil(polygon.max(axis=0)).astype(int) + 1
    inside = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillConvexPoly(inside, np.round(polygon - [x0, y0]).astype(np.int32), 1)
    values = spread[y0:y1, x0:x1][inside[: spread.shape[0] - y0, : spread.shape[1] - x0] > 0]
    return bool(
        len(values)
        and (values < GRAPHIC_FLAT_RANGE).mean() >= GRAPHIC_FLAT
        and (values > GRAPHIC_STEP_RANGE).mean() >= GRAPHIC_EDGES
    )


def _graphic_regions(rgb: Array) -> list[Box]:
    """Boxes (x0, y0, x1, y1; largest first) of the parts of an image that look like
    graphics rather than photo: flat colours meeting at sharp steps, as a logo, a sign or
    lettering is drawn. A photo's texture is not flat; its smooth parts (sky, blur) have no
    sharp steps."""
    half = cv2.resize(rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    spread = _colour_range(half)
    block = GRAPHIC_BLOCK // 2
    rows, columns = spread.shape[0] // block, spread.shape[1] // block
    if not rows or not columns:
        return []

    def share(mask: Array) -> Array:
        cells = mask[: rows * block, : columns * block].reshape(rows, block, columns, block)
        fraction: Array = cells.mean(axis=(1, 3))
        return fraction

    graphic = (share(spread < GRAPHIC_FLAT_RANGE) >= GRAPHIC_FLAT) & (
        share(spread > GRAPHIC_STEP_RANGE) >= GRAPHIC_EDGES
    )
    count, _, stats, _ = cv2.connectedComponentsWithStats(graphic.astype(np.uint8), connectivity=8)
    regions = [stats[i] for i in range(1, count) if stats[i][4] >= GRAPHIC_MIN_BLOCKS]
    regions.sort(key=lambda r: -int(r[4]))
    return [
        (
            int(x) * GRAPHIC_BLOCK,
            int(y) * GRAPHIC_BLOCK,
            int(x + w) * GRAPHIC_BLOCK,
            int(y + h) * GRAPHIC_BLOCK,
        )
        for x, y, w, h, _ in regions
    ]


def _frame(width: float, height: float) -> Array:
    """(4, 2) float64: a width x height image's frame, clockwise on screen from its top left."""
    return np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)


def _blob_hull(unexplained: Array) -> Array:
    """(s, s) bool: the largest blob of `unexplained` pixels filled to its convex hull; empty
    when nothing is unexplained. Opening first drops stray pixels (noise, JPEG blocks);
    closing joins a cover's pieces."""
    mask: Array = unexplained.astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    count, blobs, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    hull = np.zeros(mask.shape, np.uint8)
    if count > 1:
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        outline, _ = cv2.findContours(
            (blobs == largest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.fillPoly(hull, [cv2.convexHull(np.concatenate(outline))], 1)
    filled: Array = hull > 0
    return filled


def _seen(extent: Array, inside: Array) -> Array:
    """(s, s) float32 0/1 mask: where the query shows an exemplar, within its `extent` (see
    KeypointIndex._extent) and STRUCTURE_MARGIN pixels in from where the query ends
    (`inside`, see KeypointIndex._warp)."""
    m = STRUCTURE_MARGIN
    kernel = np.ones((2 * m + 1, 2 * m + 1), np.uint8)
    seen: Array = extent * cv2.erode(inside.astype(np.uint8), kernel, borderValue=0)
    return seen


def _tensor(rgb: Array) -> tuple[Array, Array]:
    """The doubled-angle vector (Jxx - Jyy, 2 Jxy) of a colour image's structure tensor at
    each pixel: an edge between two colours of equal brightness counts; a dark-on-light edge
    and the same edge light-on-dark, or red-on-blue and green-on-yellow, give the same one."""
    image = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), 1.0)
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
    return (gx * gx - gy * gy).sum(axis=2), 2 * (gx * gy).sum(axis=2)


def _edges(rgb: Array) -> Array:
    """(s, s) float32: edge strength, growing with the contrast (not its square)."""
    a, b = _tensor(rgb)
    strength: Array = np.sqrt(np.sqrt(a * a + b * b))
    return strength


def _orientation(rgb: Array) -> Array:
    """(s, s, 2) float32: where and which way the edges of a colour image run, whatever their
    polarity or hue (see _tensor), smoothed, scaled so its length grows with the contrast."""
    a, b = _tensor(rgb)
    a = cv2.GaussianBlur(a, (0, 0), STRUCTURE_SIGMA)
    b = cv2.GaussianBlur(b, (0, 0), STRUCTURE_SIGMA)
    field_ = np.stack([a, b], axis=2)
    length = np.sqrt(np.sqrt(a * a + b * b)) + 1e-3
    oriented: Array = field_ / length[:, :, None]
    return oriented


def _typical(colours: Array) -> Array:
    """The colour most of a region's (n, 3) pixels share: the densest cell of a coarse colour
    grid, refined to the median of the pixels near it. Unlike a plain median it stays the
    region's own colour when a cover hides most of the region."""
    cells = (colours // 32).astype(np.int64)
    densest = int(np.bincount(cells[:, 0] * 64 + cells[:, 1] * 8 + cells[:, 2]).argmax())
    centre = (np.array([densest // 64, densest // 8 % 8, densest % 8]) + 0.5) * 32
    near = np.linalg.norm(colours - centre, axis=1) < COLOUR_TOLERANCE
    typical: Array = np.median(colours[near], axis=0)
    return typical


def _extremes(colours: Array) -> tuple[Array, Array, Array]:
    """(brightest channel, darkest channel, hue in radians) of (n, 3) colours: a hue rotation
    keeps the first two and turns the third, as brightness and contrast scale and shift the
    first two together."""
    high, low = colours.max(axis=1), colours.min(axis=1)
    red, green, blue = colours[:, 0], colours[:, 1], colours[:, 2]
    return high, low, np.arctan2(np.sqrt(3) * (green - blue), 2 * red - green - blue)


def _recolouring_error(exemplar: Array, query: Array, weights: Array) -> float:
    """How far (RGB units, the worst region) the query's region colours are from what one
    global recolouring makes of the exemplar's: a hue rotation by one angle with one
    brightness and contrast change (gain MIN_GAIN..1/MIN_GAIN), a conversion to grey, or a
    change of light alone that may clip channels at black or white. (n, 3) colours, one row
    per region, weighted by their pixels.

    A copy is recoloured as a whole, whatever was done to it (its hues turned, grey, the
    light of a photo); a look-alike that shares a shape has its own colours, which no one
    recolouring of the exemplar's gives: two random colour pairs rarely keep both their
    brightness ratio and their hue difference."""
    if not len(weights):
        return float("inf")
    if len(weights) == 1:
        # One colour cannot show a recolouring (any colour is some recolouring of any
        # other); it can show that it is the exemplar's own, which only an unrecoloured copy
        # does. (A copy whose cover leaves one colour region: its ground, say.)
        return float(np.abs(query[0] - exemplar[0]).max())
    e_high, e_low, e_hue = _extremes(exemplar)
    q_high, q_low, q_hue = _extremes(query)
    errors = []
    # Grey query: the exemplar's luma, up to brightness and contrast.
    if (q_high - q_low).max() < GREY_CHROMA:
        errors.append(_gain_error([exemplar @ LUMA], [query.mean(axis=1)], weights))
    # Colour: the brightest and darkest channels scale together, the hue turns by one angle.
    chroma = np.minimum(e_high - e_low, q_high - q_low)
    turn = q_hue - e_hue
    weight = weights * np.clip(chroma - GREY_CHROMA, 0, None)
    angle = np.arctan2((weight * np.sin(turn)).sum(), (weight * np.cos(turn)).sum())
    off = np.abs(np.angle(np.exp(1j * (turn - angle))))
    hue_error = np.where(chroma > 2 * GREY_CHROMA, 2 * chroma * np.sin(off / 2), 0.0)
    errors.append(
        max(_gain_error([e_high, e_low], [q_high, q_low], weights), float(hue_error.max()))
    )
    # Light alone, the hues kept: the channels scale together, and harsher light clips some
    # (and so moves hues, which the fit above cannot follow). One gain and offset then fit
    # every channel of every region almost exactly (within ~1 unit on the benchmark's lit
    # copies); a look-alike in a similar palette fits loosely, so this fit must be tight.
    lit = _gain_error(list(exemplar.T), list(query.T), weights, clips=True)
    if lit <= LIGHTING_TOLERANCE:
        errors.append(lit)
    return min(errors)


def _gain_error(
    exemplar: list[Array], query: list[Array], weights: Array, clips: bool = False
) -> float:
    """The worst absolute error of the weighted least-squares fit query = gain * exemplar +
    offset over all the paired (n,) arrays, infinite when the gain is out of range (a
    flattened or inverted copy is not a lighting change).

    With `clips`, a query value within CLIPPED of 0 or 255 may be clipped (harsher light or
    contrast pushes a channel past black or white, where it stays): the fit is to the other
    values, at least MIN_UNCLIPPED of them, and a clipped value only needs the fit to reach
    its end of the range."""
    x, y = np.concatenate(exemplar), np.concatenate(query)
    w = np.sqrt(np.tile(weights, len(exemplar)))
    dark = bright = np.zeros(len(y), bool)
    if clips:
        dark, bright = y <= CLIPPED, y >= 255 - CLIPPED
    fitted = ~(dark | bright)
    if clips and (fitted.sum() < MIN_UNCLIPPED or np.ptp(x[fitted]) == 0):
        return float("inf")
    design = np.stack([x, np.ones_like(x)], axis=1)
    (gain, offset), *_ = np.linalg.lstsq(
        design[fitted] * w[fitted, None], y[fitted] * w[fitted], rcond=None
    )
    if not MIN_GAIN <= gain <= 1 / MIN_GAIN:
        return float("inf")
    predicted = gain * x + offset
    error = np.abs(predicted - y)
    error[dark] = np.maximum(predicted[dark] - y[dark], 0)
    error[bright] = np.maximum(y[bright] - predicted[bright], 0)
    return float(error.max())


def _near(query: _Query, targets: Array, angles: Array, radius: float) -> tuple[Array, Array]:
    """Index pairs (i, j), in no particular order: the query's features i among the
    NEAR_FEATURES nearest to targets[j] (and within `radius` of it in both coordinates) in
    each orientation bin that angles[j] +- GUIDED_TURN reaches; the caller filters on the
    turn exactly. Each candidate's guided matching asks about hundreds of projected points:
    k-nearest queries return arrays where a ball query returns a Python list per point (a
    fifth of a search), and by orientation a dense photo texture next to the logo cannot
    crowd its features out of the nearest few."""
    width = 360.0 / GUIDED_ANGLE_BINS
    first = np.floor(np.mod(angles - GUIDED_TURN, 360.0) / width).astype(np.int64)
    reach = int(np.ceil(2 * GUIDED_TURN / width)) + 1
    found_i, found_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for b, (tree, members) in enumerate(query.trees):
        asking = np.flatnonzero(np.mod(b - first, GUIDED_ANGLE_BINS) < reach)
        if not len(asking) or not len(members):
            continue
        k = min(NEAR_FEATURES, len(members))
        _, found = tree.query(targets[asking], k=k, p=np.inf, distance_upper_bound=radius)
        found = found.reshape(len(asking), k)
        valid = found < len(members)
        found_i.append(members[found[valid]])
        found_j.append(asking[np.nonzero(valid)[0]])
    return np.concatenate(found_i), np.concatenate(found_j)


def _hamming(a: Array, b: Array) -> Array:
    """Row-wise Hamming distances between two (n, 32) uint8 descriptor arrays (counted four
    64-bit words a row: 6x faster than a byte table)."""
    differing = np.bitwise_xor(a.view(np.uint64), b.view(np.uint64))
    distances: Array = np.bitwise_count(differing).sum(axis=1, dtype=np.int32)
    return distances


def _distinct(source: Array, target: Array) -> int:
    """Correspondences at distinct places: ORB finds one corner at several pyramid levels,
    and one point matched many times is one piece of evidence."""
    return min(_places(source), _places(target))


def _places(points: Array) -> int:
    """How many distinct places (2-pixel cells) the (n, 2) points are at."""
    cells = np.round(np.asarray(points, np.float64) / 2).astype(np.int64) + (1 << 20)
    return len(np.unique(cells[:, 0] << 22 | cells[:, 1]))


class KeypointIndex:
    """ORB features of every exemplar in one faiss binary index, searched with geometric
    verification. Not safe for an `add` concurrent with a `search`; searches may run
    concurrently."""

    def __init__(self, **thresholds: Any) -> None:
        names = {f.name for f in fields(KeypointThresholds)}
        unknown = sorted(set(thresholds) - names)
        if unknown:
            raise TypeError(f"unknown thresholds {unknown}; valid: {sorted(names)}")
        self.thresholds = KeypointThresholds(**thresholds)
        t = self.thresholds
        self._exemplar_orb = _orb(t.exemplar_features, t.exemplar_levels, t.fast_threshold, 1.25)
        # Detection keeps twice the budget (ORB's strongest corners per level); `_spread`
        # then picks among them, so that no busy texture takes them all. (Keeping every
        # corner, 8x, took a fifth of a search; the small logos it saved are now found in
        # their graphic regions enlarged, see _zoom_boxes.)
        self._query_orb = _orb(t.query_features * 2, t.query_levels, t.fast_threshold, 1.2)
        # An enlarged region is small: keeping every corner there costs little.
        self._zoom_orb = _orb(t.zoom_features * 8, ZOOM_LEVELS, t.fast_threshold, 1.2)
        self._exemplar_ids: list[str] = []
        self._asset_ids: list[str] = []
        self._sizes: list[tuple[float, float]] = []  # (w, h) after scaling to exemplar_side
        self._labels: list[Array] = []  # colour regions, see _colour_regions
        self._thumbnails: list[Array] = []  # colour thumbnails, see _thumbnail
        self._layouts: list[Array] = []  # colour layouts, see _framed_candidates
        self._edge_maps: list[tuple[Array, float]] = []  # see _edge_map
        self._region_colours: list[Array] = []  # see _region_colour_table
        # Layouts, in colour and grey: fine, coarse, log aspect ratios; see _layout_arrays.
        self._stacked_layouts: dict[bool, tuple[Array, Array, Array]] = {}
        self._chunks: list[tuple[Array, Array, Array]] = []  # descriptors, geometry, owner
        self._joined: tuple[Array, Array, Array] | None = None
        self._index: Any = faiss.IndexBinaryFlat(DESCRIPTOR_BYTES * 8)

    def __len__(self) -> int:
        return len(self._exemplar_ids)

    @classmethod
    def build(
        cls, exemplars: Iterable[tuple[str, str, np.ndarray]], **thresholds: Any
    ) -> KeypointIndex:
        """An index of (exemplar_id, asset_id, RGB image) triples. The descriptor index is
        built once, for all of them."""
        index = cls(**thresholds)
        for exemplar_id, asset_id, rgb in exemplars:
            index._append(exemplar_id, asset_id, rgb)
        index._index_descriptors(index._joined_arrays()[0])
        return index

    def add(self, exemplar_id: str, asset_id: str, rgb: np.ndarray) -> None:
        """Adds one exemplar; its descriptors go into the existing descriptor index."""
        self._index_descriptors(self._append(exemplar_id, asset_id, rgb))

    def _append(self, exemplar_id: str, asset_id: str, rgb: np.ndarray) -> Array:
        """Describes an exemplar and records it; returns its descriptors (none when flat)."""
        t = self.thresholds
        gray = _gray(rgb)
        h, w = gray.shape
        scale = t.exemplar_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        shrink = scale < 1
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
        described = []
        for channel in (gray, _lightness(_rgb(rgb))):
            if channel is None:
                continue
            padded = _padded(cv2.resize(channel, size, interpolation=interpolation))
            one = _describe(self._exemplar_orb, padded, self._exemplar_orb.detect(padded, None))
            if one is not None:
                described.append(one)
        features = _join(described)
        row = len(self._exemplar_ids)
        self._exemplar_ids.append(exemplar_id)
        self._asset_ids.append(asset_id)
        self._sizes.append((float(size[0]), float(size[1])))
        self._labels.append(_colour_regions(_rgb(rgb), self._sizes[-1]))
        self._thumbnails.append(_thumbnail(_rgb(rgb), self._sizes[-1]))
        self._derive(row)
        if features is None:  # a flat exemplar: recorded, but nothing can match it
            return _NO_DESCRIPTORS
        owner = np.full(len(features.descriptors), row, dtype=np.int32)
        self._chunks.append((features.descriptors, features.geometry, owner))
        self._joined = None
        return features.descriptors

    def _joined_arrays(self) -> tuple[Array, Array, Array]:
        """Descriptors, geometry and owning exemplar row of every exemplar feature, in the
        order of the faiss index's ids."""
        if self._joined is None:
            self._joined = (
                np.concatenate([c[0] for c in self._chunks] or [_NO_DESCRIPTORS]),
                np.concatenate([c[1] for c in self._chunks] or [np.zeros((0, 4), np.float32)]),
                np.concatenate([c[2] for c in self._chunks] or [np.zeros(0, np.int32)]),
            )
            self._chunks = [self._joined] if self._chunks else []
        return self._joined

    def _index_descriptors(self, new: Array) -> None:
        """Adds `new` (the newest descriptors) to the faiss index. The first time the total
        reaches IVF_TRAIN_AT, the exact index is replaced by an IVF trained once on all of
        them; later adds only assign to its lists."""
        if not len(new):
            return
        total = self._index.ntotal + len(new)
        if not isinstance(self._index, faiss.IndexBinaryFlat) or total < IVF_TRAIN_AT:
            self._index.add(new)
            return
        everything = self._joined_arrays()[0]
        # About 2 * sqrt(n) lists, a power of two: short lists, few of them to probe.
        lists = int(2 ** round(np.log2(2 * np.sqrt(total))))
        ivf = faiss.IndexBinaryIVF(
            faiss.IndexBinaryFlat(DESCRIPTOR_BYTES * 8), DESCRIPTOR_BYTES * 8, lists
        )
        sample = np.random.default_rng(0).permutation(total)[: lists * IVF_TRAIN_SAMPLE_PER_LIST]
        ivf.train(everything[np.sort(sample)])
        ivf.add(everything)
        self._index = ivf

    def _query(self, rgb: np.ndarray) -> _Query | None:
        """The query's features in a working frame: scaled down when huge (latency), up when
        tiny (so a thumbnail still has corners ORB can describe). None when it has none."""
        t = self.thresholds
        colour = _rgb(rgb)
        height, width = colour.shape[:2]
        if min(height, width) < 8:
            return None
        scale = 1.0
        if max(height, width) > t.query_side:
            scale = t.query_side / max(height, width)
        elif max(height, width) < t.query_min_side:
            scale = t.query_min_side / max(height, width)
        if scale != 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
            colour = cv2.resize(colour, size, interpolation=interpolation)
        # Luma with the full budget (a small logo in a busy photo needs it), lightness with
        # a share of it: a recoloured copy needs only its outline there.
        channels = [(_gray(colour), t.query_features)]
        lightness = _lightness(colour)
        if lightness is not None:
            channels.append((lightness, round(t.query_features * t.lightness_share)))
        jobs: list[Callable[[], _Features | None]] = [
            functools.partial(self._spread_features, self._query_orb, channel, budget)
            for channel, budget in channels
        ]
        whole = len(jobs)  # the jobs describing the whole query; then its enlarged regions
        zoom_boxes = self._zoom_boxes(colour)
        jobs += [functools.partial(self._zoomed, colour, box, factor) for box, factor in zoom_boxes]
        running = _workers().map(lambda job: job(), jobs)
        described = list(running)
        features = _join([f for f in described if f is not None])
        if features is None:
            return None

        def smallest(found: list[_Features | None]) -> float:
            sizes = (float(f.geometry[:, 3].min()) for f in found if f is not None)
            return min(sizes, default=np.inf)

        zoomed = [
            (box, smallest([f]))
            for (box, _), f in zip(zoom_boxes, described[whole:], strict=True)
            if f is not None
        ]
        return _Query(
            features,
            scale,
            colour,
            (height, width),
            smallest(described[:whole]),
            zoomed,
        )

    def _spread_features(self, orb: Any, channel: Array, budget: int) -> _Features | None:
        """The features of one channel of a query image, spread over it (see _spread)."""
        t = self.thresholds
        padded = _padded(channel)
        keypoints = _spread(orb.detect(padded, None), t.cell, t.per_cell, budget, 1.2)
        return _describe(orb, padded, keypoints) if keypoints else None

    def _zoom_boxes(self, colour: Array) -> list[tuple[Box, float]]:
        """The graphic regions of the query (working frame) to describe enlarged: up to
        zoom_regions, largest first, no longer than zoom_max_share of it, with their
        margin."""
        t = self.thresholds
        height, width = colour.shape[:2]
        boxes = []
        for x0, y0, x1, y1 in _graphic_regions(colour):
            side = max(x1 - x0, y1 - y0)
            if side > t.zoom_max_share * max(height, width):
                continue
            box = (
                max(0, x0 - GRAPHIC_BLOCK),
                max(0, y0 - GRAPHIC_BLOCK),
                min(width, x1 + GRAPHIC_BLOCK),
                min(height, y1 + GRAPHIC_BLOCK),
            )
            boxes.append((box, min(ZOOM_MAX_FACTOR, t.zoom_side / side)))
        return boxes[: t.zoom_regions]

    def _zoomed(self, colour: Array, box: Box, factor: float) -> _Features | None:
        """The luma features of one region of the query enlarged `factor` times, at their
        places and sizes in the query (working frame). Luma alone: lightness here too found
        2 more of 100 logos in scenes over three benchmark seeds, for +6% a search."""
        x0, y0, x1, y1 = box
        crop = cv2.resize(
            _gray(colour[y0:y1, x0:x1]), None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC
        )
        features = self._spread_features(self._zoom_orb, crop, self.thresholds.zoom_features)
        if features is None:
            return None
        geometry = features.geometry.copy()
        # Pixel centres: x in the crop is (x - x0 + 0.5) * factor - 0.5.
        geometry[:, :2] = (geometry[:, :2] + 0.5) / factor - 0.5 + np.array([x0, y0])
        geometry[:, 3] /= factor
        return _Features(geometry, features.descriptors)

    def search(self, rgb: np.ndarray) -> list[KeypointMatch]:
        """The best verified match of each asset found in `rgb` (HxW, HxWx3 or HxWx4 uint8),
        best first; [] when nothing passes. Deterministic: the same image gives the same
        matches and scores every time."""
        if self._index.ntotal == 0:
            return []
        query = self._query(rgb)
        if query is None:
            return []
        t = self.thresholds
        if isinstance(self._index, faiss.IndexBinaryIVF):
            self._index.nprobe = t.nprobe
        distances, ids = _search_in_parts(self._index, query.features.descriptors, t.neighbours)
        keep = (
            (ids >= 0)
            & (distances <= t.max_hamming)
            & (distances <= distances[:, :1] + t.hamming_slack)
        )
        query_rows = np.nonzero(keep)[0]
        _, geometry, owner = self._joined_arrays()
        exemplar_rows = ids[keep]
        # Meanwhile, a worker looks for exemplars shown as a whole, on the image's frame or
        # on outlines in it (the voting below keeps this thread busy).
        framing = _workers().submit(self._framed_matches, query)
        candidates = self._candidates(
            query.features.geometry[query_rows], geometry[exemplar_rows], owner[exemplar_rows]
        )

        def verify(candidate: tuple[int, Array]) -> KeypointMatch | None:
            exemplar, pairs = candidate
            seeds = (
                geometry[exemplar_rows[pairs], :2],
                query.features.geometry[query_rows[pairs], :2],
            )
            # RANSAC draws from OpenCV's per-thread generator; a fixed seed per candidate
            # makes a decision repeatable whichever worker verifies it (and an approved
            # look-alike score the same as when approved).
            cv2.setRNGSeed(0)
            return self._verify(exemplar, seeds, query)

        # Best first, until max_candidates have found no new asset: an image showing several
        # logos gets one more candidate for each one found. Each is verified as soon as it
        # is drawn, while the next are.
        matches: list[KeypointMatch] = []
        matched: set[str] = set()  # their assets
        failed = 0
        while batch := [
            _workers().submit(verify, candidate)
            for candidate in itertools.islice(candidates, t.max_candidates - failed)
        ]:
            for verifying in batch:
                match = verifying.result()
                if match is None or match.asset_id in matched:
                    failed += 1
                if match is not None:
                    matches.append(match)
                    matched.add(match.asset_id)
        # A copy whose features were found keeps that match; its look as a whole, taken
        # meanwhile, is dropped.
        matches += [m for m in framing.result() if m.asset_id not in matched]
        found: dict[str, KeypointMatch] = {}
        for match in matches:
            best = found.get(match.asset_id)
            if best is None or match.score > best.score:
                found[match.asset_id] = match
        return sorted(found.values(), key=lambda m: (-m.score, -m.inliers))

    def _framed_matches(self, query: _Query) -> list[KeypointMatch]:
        """The exemplars the query shows as a whole (see _framed_candidates)."""
        verified = (
            self._verify_framed(row, pose, on_outline, query)
            for row, pose, on_outline in self._framed_candidates(query)
        )
        return [match for match in verified if match is not None]

    def _candidates(
        self, query: Array, exemplar: Array, owner: Array
    ) -> Iterator[tuple[int, Array]]:
        """(exemplar row, indices of its correspondences) for the exemplars with the most
        correspondences agreeing on one pose, best first (Lowe's Hough voting), as long as
        the caller asks and cells have min_votes.

        Each correspondence (query and exemplar keypoint geometry, owning exemplar) predicts a
        rotation, a scale and where the exemplar's centre lands in the query, and votes for
        the two nearest rotation bins and the two nearest scale bins, so a pose on a bin edge
        is not split in two. A logo shown in the query puts many votes in one cell; chance
        matches, even many into one exemplar, scatter.

        An exemplar gets up to POSES_PER_EXEMPLAR candidates, each a distinct pose: discs,
        rings and stars match themselves turned, so a symmetric logo's turned pose can outvote
        its true one (verification rejects the turned pose; the true one must get its turn).
        A cell next to one already taken (see _same_pose), or one whose correspondences are
        mostly a taken candidate's, is the same pose again."""
        t = self.thresholds
        if not len(owner):
            return
        turn = np.radians(query[:, 2] - exemplar[:, 2])
        ratio = query[:, 3] / exemplar[:, 3]
        sizes = np.asarray(self._sizes, dtype=np.float32)[owner]
        offset = sizes / 2 - exemplar[:, :2]
        cos, sin = np.cos(turn), np.sin(turn)
        centre_x = query[:, 0] + ratio * (cos * offset[:, 0] - sin * offset[:, 1])
        centre_y = query[:, 1] + ratio * (sin * offset[:, 0] + cos * offset[:, 1])
        angle_bins = _two_nearest(np.mod(np.degrees(turn), 360.0) / (360.0 / ANGLE_BINS))
        angle_bins %= ANGLE_BINS
        scale_bins = np.clip(_two_nearest(np.log2(ratio) / LOG2_SCALE_BIN), -31, 31)
        # Position cells half the exemplar's longer side at the cell's scale.
        width = t.exemplar_side * 2.0 ** (scale_bins * LOG2_SCALE_BIN) / 2
        x_bins = np.clip(np.floor(centre_x[:, None] / width), -127, 127).astype(np.int64)
        y_bins = np.clip(np.floor(centre_y[:, None] / width), -127, 127).astype(np.int64)
        pose = (scale_bins + 32) * 65536 + (x_bins + 128) * 256 + (y_bins + 128)  # (n, 2)
        keys = (
            (owner.astype(np.int64)[:, None, None] * ANGLE_BINS + angle_bins[:, :, None]) * POSES
            + pose[:, None, :]
        ).reshape(len(owner), 4)
        # Most cells get a vote or two. Sorting every key (~110,000 a 1024² photo) took ~5 ms
        # while the workers waited; a cell has at most the votes of its hash bucket, so only
        # keys in buckets with min_votes are sorted (the same cells, about a sixth of them).
        bucket = (keys.view(np.uint64) * VOTE_HASH) >> np.uint64(64 - VOTE_BUCKET_BITS)
        bucket = bucket.astype(np.int64)
        votes = np.bincount(bucket.ravel(), minlength=1 << VOTE_BUCKET_BITS)
        unique, counts = np.unique(keys[votes[bucket] >= t.min_votes], return_counts=True)
        # Per exemplar, the poses (voting cells) taken and their correspondences.
        taken: dict[int, list[tuple[tuple[int, int, int, int], Array]]] = {}
        for cell in np.argsort(-counts, kind="stable"):
            if counts[cell] < t.min_votes:
                return
            row, rest = divmod(int(unique[cell]), ANGLE_BINS * POSES)
            angle_bin, rest = divmod(rest, POSES)
            scale_bin, rest = divmod(rest, 65536)
            x_bin, y_bin = divmod(rest, 256)
            pose = (angle_bin, scale_bin, x_bin, y_bin)
            previous = taken.setdefault(row, [])
            if len(previous) >= POSES_PER_EXEMPLAR or any(_same_pose(pose, p) for p, _ in previous):
                continue
            # The cell's correspondences and those in the neighbouring position cells, of
            # the exemplar's (a scan per candidate: the few dozen a search draws take less
            # than sorting the correspondences by exemplar).
            mine = np.flatnonzero(owner == row)
            near = (
                (angle_bins[mine, :, None] == angle_bin)
                & (scale_bins[mine, None, :] + 32 == scale_bin)
                & (np.abs(x_bins[mine, None, :] + 128 - x_bin) <= 1)
                & (np.abs(y_bins[mine, None, :] + 128 - y_bin) <= 1)
            ).any(axis=(1, 2))
            members = mine[near]
            if any(np.isin(members, m).mean() >= 0.5 for _, m in previous):
                continue
            previous.append((pose, members))
            yield row, members

    def _verify(self, row: int, seeds: tuple[Array, Array], query: _Query) -> KeypointMatch | None:
        """A match if the exemplar in `row` is really in the query, else None.

        The seed correspondences (exemplar points, query points in the working frame) are the
        distinctive ones the descriptor index found. An affine fit to them (robust where a
        homography from few, clustered points is not) predicts roughly where every other
        feature of the exemplar should be; matching those near their predicted place (guided
        matching) recovers the plain corners and edges that look alike in many logos. A
        homography from those, and a second, tighter guided pass, give the final homography.
        Then the exemplar's colour regions must explain the query's colours where it puts
        the exemplar: a shared letter or ring with something else around it is not the logo
        (_judge); failing that, an affine fit to the same pairs, where the two disagree."""
        t = self.thresholds
        source, target = seeds
        if len(source) < 3:
            return None
        corners = self._corners(row)
        fitted = _affine(source, target, corners, t, t.seed_px)
        if fitted is None:
            return None
        homography, seed_inliers, quad = fitted
        if _distinct(source[seed_inliers], target[seed_inliers]) < t.min_seed_inliers:
            return None
        # The affine guess is loose for a tilted logo: search a radius that grows with it.
        radius = max(t.guided_px, 0.08 * np.ptp(quad, axis=0).max())
        inliers = 0
        expected = np.zeros((0, 2))
        # The first, wider pass only refines the seeds' pose (a tilted logo's far features
        # are found once a homography bends the affine guess); the second, tight one must
        # show the logo: it needs min_inliers, the first only as many as the seeds.
        passes = ((radius, t.min_seed_inliers), (t.guided_px, t.min_inliers))
        for search_radius, needed in passes:
            exemplar, pairs, expected = self._guided_pairs(row, homography, query, search_radius)
            if len(pairs) < needed:
                return None
            source = exemplar.geometry[pairs[:, 0], :2]
            target = query.features.geometry[pairs[:, 1], :2]
            fitted = _homography(source, target, corners, t)
            if fitted is None:
                return None
            homography, inlier, quad = fitted
            inliers = _distinct(source[inlier], target[inlier])
            if inliers < needed:
                return None
        judged = self._judge(row, query, homography, quad, inliers, expected, source[inlier])
        if judged.match is not None:
            return judged.match
        if judged.close:  # a few pixels off, see min_edges_found_to_align
            aligned = self._aligned(row, homography, query)
            match = None if aligned is None else self._verify_framed(row, aligned, False, query)
            if match is not None:
                return match
        # Where the inliers sit in one part of the exemplar, a homography can fit them yet
        # throw the far corners off (a small logo in a scene is then warped wrongly and fails
        # the pixel checks); an affine map cannot. When the two put a corner of the outline
        # far apart and the affine one explains nearly as many pairs, it is judged too.
        # (Not when they nearly agree: that would only give a look-alike near the thresholds
        # a second try; nor when the affine one explains far fewer pairs: that cut a check's
        # time by ~5% on the benchmark and changed no result there. Its six degrees of
        # freedom fit a crop's inliers a little less closely than a homography's eight: one
        # held-out crop's explained 84 pairs to 85.)
        fitted = _affine(source, target, corners, t, t.ransac_px)
        if fitted is None:
            return None
        affine, affine_inlier, affine_quad = fitted
        thrown = np.abs(affine_quad - quad).max() / np.ptp(affine_quad, axis=0).max()
        if thrown < t.min_thrown_corner:
            return None
        affine_inliers = _distinct(source[affine_inlier], target[affine_inlier])
        if affine_inliers < max(t.min_inliers, t.min_affine_share * inliers):
            return None
        return self._judge(
            row, query, affine, affine_quad, affine_inliers, expected, source[affine_inlier]
        ).match

    def _verify_framed(
        self, row: int, pose: Array, on_outline: bool, query: _Query
    ) -> KeypointMatch | None:
        """A match if the query shows the exemplar in `row` as a whole where `pose` (a
        homography, see _framed_candidates) puts its frame, else None: the pairs are the
        exemplar features with a like query feature near where the pose puts them (within
        ransac_px of the query's own frame, which is exact; guided_px of an outline, found
        within a couple of pixels). (A homography fitted to the few plain corners a covered
        copy may keep is worse than that pose.) Nothing is fitted to the pairs, so they need
        not outnumber what chance fits: as many as a candidate's seeds need are enough (a
        cover over a simple logo's letters can leave fewer than min_inliers of its corners;
        round shapes have few), and the pixel checks decide.

        Where a shape inside touches the frame, an outline may be found a few pixels off
        (see _quadrilateral, or a shape as light as the background around the sign hides
        part of a side), and too few features are found where its pose puts them or the
        pixel checks fail there: then that pose aligned to the exemplar's pixels (see
        _aligned) is tried, as exact as the image's frame."""
        t = self.thresholds
        radius = t.guided_px if on_outline else t.ransac_px
        exemplar, pairs, expected = self._guided_pairs(row, pose, query, radius)
        source = exemplar.geometry[pairs[:, 0], :2]
        target = query.features.geometry[pairs[:, 1], :2]
        inliers = _distinct(source, target)
        quad = cv2.perspectiveTransform(self._corners(row), pose)[0]
        match = None
        if inliers >= t.min_seed_inliers and _outline_ok(quad, t):
            judged = self._judge(row, query, pose, quad, inliers, expected, source, fitted=False)
            match = judged.match
        if match is not None or not on_outline:
            return match
        aligned = self._aligned(row, pose, query)
        return None if aligned is None else self._verify_framed(row, aligned, False, query)

    def _aligned(self, row: int, pose: Array, query: _Query) -> Array | None:
        """`pose` (a homography from exemplar `row` to the query's working frame, a few
        pixels off) corrected so the query's luma there matches the exemplar's best
        (enhanced correlation coefficient maximisation, Evangelidis and Psarakis 2008:
        invariant to a change of brightness and contrast, and precise to a fraction of a
        pixel from a start a few pixels off); None when it does not converge. The query is
        compared where _warp puts it, in the exemplar's thumbnail frame."""
        width, height = _fitted(self._sizes[row])
        warped, inside = self._warp(row, pose, query)
        exemplar = _gray(self._thumbnails[row][:height, :width]).astype(np.float32)
        shown = _gray(warped[:height, :width]).astype(np.float32)
        mask = inside[:height, :width].astype(np.uint8)
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ALIGN_ITERATIONS, 1e-4)
        try:
            _, correction = cv2.findTransformECC(
                exemplar,
                shown,
                np.eye(3, dtype=np.float32),
                cv2.MOTION_HOMOGRAPHY,
                criteria,
                mask,
                ALIGN_BLUR,
            )
        except cv2.error:  # no convergence: the images are not alike enough
            return None
        # The correction maps thumbnail pixels to thumbnail pixels of the warped query.
        scale = LABEL_SIDE / max(self._sizes[row])
        fit = np.diag([scale, scale, 1.0])
        aligned: Array = pose @ np.linalg.inv(fit) @ correction.astype(np.float64) @ fit
        return aligned

    def _judge(
        self,
        row: int,
        query: _Query,
        homography: Array,
        quad: Array,
        inliers: int,
        expected: Array,
        anchors: Array,
        fitted: bool = True,
    ) -> _Judgement:
        """The match the homography (exemplar `row` -> the query's working frame, projecting
        the outline to `quad`, with `inliers` distinct inliers at `anchors` in the exemplar,
        `expected` the exemplar positions of the features the query could show; `fitted`
        unless the pose was given, see _verify_framed) describes, if the query there looks
        like the exemplar: the coverage, appearance, structure and pixel checks; else no
        match, and whether a fitted pose nearly fits (see min_edges_found_to_align)."""
        t = self.thresholds
        coverage = inliers / max(_places(expected), 1)
        # A cover hides features: until the pixel checks say where the exemplar is covered,
        # a fitted candidate's coverage that hardly any cover explains is refused, sparing
        # most candidates those checks. (Not a copy as a whole: there are few of those, and
        # a cover over a simple logo's letters can hide nearly all of its corners.)
        if fitted and coverage < t.min_coverage * (1 - t.max_covered):
            return _Judgement(None)
        warped, inside = self._warp(row, homography, query)
        residual = self._residual(row, warped, inside, anchors)
        # A copy partly hidden, by a cover or the image's frame, keeps its colours: a shape
        # or two recoloured, the rest taken for a cover or cut away, is any logo sharing them.
        set_aside = residual.covered >= t.min_covered
        hidden = set_aside or residual.unseen >= t.min_covered
        if residual.recolouring > (t.max_recolouring_covered if hidden else t.max_recolouring):
            return _Judgement(None)
        failed = _Judgement(
            None,
            close=fitted
            and residual.colours >= t.min_colours
            and residual.edges_found >= t.min_edges_found_to_align,
        )
        # Of a partly covered copy, the features the cover leaves are what can be found (a
        # cover over a logo's letters hides more than its share of the corners).
        fit = LABEL_SIDE / max(self._sizes[row])
        at = np.clip(np.round(expected * fit).astype(int), 0, LABEL_SIDE - 1)
        left = expected[~residual.cover[at[:, 1], at[:, 0]]]
        # Outside what is set aside as covered, the pixels match almost perfectly.
        pixel_for_pixel = (
            residual.colours >= t.min_colours_covered
            and residual.edges_found >= t.min_edges_found_covered
            and residual.edges_explained >= t.min_edges_explained_covered
        )
        partly_covered = (
            pixel_for_pixel
            and set_aside
            and residual.unseen <= t.max_covered
            and inliers >= t.min_coverage * _places(left)
            and residual.foreign >= t.min_foreign_covered
        )
        # A whole copy matching pixel for pixel: few of its features may be found (a logo
        # small in a photo keeps few corners that ORB's patches describe without the scene
        # around them).
        exact = pixel_for_pixel and not set_aside and coverage >= t.min_coverage_exact
        # Below min_coverage only those and a partly covered copy can pass: the rest need no
        # edge checks.
        if coverage < t.min_coverage and not (exact or partly_covered):
            return failed
        structure, shown = self._structure(row, warped, inside)
        # A crop (the image's frame cutting the exemplar) shows less of it: enough when what
        # is shown matches pixel for pixel, nothing set aside as covered, with a whole copy's
        # share of its features, and the exemplar fills most of the image. (A shape that one
        # logo shares with another, in a corner of it, matches pixel for pixel as the part of
        # the other that the frame would leave.)
        height, width = query.colour.shape[:2]
        filled, _ = cv2.intersectConvexConvex(
            quad.astype(np.float32), _frame(width, height).astype(np.float32)
        )
        exact_crop = (
            pixel_for_pixel
            and not set_aside
            and coverage >= t.min_coverage
            and filled >= t.min_crop_fill * width * height
        )
        if shown < (t.min_shown_cropped if exact_crop else t.min_shown):
            return failed
        # Few features and every pixel its own, or more features and most pixels.
        enough_evidence = exact or (
            coverage >= t.min_coverage
            and coverage * structure >= t.min_evidence
            and residual.colours >= t.min_colours
            and residual.edges_found >= t.min_edges_found
            and residual.edges_explained >= t.min_edges_explained
        )
        whole = (
            enough_evidence
            and structure >= t.min_structure
            and self._agreement(row, warped, inside, exact_crop) >= t.min_agreement
        )
        if not (whole or partly_covered):
            return failed
        quad = quad / query.scale
        height, width = query.shape
        x0, y0 = np.clip(np.floor(quad.min(axis=0)), 0, [width, height]).astype(int)
        x1, y1 = np.clip(np.ceil(quad.max(axis=0)), 0, [width, height]).astype(int)
        if x1 <= x0 or y1 <= y0:
            return failed
        score = (1 - np.exp(-inliers / 25)) * np.sqrt(min(1.0, coverage) * structure)
        return _Judgement(
            KeypointMatch(
                asset_id=self._asset_ids[row],
                exemplar_id=self._exemplar_ids[row],
                inliers=inliers,
                score=round(float(score), 4),
                box=(int(x0), int(y0), int(x1), int(y1)),
                fitted=fitted,
            )
        )

    def _corners(self, row: int) -> Array:
        """(1, 4, 2) float64: the outline of exemplar `row`, counter-clockwise from the top
        left, as cv2.perspectiveTransform takes points."""
        return _frame(*self._sizes[row])[None]

    def _derive(self, row: int) -> None:
        """Records what exemplar `row`'s searches use that its thumbnail gives (its colour
        layout, edge map and region colours): made when it is added or the index loaded, not
        stored."""
        self._layouts.append(self._exemplar_layout(row))
        self._edge_maps.append(self._edge_map(row))
        self._region_colours.append(self._region_colour_table(row))
        self._stacked_layouts.clear()

    def _region_colour_table(self, row: int) -> Array:
        """(LABELS, 3) float64: the median thumbnail colour of each of exemplar `row`'s colour
        regions (zeros for a label it lacks), for _residual."""
        labels, thumbnail = self._labels[row], self._thumbnails[row]
        table = np.zeros((LABELS, 3))
        for region in np.unique(labels[labels != NO_LABEL]):
            table[region] = np.median(thumbnail[labels == region], axis=0)
        return table

    def _exemplar_layout(self, row: int) -> Array:
        """Exemplar `row`'s colour layout (see _layout), from its thumbnail: the same whether
        the index was built or loaded."""
        width, height = _fitted(self._sizes[row])
        return _layout(self._thumbnails[row][:height, :width])

    def _edge_map(self, row: int) -> tuple[Array, float]:
        """Exemplar `row`'s edges for _residual: (where its thumbnail's edge strength, see
        _edges, is over a quarter of the strongest within the exemplar; that strongest).
        Made once per exemplar: a search asks for them about six times."""
        extent = self._extent(row)
        strength = _edges(self._thumbnails[row])
        strongest = float(strength[extent > 0].max()) if (extent > 0).any() else 0.0
        return strength > 0.25 * strongest, strongest

    def _layout_arrays(self, grey: bool) -> tuple[Array, Array, Array]:
        """Every exemplar's colour layout (or grey one, see _grey), stacked: (n, cells, 3) on
        the LAYOUT_SIDE grid and on one half as fine (see _coarse); the log of its aspect
        ratio."""
        if grey not in self._stacked_layouts:
            sizes = np.asarray(self._sizes, np.float64).reshape(-1, 2)
            layouts = np.array(self._layouts, np.float32).reshape(-1, LAYOUT_SIDE, LAYOUT_SIDE, 3)
            if grey:
                layouts = _grey(layouts)
            self._stacked_layouts[grey] = (
                layouts.reshape(len(layouts), -1, 3),
                _coarse(layouts),
                np.log(sizes[:, 0] / sizes[:, 1]),
            )
        return self._stacked_layouts[grey]

    def _framed_candidates(self, query: _Query) -> list[tuple[int, Array, bool]]:
        """(exemplar row, pose: the homography putting its frame on the query's or on a
        quadrilateral outline in it, whether on an outline) of the exemplars the query may
        show as a whole, best first.

        A simple logo with a part covered can be left with plain corners and edges that many
        other logos have too; round shapes have few corners at all. The descriptor index
        returns other logos' features for them, and no pose of the right one gets the votes.
        A copy still has the exemplar's colour in each cell of a grid stretched over its
        frame wherever it is not covered, which other images rarely have. Two frames are
        tried: the query's own (a copy, resized, recompressed or covered: of about the
        query's aspect ratio, LAYOUT_ASPECT), and its quadrilateral outlines (_quads: a copy
        turned, tilted or pasted into a picture; each in its four turns, of an aspect ratio
        within QUAD_ASPECT). On the query's frame, the whole_candidates exemplars whose
        layouts agree with the query's there on the most cells (within COLOUR_TOLERANCE), at
        least min_layout of them, are verified at that pose like any candidate: the checks
        decide, not this shortlist; so are the whole_recoloured_candidates whose grey layouts
        agree best with the query's (a recoloured copy, its hues turned, keeps the
        exemplar's lightness in each cell, not its colour). On each outline, the
        outline_candidates that agree best (a flat logo agrees well with many a flat patch of
        photo that texture outlines: a shortlist over all outlines let those crowd out a
        sign's own)."""
        t = self.thresholds
        height, width = query.colour.shape[:2]
        frame = _frame(width, height)
        # Averaging a query shrunk to 8 pixels a cell is as good and quicker than averaging
        # all of a large one (shrunk takes factors below 1 only; a small query is used whole).
        factor = 8 * LAYOUT_SIDE / max(height, width)
        shrunk = query.shrunk(factor)[0] if factor < 1 else query.colour
        layout = _layout(shrunk)
        whole = list(self._best_layouts([frame], [layout], LAYOUT_ASPECT, t.whole_candidates))
        whole += [
            row
            for row in self._best_layouts(
                [frame], [_grey(layout)], LAYOUT_ASPECT, t.whole_recoloured_candidates, grey=True
            )
            if row not in whole
        ]
        framed = [(row, frame, False) for row in whole]
        # The outlines are found here, on the worker that does this while the search votes.
        for outline in _quads(query.colour):
            turns = [np.roll(outline, -turn, axis=0) for turn in range(4)]
            layouts = [_quad_layout(query.colour, quad) for quad in turns]
            on_quad = self._best_layouts(turns, layouts, np.log(QUAD_ASPECT), t.outline_candidates)
            framed += [(row, turns[at], True) for row, at in on_quad.items()]
        return [(row, _pose(self._corners(row)[0], quad), on) for row, quad, on in framed]

    def _best_layouts(
        self,
        quads: list[Array],
        layouts: list[Array],
        tolerance: float,
        count: int,
        grey: bool = False,
    ) -> dict[int, int]:
        """{exemplar row: index of its quad} for the `count` exemplars whose layouts (grey
        ones: see _grey) agree best with the query's `layouts` in one of the `quads` ((4, 2),
        clockwise from where the exemplar's top left would be) of an aspect ratio within
        `tolerance` (log) of theirs, on at least min_layout of the cells; best first."""
        t = self.thresholds
        fine, coarse, aspects = self._layout_arrays(grey)
        best = np.zeros(len(aspects))
        where = np.zeros(len(aspects), np.int64)
        for at, (quad, layout) in enumerate(zip(quads, layouts, strict=True)):
            sides = np.linalg.norm(quad - np.roll(quad, -1, axis=0), axis=1)
            aspect = np.log((sides[0] + sides[2]) / max(sides[1] + sides[3], 1e-9))
            near = np.flatnonzero(np.abs(aspects - aspect) <= tolerance)
            # Coarse to fine: the grid half as fine shortlists (a quarter of the work over
            # every exemplar), the full grid decides.
            if len(near) > LAYOUT_SHORTLIST:
                agreeing = _agreement(coarse[near], _coarse(layout[None])[0])
                near = near[np.argpartition(-agreeing, LAYOUT_SHORTLIST)[:LAYOUT_SHORTLIST]]
            agreeing = _agreement(fine[near], layout.reshape(-1, 3))
            better = agreeing > best[near]
            best[near[better]] = agreeing[better]
            where[near[better]] = at
        chosen = np.argsort(-best, kind="stable")[:count]
        return {int(row): int(where[row]) for row in chosen if best[row] >= t.min_layout}

    def _guided_pairs(
        self, row: int, homography: Array, query: _Query, radius: float
    ) -> tuple[_Features, Array, Array]:
        """(the exemplar's features, (n, 2) pairs of exemplar and query feature indices, the
        (m, 2) exemplar positions of the features the query could show). An exemplar feature is
        expected when it projects inside the query at a size ORB detects there; it pairs with
        the query feature nearest in descriptor among those within `radius` of where it
        projects, at a compatible rotation and scale."""
        t = self.thresholds
        descriptors, geometry, owner = self._joined_arrays()
        # Bounds in owner's own dtype: given Python ints, NumPy would first copy all of owner
        # (every exemplar feature) to int64, ~0.2 ms a call, a dozen calls a search.
        start, stop = np.searchsorted(owner, np.array([row, row + 1], owner.dtype))
        exemplar = _Features(geometry[start:stop], descriptors[start:stop])
        found = query.features
        points = exemplar.geometry[:, :2].astype(np.float64)
        # The homography's local scale and rotation at each point, from its Jacobian.
        at = cv2.perspectiveTransform(points[None], homography)[0]
        dx = cv2.perspectiveTransform((points + np.array([1, 0]))[None], homography)[0] - at
        dy = cv2.perspectiveTransform((points + np.array([0, 1]))[None], homography)[0] - at
        local_scale = np.sqrt(np.abs(dx[:, 0] * dy[:, 1] - dx[:, 1] * dy[:, 0]))
        rotation = np.degrees(np.arctan2(dx[:, 1], dx[:, 0]))
        size = exemplar.geometry[:, 3] * local_scale
        height, width = query.colour.shape[:2]
        # Small features are only found where the query was described enlarged.
        smallest = np.full(len(at), query.smallest)
        for (x0, y0, x1, y1), zoomed_smallest in query.zoomed:
            inside = (at[:, 0] >= x0) & (at[:, 0] < x1) & (at[:, 1] >= y0) & (at[:, 1] < y1)
            smallest[inside] = np.minimum(smallest[inside], zoomed_smallest)
        expected = (
            (size >= smallest * 0.8)
            & (size <= found.geometry[:, 3].max() * 1.25)
            & (at[:, 0] >= 0)
            & (at[:, 1] >= 0)
            & (at[:, 0] < width)
            & (at[:, 1] < height)
        )
        rows = np.flatnonzero(expected)
        no_pairs = np.zeros((0, 2), np.int64)
        if not len(rows):
            return exemplar, no_pairs, points[rows]
        turned = exemplar.geometry[rows, 2] + rotation[rows]
        q_index, e_index = _near(query, at[rows], turned, radius)
        e_rows = rows[e_index]
        turn = found.geometry[q_index, 2] - turned[e_index]
        turn = np.mod(turn + 180, 360) - 180
        ratio = np.log2(found.geometry[q_index, 3] / size[e_rows])
        ok = (np.abs(turn) <= GUIDED_TURN) & (np.abs(ratio) <= 0.8)
        q_index, e_rows = q_index[ok], e_rows[ok]
        hamming = _hamming(found.descriptors[q_index], exemplar.descriptors[e_rows])
        ok = hamming <= t.max_hamming
        q_index, e_rows, hamming = q_index[ok], e_rows[ok], hamming[ok]
        if not len(e_rows):
            return exemplar, no_pairs, points[rows]
        # The best query feature for each exemplar feature; of equally good ones, the first.
        order = np.lexsort((q_index, hamming, e_rows))
        first = np.r_[True, e_rows[order][1:] != e_rows[order][:-1]]
        best = order[first]
        return exemplar, np.stack([e_rows[best], q_index[best]], axis=1), points[rows]

    def _warp(self, row: int, homography: Array, query: _Query) -> tuple[Array, Array]:
        """The query where the homography puts exemplar `row`, resampled into the exemplar's
        (LABEL_SIDE, LABEL_SIDE) thumbnail frame: (colour (s, s, 3) uint8, inside (s, s) bool,
        where the query reaches)."""
        fit = LABEL_SIDE / max(self._sizes[row])
        # Query pixels -> label pixels, after shrinking the query near the label map's size
        # so the warp averages rather than skips pixels.
        to_labels = np.diag([fit, fit, 1.0]) @ np.linalg.inv(homography)
        extent = np.ptp(cv2.perspectiveTransform(self._corners(row), homography)[0], axis=0).max()
        shrink = min(1.0, 2.0 * LABEL_SIDE / max(extent, 1.0))
        colour = query.colour
        if shrink < 0.9:
            colour, shrink = query.shrunk(shrink)
            to_labels = to_labels @ np.diag([1 / shrink, 1 / shrink, 1.0])
        size = (LABEL_SIDE, LABEL_SIDE)
        warped = cv2.warpPerspective(colour, to_labels, size, flags=cv2.INTER_LINEAR)
        shown = np.full(colour.shape[:2], 255, np.uint8)
        inside = cv2.warpPerspective(shown, to_labels, size, flags=cv2.INTER_NEAREST) == 255
        return warped, inside

    def _extent(self, row: int) -> Array:
        """(s, s) float32 0/1 mask over exemplar `row`'s thumbnail frame: where the exemplar
        is, STRUCTURE_MARGIN pixels in from its outline (the query has an edge there, the
        exemplar's frame does not)."""
        tw, th = _fitted(self._sizes[row])
        m = STRUCTURE_MARGIN
        extent = np.zeros((LABEL_SIDE, LABEL_SIDE), np.float32)
        extent[m : th - m, m : tw - m] = 1
        return extent

    def _residual(self, row: int, warped: Array, inside: Array, anchors: Array) -> _Residual:
        """Pixel by pixel, what the exemplar in `row` does not explain of the query where the
        homography puts it (`warped`, see _warp), and how well it explains the rest.

        A pixel is explained when its colour is within COLOUR_TOLERANCE of its region's
        typical query colour (found in the query, so a recoloured copy is explained too: the
        commonest colour of the region's pixels near the homography's inliers, `anchors` in
        the exemplar's pixels, where the query certainly shows the logo, so that a cover
        hiding most of a region seldom lends it its own colour; the exemplar's own colour
        where a tenth of the region's pixels show it) and the query has no edge there that
        the exemplar lacks. The largest blob of unexplained pixels, filled to its convex
        hull, is what may be covering the logo, set aside with a margin: `covered` is the
        share of the exemplar shown so set aside, `unseen` the share of the exemplar the
        blob or the image's frame hides. (When `covered` is min_covered or more, the
        regions' colours are taken again outside it and the blob found again: an even cover
        over most of a region can lend it its colour all the same, and then only its part
        over other regions is unexplained.) Outside it, the share of explained pixels, the
        share of the exemplar's edges with a query edge within 2 pixels, and the share of
        the query's edges with an exemplar edge within 2 pixels. A copy, whole or
        partly covered, is explained almost everywhere outside the cover; a look-alike
        sharing a shape or a letter leaves its other shapes, letters and colours
        unexplained. Last, `recolouring`: how far the typical colours of the regions shown
        outside the blob are from one recolouring of the exemplar's (_recolouring_error;
        with one region shown, from the exemplar's own colour; infinite with none)."""
        labels = self._labels[row]
        extent = self._extent(row)
        seen = _seen(extent, inside) > 0
        valid = seen & (labels != NO_LABEL)
        colours = warped.astype(np.float32)
        w, h = self._sizes[row]
        near_anchor = np.zeros(labels.shape, np.uint8)
        for x, y in np.round(anchors * (LABEL_SIDE / max(w, h))).astype(int):
            cv2.circle(near_anchor, (int(x), int(y)), ANCHOR_RADIUS, 1, -1)
        regions = [r for r in np.unique(labels[valid]) if (valid & (labels == r)).sum() >= 4]
        exemplar_edges, strongest = self._edge_maps[row]
        query_strength = _edges(warped)
        near = np.ones((5, 5), np.uint8)
        query_edges = query_strength > 0.25 * strongest
        near_exemplar = cv2.dilate(exemplar_edges.astype(np.uint8), near) > 0
        own_colours = self._region_colours[row]
        # A second pass where the first set a cover aside (see above), with the regions'
        # colours from where it left the logo shown.
        cover = np.zeros(labels.shape, bool)
        for _ in range(2):
            before = cover
            explained = np.zeros(labels.shape, bool)
            for region in regions:
                members = valid & (labels == region)
                shown = members & ~before
                sample = shown if shown.sum() >= MIN_REGION_PIXELS else members
                anchored = sample & (near_anchor > 0)
                typical = _typical(colours[anchored] if anchored.sum() >= 4 else colours[sample])
                # A textured cover over most of a region can also hold most of the features
                # near it, and lend the region its colour all the same: where a tenth of the
                # region's pixels still show the exemplar's own colour, that is the region's.
                own = own_colours[region]
                as_is = np.linalg.norm(colours[sample] - own, axis=1) < COLOUR_TOLERANCE
                if np.linalg.norm(typical - own) >= COLOUR_TOLERANCE and as_is.sum() >= max(
                    MIN_REGION_PIXELS, 0.1 * sample.sum()
                ):
                    typical = own
                explained[members] = np.linalg.norm(colours[members] - typical, axis=1) < (
                    COLOUR_TOLERANCE
                )
            # A cover shows what the exemplar does not: other colours, or edges where the
            # exemplar has none (a photo's texture can share a region's colour here and there).
            hull = _blob_hull(valid & (~explained | (query_edges & ~near_exemplar)))
            # The cover's edge blurs into the pixels next to it: a 3-pixel margin is set
            # aside with it (but is not what it hides, see `unseen`).
            cover = cv2.dilate(hull.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
            covered = float((cover & seen).sum() / max(seen.sum(), 1))
            if covered < self.thresholds.min_covered:
                break
        unseen = 1 - float((seen & ~hull).sum() / max(extent.sum(), 1))
        rest = valid & ~cover
        if not rest.any() or strongest <= 0:
            return _Residual(cover, covered, unseen, 0.0, float("inf"), 0.0, 0.0, 0.0)
        # The regions' colours where the query shows them (not under the cover, which lends a
        # region its own colour) must be one recolouring of the exemplar's.
        shown_own, query_colours, weights = [], [], []
        for region in regions:
            members = labels == region
            shown_members = rest & members
            if shown_members.sum() >= max(MIN_REGION_PIXELS, 0.1 * (valid & members).sum()):
                shown_own.append(own_colours[region])
                query_colours.append(_typical(colours[shown_members]))
                weights.append(float(shown_members.sum()))
        recolouring = _recolouring_error(
            np.array(shown_own, np.float64).reshape(-1, 3),
            np.array(query_colours, np.float64).reshape(-1, 3),
            np.array(weights),
        )
        # What hides the logo is something else in front of it: colours of its own. A
        # look-alike lacking one of the exemplar's shapes shows the exemplar's background
        # colour there instead, the colour of a region shown elsewhere. (Not that of a
        # region shown only under the cover: the cover lends it its own colour.)
        hidden = cover & valid & ~explained
        foreign = 0.0
        if hidden.any() and query_colours:
            others = np.linalg.norm(
                colours[hidden][:, None] - np.array(query_colours)[None], axis=2
            )
            foreign = float((others.min(axis=1) >= COLOUR_TOLERANCE).mean())
        kept = seen & ~cover
        exemplar_edges = exemplar_edges & kept  # not in place: the map is the exemplar's
        query_edges &= kept
        near_query = cv2.dilate(query_edges.astype(np.uint8), near) > 0
        near_exemplar = cv2.dilate(exemplar_edges.astype(np.uint8), near) > 0
        return _Residual(
            cover=cover,
            covered=covered,
            unseen=unseen,
            foreign=foreign,
            recolouring=recolouring,
            colours=float(explained[rest].mean()),
            edges_found=float(near_query[exemplar_edges].mean()) if exemplar_edges.any() else 0.0,
            edges_explained=(
                float(near_exemplar[query_edges].mean()) if query_edges.any() else 1.0
            ),
        )

    def _structure(self, row: int, warped: Array, inside: Array) -> tuple[float, float]:
        """Whether the query has the exemplar's edges where the homography puts them, and no
        others, whatever their colours: (agreeing, shown), both 0..1. Over a grid of cells on
        the exemplar, a cell counts when the exemplar or the query has edges there (a tenth
        of the exemplar's strongest cell), and agrees when the cosine between the two edge
        orientation fields (see _orientation) there is at least 0.5. `agreeing` is the share
        of the counted cells the query shows that agree, `shown` the share of the exemplar's
        edge energy in cells the query shows. A copy, even recoloured, noisy or tilted,
        agrees nearly everywhere it is not covered; a look-alike sharing a letter or a shape
        agrees only there, and a texture's edges run every which way."""
        extent = self._extent(row)
        seen = _seen(extent, inside)
        exemplar = _orientation(self._thumbnails[row])
        found = _orientation(warped)
        side = LABEL_SIDE // STRUCTURE_CELLS

        def per_cell(values: Array) -> Array:
            summed: Array = values.reshape(STRUCTURE_CELLS, side, STRUCTURE_CELLS, side).sum(
                axis=(1, 3)
            )
            return summed

        exemplar_power = (exemplar * exemplar).sum(axis=2)
        found_power = (found * found).sum(axis=2)
        energy = per_cell(np.sqrt(exemplar_power) * extent)
        strongest = energy.max()
        if strongest <= 0:
            return 0.0, 0.0
        visible = per_cell(seen) >= 0.5 * np.maximum(per_cell(extent), 1)
        exemplar_energy = per_cell(np.sqrt(exemplar_power) * seen)
        found_energy = per_cell(np.sqrt(found_power) * seen)
        counted = visible & (
            (exemplar_energy >= 0.1 * strongest) | (found_energy >= 0.1 * strongest)
        )
        if not counted.any():
            return 0.0, 0.0
        dot = per_cell((exemplar * found).sum(axis=2) * seen)
        norms = per_cell(exemplar_power * seen) * per_cell(found_power * seen)
        cosine = dot / np.sqrt(norms + 1e-9)
        agreeing = (counted & (cosine >= 0.5)).sum() / counted.sum()
        structured = energy >= 0.1 * strongest
        shown = energy[structured & visible].sum() / energy[structured].sum()
        return float(agreeing), float(shown)

    def _agreement(self, row: int, warped: Array, inside: Array, shown_only: bool) -> float:
        """How well the exemplar's colour regions explain the query's colours where the
        homography puts the exemplar (`warped`, see _warp), 0..1: for each region (weighing
        the same, so a small missing shape counts as much as a large background that is
        present), the share of its pixels whose query colour is nearest that region's typical
        query colour. A recoloured, grey, noisy or compressed copy keeps its regions and
        scores near 1; a covered part or a part outside the query scores 0; a look-alike that
        shares a letter or a ring but not the rest scores low.

        `shown_only`: of the part inside the query (a crop that matched pixel for pixel
        where shown, see _judge: the regions the frame cut away are not there to agree)."""
        labels = self._labels[row]
        seen = inside & (labels != NO_LABEL)
        region_sizes = np.bincount(
            labels[seen if shown_only else labels != NO_LABEL], minlength=LABELS
        )
        regions = [g for g in range(LABELS) if region_sizes[g] >= 0.005 * region_sizes.sum()]
        pixels = warped[seen].astype(np.float64)
        groups = labels[seen]
        typical = {
            g: np.median(pixels[groups == g], axis=0) for g in regions if (groups == g).sum() >= 4
        }
        # Regions the query shows in one colour can't be told apart there: only the largest
        # of them can agree (a shape missing from the query looks like its background).
        kept: list[int] = []
        for g in sorted(typical, key=lambda g: -region_sizes[g]):
            if all(np.linalg.norm(typical[g] - typical[k]) >= MIN_CONTRAST for k in kept):
                kept.append(g)
        if len(kept) < 2:
            return 0.0
        centres = np.array([typical[g] for g in kept])
        nearest = ((pixels[:, None] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
        agreeing = sum(
            (nearest[groups == g] == i).sum() / region_sizes[g] for i, g in enumerate(kept)
        )
        return float(agreeing / len(regions))

    def save(self, path: Path) -> None:
        """Writes the index as one .npz (arrays only, no pickled objects), atomically: a
        reader sees the old file or the new one, never half of one."""
        path = Path(path)
        descriptors, geometry, owner = self._joined_arrays()
        arrays: dict[str, Array] = {
            "format_version": np.array(FORMAT_VERSION),
            "thresholds": np.array(json.dumps(asdict(self.thresholds))),
            "exemplar_ids": np.array(self._exemplar_ids, dtype=str),
            "asset_ids": np.array(self._asset_ids, dtype=str),
            "sizes": np.array(self._sizes, dtype=np.float32).reshape(-1, 2),
            "labels": np.array(self._labels, dtype=np.uint8).reshape(-1, LABEL_SIDE, LABEL_SIDE),
            "thumbnails": np.array(self._thumbnails, dtype=np.uint8).reshape(
                -1, LABEL_SIDE, LABEL_SIDE, 3
            ),
            "descriptors": descriptors,
            "geometry": geometry,
            "owner": owner,
            "faiss_index": faiss.serialize_index_binary(self._index),
        }
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, allow_pickle=False, **arrays)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> KeypointIndex:
        with np.load(Path(path), allow_pickle=False) as data:
            version = int(data["format_version"])
            if version != FORMAT_VERSION:
                raise ValueError(
                    f"{path}: keypoint index format {version}, this code reads {FORMAT_VERSION}"
                )
            index = cls(**json.loads(str(data["thresholds"])))
            index._exemplar_ids = [str(v) for v in data["exemplar_ids"]]
            index._asset_ids = [str(v) for v in data["asset_ids"]]
            index._sizes = [(float(w), float(h)) for w, h in data["sizes"]]
            index._labels = list(data["labels"])
            index._thumbnails = list(data["thumbnails"])
            for row in range(len(index._sizes)):
                index._derive(row)
            joined = (data["descriptors"], data["geometry"], data["owner"])
            index._index = faiss.deserialize_index_binary(data["faiss_index"])
        if len(joined[0]):
            index._chunks = [joined]
        return index


def _search_in_parts(index: Any, descriptors: Array, k: int) -> tuple[Array, Array]:
    """index.search, the batch split between the search workers. Each distinct descriptor is
    searched once: wherever the query is grey its lightness is its luma, and both channels
    describe the same corners alike (up to a third of a query's descriptors)."""
    distinct, inverse = np.unique(
        descriptors.view(np.dtype((np.void, DESCRIPTOR_BYTES))).ravel(), return_inverse=True
    )
    batches = np.array_split(distinct.view(np.uint8).reshape(-1, DESCRIPTOR_BYTES), SEARCH_THREADS)
    parts = list(_workers().map(lambda batch: index.search(batch, k), batches))
    distances, ids = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return distances[inverse], ids[inverse]


_pool: tuple[int, ThreadPoolExecutor] | None = None


def _workers() -> ThreadPoolExecutor:
    """This process's search workers. A pool is never shared with a forked child (a Celery
    worker process): its threads do not exist there, and work submitted would wait forever.
    Two threads asking first at once may each make a pool; the one not kept is dropped, and
    its idle threads with it."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        pool = ThreadPoolExecutor(
            SEARCH_THREADS, thread_name_prefix="keypoints", initializer=_one_openmp_thread
        )
        _pool = (os.getpid(), pool)
    return _pool[1]


def _one_openmp_thread() -> None:
    """faiss would spread each worker's batch over OpenMP threads; on a small, busy machine
    (or beside other searches) those threads wait on each other and a 30 ms search takes
    150-300 ms. The OpenMP thread count is per calling thread: this is the worker's alone."""
    faiss.omp_set_num_threads(1)


def _same_pose(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two (angle, scale, x, y) voting cells of one exemplar are one pose: each vote
    goes to two neighbouring angle and scale bins, and a pose's votes spread over
    neighbouring position cells."""
    turn = abs(a[0] - b[0]) % ANGLE_BINS
    return (
        min(turn, ANGLE_BINS - turn) <= 1
        and abs(a[1] - b[1]) <= 1
        and abs(a[2] - b[2]) <= 1
        and abs(a[3] - b[3]) <= 1
    )


def _two_nearest(values: Array) -> Array:
    """(n, 2) int: the bin each value falls in and the neighbouring bin it is closer to."""
    low = np.floor(values)
    step = np.where(values - low >= 0.5, 1, -1)
    return np.stack([low, low + step], axis=1).astype(np.int64)

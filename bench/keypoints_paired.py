"""Check latency of two versions of the keypoint matcher, paired image by image.

A machine of this kind has swung by half within an hour, so two runs of index_eval.py minutes
apart compare the machine as much as the code. This loads `reference_index/keypoints.py` from
two checkouts (a git worktree of the commit before, say) into one process, indexes the same
logos with each, and searches every 1024x1024 image of index_eval.py's latency set (logos at
10% in photos, and distractors) with both, alternating which goes first. It prints each
version's mean, p50 and p95 and the mean paired difference, and how many images got other
matches from the two. Figures only.

    git worktree add /tmp/before <commit>
    python bench/keypoints_paired.py /tmp/before .
    python bench/keypoints_paired.py /tmp/before . --seed 1 --scenes 30 --distractors 200
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from index_eval import SCENE_SIDE, asset_id, distractors, in_scene, make_logos, photos


def _matcher(checkout: Path, name: str) -> ModuleType:
    """`reference_index/keypoints.py` of `checkout`, as a module of its own."""
    path = checkout / "reference_index" / "keypoints.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"checkout: no {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def _found(index: Any, image: np.ndarray) -> tuple[float, list[tuple[str, int, tuple[int, ...]]]]:
    start = time.perf_counter()
    matches = index.search(image)
    milliseconds = 1000 * (time.perf_counter() - start)
    return milliseconds, [(m.asset_id, m.inliers, m.box) for m in matches]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("before", type=Path, help="checkout A")
    parser.add_argument("after", type=Path, help="checkout B")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--logos", type=int, default=1000, help="logos indexed")
    parser.add_argument("--scenes", type=int, default=40, help="logos at 10%% in photos")
    parser.add_argument("--distractors", type=int, default=400)
    parser.add_argument(
        "--verbose", action="store_true", help="print each image that got other matches"
    )
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    pool = photos()
    logos = make_logos(args.logos + 100, rng)
    indexed, unindexed = logos[: args.logos], logos[args.logos :]
    images = [
        (f"logo {target} in a scene", in_scene(indexed[target], rng, pool).image)
        for target in (int(rng.integers(len(indexed))) for _ in range(args.scenes))
    ]
    images += [
        (f"distractor {i}", image)
        for i, image in enumerate(distractors(args.distractors, rng, pool, unindexed))
    ]
    images = [
        (name, image) for name, image in images if image.shape[:2] == (SCENE_SIDE, SCENE_SIDE)
    ]
    exemplars = [(f"exemplar-{i:05d}", asset_id(i), logo) for i, logo in enumerate(indexed)]
    checkouts = (args.before, args.after)
    indexes = []
    for i, checkout in enumerate(checkouts):
        module = _matcher(checkout.resolve(), f"keypoints_{'ab'[i]}")
        indexes.append(module.KeypointIndex.build(exemplars))
        indexes[-1].search(images[0][1])  # start its search threads
    print(
        f"machine: {platform.platform()}, {platform.machine()}, Python {platform.python_version()}"
    )
    print(
        f"{len(images)} images of {SCENE_SIDE}x{SCENE_SIDE}, {args.logos} logos indexed, "
        f"seed {args.seed}"
    )

    times: list[list[float]] = [[], []]
    differing = 0
    for n, (name, image) in enumerate(images):
        order = (0, 1) if n % 2 == 0 else (1, 0)
        found: list[list[tuple[str, int, tuple[int, ...]]]] = [[], []]
        for i in order:
            milliseconds, found[i] = _found(indexes[i], image)
            times[i].append(milliseconds)
        differing += found[0] != found[1]
        if args.verbose and found[0] != found[1]:
            print(f"    {name}: A {found[0]}, B {found[1]}")
    for label, checkout, ms in zip("AB", checkouts, times, strict=True):
        print(
            f"  {label} {checkout!s:30s} mean {statistics.fmean(ms):6.1f} ms, "
            f"p50 {np.percentile(ms, 50):5.0f}, p95 {np.percentile(ms, 95):5.0f}"
        )
    difference = np.subtract(times[1], times[0])
    share = 100 * difference.mean() / np.mean(times[0])
    print(
        f"  B - A: mean {difference.mean():+.1f} ms ({share:+.1f}%), "
        f"median {np.median(difference):+.1f} ms; {differing} of {len(images)} images got other "
        "matches"
    )


if __name__ == "__main__":
    main()

"""Prompt policy against labelled prompts: accuracy, recalls, every miss, and throughput.

    python bench/policy_eval.py [--catalogue FILE] [--prompts FILE] [--rules FILE]
    python bench/policy_eval.py --calibrate [--prompts FILE] [--extra FILE ...]

The catalogue YAML is read straight into CatalogueEntry (no database); each prompt line is
{"prompt", "variant", "use", "expect": [acceptable decisions], "why"}. A use other than
"commercial" counts as non-commercial, as the pipeline has it. The rules are those of
settings (the rule file, default the packaged one, with the settings' extra terms).

Targets: accuracy >= 0.95, block recall >= 0.98, false blocks on allow-only prompts <= 0.02;
the rules stage >= 5,000 prompts/s on one core, with the semantic stage >= 200 prompts/s.

--calibrate prints what the semantic thresholds of the rule file (`assets.description`) are
set from: for the prompts the rules stage alone lets through, the best similarity to any
description of those that should go to review (indirect descriptions) and of those that
should be allowed, by how many of the description's features they match, and the
max-margin threshold between the two groups.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from core.settings import PolicySettings
from generation.variants import VARIANTS
from review.normalise import normalise_with_spans
from review.policy import PolicyEngine, rules_from_settings
from review.schemas import (
    CatalogueEntry,
    PolicyDecision,
    PolicyRequest,
    PolicyRules,
    VariantLicence,
)
from review.semantic import DescriptionMatcher, load_encoder

EVAL = Path(os.environ.get("CLEARANCE_EVAL_DIR", "/work/shared/eval"))
BATCH = 64


def load_catalogue(path: Path) -> list[CatalogueEntry]:
    assets = yaml.safe_load(path.read_text(encoding="utf-8"))["assets"]
    return [
        CatalogueEntry(
            id=a["id"],
            name=a["name"],
            kind=a["kind"],
            aliases=tuple(a.get("aliases") or ()),
            description=a.get("description") or "",
        )
        for a in assets
    ]


def licence_for(variant_name: str) -> VariantLicence:
    """The licence as the pipeline passes it in, from the variant catalogue."""
    variant = VARIANTS[variant_name]
    return VariantLicence(
        variant=variant.name,
        licence_id=variant.licence_id,
        licence_name=variant.licence_name,
        commercial_use=variant.commercial_use,
        commercial_alternatives=tuple(v.name for v in VARIANTS.values() if v.commercial_use),
    )


Row = dict[str, object]


def load_prompts(path: Path) -> tuple[list[Row], list[PolicyRequest]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    requests = [
        PolicyRequest(
            prompt=str(row["prompt"]),
            licence=licence_for(str(row.get("variant", "schnell"))),
            use="commercial" if row.get("use", "commercial") == "commercial" else "non-commercial",
        )
        for row in rows
    ]
    return rows, requests


def expected(row: Row) -> list[str]:
    expect = row["expect"]
    assert isinstance(expect, list)
    return [str(e) for e in expect]


def rate(hits: int, total: int) -> str:
    return f"{hits / total:.3f} ({hits}/{total})" if total else "n/a (0 prompts)"


def report(rows: list[Row], decisions: list[PolicyDecision]) -> None:
    expects = [expected(row) for row in rows]
    got = [d.decision for d in decisions]
    correct = sum(g in e for g, e in zip(got, expects, strict=True))
    blocks = [g for g, e in zip(got, expects, strict=True) if e == ["block"]]
    reviews = [g for g, e in zip(got, expects, strict=True) if e == ["review"]]
    allows = [g for g, e in zip(got, expects, strict=True) if e == ["allow"]]
    print(f"prompts: {len(rows)}   rules version: {decisions[0].rules_version}")
    print(f"accuracy (decision in expect):        {rate(correct, len(rows))}")
    print(f"block recall (expect block):          {rate(blocks.count('block'), len(blocks))}")
    print(f"false-block rate (expect allow only): {rate(allows.count('block'), len(allows))}")
    print(f"review recall (expect review):        {rate(reviews.count('review'), len(reviews))}")
    misses = [
        (row, d) for row, d in zip(rows, decisions, strict=True) if d.decision not in expected(row)
    ]
    print(f"\nmisses: {len(misses)}")
    for row, decision in misses:
        print(f"- {row['prompt']!r} ({row.get('variant')}, {row.get('use')})")
        print(f"  expected {'/'.join(expected(row))}, got {decision.decision}")
        for reason in decision.reasons:
            print(f"    {reason.rule} -> {reason.decision}: {reason.detail}")
            print(f"      matched={reason.matched!r} asset={reason.asset_id} score={reason.score}")


def throughput(
    check: Callable[[list[PolicyRequest]], object], requests: list[PolicyRequest], seconds: float
) -> float:
    """Prompts per second, repeating the prompts in batches until `seconds` have passed."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for start in range(0, len(requests), BATCH):
            check(requests[start : start + BATCH])
        done += len(requests)
    return done / (time.perf_counter() - started)


def _worker(
    args: tuple[Path | None, Path, Path, float], barrier: Any, results: Any
) -> None:  # pragma: no cover (runs in a child process)
    """One worker process: its own engine (as each Celery worker has), then prompts for
    `seconds` once every worker is ready."""
    rules_file, catalogue_file, prompts_file, seconds = args
    rules = rules_from_settings(PolicySettings(rules_file=rules_file))
    engine = PolicyEngine.build(rules, load_catalogue(catalogue_file))
    _, requests = load_prompts(prompts_file)
    engine.check_many(requests)
    barrier.wait()
    results.put(throughput(engine.check_many, requests, seconds) * 1.0)


def in_processes(args: tuple[Path | None, Path, Path, float], processes: int) -> float:
    """Prompts per second of `processes` worker processes together: how a worker machine
    uses its cores (the encoder runs one thread per process, see review.semantic)."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=_worker, args=(args, barrier, results)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    total = sum(results.get() for _ in workers)
    for worker in workers:
        worker.join()
    return float(total)


def one_core() -> str:
    """Pin this process to one CPU, for the rules stage's figure."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu}"


# --- calibration -----------------------------------------------------------------------------


def calibrate(rules: PolicyRules, catalogue: list[CatalogueEntry], files: Sequence[Path]) -> None:
    """The semantic stage's scores on the prompts it decides, and the max-margin thresholds.

    Positives: prompts expected to go to review only that the rules stage alone allows (it
    names no asset and no category term): indirect descriptions. Negatives: prompts
    expected to be allowed only. For each, the best description by `score` among those
    whose features it matches at least k times (k = min_features), and the best similarity
    of the prompt as a whole to any description (what min_score alone must stay above)."""
    sem = rules.semantic
    rows: list[Row] = []
    requests: list[PolicyRequest] = []
    for path in files:
        more_rows, more_requests = load_prompts(path)
        rows += more_rows
        requests += more_requests
    rules_only = PolicyEngine.build(rules, catalogue, semantic=False)
    passed = [d.decision == "allow" for d in rules_only.check_many(requests)]
    positives = [i for i, row in enumerate(rows) if expected(row) == ["review"] and passed[i]]
    negatives = [i for i, row in enumerate(rows) if expected(row) == ["allow"] and passed[i]]

    # Every description scored: no threshold, one feature is enough to be reported.
    described = [e for e in catalogue if e.description.strip()]
    wide_open = dataclasses.replace(
        sem, min_score=-1.0, min_score_with_features=-1.0, min_features=1
    )
    matcher = DescriptionMatcher(load_encoder(), [e.description for e in described], wide_open)
    normalised = [normalise_with_spans(requests[i].prompt) for i in positives + negatives]
    found = dict(zip(positives + negatives, matcher.match(normalised), strict=True))

    def with_features(i: int) -> tuple[float, str]:
        best = [d for d in found[i] if d.features >= sem.min_features]
        top = max(best, key=lambda d: d.score, default=None)
        return (top.score, described[top.index].id) if top else (float("nan"), "-")

    def whole(i: int) -> tuple[float, str]:
        top = max(found[i], key=lambda d: d.whole, default=None)
        return (top.whole, described[top.index].id) if top else (float("nan"), "-")

    def features(i: int) -> int:
        return max((d.features for d in found[i]), default=0)

    print(f"semantic calibration on {', '.join(str(f) for f in files)}")
    print(f"  feature_score {sem.feature_score}, min_features {sem.min_features}")
    for name, group in (("should review", positives), ("should allow", negatives)):
        print(f"\n  {name} ({len(group)}):  features  with>={sem.min_features}  whole  prompt")
        for i in sorted(group, key=lambda i: (-features(i), -whole(i)[0])):
            score, asset = with_features(i)
            print(
                f"    {features(i):>2}  {score:5.3f} {asset:<14} {whole(i)[0]:5.3f}  "
                f"{str(rows[i]['prompt'])[:70]}"
            )

    def bound(group: list[int], value: Callable[[int], tuple[float, str]]) -> list[float]:
        return [s for s in (value(i)[0] for i in group) if s == s]  # not NaN

    if positives and negatives:
        most, fewest = max(map(features, negatives)), min(map(features, positives))
        print(
            f"\n  min_features: negatives match at most {most}, positives at least {fewest} "
            f"(set: {sem.min_features})"
        )
    pos, neg = bound(positives, with_features), bound(negatives, with_features)
    print(f"\n  min_score_with_features (prompts matching >= {sem.min_features} features):")
    if pos and neg:
        low, high = min(pos), max(neg)
        verdict = (
            f"midpoint {(low + high) / 2:.3f}" if high < low else "the groups overlap: no margin"
        )
        print(f"    lowest positive {low:.3f}, highest negative {high:.3f}: {verdict}")
    elif pos:
        print(f"    lowest positive {min(pos):.3f}; no negative matches that many features")
    print(f"    set: {sem.min_score_with_features}")
    whole_neg = bound(negatives, whole)
    if whole_neg:
        print("\n  min_score (the prompt as a whole, any number of features):")
        print(f"    highest negative {max(whole_neg):.3f}; set: {sem.min_score}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--catalogue", type=Path, default=EVAL / "catalogue.yaml")
    parser.add_argument("--prompts", type=Path, default=EVAL / "prompts-dev.jsonl")
    parser.add_argument("--rules", type=Path, default=None, help="default: the packaged rule file")
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput figure")
    parser.add_argument("--calibrate", action="store_true", help="semantic thresholds' evidence")
    parser.add_argument(
        "--extra", type=Path, action="append", default=[], help="more prompts to calibrate on"
    )
    args = parser.parse_args()

    rules = rules_from_settings(PolicySettings(rules_file=args.rules))
    catalogue = load_catalogue(args.catalogue)
    if args.calibrate:
        calibrate(rules, catalogue, [args.prompts, *args.extra])
        return
    rows, requests = load_prompts(args.prompts)

    started = time.perf_counter()
    engine = PolicyEngine.build(rules, catalogue)
    print(
        f"engine built in {time.perf_counter() - started:.1f} s (model load included): "
        f"{len(catalogue)} assets, {engine.catalogue_version}\n"
    )
    report(rows, engine.check_many(requests))

    print(f"\nthroughput (batches of {BATCH})")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    semantic = throughput(engine.check_many, requests, args.seconds)
    print(f"  rules + semantic stage, one process:        {semantic:,.0f} prompts/s")
    together = in_processes((args.rules, args.catalogue, args.prompts, args.seconds), cpus or 1)
    print(f"  rules + semantic stage, {cpus} processes ({cpus} cores): {together:,.0f} prompts/s")
    rules_only = PolicyEngine.build(rules, catalogue, semantic=False)
    pinned = one_core()
    figure = throughput(rules_only.check_many, requests, args.seconds)
    print(f"  rules stage alone, one core ({pinned}): {figure:,.0f} prompts/s")


if __name__ == "__main__":
    main()

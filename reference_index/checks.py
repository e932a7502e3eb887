"""Clear one image: PDQ, CLIP (exemplars and zero-shot text) and keypoint matches against
the protected-asset catalogue, and NSFW detection. The pipeline's image checks, the
check of an image to edit, `POST /v1/checks` and `clearance check image` all call
`check_image`.

Fail closed: a matcher that errors is recorded as a fault and the image goes to review;
it is never approved on the strength of the checks that did run. The stage's soft time
limit arriving inside a matcher is such a fault too, but it ends the check there: no later
matcher runs, and the result says `out_of_time`, so the stage records what it has and ends
before the hard limit kills the worker.

Each check is some tenant's: it matches the shared catalogue and that tenant's own assets and
exemplars, never another tenant's. The index holds everyone's; PDQ filters in its query, and
CLIP and keypoint matches are filtered after the search (CLIP asks for as many more
neighbours as there are exemplars the tenant may not see, so they cannot crowd out its own).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.blobs import digest
from core.images import decode_image, to_array
from core.settings import Settings
from reference_index import index as index_versions
from reference_index import nsfw, pdq
from reference_index.embedders import get_embedder
from reference_index.models import ProtectedAsset, ReferenceImage
from reference_index.service import visible_to

log = logging.getLogger(__name__)

DECISIONS = ("approve", "review", "reject")
_CLIP_NEIGHBOURS = 10
_TEXT_MATCHES = 5


@dataclass(frozen=True)
class Match:
    asset_id: str
    asset_name: str
    matcher: str  # "pdq" | "keypoints" | "clip_image" | "clip_text"
    score: float
    # Strong enough on its own to reject (a copy), or only to ask a person.
    strength: str  # "review" | "reject"
    exemplar_id: str | None = None
    box: list[int] | None = None
    # False when the matcher is not a real check (the random-weight CLIP stand-in).
    counted: bool = True
    detail: str = ""


@dataclass
class CheckResult:
    decision: str
    matches: list[Match]
    nsfw: dict[str, Any] | None
    embedder: str
    index_checkpoint: str | None
    faults: list[dict[str, str]] = field(default_factory=list)
    suppressed: list[dict[str, Any]] = field(default_factory=list)
    # The soft time limit cut the check short (its matcher is among the faults).
    out_of_time: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "matches": [vars(m) for m in self.matches],
            "nsfw": self.nsfw,
            "embedder": self.embedder,
            "index_checkpoint": self.index_checkpoint,
            "faults": self.faults,
            "suppressed": self.suppressed,
        }


@dataclass(frozen=True)
class _Candidate:
    match: Match
    negative: bool


def _threshold(asset: ProtectedAsset | None, key: str, default: float) -> float:
    return float(asset.thresholds.get(key, default)) if asset is not None else default


def _pdq_candidates(
    rgb: np.ndarray,
    session: Session,
    settings: Settings,
    assets: dict[str, ProtectedAsset],
    tenant_id: str | None,
) -> list[_Candidate]:
    matching = settings.matching
    hashed = pdq.compute_array(rgb)
    if hashed.quality < matching.pdq_min_quality:
        return []  # a flat image hashes unreliably: PDQ says nothing about it
    rows = session.execute(
        select(
            ReferenceImage.id,
            ReferenceImage.asset_id,
            ReferenceImage.polarity,
            ReferenceImage.pdq_hash,
        )
        .where(
            ReferenceImage.pdq_quality >= matching.pdq_min_quality,
            visible_to(ReferenceImage.tenant_id, tenant_id),
        )
        .order_by(ReferenceImage.id)
    ).all()
    if not rows:
        return []
    distances = pdq.distances(hashed.hex, [r.pdq_hash for r in rows])
    found = []
    for row, distance in zip(rows, distances, strict=True):
        asset = assets.get(row.asset_id)
        if distance > _threshold(asset, "pdq_max_distance", matching.pdq_max_distance):
            continue
        found.append(
            _Candidate(
                Match(
                    asset_id=row.asset_id,
                    asset_name=asset.name if asset else row.asset_id,
                    matcher="pdq",
                    score=round(1 - int(distance) / pdq.HASH_BITS, 4),
                    strength="reject" if distance <= matching.pdq_reject_distance else "review",
                    exemplar_id=row.id,
                    detail=f"PDQ distance {int(distance)}",
                ),
                row.polarity == "negative",
            )
        )
    return found


def _index_candidates(
    image: Image.Image,
    rgb: np.ndarray,
    loaded: index_versions.LoadedIndex,
    settings: Settings,
    assets: dict[str, ProtectedAsset],
    faults: list[dict[str, str]],
    hidden: int,
) -> list[_Candidate]:
    """`hidden`: how many exemplars of the index this check may not use."""
    clip = settings.matching.clip
    embedder = get_embedder(settings)
    found: list[_Candidate] = []

    def run(matcher: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as e:  # one matcher failing must not hide the others' results
            _fault(faults, matcher, e)

    def clip_matches() -> None:
        vector = embedder.embed_images([image])
        for exemplar_id, score in loaded.vectors.search(vector, _CLIP_NEIGHBOURS + hidden)[0]:
            exemplar = loaded.exemplars.get(exemplar_id)
            if exemplar is None:
                continue
            asset = assets.get(exemplar.asset_id)
            if score < _threshold(asset, "clip_min_image_score", clip.min_image_score):
                continue
            found.append(
                _Candidate(
                    Match(
                        asset_id=exemplar.asset_id,
                        asset_name=asset.name if asset else exemplar.asset_id,
                        matcher="clip_image",
                        score=round(score, 4),
                        strength="reject" if score >= clip.reject_image_score else "review",
                        exemplar_id=exemplar_id,
                        counted=embedder.semantic,
                        detail=f"cosine {score:.3f} to an exemplar ({embedder.name})",
                    ),
                    exemplar.polarity == "negative",
                )
            )
        if len(loaded.text_labels):
            scores = (loaded.text_vectors @ vector[0]).tolist()
            for asset_id, label, score in zip(
                loaded.text_assets, loaded.text_labels, scores, strict=True
            ):
                asset = assets.get(asset_id)
                if score >= _threshold(asset, "clip_min_text_score", clip.min_text_score):
                    found.append(
                        _Candidate(
                            Match(
                                asset_id=asset_id,
                                asset_name=asset.name if asset else asset_id,
                                matcher="clip_text",
                                score=round(score, 4),
                                strength="review",
                                counted=embedder.semantic,
                                detail=f"cosine {score:.3f} to {label!r} ({embedder.name})",
                            ),
                            False,
                        )
                    )

    def keypoint_matches() -> None:
        for hit in loaded.keypoints.search(rgb):
            exemplar = loaded.exemplars.get(hit.exemplar_id)
            if exemplar is None:  # not in this version's exemplar table: cannot be judged
                continue
            asset = assets.get(exemplar.asset_id)
            # A homography needs enough inliers to be more than chance; an exemplar found as
            # a whole (its pose given by the image's frame or an outline in it, nothing
            # fitted) is judged by its pixels instead.
            if hit.fitted and hit.inliers < _threshold(
                asset, "keypoint_min_inliers", settings.matching.keypoint_min_inliers
            ):
                continue
            found.append(
                _Candidate(
                    Match(
                        asset_id=exemplar.asset_id,
                        asset_name=asset.name if asset else exemplar.asset_id,
                        matcher="keypoints",
                        score=round(hit.score, 4),
                        strength="reject"
                        if hit.inliers >= settings.matching.keypoint_reject_inliers
                        else "review",
                        exemplar_id=hit.exemplar_id,
                        box=list(hit.box),
                        detail=(
                            f"{hit.inliers} inliers of a homography to an exemplar"
                            if hit.fitted
                            else f"a copy of an exemplar as a whole ({hit.inliers} of its "
                            "features in place)"
                        ),
                    ),
                    exemplar.polarity == "negative",
                )
            )

    run("clip", clip_matches)
    run("keypoints", keypoint_matches)
    return found


# Scores of strong matches saturate near 1, where a few hundredths are noise (a pixel of
# JPEG or rounding in the generator): a negative within this much of the exemplar's score
# matches as well as it does.
NEGATIVE_MARGIN = 0.02


def _approved_as_is(
    candidates: list[_Candidate], session: Session, sha256: str, tenant_id: str | None
) -> tuple[list[_Candidate], list[dict[str, Any]]]:
    """A person approved this very file for an asset (its bytes are one of the asset's
    negative exemplars): that asset's matches are silenced whatever their scores, which for
    two different exemplars are not comparable to a few hundredths (a brightened exemplar
    can outscore the identical image). A match to an exemplar added since the approval is
    evidence that person has not seen: it stays."""
    approvals = session.execute(
        select(ReferenceImage.asset_id, ReferenceImage.id, ReferenceImage.created_at)
        .where(
            ReferenceImage.blob_sha256 == sha256,
            ReferenceImage.polarity == "negative",
            visible_to(ReferenceImage.tenant_id, tenant_id),
        )
        .order_by(ReferenceImage.created_at)
    ).all()
    if not approvals:
        return candidates, []
    approved = {row.asset_id: row for row in approvals}  # the latest approval per asset
    matched = {c.match.exemplar_id for c in candidates if c.match.asset_id in approved}
    added = {
        row.id: row.created_at
        for row in session.execute(
            select(ReferenceImage.id, ReferenceImage.created_at).where(
                ReferenceImage.id.in_(matched - {None})
            )
        )
    }
    kept, silenced = [], []
    for c in candidates:
        approval = approved.get(c.match.asset_id)
        exemplar_added = added.get(c.match.exemplar_id)
        if approval is None or (
            exemplar_added is not None and exemplar_added > approval.created_at
        ):
            kept.append(c)
        elif not c.negative:
            silenced.append(_suppression(c.match, approved_as_is=approval.id))
    return kept, silenced


def _suppression(match: Match, **why: Any) -> dict[str, Any]:
    """What a check reports of a match it silenced, and why."""
    return {"asset_id": match.asset_id, "matcher": match.matcher, "score": match.score, **why}


def _apply_negatives(candidates: list[_Candidate]) -> tuple[list[Match], list[dict[str, Any]]]:
    """An approved look-alike (negative exemplar) that matches at least as well as the
    asset's own exemplars (within NEGATIVE_MARGIN), with the same matcher, silences that
    asset for that matcher."""
    best_negative: dict[tuple[str, str], float] = {}
    for c in candidates:
        if c.negative:
            key = (c.match.asset_id, c.match.matcher)
            best_negative[key] = max(best_negative.get(key, -1.0), c.match.score)
    kept, suppressed = [], []
    for c in candidates:
        if c.negative:
            continue
        negative = best_negative.get((c.match.asset_id, c.match.matcher))
        if negative is not None and negative >= c.match.score - NEGATIVE_MARGIN:
            suppressed.append(_suppression(c.match, negative_score=negative))
        else:
            kept.append(c.match)
    # One line per asset and matcher: its best match.
    best: dict[tuple[str, str], Match] = {}
    for m in kept:
        key = (m.asset_id, m.matcher)
        if key not in best or m.score > best[key].score:
            best[key] = m
    return sorted(best.values(), key=lambda m: (-m.counted, -m.score)), suppressed


class _OutOfTime(BaseException):
    """Unwinds the check from the matcher the soft time limit arrived in, past the handlers
    that record an ordinary failure and go on with the next matcher."""


def _fault(faults: list[dict[str, str]], matcher: str, error: Exception) -> None:
    log.warning("the %s check failed: %s", matcher, error, exc_info=True)
    faults.append({"matcher": matcher, "error": f"{type(error).__name__}: {error}"})
    if isinstance(error, SoftTimeLimitExceeded):
        raise _OutOfTime from error


def not_checked(reason: str, *, embedder: str) -> CheckResult:
    """The result of an image no matcher looked at: it goes to a person."""
    return CheckResult(
        decision="review",
        matches=[],
        nsfw=None,
        embedder=embedder,
        index_checkpoint=None,
        faults=[{"matcher": "image", "error": reason}],
    )


def decide(matches: list[Match], nsfw_decision: str | None, faults: list[dict[str, str]]) -> str:
    counted = [m for m in matches if m.counted]
    if any(m.strength == "reject" for m in counted) or nsfw_decision == "reject":
        return "reject"
    if counted or faults or nsfw_decision == "review":
        return "review"
    return "approve"


def check_image(
    data: bytes,
    *,
    session: Session,
    settings: Settings,
    tenant_id: str | None,
    field: str = "image",
) -> CheckResult:
    """The check of an image file for `tenant_id`: against the shared catalogue and that
    tenant's own assets and exemplars (None: the shared catalogue only). A file that is not
    an image it can read is refused (ImageError naming `field`)."""
    image = decode_image(data, field=field)
    rgb = to_array(image)
    assets = {
        a.id: a
        for a in session.scalars(
            select(ProtectedAsset).where(visible_to(ProtectedAsset.tenant_id, tenant_id))
        )
    }
    exemplars = set(
        session.scalars(
            select(ReferenceImage.id).where(visible_to(ReferenceImage.tenant_id, tenant_id))
        )
    )
    hidden = session.scalar(
        select(func.count())
        .select_from(ReferenceImage)
        .where(~visible_to(ReferenceImage.tenant_id, tenant_id))
    )
    faults: list[dict[str, str]] = []
    candidates: list[_Candidate] = []
    checkpoint = None
    nsfw_result = None
    out_of_time = False
    try:
        try:
            candidates += _pdq_candidates(rgb, session, settings, assets, tenant_id)
        except Exception as e:  # recorded, and the image goes to review
            _fault(faults, "pdq", e)
        try:
            loaded = index_versions.load_active(session=session, settings=settings)
            if loaded is not None:
                checkpoint = loaded.checkpoint
                candidates += _index_candidates(
                    image, rgb, loaded, settings, assets, faults, hidden or 0
                )
            elif exemplars:
                faults.append(
                    {
                        "matcher": "index",
                        "error": "exemplars exist but no index is built: "
                        "run `clearance index build`",
                    }
                )
        except Exception as e:
            _fault(faults, "index", e)
        try:
            nsfw_result = nsfw.detect(rgb, settings.matching.nsfw).to_dict()
        except Exception as e:
            _fault(faults, "nsfw", e)
    except _OutOfTime:
        out_of_time = True
    # Nothing of another tenant's, negatives included: they must not silence this tenant's
    # matches either.
    candidates = [
        c
        for c in candidates
        if c.match.asset_id in assets
        and (c.match.exemplar_id is None or c.match.exemplar_id in exemplars)
    ]
    candidates, approved = _approved_as_is(candidates, session, digest(data), tenant_id)
    matches, suppressed = _apply_negatives(candidates)
    suppressed = approved + suppressed
    decision = decide(matches, nsfw_result["decision"] if nsfw_result else None, faults)
    return CheckResult(
        decision=decision,
        matches=matches,
        nsfw=nsfw_result,
        embedder=get_embedder(settings).name,
        index_checkpoint=checkpoint,
        faults=faults,
        suppressed=suppressed,
        out_of_time=out_of_time,
    )

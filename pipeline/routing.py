"""Routing: from the prompt decision and the image matches to approved, in review or blocked.
Fail closed: anything not positively cleared goes to a person."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.models import APPROVED, BLOCKED, IN_REVIEW


@dataclass(frozen=True)
class Route:
    state: str
    band: str
    reasons: list[dict[str, Any]] = field(default_factory=list)


def route(prompt_decision: str | None, image_matches: list[dict[str, Any]] | None) -> Route:
    """`image_matches` is None when the image checks did not run or did not finish."""
    if prompt_decision == "block":
        return Route(
            BLOCKED,
            "auto-block",
            [{"rule": "prompt.block", "detail": "the prompt policy blocked this job"}],
        )
    reasons: list[dict[str, Any]] = []
    if prompt_decision is None:
        reasons.append({"rule": "prompt.missing", "detail": "no prompt decision was recorded"})
    elif prompt_decision == "review":
        reasons.append(
            {"rule": "prompt.review", "detail": "the prompt policy asked for a human review"}
        )
    if image_matches is None:
        reasons.append({"rule": "images.unchecked", "detail": "the image checks did not complete"})
    for match in image_matches or []:
        reasons.append(
            {
                "rule": f"images.{match['matcher']}_match",
                "detail": (
                    f"image {match['image_index']} resembles protected asset "
                    f"{match['asset_name']!r} ({match['matcher']} distance {match['distance']})"
                ),
                "asset_id": match["asset_id"],
                "score": match["score"],
            }
        )
    if reasons:
        return Route(IN_REVIEW, "human-review", reasons)
    return Route(
        APPROVED,
        "auto-approve",
        [{"rule": "all_checks_passed", "detail": "every check ran and passed"}],
    )

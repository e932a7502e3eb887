"""Routing: from the prompt decision and the image checks to approved, in review, rejected
or blocked. Fail closed: anything not positively cleared goes to a person."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.models import APPROVED, BLOCKED, IN_REVIEW, REJECTED


@dataclass(frozen=True)
class Route:
    state: str
    band: str
    reasons: list[dict[str, Any]] = field(default_factory=list)


def route(
    prompt_decision: str | None, image_decision: str | None, image_reasons: list[dict[str, Any]]
) -> Route:
    """`image_decision` is approve | review | reject, or None when the image checks did not
    run or did not finish; `image_reasons` are what the image checks found."""
    if prompt_decision == "block":
        return Route(
            BLOCKED,
            "auto-block",
            [{"rule": "prompt.block", "detail": "the prompt policy blocked this job"}],
        )
    if image_decision == "reject":
        return Route(REJECTED, "auto-reject", image_reasons)
    reasons: list[dict[str, Any]] = []
    if prompt_decision is None:
        reasons.append({"rule": "prompt.missing", "detail": "no prompt decision was recorded"})
    elif prompt_decision == "review":
        reasons.append(
            {"rule": "prompt.review", "detail": "the prompt policy asked for a human review"}
        )
    if image_decision is None:
        reasons.append({"rule": "images.unchecked", "detail": "the image checks did not complete"})
    elif image_decision != "approve":
        reasons.extend(image_reasons)
    if reasons:
        return Route(IN_REVIEW, "human-review", reasons)
    return Route(
        APPROVED,
        "auto-approve",
        [{"rule": "all_checks_passed", "detail": "every check ran and passed"}],
    )


def image_reasons(check: dict[str, Any], image_index: int) -> list[dict[str, Any]]:
    """The reasons a person reads, from one image's check result."""
    reasons = [
        {
            "rule": f"images.{m['matcher']}_match",
            "detail": f"image {image_index} resembles protected asset {m['asset_name']!r} "
            f"({m['detail']})",
            "asset_id": m["asset_id"],
            "matcher": m["matcher"],
            "score": m["score"],
            "strength": m["strength"],
            "box": m["box"],
            "image_index": image_index,
        }
        for m in check["matches"]
        if m["counted"]
    ]
    for flag in (check.get("nsfw") or {}).get("flagged", []):
        reasons.append(
            {
                "rule": f"images.nsfw_{flag['level']}",
                "detail": f"image {image_index}: {flag['label']} scored {flag['score']:.2f} "
                f"(threshold {flag['threshold']})",
                "score": flag["score"],
                "box": flag["box"],
                "image_index": image_index,
            }
        )
    for fault in check["faults"]:
        reasons.append(
            {
                "rule": "images.check_fault",
                "detail": f"image {image_index}: the {fault['matcher']} check failed: "
                f"{fault['error']}",
                "image_index": image_index,
            }
        )
    return reasons

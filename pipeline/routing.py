"""Routing: from the prompt decision and the image checks to approved, in review, rejected
or blocked. Fail closed: anything not positively cleared goes to a person."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.settings import RoutingSettings
from pipeline.models import APPROVED, BLOCKED, IN_REVIEW, REJECTED

# Bands, in the order a job's route is decided.
AUTO_BLOCK = "auto-block"
AUTO_REJECT = "auto-reject"
HUMAN_REVIEW = "human-review"
FAIL_CLOSED = "fail-closed"
APPROVAL_REQUIRED = "approval-required"
SAMPLE = "sample"
AUTO_APPROVE = "auto-approve"
_PROMPT_RISK = {"allow": 0.0, "review": 0.5, "block": 1.0}


@dataclass(frozen=True)
class Route:
    state: str
    band: str
    reasons: list[dict[str, Any]] = field(default_factory=list)
    # Per check category: its risk 0..1 and the band it fell in.
    categories: dict[str, dict[str, Any]] = field(default_factory=dict)
    risk: float = 0.0


def category_risks(
    prompt_decision: str | None, image_reasons: list[dict[str, Any]]
) -> dict[str, float]:
    """Each check category's risk, 0..1. 1.0 is what the check itself judged a copy, a reject
    label or a block under the asset's own thresholds; otherwise the strongest score found."""
    risks = {"catalogue": 0.0, "nsfw": 0.0, "prompt": _PROMPT_RISK.get(prompt_decision or "", 0.0)}
    for reason in image_reasons:
        rule = str(reason.get("rule", ""))
        if "matcher" in reason:
            risk = 1.0 if reason.get("strength") == "reject" else float(reason["score"])
            risks["catalogue"] = max(risks["catalogue"], risk)
        elif rule.startswith("images.nsfw_"):
            risk = 1.0 if rule == "images.nsfw_reject" else float(reason["score"])
            risks["nsfw"] = max(risks["nsfw"], risk)
    return risks


def route(
    prompt_decision: str | None,
    image_decision: str | None,
    image_reasons: list[dict[str, Any]],
    *,
    settings: RoutingSettings,
    sample_draw: float,
    require_human_approval: bool = False,
) -> Route:
    """`image_decision` is approve | review | reject, or None when the image checks did not
    run or did not finish; `image_reasons` are what they found. `sample_draw` is uniform in
    [0, 1): below `settings.sample_rate` an auto-approved job goes to a person anyway."""
    risks = category_risks(prompt_decision, image_reasons)
    categories: dict[str, dict[str, Any]] = {}
    for name, risk in risks.items():
        band = settings.bands[name]
        if risk >= band.auto_reject_at:
            fell = AUTO_BLOCK if name == "prompt" else AUTO_REJECT
        elif risk >= band.auto_approve_below:
            fell = HUMAN_REVIEW
        else:
            fell = AUTO_APPROVE
        categories[name] = {"risk": round(risk, 4), "band": fell}
    risk = max(risks.values())
    fired = {c["band"] for c in categories.values()}

    def chosen(state: str, band: str, reasons: list[dict[str, Any]]) -> Route:
        return Route(state, band, reasons, categories, risk)

    if AUTO_BLOCK in fired:
        block = {"rule": "prompt.block", "detail": "the prompt policy blocked this job"}
        return chosen(BLOCKED, AUTO_BLOCK, [block])
    if AUTO_REJECT in fired:
        return chosen(REJECTED, AUTO_REJECT, image_reasons)
    missing: list[dict[str, Any]] = []
    if prompt_decision is None:
        missing.append({"rule": "prompt.missing", "detail": "no prompt decision was recorded"})
    if image_decision is None:
        missing.append({"rule": "images.unchecked", "detail": "the image checks did not complete"})
    faults = [r for r in image_reasons if r.get("rule") == "images.check_fault"]
    if missing or faults:
        # Fail closed: a check that did not run is not a check that passed.
        return chosen(IN_REVIEW, FAIL_CLOSED, missing + image_reasons)
    if HUMAN_REVIEW in fired:
        reasons = list(image_reasons)
        if categories["prompt"]["band"] == HUMAN_REVIEW:
            reasons.insert(
                0, {"rule": "prompt.review", "detail": "the prompt policy asked for a human review"}
            )
        return chosen(IN_REVIEW, HUMAN_REVIEW, reasons)
    if require_human_approval:
        reasons = [
            {"rule": "tenant.approval_required", "detail": "the tenant approves every image"}
        ]
        return chosen(IN_REVIEW, APPROVAL_REQUIRED, reasons)
    if sample_draw < settings.sample_rate:
        reasons = [
            {
                "rule": "routing.sample",
                "detail": f"drawn for quality review ({settings.sample_rate:.0%} of approvals)",
            }
        ]
        return chosen(IN_REVIEW, SAMPLE, reasons)
    return chosen(
        APPROVED,
        AUTO_APPROVE,
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

"""Routing bands per check category, the random sample, approval workflows, fail closed."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core.settings import Band, RoutingSettings
from pipeline.routing import route

NO_SAMPLE = RoutingSettings(sample_rate=0)


def match(score: float, strength: str = "review") -> dict[str, Any]:
    return {
        "rule": "images.pdq_match",
        "detail": "image 0 resembles protected asset 'Mickey Mouse' (PDQ distance 12)",
        "asset_id": "mickey-mouse",
        "matcher": "pdq",
        "score": score,
        "strength": strength,
        "image_index": 0,
    }


def nsfw(level: str, score: float) -> dict[str, Any]:
    return {"rule": f"images.nsfw_{level}", "detail": "...", "score": score, "image_index": 0}


def routed(
    prompt: str | None = "allow",
    images: str | None = "approve",
    reasons: list[dict[str, Any]] | None = None,
    settings: RoutingSettings = NO_SAMPLE,
    draw: float = 0.5,
    approval: bool = False,
) -> Any:
    return route(
        prompt,
        images,
        reasons or [],
        settings=settings,
        sample_draw=draw,
        require_human_approval=approval,
    )


def test_clean_checks_are_approved() -> None:
    chosen = routed()
    assert (chosen.state, chosen.band) == ("approved", "auto-approve")
    assert {c["band"] for c in chosen.categories.values()} == {"auto-approve"}


def test_a_blocked_prompt_is_blocked() -> None:
    chosen = routed("block")
    assert (chosen.state, chosen.band) == ("blocked", "auto-block")
    assert chosen.categories["prompt"] == {"risk": 1.0, "band": "auto-block"}


def test_a_prompt_marked_for_review_goes_to_review() -> None:
    chosen = routed("review")
    assert (chosen.state, chosen.band) == ("in_review", "human-review")
    assert chosen.reasons[0]["rule"] == "prompt.review"


def test_each_band_of_the_catalogue_category() -> None:
    """Below auto_approve_below → approved; in between → review; at auto_reject_at →
    rejected; the band that fired is recorded per category."""
    bands = RoutingSettings(
        sample_rate=0, bands={"catalogue": Band(auto_approve_below=0.9, auto_reject_at=0.95)}
    )
    low, middle, high = routed(reasons=[match(0.89)], settings=bands), None, None
    middle = routed(images="review", reasons=[match(0.92)], settings=bands)
    high = routed(images="review", reasons=[match(0.96)], settings=bands)
    assert (low.state, low.categories["catalogue"]) == (
        "approved",
        {"risk": 0.89, "band": "auto-approve"},
    )
    assert (middle.state, middle.band) == ("in_review", "human-review")
    assert middle.reasons == [match(0.92)]
    assert (high.state, high.band) == ("rejected", "auto-reject")
    assert high.categories["catalogue"]["band"] == "auto-reject"


def test_default_bands_review_any_match_and_reject_what_the_check_calls_a_copy() -> None:
    assert routed(images="review", reasons=[match(0.88)]).state == "in_review"
    copy = routed(images="reject", reasons=[match(0.99, "reject")])
    assert (copy.state, copy.band, copy.risk) == ("rejected", "auto-reject", 1.0)


def test_nsfw_has_its_own_band() -> None:
    assert routed(images="review", reasons=[nsfw("review", 0.6)]).state == "in_review"
    assert routed(images="reject", reasons=[nsfw("reject", 0.7)]).state == "rejected"
    lenient = RoutingSettings(
        sample_rate=0, bands={"nsfw": Band(auto_approve_below=0.8, auto_reject_at=1.0)}
    )
    assert routed(images="review", reasons=[nsfw("review", 0.6)], settings=lenient).state == (
        "approved"
    )


def test_a_random_share_of_approvals_goes_to_review() -> None:
    sampled = RoutingSettings(sample_rate=0.02)
    chosen = routed(settings=sampled, draw=0.019)
    assert (chosen.state, chosen.band) == ("in_review", "sample")
    assert routed(settings=sampled, draw=0.02).state == "approved"


def test_a_tenant_that_requires_approval_sees_every_image() -> None:
    chosen = routed(approval=True)
    assert (chosen.state, chosen.band) == ("in_review", "approval-required")
    # ... but what the bands reject stays rejected.
    assert routed(images="reject", reasons=[match(1.0, "reject")], approval=True).state == (
        "rejected"
    )


def test_missing_checks_never_approve() -> None:
    """Fail closed: a check that did not run is not a check that passed, whatever the bands."""
    lenient = RoutingSettings(
        sample_rate=0,
        bands={
            "catalogue": Band(auto_approve_below=1.0, auto_reject_at=1.01),
            "prompt": Band(auto_approve_below=1.0, auto_reject_at=1.01),
        },
    )
    assert routed(None, settings=lenient).band == "fail-closed"
    assert routed(images=None, settings=lenient).state == "in_review"
    fault = {"rule": "images.check_fault", "detail": "the keypoints check failed: boom"}
    assert routed(images="review", reasons=[fault], settings=lenient).state == "in_review"
    assert {r["rule"] for r in routed(None, None).reasons} == {
        "prompt.missing",
        "images.unchecked",
    }


def test_bad_band_settings_are_refused_naming_the_category() -> None:
    with pytest.raises(ValidationError, match="unknown categories"):
        RoutingSettings(bands={"colour": Band(auto_approve_below=0.1, auto_reject_at=0.5)})
    with pytest.raises(ValidationError, match="auto_reject_at must not be below"):
        Band(auto_approve_below=0.5, auto_reject_at=0.4)

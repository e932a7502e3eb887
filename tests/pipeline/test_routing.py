from __future__ import annotations

from pipeline.routing import route

REASON = {
    "rule": "images.pdq_match",
    "detail": "image 0 resembles protected asset 'Mickey Mouse' (PDQ distance 4)",
    "asset_id": "mickey-mouse",
}


def test_clean_checks_are_approved() -> None:
    chosen = route("allow", "approve", [])
    assert (chosen.state, chosen.band) == ("approved", "auto-approve")


def test_a_blocked_prompt_is_blocked() -> None:
    assert route("block", "approve", []).state == "blocked"


def test_a_prompt_marked_for_review_goes_to_review() -> None:
    chosen = route("review", "approve", [])
    assert (chosen.state, chosen.band) == ("in_review", "human-review")
    assert chosen.reasons[0]["rule"] == "prompt.review"


def test_an_image_match_goes_to_review_with_its_reasons() -> None:
    chosen = route("allow", "review", [REASON])
    assert chosen.state == "in_review"
    assert chosen.reasons == [REASON]


def test_a_copy_of_a_protected_asset_is_rejected() -> None:
    chosen = route("allow", "reject", [REASON])
    assert (chosen.state, chosen.band) == ("rejected", "auto-reject")
    assert chosen.reasons == [REASON]


def test_missing_checks_never_approve() -> None:
    """Fail closed: a check that did not run is not a check that passed."""
    assert route(None, "approve", []).state == "in_review"
    assert route("allow", None, []).state == "in_review"
    assert {r["rule"] for r in route(None, None, []).reasons} == {
        "prompt.missing",
        "images.unchecked",
    }

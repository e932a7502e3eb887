from __future__ import annotations

from pipeline.routing import route

MATCH = {
    "matcher": "pdq",
    "asset_id": "mickey-mouse",
    "asset_name": "Mickey Mouse",
    "distance": 4,
    "score": 0.98,
    "image_index": 0,
}


def test_clean_checks_are_approved() -> None:
    chosen = route("allow", [])
    assert (chosen.state, chosen.band) == ("approved", "auto-approve")


def test_a_blocked_prompt_is_blocked() -> None:
    assert route("block", []).state == "blocked"


def test_a_prompt_marked_for_review_goes_to_review() -> None:
    chosen = route("review", [])
    assert (chosen.state, chosen.band) == ("in_review", "human-review")
    assert chosen.reasons[0]["rule"] == "prompt.review"


def test_an_image_match_goes_to_review_with_the_asset_named() -> None:
    chosen = route("allow", [MATCH])
    assert chosen.state == "in_review"
    assert chosen.reasons[0]["asset_id"] == "mickey-mouse"
    assert "Mickey Mouse" in chosen.reasons[0]["detail"]


def test_missing_checks_never_approve() -> None:
    """Fail closed: a check that did not run is not a check that passed."""
    assert route(None, []).state == "in_review"
    assert route("allow", None).state == "in_review"
    assert {r["rule"] for r in route(None, None).reasons} == {
        "prompt.missing",
        "images.unchecked",
    }

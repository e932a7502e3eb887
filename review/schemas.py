from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Decision = Literal["allow", "review", "block"]
USES = ("commercial", "non-commercial")
Use = Literal["commercial", "non-commercial"]

# Severity order: the strictest reason decides.
_RANK: dict[Decision, int] = {"allow": 0, "review": 1, "block": 2}


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
class PolicyRules:
    blocklist: tuple[str, ...]
    review_terms: tuple[str, ...]
    version: str


@dataclass(frozen=True)
class Reason:
    rule: str
    decision: Decision
    detail: str
    matched: str | None = None


@dataclass(frozen=True)
class PolicyDecision:
    decision: Decision
    reasons: tuple[Reason, ...] = field(default_factory=tuple)
    rules_version: str = ""

    @classmethod
    def from_reasons(cls, reasons: list[Reason], rules_version: str) -> PolicyDecision:
        decision: Decision = max(
            (r.decision for r in reasons), key=_RANK.__getitem__, default="allow"
        )
        return cls(decision, tuple(reasons), rules_version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reasons": [asdict(r) for r in self.reasons],
            "rules_version": self.rules_version,
        }

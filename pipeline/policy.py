"""Prompt policy with the protected-asset catalogue. DESIGN.md keeps features apart, so this
is where the two meet: it reads the catalogue (reference_index) and the variant's licence
(generation) and hands them to review.policy as plain data.

The prompt_check stage, `POST /v1/policy/check` and `clearance policy check` all call
`check_prompts`, so a prompt gets the same decision wherever it is asked about.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.settings import PolicySettings, Settings
from generation.variants import VARIANTS, get_variant
from reference_index.models import ProtectedAsset
from review.policy import PolicyEngine, rules_from_settings
from review.schemas import (
    CatalogueEntry,
    PolicyDecision,
    PolicyRequest,
    PolicyRules,
    Use,
    VariantLicence,
)


@dataclass(frozen=True)
class PromptRequest:
    prompt: str
    variant: str
    use: Use
    tenant: str | None = None


def licence_for(variant_name: str) -> VariantLicence:
    """What policy needs of a variant's licence; an unknown variant is refused naming the
    field and the valid ones."""
    variant = get_variant(variant_name)
    return VariantLicence(
        variant=variant.name,
        licence_id=variant.licence_id,
        licence_name=variant.licence_name,
        commercial_use=variant.commercial_use,
        commercial_alternatives=tuple(v.name for v in VARIANTS.values() if v.commercial_use),
    )


def catalogue_entries(session: Session) -> list[CatalogueEntry]:
    """Every protected asset, as prompt policy sees it, in a stable order."""
    rows = session.execute(
        select(
            ProtectedAsset.id,
            ProtectedAsset.name,
            ProtectedAsset.kind,
            ProtectedAsset.aliases,
            ProtectedAsset.description,
        ).order_by(ProtectedAsset.id)
    )
    return [
        CatalogueEntry(
            id=asset_id,
            name=name,
            kind=kind,
            aliases=tuple(aliases or ()),
            description=description or "",
        )
        for asset_id, name, kind, aliases, description in rows
    ]


class _Engines:
    """One compiled engine per process, rebuilt when the rule file, the settings' terms or
    the catalogue change (building compiles thousands of names and embeds every
    description, so it is not done per prompt)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engine: PolicyEngine | None = None
        self._semantic = False  # whether _engine has the description matcher
        self._rules: tuple[tuple[object, ...], PolicyRules] | None = None

    def rules(self, settings: PolicySettings) -> PolicyRules:
        key = (
            _stat(settings.rules_file),
            settings.rules_file,
            tuple(settings.blocklist),
            tuple(settings.review_terms),
        )
        if self._rules is None or self._rules[0] != key:
            self._rules = (key, rules_from_settings(settings))
        return self._rules[1]

    def get(self, settings: PolicySettings, catalogue: list[CatalogueEntry]) -> PolicyEngine:
        with self._lock:
            rules = self.rules(settings)
            engine = self._engine
            if (
                engine is None
                or not engine.is_current(rules, catalogue)
                or self._semantic != settings.semantic
            ):
                engine = PolicyEngine.build(rules, catalogue, semantic=settings.semantic)
                self._engine, self._semantic = engine, settings.semantic
            return engine


def _stat(path: Path | None) -> tuple[int, int] | None:
    """A changed rule file is read again (its mtime and size)."""
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None  # loading it will say what is wrong
    return stat.st_mtime_ns, stat.st_size


_engines = _Engines()


def check_prompts(
    requests: list[PromptRequest], *, session: Session, settings: Settings
) -> list[PolicyDecision]:
    """Decisions for prompts, in order. Every request is validated (variant, use, prompt:
    an error names the field) before any is judged."""
    policy_requests = [
        PolicyRequest(r.prompt, licence_for(r.variant), r.use, r.tenant) for r in requests
    ]
    engine = _engines.get(settings.policy, catalogue_entries(session))
    return engine.check_many(policy_requests)


def check_prompt(request: PromptRequest, *, session: Session, settings: Settings) -> PolicyDecision:
    return check_prompts([request], session=session, settings=settings)[0]

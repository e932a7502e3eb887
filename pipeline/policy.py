"""Prompt policy with the protected-asset catalogue. DESIGN.md keeps features apart, so this
is where the two meet: it reads the catalogue (reference_index) and the variant's licence
(generation) and hands them to review.policy as plain data.

The prompt_check stage, `POST /v1/policy/check` and `clearance policy check` all call
`check_prompts`, so a prompt gets the same decision wherever it is asked about.

The rules are the rule file plus each tenant's own overrides, kept in the database and set
by the tenant's admin (`PUT /v1/admin/rules`, `set_tenant_override`). A stored override that
no longer fits the rule file (a rule it names was removed or locked since) fails that
tenant's prompt checks, naming the line, and no one else's.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit import service as audit
from core.db import locked_or_added, utcnow
from core.settings import PolicySettings, Settings
from generation.variants import VARIANTS, get_variant
from reference_index.models import ProtectedAsset
from review.errors import RulesFileError
from review.models import TenantPolicyOverride
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
    """Every protected asset, as prompt policy sees it, in a stable order; a tenant's own
    assets carry its id, and the engine matches them in that tenant's prompts only."""
    rows = session.execute(
        select(
            ProtectedAsset.id,
            ProtectedAsset.name,
            ProtectedAsset.kind,
            ProtectedAsset.aliases,
            ProtectedAsset.description,
            ProtectedAsset.tenant_id,
        ).order_by(ProtectedAsset.id)
    )
    return [
        CatalogueEntry(
            id=asset_id,
            name=name,
            kind=kind,
            aliases=tuple(aliases or ()),
            description=description or "",
            tenant=tenant_id,
        )
        for asset_id, name, kind, aliases, description, tenant_id in rows
    ]


@dataclass(frozen=True)
class LoadedRules:
    rules: PolicyRules
    # Tenant id -> why its stored override no longer loads (its prompts are refused).
    broken: dict[str, RulesFileError]


def _load_rules(settings: PolicySettings, overrides: dict[str, str]) -> LoadedRules:
    """The rules with every tenant override that loads; a bad one is set aside, named."""
    good = dict(overrides)
    broken: dict[str, RulesFileError] = {}
    while True:
        try:
            return LoadedRules(rules_from_settings(settings, good), broken)
        except RulesFileError as e:
            tenant = e.extra.get("tenant")
            if tenant not in good:
                raise  # the rule file itself
            broken[tenant] = e
            del good[tenant]


def _override_revisions(session: Session) -> tuple[tuple[str, int], ...]:
    rows = session.execute(
        select(TenantPolicyOverride.tenant_id, TenantPolicyOverride.revision).order_by(
            TenantPolicyOverride.tenant_id
        )
    )
    return tuple((tenant_id, revision) for tenant_id, revision in rows)


def _override_sources(session: Session) -> dict[str, str]:
    rows = session.execute(select(TenantPolicyOverride.tenant_id, TenantPolicyOverride.source))
    return dict(rows.tuples().all())


class _Engines:
    """One compiled engine per process, rebuilt when the rule file, the settings' terms, a
    tenant's override or the catalogue change (building compiles thousands of names and
    embeds every description, so it is not done per prompt)."""

    def __init__(self) -> None:
        # Reentrant: `get` holds it and calls `rules`, which the admin API also calls alone.
        self._lock = threading.RLock()
        self._engine: PolicyEngine | None = None
        self._semantic = False  # whether _engine has the description matcher
        self._rules: tuple[tuple[object, ...], LoadedRules] | None = None

    def rules(self, settings: PolicySettings, session: Session) -> LoadedRules:
        key = (
            _stat(settings.rules_file),
            settings.rules_file,
            tuple(settings.blocklist),
            tuple(settings.review_terms),
            _override_revisions(session),
        )
        with self._lock:
            if self._rules is None or self._rules[0] != key:
                self._rules = (key, _load_rules(settings, _override_sources(session)))
            return self._rules[1]

    def get(
        self, settings: PolicySettings, catalogue: list[CatalogueEntry], session: Session
    ) -> tuple[PolicyEngine, LoadedRules]:
        with self._lock:
            loaded = self.rules(settings, session)
            rules = loaded.rules
            engine = self._engine
            if (
                engine is None
                or not engine.is_current(rules, catalogue)
                or self._semantic != settings.semantic
            ):
                engine = PolicyEngine.build(rules, catalogue, semantic=settings.semantic)
                self._engine, self._semantic = engine, settings.semantic
            return engine, loaded


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
    engine, loaded = _engines.get(settings.policy, catalogue_entries(session), session)
    for request in requests:
        broken = loaded.broken.get(request.tenant or "")
        if broken is not None:
            raise RulesFileError(
                "this tenant's policy override no longer fits the rule file, so its prompts "
                f"cannot be judged; its admin must replace it (PUT /v1/admin/rules): "
                f"{broken.detail}",
                field="rules",
            )
    return engine.check_many(policy_requests)


def check_prompt(request: PromptRequest, *, session: Session, settings: Settings) -> PolicyDecision:
    return check_prompts([request], session=session, settings=settings)[0]


# --- a tenant's own overrides ----------------------------------------------------------------

# An override is a short YAML document; anything longer is a mistake, not a policy.
MAX_OVERRIDE_CHARS = 64 * 1024


def current_rules(*, session: Session, settings: Settings) -> PolicyRules:
    """The rules prompt checks use now (the version decisions are recorded under)."""
    return _engines.rules(settings.policy, session).rules


def tenant_override(*, session: Session, tenant_id: str) -> TenantPolicyOverride | None:
    return session.get(TenantPolicyOverride, tenant_id)


def set_tenant_override(
    *, session: Session, settings: Settings, tenant_id: str, source: str, actor: str
) -> tuple[TenantPolicyOverride, PolicyRules]:
    """Replace a tenant's own overrides with `source` (YAML, one entry of the rule file's
    `tenants:`), validated against the rule file with the loader prompt checks use: errors
    name the line and the field; a locked rule is refused. Records the new rules version;
    returns the stored override and the rules it makes."""
    if len(source) > MAX_OVERRIDE_CHARS:
        raise RulesFileError(
            f"the override is {len(source)} characters; at most {MAX_OVERRIDE_CHARS}",
            field="yaml",
        )
    overrides = _override_sources(session) | {tenant_id: source}
    loaded = _load_rules(settings.policy, overrides)
    if tenant_id in loaded.broken:
        raise loaded.broken[tenant_id]
    row = locked_or_added(
        session,
        select(TenantPolicyOverride).where(TenantPolicyOverride.tenant_id == tenant_id),
        lambda: TenantPolicyOverride(
            tenant_id=tenant_id,
            source=source,
            revision=0,
            rules_version=loaded.rules.version,
            updated_by=actor,
        ),
    )
    row.source = source
    row.revision += 1
    row.rules_version = loaded.rules.version
    row.updated_by = actor
    row.updated_at = utcnow()
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant_id,
        type="policy.override_set",
        subject=f"policy:{tenant_id}",
        payload={
            "revision": row.revision,
            "rules_version": row.rules_version,
            "sha256": hashlib.sha256(source.encode()).hexdigest(),
            "yaml": source,
        },
    )
    return row, loaded.rules

"""Prompt policy: decide allow | review | block for a prompt, the variant and the intended use,
with every reason that fired. Matching runs on normalised text; reasons quote the original.

Build a `PolicyEngine` once from the rules and the protected-asset catalogue (it compiles the
name and term automaton and embeds the descriptions) and reuse it for every prompt:

    engine = PolicyEngine.build(rules_from_settings(settings.policy), catalogue_entries)
    decision = engine.check(prompt, licence=licence, use="commercial", tenant="acme")

The stages: the licence of the variant; category terms (sexual content, minors, gore, and
the extra terms of settings and tenants); names and aliases of protected assets, exact and
misspelt; then, in one batched model pass, descriptions of protected assets. The strictest
reason decides; a tenant's overrides from the rule file apply last, except to locked rules.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from core.errors import choices
from core.settings import PolicySettings
from review.errors import PolicyInputError
from review.matchers import FuzzyMatcher, Hit, PhraseMatcher, Words, known_words
from review.normalise import Normalised, normalise, normalise_with_spans
from review.rules import load_rules
from review.schemas import (
    USES,
    CatalogueEntry,
    Decision,
    PolicyDecision,
    PolicyRequest,
    PolicyRules,
    Reason,
    Use,
    VariantLicence,
    strictest,
)
from review.semantic import Described, DescriptionMatcher, load_encoder


def rules_from_settings(
    settings: PolicySettings, tenant_overrides: Mapping[str, str] | None = None
) -> PolicyRules:
    """The rule file named in settings (default: the packaged one) with the settings'
    blocklist and review terms, and the tenants' own overrides, merged in."""
    return load_rules(
        settings.rules_file,
        blocklist=settings.blocklist,
        review_terms=settings.review_terms,
        tenant_overrides=tenant_overrides,
    )


def catalogue_version(catalogue: Sequence[CatalogueEntry]) -> str:
    """A content hash of the catalogue: an engine built from another one must be rebuilt."""
    if not catalogue:
        return ""
    body = json.dumps(sorted((asdict(e) for e in catalogue), key=lambda e: e["id"]))
    return "catalogue-" + hashlib.sha256(body.encode()).hexdigest()[:12]


def term_key(term: str) -> str:
    """A term as matched: normalised, keeping a final * (prefix match)."""
    prefix = term.rstrip().endswith("*")
    return normalise(term.rstrip(" *")) + ("*" if prefix else "")


@dataclass(frozen=True)
class _Name:
    asset: int
    # The name or alias as the catalogue writes it, and normalised.
    key: str
    term: str
    # An ordinary word ("sonic"): it names the asset only when capitalised.
    ordinary: bool


@dataclass(frozen=True)
class _Term:
    term_set: str
    term: str


@dataclass(frozen=True)
class _Finding:
    """A reason before the tenant's overrides and the quoting of the original text."""

    rule: str
    decision: Decision
    detail: str
    span: tuple[int, int] | None = None
    asset: str | None = None
    score: float | None = None
    term: str | None = None
    locked: bool = False


@dataclass(frozen=True)
class _Prompt:
    request: PolicyRequest
    normalised: Normalised
    words: Words


class PolicyEngine:
    """Rules and catalogue compiled once; `check` is then safe to call from any thread."""

    def __init__(
        self,
        rules: PolicyRules,
        catalogue: Sequence[CatalogueEntry],
        *,
        semantic: bool,
    ) -> None:
        self.rules = rules
        self.catalogue = tuple(catalogue)
        self.catalogue_version = catalogue_version(catalogue)
        keys = [
            (i, key, normalise(key))
            for i, entry in enumerate(self.catalogue)
            for key in dict.fromkeys((entry.name, *entry.aliases))
        ]
        names = [
            (term, _Name(i, key, term, term in rules.ordinary_words))
            for i, key, term in keys
            if term
        ]
        terms = [
            (term_key(term), _Term(set_name, term_key(term)))
            for set_name, set_terms in rules.term_sets.items()
            for term in set_terms
        ]
        self._names = PhraseMatcher(names)
        self._terms = PhraseMatcher(terms)
        self._fuzzy = FuzzyMatcher(names, rules.fuzzy, known_words() | rules.ordinary_words)
        described = [i for i, e in enumerate(self.catalogue) if e.description.strip()]
        self._described_assets = described
        self._descriptions = (
            DescriptionMatcher(
                load_encoder(), [self.catalogue[i].description for i in described], rules.semantic
            )
            if semantic and described
            else None
        )
        self._allow_terms = {
            tenant: frozenset(term_key(t) for t in override.allow_terms)
            for tenant, override in rules.tenants.items()
        }

    @classmethod
    def build(
        cls,
        rules: PolicyRules,
        catalogue: Sequence[CatalogueEntry] = (),
        *,
        semantic: bool = True,
    ) -> PolicyEngine:
        """`semantic=False` leaves out the description matcher (and the model)."""
        return cls(rules, catalogue, semantic=semantic)

    @property
    def rules_version(self) -> str:
        return self.rules.version

    def is_current(self, rules: PolicyRules, catalogue: Sequence[CatalogueEntry]) -> bool:
        """Whether this engine was built from these rules and this catalogue."""
        return (
            rules.version == self.rules.version
            and catalogue_version(catalogue) == self.catalogue_version
        )

    def check(
        self, prompt: str, *, licence: VariantLicence, use: Use, tenant: str | None = None
    ) -> PolicyDecision:
        return self.check_many([PolicyRequest(prompt, licence, use, tenant)])[0]

    def check_many(self, requests: Sequence[PolicyRequest]) -> list[PolicyDecision]:
        """Decisions for several prompts; the semantic matcher embeds them in one batch.
        Raises PolicyInputError (naming the field) before anything runs if any request
        is invalid.

        The semantic matcher skips prompts the rules already block: it can only add a
        review, which changes nothing then, and the model is nearly all of the cost."""
        prompts = [self._prepare(request) for request in requests]
        findings = [self._rules_stage(p) for p in prompts]
        reasons = [
            [self._reason(p, f) for f in found] for p, found in zip(prompts, findings, strict=True)
        ]
        if self._descriptions is not None:
            pending = [
                i for i, r in enumerate(reasons) if strictest([x.decision for x in r]) != "block"
            ]
            matched = self._descriptions.match([prompts[i].normalised for i in pending])
            for i, described in zip(pending, matched, strict=True):
                prompt = prompts[i]
                found = self._described(prompt, findings[i], described)
                reasons[i] += [self._reason(prompt, f) for f in found]
        return [
            PolicyDecision.from_reasons(r, self.rules.version, self.catalogue_version)
            for r in reasons
        ]

    # --- stages ------------------------------------------------------------------------------

    def _prepare(self, request: PolicyRequest) -> _Prompt:
        prompt = request.prompt
        if not isinstance(prompt, str):
            raise PolicyInputError(
                f"prompt must be text, not {type(prompt).__name__}", field="prompt"
            )
        if not prompt.strip():
            raise PolicyInputError("prompt is empty", field="prompt")
        limit = self.rules.max_prompt_chars
        if len(prompt) > limit:
            raise PolicyInputError(
                f"prompt is {len(prompt)} characters; at most {limit} are allowed",
                field="prompt",
                limit=limit,
            )
        if request.use not in USES:
            raise PolicyInputError(
                f"use {request.use!r} is not one of {choices(USES)}", field="use"
            )
        normalised = normalise_with_spans(prompt)
        return _Prompt(request, normalised, Words.of(normalised, prompt))

    def _rules_stage(self, prompt: _Prompt) -> list[_Finding]:
        found = self._licence(prompt.request)
        terms: dict[str, list[Hit[_Term]]] = defaultdict(list)
        for hit in self._terms.find(prompt.words):
            terms[hit.target.term_set].append(hit)
        found += self._categories(prompt, terms)
        named, exact_words = self._named(prompt)
        found += named
        found += self._misspelt(prompt, {f.asset for f in named}, exact_words)
        return found

    def _licence(self, request: PolicyRequest) -> list[_Finding]:
        licence = request.licence
        if request.use != "commercial" or licence.commercial_use:
            return []
        alternatives = choices(licence.commercial_alternatives)
        return [
            _Finding(
                "licence.non_commercial",
                "block",
                f"variant {licence.variant!r} is under the {licence.licence_name}, which does "
                f"not allow commercial use; use {alternatives} for commercial work",
            )
        ]

    def _categories(self, prompt: _Prompt, terms: dict[str, list[Hit[_Term]]]) -> list[_Finding]:
        words = prompt.words.words
        negations = self.rules.negations

        def counted(hits: list[Hit[_Term]], locked: bool) -> list[Hit[_Term]]:
            if locked:
                return hits
            return [
                h
                for h in hits
                if negations.isdisjoint(words[max(0, h.first_word - 2) : h.first_word])
            ]

        found: list[_Finding] = []
        if not terms:
            return found
        for rule in self.rules.categories:
            if rule.tenant not in (None, prompt.request.tenant):
                continue
            primary = [h for s in rule.terms for h in counted(terms.get(s, []), rule.locked)]
            required = [h for s in rule.requires for h in counted(terms.get(s, []), rule.locked)]
            if not primary or (rule.requires and not required):
                continue
            together = f" together with {required[0].target.term!r}" if required else ""
            seen = set()
            for hit in primary:
                if (hit.start, hit.end) in seen:
                    continue
                seen.add((hit.start, hit.end))
                found.append(
                    _Finding(
                        rule.id,
                        rule.decision,
                        f"{rule.detail}: the prompt contains {hit.target.term!r}{together}",
                        span=(hit.start, hit.end),
                        term=hit.target.term,
                        locked=rule.locked,
                    )
                )
        return found

    def _named(self, prompt: _Prompt) -> tuple[list[_Finding], set[int]]:
        """Names and aliases, per asset the longest matches only ("Mickey Mouse", not also
        "Mickey" inside it); and the words they cover."""
        hits = [
            hit
            for hit in self._names.find(prompt.words)
            if (not hit.target.ordinary or prompt.words.capitalised[hit.first_word])
            and self._visible(hit.target.asset, prompt)
        ]
        found = []
        seen = set()
        for hit in hits:
            # Two keys of one asset can match the same words ("Spider-Man", "Spiderman").
            if (hit.target.asset, hit.start, hit.end) in seen:
                continue
            seen.add((hit.target.asset, hit.start, hit.end))
            inside_longer = any(
                other is not hit
                and other.target.asset == hit.target.asset
                and other.start <= hit.start
                and hit.end <= other.end
                and other.end - other.start > hit.end - hit.start
                for other in hits
            )
            if inside_longer:
                continue
            entry = self.catalogue[hit.target.asset]
            key = hit.target.key
            called = f"{entry.name!r}" + (f" (as {key!r})" if key != entry.name else "")
            found.append(
                _Finding(
                    "asset.name",
                    self._decision_for(entry),
                    f"the prompt names {called}, {self._described_as(entry)}",
                    span=(hit.start, hit.end),
                    asset=entry.id,
                    term=hit.target.term,
                )
            )
        words = {i for hit in hits for i in range(hit.first_word, hit.end_word)}
        return found, words

    def _misspelt(
        self, prompt: _Prompt, named: set[str | None], exact_words: set[int]
    ) -> list[_Finding]:
        best: dict[int, tuple[int, _Finding]] = {}
        fuzzy = self.rules.fuzzy
        original = prompt.request.prompt
        for found in self._fuzzy.find(prompt.words, exact_words):
            hit = found.hit
            entry = self.catalogue[hit.target.asset]
            if entry.id in named or not self._visible(hit.target.asset, prompt):
                continue
            decision = (
                "review" if found.edits >= fuzzy.review_from_edits else self._decision_for(entry)
            )
            quoted = prompt.normalised.original(original, hit.start, hit.end)
            plural = "s" if found.edits > 1 else ""
            finding = _Finding(
                "asset.misspelled_name",
                decision,
                f"{quoted!r} is {found.edits} edit{plural} from {hit.target.key!r}, a name of "
                f"{entry.name!r}: {self._described_as(entry)}",
                span=(hit.start, hit.end),
                asset=entry.id,
                score=found.similarity,
                term=hit.target.term,
            )
            if hit.target.asset not in best or found.edits < best[hit.target.asset][0]:
                best[hit.target.asset] = (found.edits, finding)
        return [finding for _, finding in best.values()]

    def _described(
        self, prompt: _Prompt, found: list[_Finding], described: list[Described]
    ) -> list[_Finding]:
        """Descriptions of assets the prompt has not already named."""
        named = {f.asset for f in found}
        semantic = self.rules.semantic
        findings = []
        for match in described:
            entry = self.catalogue[self._described_assets[match.index]]
            if entry.id in named or not self._visible(self._described_assets[match.index], prompt):
                continue
            findings.append(
                _Finding(
                    "asset.description",
                    semantic.decision,
                    f"the prompt describes {entry.name!r} without naming it ({entry.kind}): "
                    f"similarity {match.score:.2f} to its catalogue description, "
                    f"{match.features} of its features",
                    span=(match.start, match.end),
                    asset=entry.id,
                    score=match.score,
                )
            )
        return findings

    # --- helpers -----------------------------------------------------------------------------

    def _visible(self, asset: int, prompt: _Prompt) -> bool:
        """A tenant's own asset is matched in that tenant's prompts only: another tenant's
        prompt never sees its name in a reason."""
        return self.catalogue[asset].tenant in (None, prompt.request.tenant)

    def _decision_for(self, entry: CatalogueEntry) -> Decision:
        return self.rules.name_decisions.get(entry.kind, self.rules.other_kinds)

    @staticmethod
    def _described_as(entry: CatalogueEntry) -> str:
        if entry.kind == "person":
            return "a real person: a likeness needs a review"
        return f"a protected {entry.kind}"

    def _reason(self, prompt: _Prompt, finding: _Finding) -> Reason:
        """The finding, quoting the original text, after the tenant's overrides."""
        decision, detail = finding.decision, finding.detail
        tenant = prompt.request.tenant
        override = self.rules.tenants.get(tenant) if tenant is not None else None
        if tenant is not None and override is not None and not finding.locked:
            lifted = override.decisions.get(finding.rule)
            if lifted is None and (
                finding.term in self._allow_terms[tenant] or finding.asset in override.allow_assets
            ):
                lifted = "allow"
            if lifted is not None and lifted != decision:
                decision = lifted
                detail += f" ({lifted} for tenant {tenant!r}, by the rule file)"
        matched = None
        if finding.span is not None:
            matched = prompt.normalised.original(prompt.request.prompt, *finding.span)
        return Reason(finding.rule, decision, detail, matched, finding.asset, finding.score)

"""Rule files: versioned YAML, validated at load. A bad file is a `RulesFileError` naming the
file, the line and the field; nothing half-loaded is ever used.

The settings' `blocklist` and `review_terms` are merged in as two more rules, `blocklist` and
`review_terms`; each tenant's `block_terms` and `review_terms` as `tenant.block_terms` and
`tenant.review_terms`, which fire for that tenant only.

A tenant's admin may keep overrides of its own (`tenant_overrides`, stored in the database):
a YAML mapping in the form of one entry under `tenants:`, validated like the file (errors
name the line of that YAML) and merged with the file's entry for the tenant, whose
decisions win. Either way a locked rule can never be lifted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import choices
from review.errors import RulesFileError
from review.schemas import (
    CategoryRule,
    Decision,
    FuzzyRules,
    PolicyRules,
    SemanticRules,
    TenantOverride,
)

DEFAULT_RULES_FILE = Path(__file__).with_name("rules") / "default.yaml"

# Rule ids the engine gives its own reasons; a tenant may override any of them but the locked.
ENGINE_RULES = (
    "asset.name",
    "asset.misspelled_name",
    "asset.description",
    "blocklist",
    "review_terms",
)
_RESERVED_PREFIXES = ("asset.", "licence.", "tenant.")
_RESERVED_IDS = ("blocklist", "review_terms")
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Category(_Model):
    id: str = Field(pattern=r"^[a-z][a-z0-9_.-]*$")
    decision: Decision
    detail: str = Field(min_length=1)
    terms: list[str] = Field(min_length=1)
    requires: list[str] = Field(default_factory=list)
    locked: bool = False


class _Fuzzy(_Model):
    max_edit_ratio: float = Field(ge=0, le=0.5)
    min_length: int = Field(ge=3)
    review_from_edits: int = Field(ge=1)


class _Description(_Model):
    decision: Decision
    min_score: float = Field(ge=-1, le=1)
    min_score_with_features: float = Field(ge=-1, le=1)
    feature_score: float = Field(ge=-1, le=1)
    min_features: int = Field(ge=1)


class _Assets(_Model):
    name: dict[str, Decision]
    other_kinds: Decision
    ordinary_words: list[str] = Field(default_factory=list)
    fuzzy: _Fuzzy
    description: _Description


class _Tenant(_Model):
    allow_terms: list[str] = Field(default_factory=list)
    allow_assets: list[str] = Field(default_factory=list)
    decisions: dict[str, Decision] = Field(default_factory=dict)
    block_terms: list[str] = Field(default_factory=list)
    review_terms: list[str] = Field(default_factory=list)


class _RuleFile(_Model):
    version: str = Field(min_length=1)
    max_prompt_chars: int = Field(ge=1)
    negations: list[str] = Field(default_factory=list)
    terms: dict[str, list[str]]
    categories: list[_Category]
    assets: _Assets
    tenants: dict[str, _Tenant] = Field(default_factory=dict)


def load_rules(
    path: Path | None = None,
    *,
    blocklist: Sequence[str] = (),
    review_terms: Sequence[str] = (),
    tenant_overrides: Mapping[str, str] | None = None,
) -> PolicyRules:
    """The rule file at `path` (default: the one shipped in the package), with the extra
    terms of settings and the tenants' own overrides (tenant id -> YAML) merged in. Its
    version is the file's `version` plus a hash of all of it, so an edit that forgets to bump
    `version`, or a tenant's new override, still gives a new one. A bad override raises a
    `RulesFileError` with `tenant` (its id) and the line in that override."""
    path = path or DEFAULT_RULES_FILE
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RulesFileError(f"cannot read rule file {path}: {e}", field="rules_file") from e
    try:
        root = yaml.compose(source, Loader=yaml.SafeLoader)
        data = yaml.safe_load(source)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise _error(path, line, "", f"not valid YAML: {e}") from e
    try:
        parsed = _RuleFile.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = tuple(first["loc"])
        raise _error(path, _line(root, loc), _dotted(loc), first["msg"]) from e
    problem = _check(parsed)
    if problem is not None:
        loc, message = problem
        raise _error(path, _line(root, loc), _dotted(loc), message)
    if tenant_overrides:
        tenants = dict(parsed.tenants)
        for tenant_id, override_source in sorted(tenant_overrides.items()):
            override = _parse_override(override_source, parsed, tenant_id)
            tenants[tenant_id] = _merge(override, parsed.tenants.get(tenant_id))
        parsed = parsed.model_copy(update={"tenants": tenants})
    # Sorted: the order of the terms changes nothing, so it must not change the version.
    extra = {"blocklist": sorted(blocklist), "review_terms": sorted(review_terms)}
    if any(not term.strip() for terms in extra.values() for term in terms):
        raise RulesFileError("extra terms from settings must not be blank", field="policy")
    return _rules(parsed, extra)


def _parse_override(source: str, parsed: _RuleFile, tenant_id: str) -> _Tenant:
    """A tenant's own override, checked against the rule file it applies to."""

    def error(line: int | None, loc: Loc, message: str) -> RulesFileError:
        at = f"line {line}: " if line is not None else ""
        where = f"{_dotted(loc)}: " if loc else ""
        extra: dict[str, Any] = {"line": line} if line is not None else {}
        return RulesFileError(
            f"tenant override: {at}{where}{message}", field="yaml", tenant=tenant_id, **extra
        )

    try:
        root = yaml.compose(source, Loader=yaml.SafeLoader)
        data = yaml.safe_load(source)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise error(mark.line + 1 if mark is not None else None, (), f"not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(
            _line(root, ()),
            (),
            f"expected a mapping of {choices(sorted(_Tenant.model_fields))}",
        )
    try:
        override = _Tenant.model_validate(data)
    except ValidationError as e:
        loc = tuple(e.errors()[0]["loc"])
        message = e.errors()[0]["msg"]
        if e.errors()[0]["type"] == "extra_forbidden":
            message += f"; valid keys: {choices(sorted(_Tenant.model_fields))}"
        raise error(_line(root, loc), loc, message) from e
    problem = _check_tenant(override, parsed, ())
    if problem is not None:
        loc, message = problem
        raise error(_line(root, loc), loc, message)
    return override


def _merge(override: _Tenant, operator: _Tenant | None) -> _Tenant:
    """The tenant's override with the rule file's entry for it: terms and assets of both,
    and the file's decision where both decide a rule."""
    if operator is None:
        return override

    def both(a: list[str], b: list[str]) -> list[str]:
        return list(dict.fromkeys([*a, *b]))

    return _Tenant(
        allow_terms=both(override.allow_terms, operator.allow_terms),
        allow_assets=both(override.allow_assets, operator.allow_assets),
        decisions={**override.decisions, **operator.decisions},
        block_terms=both(override.block_terms, operator.block_terms),
        review_terms=both(override.review_terms, operator.review_terms),
    )


def _rules(parsed: _RuleFile, extra: dict[str, list[str]]) -> PolicyRules:
    term_sets = {
        name: tuple(t for term in terms for t in _expand(term))
        for name, terms in parsed.terms.items()
    }
    categories = [
        CategoryRule(c.id, c.decision, c.detail, tuple(c.terms), tuple(c.requires), c.locked)
        for c in parsed.categories
    ]
    settings_rules: list[tuple[str, Decision, str]] = [
        ("blocklist", "block", "a blocked term (policy settings)"),
        ("review_terms", "review", "a term that needs a human review (policy settings)"),
    ]
    for rule_id, decision, detail in settings_rules:
        term_sets[rule_id] = tuple(extra[rule_id])
        categories.append(CategoryRule(rule_id, decision, detail, (rule_id,)))
    tenants = {}
    for name, tenant in parsed.tenants.items():
        tenant_rules: list[tuple[str, Decision, str, list[str]]] = [
            ("block_terms", "block", "blocked", tenant.block_terms),
            ("review_terms", "review", "sent to review", tenant.review_terms),
        ]
        for kind, decision, done, terms in tenant_rules:
            if terms:
                set_name = f"tenant.{name}.{kind}"
                term_sets[set_name] = tuple(terms)
                detail = f"a term tenant {name!r} has {done}"
                categories.append(
                    CategoryRule(f"tenant.{kind}", decision, detail, (set_name,), tenant=name)
                )
        tenants[name] = TenantOverride(
            allow_terms=frozenset(tenant.allow_terms),
            allow_assets=frozenset(tenant.allow_assets),
            decisions=dict(tenant.decisions),
        )
    content = json.dumps([parsed.model_dump(), extra], sort_keys=True)
    digest = hashlib.sha256(content.encode()).hexdigest()[:12]
    assets = parsed.assets
    return PolicyRules(
        version=f"{parsed.version}+{digest}",
        max_prompt_chars=parsed.max_prompt_chars,
        term_sets=term_sets,
        categories=tuple(categories),
        name_decisions=dict(assets.name),
        other_kinds=assets.other_kinds,
        ordinary_words=frozenset(assets.ordinary_words),
        negations=frozenset(parsed.negations),
        fuzzy=FuzzyRules(**assets.fuzzy.model_dump()),
        semantic=SemanticRules(**assets.description.model_dump()),
        tenants=tenants,
    )


def _expand(term: str) -> list[str]:
    """ "{1..17} year old" -> "1 year old", ..., "17 year old"."""
    found = _RANGE.search(term)
    if found is None:
        return [term]
    low, high = int(found.group(1)), int(found.group(2))
    return [t for n in range(low, high + 1) for t in _expand(_RANGE.sub(str(n), term, count=1))]


Loc = tuple[str | int, ...]


def _check(parsed: _RuleFile) -> tuple[Loc, str] | None:
    """What the schema cannot say: references between sections, reserved and locked ids."""
    for name, terms in parsed.terms.items():
        for i, term in enumerate(terms):
            if not term.strip(" *"):
                return ("terms", name, i), "a term must not be blank"
    seen: set[str] = set()
    for i, category in enumerate(parsed.categories):
        if category.id in seen:
            return ("categories", i, "id"), f"duplicate rule id {category.id!r}"
        if category.id.startswith(_RESERVED_PREFIXES) or category.id in _RESERVED_IDS:
            return ("categories", i, "id"), f"rule id {category.id!r} is reserved"
        seen.add(category.id)
        for field in ("terms", "requires"):
            for j, name in enumerate(getattr(category, field)):
                if name not in parsed.terms:
                    valid = choices(sorted(parsed.terms))
                    return ("categories", i, field, j), f"no term set {name!r}; valid: {valid}"
    for tenant_name, tenant in parsed.tenants.items():
        problem = _check_tenant(tenant, parsed, ("tenants", tenant_name))
        if problem is not None:
            return problem
    return None


def _check_tenant(tenant: _Tenant, parsed: _RuleFile, at: Loc) -> tuple[Loc, str] | None:
    """A tenant's terms are not blank; its decisions name rules of the file, never a locked
    one."""
    for field in ("allow_terms", "block_terms", "review_terms"):
        for i, term in enumerate(getattr(tenant, field)):
            if not term.strip(" *"):
                return (*at, field, i), "a term must not be blank"
    locked = {c.id for c in parsed.categories if c.locked}
    known = {c.id for c in parsed.categories} | set(ENGINE_RULES)
    for rule_id in tenant.decisions:
        loc: Loc = (*at, "decisions", rule_id)
        if rule_id in locked:
            return loc, f"rule {rule_id!r} is locked: no tenant override can lift it"
        if rule_id not in known:
            return loc, f"no rule {rule_id!r}; valid: {choices(sorted(known - locked))}"
    return None


def locked_rules(rules: PolicyRules) -> list[str]:
    """Ids of the rules no tenant override can lift."""
    return sorted({c.id for c in rules.categories if c.locked})


def overridable_rules(rules: PolicyRules) -> list[str]:
    """Ids of the rules a tenant's `decisions` may name."""
    known = {c.id for c in rules.categories if c.tenant is None} | set(ENGINE_RULES)
    return sorted(known - set(locked_rules(rules)))


def _line(root: yaml.Node | None, loc: Loc) -> int | None:
    """The line (1-based) of the node at `loc`, or of the deepest node on the way to it
    (a missing key is reported where its mapping is)."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            # A key that is not there yet, or a bad key itself, is reported at the key.
            child = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if part < len(node.value) else None
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _error(path: Path, line: int | None, where: str, message: str) -> RulesFileError:
    at = f"{path}:{line}" if line is not None else str(path)
    detail = f"rule file {at}: {where + ': ' if where else ''}{message}"
    extra: dict[str, Any] = {"line": line} if line is not None else {}
    return RulesFileError(detail, field="rules_file", **extra)

"""HTTP routes for a tenant's admin: API keys, monthly budgets, LoRA adapters and the
tenant's own prompt-policy overrides. Role admin; always the caller's own tenant (no route
takes a tenant). Each change calls the same service function as the CLI and writes an audit
event there.

- Keys: the key itself is in the creation response only; lists show its prefix. A revoked
  key authenticates no more. The tenant's last active admin key cannot be revoked (409):
  without one, nobody of the tenant could manage keys again.
- LoRAs: operators' adapters (`clearance loras register`) serve every tenant and are listed
  read-only. A tenant's admin registers adapters for its own tenant only, named
  "<tenant>:<name>", from a file inside the folder the operator set aside
  (`CLEARANCE_GENERATION__LORA_DIR`), never any other path; with no folder set, only
  operators register adapters.
- Rules: the tenant's override is YAML in the form of one entry under the rule file's
  `tenants:`, validated by the rule-file loader (errors name the line); locked rules (sexual
  content involving minors) can be lifted by no override. It changes prompt policy for this
  tenant only; image checks against the shared catalogue stay as they are.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import auth
from api.deps import Offset, PrincipalDep, ReadSessionDep, SettingsDep
from api.errors import ERRORS
from api.models import ROLES, ApiKey, Tenant
from api.schemas import BudgetOut, Page
from core.db import page, session_scope, utcnow
from generation import costs
from generation import service as generation
from generation.errors import GenerationRequestError
from generation.models import Budget, LoraAdapter
from pipeline import policy
from review.models import TenantPolicyOverride
from review.rules import locked_rules, overridable_rules
from review.schemas import PolicyRules

router = APIRouter()

Role = Literal[tuple(ROLES)]  # type: ignore[valid-type]
Limit = Annotated[int, Query(ge=1, le=500)]
# A name or project as the rest of the API writes them.
_NAME = r"^[a-z0-9][a-z0-9._-]{0,59}$"
_PROJECT = r"^[A-Za-z0-9._-]*$"


# --- keys ------------------------------------------------------------------------------------


class KeyCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role  # type: ignore[valid-type]


class KeyOut(BaseModel):
    id: str
    # The visible start of the key ("clr_<prefix>_..."): how logs and the audit name it.
    prefix: str
    role: str
    created_at: datetime
    revoked: bool
    revoked_at: datetime | None


class KeyCreatedOut(KeyOut):
    # The key itself: shown in this response only, stored hashed.
    key: str


def _key_out(row: ApiKey) -> KeyOut:
    return KeyOut(
        id=row.id,
        prefix=row.prefix,
        role=row.role,
        created_at=row.created_at,
        revoked=row.revoked_at is not None,
        revoked_at=row.revoked_at,
    )


@router.get("/v1/admin/keys", response_model=Page[KeyOut], responses=ERRORS)
def list_keys(
    principal: PrincipalDep, session: ReadSessionDep, offset: Offset = 0, limit: Limit = 50
) -> Page[KeyOut]:
    """The tenant's API keys, revoked ones included, oldest first; never a key or its hash."""
    principal.require("admin")
    rows, total = auth.list_keys(
        session=session, tenant_id=principal.tenant_id, offset=offset, limit=limit
    )
    return Page[KeyOut](items=[_key_out(r) for r in rows], total=total, offset=offset, limit=limit)


@router.post("/v1/admin/keys", status_code=201, response_model=KeyCreatedOut, responses=ERRORS)
def create_key(body: KeyCreateIn, principal: PrincipalDep) -> KeyCreatedOut:
    """A new key of the tenant with this role. The response is the only time the key is
    shown."""
    principal.require("admin")
    with session_scope() as session:
        tenant = session.get_one(Tenant, principal.tenant_id)
        row, key = auth.issue_key(
            session=session, tenant=tenant, role=body.role, actor=principal.actor
        )
        return KeyCreatedOut(**_key_out(row).model_dump(), key=key)


@router.delete("/v1/admin/keys/{key_id}", response_model=KeyOut, responses=ERRORS)
def revoke_key(key_id: str, principal: PrincipalDep) -> KeyOut:
    """Revoke a key of the tenant (by id or prefix); it authenticates no more. 409 for the
    tenant's last active admin key: create another admin key first."""
    principal.require("admin")
    with session_scope() as session:
        row = auth.revoke_key(
            session=session, tenant_id=principal.tenant_id, key_id=key_id, actor=principal.actor
        )
        return _key_out(row)


# --- budgets ---------------------------------------------------------------------------------


class BudgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "" (the default): the whole tenant; otherwise one project (as jobs name it).
    project: str = Field(default="", max_length=100, pattern=_PROJECT)
    monthly_usd: Decimal = Field(ge=0, le=Decimal("99999999"), decimal_places=6)


def _budget_out(session: Session, budget: Budget, start: datetime) -> BudgetOut:
    """A budget with what its tenant (project "") or project spent in the month of `start`."""
    spent = costs.spent(
        session=session, tenant_id=budget.tenant_id, start=start, project=budget.project or None
    )
    return BudgetOut(
        project=budget.project,
        monthly_usd=budget.monthly_usd,
        spent_usd=spent,
        remaining_usd=budget.monthly_usd - spent,
    )


@router.get("/v1/admin/budgets", response_model=Page[BudgetOut], responses=ERRORS)
def list_budgets(
    principal: PrincipalDep,
    session: ReadSessionDep,
    month: str | None = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> Page[BudgetOut]:
    """The tenant's monthly budgets (the tenant's own is project ""), with what was spent in
    `month` (YYYY-MM; default: the current one, UTC)."""
    principal.require("admin")
    start = costs.parse_month(month) if month else costs.month_start(utcnow())
    query = select(Budget).where(Budget.tenant_id == principal.tenant_id)
    rows, total = page(session, query, Budget.project, offset=offset, limit=limit)
    items = [_budget_out(session, budget, start) for budget in rows]
    return Page[BudgetOut](items=items, total=total, offset=offset, limit=limit)


@router.put("/v1/admin/budgets", response_model=BudgetOut, responses=ERRORS)
def set_budget(body: BudgetIn, principal: PrincipalDep) -> BudgetOut:
    """Set the monthly budget of the tenant (project "") or of one of its projects; jobs that
    would pass it are refused with 402 before anything is queued."""
    principal.require("admin")
    with session_scope() as session:
        budget = costs.set_budget(
            session=session,
            tenant_id=principal.tenant_id,
            project=body.project,
            monthly_usd=body.monthly_usd,
            actor=principal.actor,
        )
        return _budget_out(session, budget, costs.month_start(utcnow()))


# --- LoRA adapters ---------------------------------------------------------------------------


class LoraIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Registered as "<tenant>:<name>"; jobs of this tenant ask for it by that name.
    name: str = Field(pattern=_NAME)
    # A .safetensors file inside the adapter folder the operator set aside, relative to it.
    path: str = Field(min_length=1, max_length=1000)
    licence_note: str = Field(min_length=1, max_length=2000)


class LoraOut(BaseModel):
    name: str
    # "shared": an operator's, usable by every tenant; "tenant": this tenant's own.
    scope: Literal["shared", "tenant"]
    sha256: str
    licence_note: str
    # Inside the operator's adapter folder; shown for the tenant's own adapters only.
    path: str | None
    registered_by: str
    registered_at: datetime


def _lora_out(adapter: LoraAdapter, lora_dir: Path | None) -> LoraOut:
    path = None
    if adapter.tenant_id is not None and lora_dir is not None:
        stored = Path(adapter.path)
        folder = lora_dir.resolve()
        path = str(stored.relative_to(folder)) if stored.is_relative_to(folder) else stored.name
    return LoraOut(
        name=adapter.name,
        scope="shared" if adapter.tenant_id is None else "tenant",
        sha256=adapter.sha256,
        licence_note=adapter.licence_note,
        path=path,
        registered_by=adapter.registered_by,
        registered_at=adapter.registered_at,
    )


@router.get("/v1/admin/loras", response_model=Page[LoraOut], responses=ERRORS)
def list_loras(
    principal: PrincipalDep,
    session: ReadSessionDep,
    settings: SettingsDep,
    offset: Offset = 0,
    limit: Limit = 50,
) -> Page[LoraOut]:
    """The adapters the tenant's jobs may use: the operators' and its own, by name."""
    principal.require("admin")
    query = generation.visible_loras(principal.tenant_id)
    rows, total = page(session, query, offset=offset, limit=limit)
    lora_dir = settings.generation.lora_dir
    return Page[LoraOut](
        items=[_lora_out(a, lora_dir) for a in rows], total=total, offset=offset, limit=limit
    )


@router.post("/v1/admin/loras", status_code=201, response_model=LoraOut, responses=ERRORS)
def register_lora(body: LoraIn, principal: PrincipalDep, settings: SettingsDep) -> LoraOut:
    """Register an adapter for the tenant's jobs from a file inside the operator's adapter
    folder (its sha256 is recorded; a file changed later is refused at generation).
    Registering the name again replaces the tenant's adapter."""
    principal.require("admin")
    lora_dir = settings.generation.lora_dir
    if lora_dir is None:
        raise GenerationRequestError(
            "no adapter folder is set (CLEARANCE_GENERATION__LORA_DIR), so only operators "
            "register adapters (`clearance loras register`)",
            field="path",
        )
    with session_scope() as session:
        tenant = session.get_one(Tenant, principal.tenant_id)
        name = f"{tenant.name}:{body.name}"
        if len(name) > 100:
            raise GenerationRequestError(
                f"name {name!r} is {len(name)} characters with the tenant's prefix; at most 100",
                field="name",
            )
        adapter = generation.register_lora(
            session=session,
            name=name,
            path=lora_dir / body.path,
            licence_note=body.licence_note,
            actor=principal.actor,
            tenant_id=principal.tenant_id,
            within=lora_dir,
        )
        return _lora_out(adapter, lora_dir)


# --- prompt-policy rules ---------------------------------------------------------------------


class RulesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # YAML: allow_terms, allow_assets, decisions, block_terms, review_terms (each optional).
    yaml: str = Field(max_length=policy.MAX_OVERRIDE_CHARS)


class RulesOut(BaseModel):
    # The tenant's override as last set ("" when never set) and its revision (0: never).
    yaml: str
    revision: int
    updated_by: str | None
    updated_at: datetime | None
    # The version prompt decisions are recorded under now (rule file and every override).
    rules_version: str
    # Rules `decisions` may name, and those no override can lift.
    overridable_rules: list[str]
    locked_rules: list[str]


def _rules_out(row: TenantPolicyOverride | None, rules: PolicyRules) -> RulesOut:
    return RulesOut(
        yaml=row.source if row else "",
        revision=row.revision if row else 0,
        updated_by=row.updated_by if row else None,
        updated_at=row.updated_at if row else None,
        rules_version=rules.version,
        overridable_rules=overridable_rules(rules),
        locked_rules=locked_rules(rules),
    )


@router.get("/v1/admin/rules", response_model=RulesOut, responses=ERRORS)
def get_rules(principal: PrincipalDep, session: ReadSessionDep, settings: SettingsDep) -> RulesOut:
    """The tenant's own prompt-policy overrides and the rules version in effect."""
    principal.require("admin")
    return _rules_out(
        policy.tenant_override(session=session, tenant_id=principal.tenant_id),
        policy.current_rules(session=session, settings=settings),
    )


@router.put("/v1/admin/rules", response_model=RulesOut, responses=ERRORS)
def set_rules(body: RulesIn, principal: PrincipalDep, settings: SettingsDep) -> RulesOut:
    """Replace the tenant's overrides. Validated like the rule file: an error names the line
    of `yaml` and the field; a locked rule is refused. Records a new rules version."""
    principal.require("admin")
    with session_scope() as session:
        row, rules = policy.set_tenant_override(
            session=session,
            settings=settings,
            tenant_id=principal.tenant_id,
            source=body.yaml,
            actor=principal.actor,
        )
        return _rules_out(row, rules)

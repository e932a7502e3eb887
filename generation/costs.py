"""The cost ledger and monthly budgets.

Every generated image records what it cost: the provider's price per image on the API, or
the seconds spent in the model times the configured GPU rate. A job that would take a
tenant or a project past its monthly budget is refused before it is queued; jobs already
queued but not yet charged count against the budget at their estimate, so a burst of
submissions cannot slip past it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from audit import service as audit
from core.db import locked_or_added
from core.settings import Settings
from generation.errors import BudgetExceededError, GenerationRequestError
from generation.models import Budget, CostEntry
from generation.schemas import GenerationResult, GenerationSpec
from generation.variants import Variant

_MICRO = Decimal("0.000001")


def usd(value: float | Decimal) -> Decimal:
    return Decimal(str(value)).quantize(_MICRO, rounding=ROUND_HALF_UP)


def month_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def parse_month(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise GenerationRequestError(
            f"month {text!r} is not in the form YYYY-MM, e.g. 2026-11", field="month"
        ) from None


def estimate(spec: GenerationSpec, variant: Variant, *, api: bool, settings: Settings) -> Decimal:
    """What the job will cost, before it runs."""
    if api:
        return usd((variant.api_price_usd or 0.0) * spec.n_images)
    steps = spec.steps or variant.default_steps
    megapixels = spec.width * spec.height / 1024**2
    seconds = (
        steps * megapixels * spec.n_images * settings.generation.gpu_seconds_per_step_megapixel
    )
    return usd(seconds * settings.generation.gpu_usd_per_second)


def record(
    *,
    session: Session,
    tenant_id: str,
    project: str,
    job_id: str,
    variant: Variant,
    result: GenerationResult,
    settings: Settings,
) -> list[CostEntry]:
    """One ledger entry per image; the job's model time is shared equally by its images."""
    entries = []
    share = result.seconds / max(1, len(result.images))
    for image in result.images:
        if result.kind == "api":
            amount, seconds = usd(variant.api_price_usd or 0.0), None
        else:
            amount, seconds = usd(share * settings.generation.gpu_usd_per_second), share
        entries.append(
            CostEntry(
                tenant_id=tenant_id,
                project=project,
                job_id=job_id,
                image_index=image.index,
                variant=variant.name,
                kind=result.kind,
                gpu_seconds=seconds,
                amount_usd=amount,
            )
        )
    session.add_all(entries)
    return entries


def spent(
    *, session: Session, tenant_id: str, start: datetime, project: str | None = None
) -> Decimal:
    query = select(func.coalesce(func.sum(CostEntry.amount_usd), 0)).where(
        CostEntry.tenant_id == tenant_id,
        CostEntry.created_at >= start,
        CostEntry.created_at < next_month(start),
    )
    if project is not None:
        query = query.where(CostEntry.project == project)
    return usd(session.scalar(query) or 0)


def check_budgets(
    *,
    session: Session,
    tenant_id: str,
    project: str,
    amount: Decimal,
    reserved: Callable[[], Iterable[tuple[str, Decimal]]],
    now: datetime,
) -> None:
    """Refuse `amount` if it would take the tenant's or the project's month past its budget.
    `reserved()` gives (project, estimate) of the tenant's jobs queued but not yet charged.

    The tenant's budget rows are locked first, so two submissions at once are checked one
    after the other (each sees the other's reservation) instead of both passing."""
    start = month_start(now)
    scopes = ("", project) if project else ("",)
    budgets = {
        budget.project: budget
        for budget in session.scalars(
            select(Budget)
            .where(Budget.tenant_id == tenant_id, Budget.project.in_(scopes))
            .order_by(Budget.project)
            .with_for_update()
        )
    }
    if not budgets:
        return
    pending = list(reserved())
    for scope in scopes:
        budget = budgets.get(scope)
        if budget is None:
            continue
        used = spent(session=session, tenant_id=tenant_id, start=start, project=scope or None)
        held = sum((e for p, e in pending if not scope or p == scope), Decimal(0))
        if used + held + amount > budget.monthly_usd:
            name = f"project {scope!r}" if scope else "the tenant"
            raise BudgetExceededError(
                f"the monthly budget of {name} (${budget.monthly_usd:.2f}) would be exceeded: "
                f"${used:.4f} spent and ${held:.4f} reserved by queued jobs in "
                f"{start:%Y-%m}, this job is estimated at ${amount:.4f}",
                field="project" if scope else "budget",
                budget={"project": scope, "monthly_usd": str(budget.monthly_usd)},
            )


def set_budget(
    *, session: Session, tenant_id: str, project: str, monthly_usd: Decimal, actor: str
) -> Budget:
    if monthly_usd < 0:
        raise GenerationRequestError("a budget cannot be negative", field="monthly_usd")
    budget = locked_or_added(
        session,
        select(Budget).where(Budget.tenant_id == tenant_id, Budget.project == project),
        lambda: Budget(tenant_id=tenant_id, project=project, monthly_usd=usd(monthly_usd)),
    )
    budget.monthly_usd = usd(monthly_usd)
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant_id,
        type="budget.set",
        subject=f"budget:{tenant_id}:{project}",
        payload={"project": project, "monthly_usd": str(usd(monthly_usd))},
    )
    return budget


@dataclass(frozen=True)
class UsageLine:
    project: str
    variant: str
    kind: str
    images: int
    gpu_seconds: float
    amount_usd: Decimal


@dataclass(frozen=True)
class BudgetLine:
    project: str
    monthly_usd: Decimal
    spent_usd: Decimal

    @property
    def remaining_usd(self) -> Decimal:
        return self.monthly_usd - self.spent_usd


@dataclass(frozen=True)
class Usage:
    month: str
    total_usd: Decimal
    lines: list[UsageLine]
    budgets: list[BudgetLine]


def usage(*, session: Session, tenant_id: str, start: datetime) -> Usage:
    rows = session.execute(
        select(
            CostEntry.project,
            CostEntry.variant,
            CostEntry.kind,
            func.count(),
            func.coalesce(func.sum(CostEntry.gpu_seconds), 0.0),
            func.coalesce(func.sum(CostEntry.amount_usd), 0),
        )
        .where(
            CostEntry.tenant_id == tenant_id,
            CostEntry.created_at >= start,
            CostEntry.created_at < next_month(start),
        )
        .group_by(CostEntry.project, CostEntry.variant, CostEntry.kind)
        .order_by(CostEntry.project, CostEntry.variant, CostEntry.kind)
    ).all()
    lines = [UsageLine(p, v, k, int(n), float(s), usd(a)) for p, v, k, n, s, a in rows]
    budgets = [
        BudgetLine(
            b.project,
            b.monthly_usd,
            spent(session=session, tenant_id=tenant_id, start=start, project=b.project or None),
        )
        for b in session.scalars(
            select(Budget).where(Budget.tenant_id == tenant_id).order_by(Budget.project)
        )
    ]
    total = usd(sum((line.amount_usd for line in lines), Decimal(0)))
    return Usage(f"{start:%Y-%m}", total, lines, budgets)

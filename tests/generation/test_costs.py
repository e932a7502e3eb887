"""The cost ledger and monthly budgets, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from api.errors import status_for
from audit.models import AuditEvent
from core.db import read_scope, session_scope
from core.settings import Settings
from generation import costs
from generation.errors import BudgetExceededError, GenerationRequestError
from generation.models import Budget, CostEntry
from generation.schemas import GeneratedImage, GenerationResult, GenerationSpec
from generation.variants import get_variant
from tests.conftest import TenantKeys

NOVEMBER = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


def spec(**changes: Any) -> GenerationSpec:
    base = GenerationSpec(
        prompt="a lighthouse", variant="schnell", width=1024, height=1024, seed=1, n_images=1
    )
    return dataclasses.replace(base, **changes)


def result(kind: str, n: int, seconds: float = 0.0) -> GenerationResult:
    images = [GeneratedImage(i, 100 + i, b"png", 1024, 1024) for i in range(n)]
    return GenerationResult("a model", kind, images, seconds)  # type: ignore[arg-type]


def charge(
    tenant_id: str,
    *,
    amount: str,
    project: str = "",
    variant: str = "schnell",
    kind: str = "local",
    gpu_seconds: float | None = None,
    at: datetime = NOVEMBER,
    job_id: str | None = None,
) -> None:
    """One ledger entry, dated `at`; local entries default to one GPU second."""
    import uuid

    with session_scope() as session:
        session.add(
            CostEntry(
                tenant_id=tenant_id,
                project=project,
                job_id=job_id or uuid.uuid4().hex,
                image_index=0,
                variant=variant,
                kind=kind,
                gpu_seconds=gpu_seconds if gpu_seconds or kind == "api" else 1.0,
                amount_usd=Decimal(amount),
                created_at=at,
            )
        )


def set_budget(tenant_id: str, monthly_usd: str, project: str = "") -> Budget:
    with session_scope() as session:
        return costs.set_budget(
            session=session,
            tenant_id=tenant_id,
            project=project,
            monthly_usd=Decimal(monthly_usd),
            actor="test",
        )


def check(
    tenant_id: str,
    amount: str,
    *,
    project: str = "",
    reserved: list[tuple[str, str]] | None = None,
    now: datetime = NOVEMBER,
) -> None:
    with read_scope() as session:
        costs.check_budgets(
            session=session,
            tenant_id=tenant_id,
            project=project,
            amount=Decimal(amount),
            reserved=lambda: [(p, Decimal(e)) for p, e in reserved or []],
            now=now,
        )


# --- estimates (no database) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "n_images", "expected"),
    [("pro", 3, "0.165"), ("pro-ultra", 2, "0.12"), ("dev", 4, "0.1")],
)
def test_api_estimate_is_the_price_per_image_times_images(
    variant: str, n_images: int, expected: str
) -> None:
    """On the API a job costs the provider's price per image times its images, whatever
    its size or steps."""
    estimate = costs.estimate(
        spec(variant=variant, n_images=n_images, steps=50, width=512, height=512),
        get_variant(variant),
        api=True,
        settings=Settings(),
    )
    assert estimate == Decimal(expected)


def test_local_estimate_is_steps_times_megapixels_times_images_times_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Locally a job is estimated at steps x megapixels x images x seconds per
    step-megapixel x the GPU rate; no steps means the variant's default."""
    monkeypatch.setenv("CLEARANCE_GENERATION__GPU_USD_PER_SECOND", "0.002")
    monkeypatch.setenv("CLEARANCE_GENERATION__GPU_SECONDS_PER_STEP_MEGAPIXEL", "0.5")
    settings = Settings()
    schnell = get_variant("schnell")
    # 4 default steps x 1 MP x 2 images x 0.5 s x $0.002
    assert costs.estimate(spec(n_images=2), schnell, api=False, settings=settings) == Decimal(
        "0.008"
    )
    # 8 steps x 0.25 MP x 1 image x 0.5 s x $0.002
    assert costs.estimate(
        spec(steps=8, width=512, height=512), schnell, api=False, settings=settings
    ) == Decimal("0.002")
    dev = get_variant("dev")
    # 28 default steps x 1 MP x 1 x 0.5 x 0.002
    assert costs.estimate(spec(variant="dev"), dev, api=False, settings=settings) == Decimal(
        "0.028"
    )


# --- the ledger -----------------------------------------------------------------------------


def entries(job_id: str) -> list[CostEntry]:
    with read_scope() as session:
        return list(
            session.scalars(
                select(CostEntry).where(CostEntry.job_id == job_id).order_by(CostEntry.image_index)
            )
        )


def test_record_writes_one_entry_per_image(settings: Settings, tenant: TenantKeys) -> None:
    """One ledger entry per image: on the API the price of one image each; locally the
    job's model seconds shared equally, times the GPU rate."""
    rate = Decimal(str(settings.generation.gpu_usd_per_second))
    with session_scope() as session:
        costs.record(
            session=session,
            tenant_id=tenant.id,
            project="posters",
            job_id="job-local",
            variant=get_variant("schnell"),
            result=result("local", 3, seconds=4.5),
            settings=settings,
        )
        costs.record(
            session=session,
            tenant_id=tenant.id,
            project="",
            job_id="job-api",
            variant=get_variant("pro"),
            result=result("api", 2),
            settings=settings,
        )

    local = entries("job-local")
    assert [(e.image_index, e.kind, e.variant, e.project) for e in local] == [
        (0, "local", "schnell", "posters"),
        (1, "local", "schnell", "posters"),
        (2, "local", "schnell", "posters"),
    ]
    assert [e.gpu_seconds for e in local] == [1.5, 1.5, 1.5]
    assert [e.amount_usd for e in local] == [Decimal("1.5") * rate] * 3
    api = entries("job-api")
    assert [(e.kind, e.gpu_seconds, e.amount_usd) for e in api] == [
        ("api", None, Decimal("0.055")),
        ("api", None, Decimal("0.055")),
    ]
    assert all(e.tenant_id == tenant.id for e in local + api)


def test_an_image_cannot_be_charged_twice(settings: Settings, tenant: TenantKeys) -> None:
    """The ledger itself refuses a second entry for the same image of the same job."""
    with session_scope() as session:
        costs.record(
            session=session,
            tenant_id=tenant.id,
            project="",
            job_id="job-once",
            variant=get_variant("pro"),
            result=result("api", 1),
            settings=settings,
        )
    with pytest.raises(IntegrityError), session_scope() as session:
        costs.record(
            session=session,
            tenant_id=tenant.id,
            project="",
            job_id="job-once",
            variant=get_variant("pro"),
            result=result("api", 1),
            settings=settings,
        )
    assert len(entries("job-once")) == 1


# --- budgets --------------------------------------------------------------------------------


def test_set_budget_creates_then_updates_and_is_audited(
    settings: Settings, tenant: TenantKeys
) -> None:
    """Setting a budget twice keeps one row with the new amount; each change is in the
    audit log; a negative budget is refused on field monthly_usd."""
    set_budget(tenant.id, "5")
    set_budget(tenant.id, "7.5")
    set_budget(tenant.id, "1", project="posters")
    with pytest.raises(GenerationRequestError) as caught:
        set_budget(tenant.id, "-1")
    assert caught.value.field == "monthly_usd"
    with read_scope() as session:
        rows = session.execute(
            select(Budget.project, Budget.monthly_usd).order_by(Budget.project)
        ).all()
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.type == "budget.set").order_by(AuditEvent.seq)
        ).all()
    assert [tuple(r) for r in rows] == [("", Decimal("7.5")), ("posters", Decimal("1"))]
    assert [e.subject for e in events] == [
        f"budget:{tenant.id}:",
        f"budget:{tenant.id}:",
        f"budget:{tenant.id}:posters",
    ]


def test_without_a_budget_anything_goes(settings: Settings, tenant: TenantKeys) -> None:
    """No budget set: no amount is refused."""
    charge(tenant.id, amount="1000")
    check(tenant.id, "1000", project="posters", reserved=[("posters", "1000")])


def test_tenant_budget_counts_spending_reservations_and_the_new_job(
    settings: Settings, tenant: TenantKeys
) -> None:
    """The tenant's budget covers every project: spent + reserved by queued jobs + this
    job may reach the budget, not pass it. Passing it raises BudgetExceededError (HTTP 402)
    on field budget, naming the budget and the figures."""
    set_budget(tenant.id, "1.00")
    charge(tenant.id, amount="0.35", project="posters")
    charge(tenant.id, amount="0.25", project="")
    reserved = [("posters", "0.15"), ("ads", "0.05")]
    check(tenant.id, "0.20", project="ads", reserved=reserved)

    with pytest.raises(BudgetExceededError) as caught:
        check(tenant.id, "0.200001", project="ads", reserved=reserved)
    error = caught.value
    assert status_for(error) == 402
    assert error.code == "budget_exceeded"
    assert error.field == "budget"
    assert error.extra["budget"] == {"project": "", "monthly_usd": "1.000000"}
    assert "the monthly budget of the tenant ($1.00)" in error.detail
    assert "$0.6000 spent and $0.2000 reserved" in error.detail
    assert "2026-11" in error.detail

    # The reservations alone can be what tips it over.
    with pytest.raises(BudgetExceededError):
        check(tenant.id, "0.01", reserved=[("ads", "0.40")])


def test_project_budget_counts_only_its_own_project(settings: Settings, tenant: TenantKeys) -> None:
    """A project's budget counts the project's spending and reservations only; jobs of
    other projects are held to the tenant budget (none here) alone. The error names the
    project, on field project."""
    set_budget(tenant.id, "0.50", project="posters")
    charge(tenant.id, amount="0.30", project="posters")
    charge(tenant.id, amount="5.00", project="ads")
    reserved = [("posters", "0.10"), ("ads", "3.00")]
    check(tenant.id, "0.10", project="posters", reserved=reserved)
    check(tenant.id, "9.00", project="ads", reserved=reserved)

    with pytest.raises(BudgetExceededError) as caught:
        check(tenant.id, "0.11", project="posters", reserved=reserved)
    assert caught.value.field == "project"
    assert "project 'posters' ($0.50)" in caught.value.detail
    assert "$0.3000 spent and $0.1000 reserved" in caught.value.detail
    assert caught.value.extra["budget"] == {"project": "posters", "monthly_usd": "0.500000"}


def test_budgets_are_per_tenant(settings: Settings, tenant: TenantKeys) -> None:
    """Another tenant's spending does not count against this tenant's budget."""
    set_budget(tenant.id, "1.00")
    charge("another-tenant", amount="50")
    check(tenant.id, "1.00")


# --- months ---------------------------------------------------------------------------------


def test_last_months_spending_does_not_count(settings: Settings, tenant: TenantKeys) -> None:
    """An entry dated a microsecond before the month began belongs to last month: it does
    not count against this month's budget, nor in this month's usage."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    set_budget(tenant.id, "1.00")
    charge(tenant.id, amount="0.90", at=start - timedelta(microseconds=1))
    charge(tenant.id, amount="0.40", at=start)
    check(tenant.id, "0.60", now=NOVEMBER)
    with pytest.raises(BudgetExceededError):
        check(tenant.id, "0.61", now=NOVEMBER)
    with read_scope() as session:
        november = costs.usage(session=session, tenant_id=tenant.id, start=start)
        october = costs.usage(
            session=session, tenant_id=tenant.id, start=costs.parse_month("2026-10")
        )
    assert (november.month, november.total_usd) == ("2026-11", Decimal("0.4"))
    assert (october.month, october.total_usd) == ("2026-10", Decimal("0.9"))


def test_december_ends_at_new_year(settings: Settings, tenant: TenantKeys) -> None:
    """December's usage ends where January's starts."""
    new_year = datetime(2027, 1, 1, tzinfo=UTC)
    charge(tenant.id, amount="0.10", at=new_year - timedelta(microseconds=1))
    charge(tenant.id, amount="0.20", at=new_year)
    with read_scope() as session:
        december = costs.usage(
            session=session, tenant_id=tenant.id, start=costs.parse_month("2026-12")
        )
        january = costs.usage(session=session, tenant_id=tenant.id, start=new_year)
    assert december.total_usd == Decimal("0.1")
    assert january.total_usd == Decimal("0.2")


def test_parse_month() -> None:
    """YYYY-MM is the first instant of that month in UTC; anything else is refused on field
    month with an example."""
    assert costs.parse_month("2026-11") == datetime(2026, 11, 1, tzinfo=UTC)
    for text in ("2026-13", "nov", "2026/11", "2026-11-01", ""):
        with pytest.raises(GenerationRequestError) as caught:
            costs.parse_month(text)
        assert caught.value.field == "month"
        assert "YYYY-MM" in caught.value.detail


# --- usage ----------------------------------------------------------------------------------


def test_usage_groups_by_project_variant_and_kind_and_lists_budgets(
    settings: Settings, tenant: TenantKeys
) -> None:
    """usage() sums a month's entries per (project, variant, kind), with image counts and
    GPU seconds, and lists every budget with what was spent and what remains."""
    set_budget(tenant.id, "10")
    set_budget(tenant.id, "1", project="posters")
    for _ in range(2):
        charge(tenant.id, amount="0.00165", project="posters", gpu_seconds=1.5)
    charge(tenant.id, amount="0.055", project="posters", variant="pro", kind="api")
    charge(tenant.id, amount="0.0308", project="", variant="dev", gpu_seconds=28.0)
    october = datetime(2026, 10, 20, tzinfo=UTC)
    charge(tenant.id, amount="0.055", project="posters", variant="pro", kind="api", at=october)
    charge("another-tenant", amount="3", project="posters")

    with read_scope() as session:
        report = costs.usage(
            session=session, tenant_id=tenant.id, start=costs.parse_month("2026-11")
        )
    assert report.month == "2026-11"
    assert [
        (line.project, line.variant, line.kind, line.images, line.gpu_seconds, line.amount_usd)
        for line in report.lines
    ] == [
        ("", "dev", "local", 1, 28.0, Decimal("0.0308")),
        ("posters", "pro", "api", 1, 0.0, Decimal("0.055")),
        ("posters", "schnell", "local", 2, 3.0, Decimal("0.0033")),
    ]
    assert report.total_usd == Decimal("0.0891")
    assert [(b.project, b.monthly_usd, b.spent_usd, b.remaining_usd) for b in report.budgets] == [
        ("", Decimal("10"), Decimal("0.0891"), Decimal("9.9109")),
        ("posters", Decimal("1"), Decimal("0.0583"), Decimal("0.9417")),
    ]
    with read_scope() as session:
        assert session.scalar(select(func.count()).select_from(CostEntry)) == 6

"""What the dashboard's pages show, read through the services. Nothing here decides: a task's
risk is pipeline.routing's, its state (a lapsed claim is open again) api.reviews', the order
of the queue review.queue's."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from api.reviews import task_out
from api.schemas import ReviewTaskOut
from pipeline import routing
from pipeline import service as jobs
from pipeline.models import Job, JobImage
from pipeline.stages import IMAGE_CHECK, PROMPT_CHECK
from reference_index.models import ReferenceImage
from review import queue
from review.models import CLAIMED, DECIDED, ESCALATED, HIGH, OPEN, ReviewTask

# The queue's default view: every task still waiting for someone.
TODO = "todo"
QUEUE_VIEWS = (TODO, OPEN, CLAIMED, ESCALATED, DECIDED)
# A queue page shows at most this many tasks of each state.
QUEUE_LIMIT = 500


@dataclass(frozen=True)
class QueueRow:
    task: ReviewTaskOut
    prompt: str
    risk: float
    rules: tuple[str, ...]


def _risk(job: Job | None) -> float:
    if job is None:
        return 0.0
    decisions = {d.stage: d for d in job.decisions}
    prompt, images = decisions.get(PROMPT_CHECK), decisions.get(IMAGE_CHECK)
    risks = routing.category_risks(
        prompt.decision if prompt else None, images.reasons if images else []
    )
    return max(risks.values())


def _tasks(session: Session, tenant_id: str, view: str) -> list[ReviewTask]:
    if view != TODO:
        return queue.list_tasks(session=session, tenant_id=tenant_id, state=view, limit=QUEUE_LIMIT)
    found = [
        task
        for state in (OPEN, CLAIMED, ESCALATED)
        for task in queue.list_tasks(
            session=session, tenant_id=tenant_id, state=state, limit=QUEUE_LIMIT
        )
    ]
    # The queue's own order (review.queue.list_tasks), over the three states together.
    return sorted(found, key=lambda t: (t.priority != HIGH, t.due_at, t.id))


def queue_rows(
    *,
    session: Session,
    tenant_id: str,
    view: str = TODO,
    rule: str = "",
    band: str = "",
    min_risk: float = 0.0,
) -> tuple[list[QueueRow], list[str], list[str]]:
    """The tasks of a queue view that pass the filters, most urgent first; and every rule and
    band of the view, for the filters' choices."""
    tasks = _tasks(session, tenant_id, view)
    job_ids = {t.job_id for t in tasks}
    found = session.scalars(
        select(Job)
        .where(Job.tenant_id == tenant_id, Job.id.in_(job_ids))
        .options(selectinload(Job.decisions))
    ).all()
    by_id = {j.id: j for j in found}
    rows = []
    for task in tasks:
        job = by_id.get(task.job_id)
        rows.append(
            QueueRow(
                task=task_out(task),
                prompt=job.prompt if job else "",
                risk=_risk(job),
                rules=tuple(dict.fromkeys(str(r.get("rule", "")) for r in task.reasons)),
            )
        )
    rules = sorted({r for row in rows for r in row.rules})
    bands = sorted({row.task.band for row in rows})
    wanted = [
        row
        for row in rows
        if (not rule or rule in row.rules)
        and (not band or row.task.band == band)
        and row.risk >= min_risk
    ]
    return wanted, rules, bands


def neighbours(session: Session, tenant_id: str, task_id: str) -> tuple[str | None, str | None]:
    """The tasks before and after this one in the queue (`j`/`k`); after a task that has left
    the queue comes the first one still in it."""
    ids = [t.id for t in _tasks(session, tenant_id, TODO)]
    if task_id not in ids:
        return None, ids[0] if ids else None
    at = ids.index(task_id)
    return (ids[at - 1] if at > 0 else None), (ids[at + 1] if at + 1 < len(ids) else None)


def queue_snapshot(session: Session, tenant_id: str) -> dict[str, dict[str, Any]]:
    """Every task still waiting, with its state and claimant: what the live updates compare
    from one poll to the next."""
    snapshot = {}
    for task in _tasks(session, tenant_id, TODO):
        out = task_out(task)
        snapshot[task.id] = {"state": out.state, "claimed_by": out.claimed_by}
    return snapshot


@dataclass(frozen=True)
class Box:
    """A region of an image, in its pixels, to draw over it."""

    x0: int
    y0: int
    x1: int
    y1: int
    label: str
    kind: str  # "match" | "nsfw"
    counted: bool


@dataclass(frozen=True)
class MatchView:
    matcher: str
    asset_id: str
    asset_name: str
    score: float
    strength: str
    counted: bool
    detail: str
    exemplar_id: str | None


@dataclass
class ImageView:
    id: str
    index: int
    width: int
    height: int
    embedder: str
    checked: bool
    boxes: list[Box] = field(default_factory=list)
    matches: list[MatchView] = field(default_factory=list)
    nsfw: list[dict[str, Any]] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)

    def by_exemplar(self) -> dict[str, list[MatchView]]:
        """The matches of each exemplar that matched (several matchers may match one)."""
        found: dict[str, list[MatchView]] = {}
        for m in self.matches:
            if m.exemplar_id:
                found.setdefault(m.exemplar_id, []).append(m)
        return found


@dataclass(frozen=True)
class ExemplarView:
    id: str
    asset_id: str
    polarity: str


@dataclass(frozen=True)
class ReviewView:
    task: ReviewTaskOut
    job: Job
    risk: float
    prompt: list[tuple[str, bool]]
    prompt_decision: str | None
    prompt_reasons: list[dict[str, Any]]
    images: list[ImageView]
    exemplars: dict[str, ExemplarView]
    previous_id: str | None
    next_id: str | None


def highlight(prompt: str, phrases: list[str]) -> list[tuple[str, bool]]:
    """The prompt cut into (text, matched) pieces, marking every place a phrase occurs."""
    spans: list[tuple[int, int]] = []
    for phrase in {p for p in phrases if p.strip()}:
        spans += [m.span() for m in re.finditer(re.escape(phrase), prompt, re.IGNORECASE)]
    pieces: list[tuple[str, bool]] = []
    at = 0
    for start, end in sorted(spans):
        if end <= at:
            continue
        start = max(start, at)
        if start > at:
            pieces.append((prompt[at:start], False))
        pieces.append((prompt[start:end], True))
        at = end
    if at < len(prompt):
        pieces.append((prompt[at:], False))
    return pieces


def _box(corners: list[int], label: str, kind: str, counted: bool) -> Box:
    x0, y0, x1, y1 = (int(v) for v in corners)
    return Box(x0, y0, x1, y1, label, kind, counted)


def _image_view(image: JobImage) -> ImageView:
    check: dict[str, Any] = image.check or {}
    view = ImageView(
        id=image.id,
        index=image.index,
        width=image.width,
        height=image.height,
        embedder=str(check.get("embedder") or "not checked"),
        checked=bool(check),
    )
    for m in check.get("matches", []):
        match = MatchView(
            matcher=m["matcher"],
            asset_id=m["asset_id"],
            asset_name=m["asset_name"],
            score=float(m["score"]),
            strength=m["strength"],
            counted=bool(m.get("counted", True)),
            detail=m.get("detail", ""),
            exemplar_id=m.get("exemplar_id"),
        )
        view.matches.append(match)
        if m.get("box"):
            view.boxes.append(_box(m["box"], m["asset_name"], "match", match.counted))
    for flag in (check.get("nsfw") or {}).get("flagged", []):
        view.nsfw.append(flag)
        if flag.get("box"):
            view.boxes.append(_box(flag["box"], flag["label"], "nsfw", True))
    view.faults = list(check.get("faults", []))
    return view


def review_view(*, session: Session, tenant_id: str, task_id: str) -> ReviewView:
    task = queue.get_task(session=session, tenant_id=tenant_id, task_id=task_id)
    job = jobs.get_job(session=session, tenant_id=tenant_id, job_id=task.job_id)
    decisions = {d.stage: d for d in job.decisions}
    prompt = decisions.get(PROMPT_CHECK)
    prompt_reasons = list(prompt.reasons) if prompt else []
    images = [_image_view(i) for i in job.images]
    exemplar_ids = {m.exemplar_id for i in images for m in i.matches if m.exemplar_id}
    exemplars = {
        r.id: ExemplarView(r.id, r.asset_id, r.polarity)
        for r in session.scalars(select(ReferenceImage).where(ReferenceImage.id.in_(exemplar_ids)))
        if visible_exemplar(r, tenant_id)
    }
    previous_id, next_id = neighbours(session, tenant_id, task.id)
    return ReviewView(
        task=task_out(task),
        job=job,
        risk=_risk(job),
        prompt=highlight(job.prompt, [str(r.get("matched") or "") for r in prompt_reasons]),
        prompt_decision=prompt.decision if prompt else None,
        prompt_reasons=prompt_reasons,
        images=images,
        exemplars=exemplars,
        previous_id=previous_id,
        next_id=next_id,
    )


def visible_exemplar(reference: ReferenceImage, tenant_id: str) -> bool:
    """Shared exemplars and the tenant's own; another tenant's (its assets, or images its
    reviews confirmed) never."""
    return reference.tenant_id in (None, tenant_id)

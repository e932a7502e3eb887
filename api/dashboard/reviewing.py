"""The reviewer's pages: the queue with its live updates, a task's review page, claims and
decisions. Claims and decisions go through the same code as the API's (api.reviews)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, StreamingResponse

from api import reviews as review_api
from api import users
from api.dashboard import views, web
from api.deps import SettingsDep
from api.schemas import ReviewDecisionIn, ReviewTaskOut
from core.blobs import BlobStore
from core.db import read_scope, utcnow
from core.errors import AuthenticationError, NotFoundError
from pipeline import service as jobs
from reference_index.models import ReferenceImage
from review import queue

router = APIRouter(route_class=web.DashboardRoute)

# Set when the server is stopping: live-update streams end at their next poll.
_closing = threading.Event()


def close_streams() -> None:
    _closing.set()


# Reasons offered when rejecting; approving and escalating have keys of their own.
REJECT_REASONS = tuple(r for r in queue.REASONS if r not in ("false_positive", "acceptable_use"))
IMAGE_HEADERS = {"Cache-Control": "private, no-store"}


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


@router.get("/dashboard/queue", response_class=HTMLResponse, responses=web.DASHBOARD_ERRORS)
def queue_page(
    request: Request,
    viewer: web.ViewerDep,
    view: Literal[views.QUEUE_VIEWS] = views.TODO,  # type: ignore[valid-type]
    rule: Annotated[str, Query(max_length=100, description="only tasks with this reason")] = "",
    band: Annotated[str, Query(max_length=40, description="only tasks of this routing band")] = "",
    min_risk: Annotated[float, Query(ge=0, le=1)] = 0.0,
    decided: Annotated[
        str | None, Query(max_length=32, description="the task just decided")
    ] = None,
) -> HTMLResponse:
    """The review queue, most urgent first, with each task's risk and SLA countdown. An htmx
    request (a filter change, a live update) gets the table alone."""
    viewer.principal.require(*queue.REVIEWER_ROLES)
    just_decided = _task_or_none(viewer, decided)
    with read_scope() as session:
        rows, rules, bands = views.queue_rows(
            session=session,
            tenant_id=viewer.principal.tenant_id,
            view=view,
            rule=rule,
            band=band,
            min_risk=min_risk,
        )
    return web.render(
        request,
        "_queue_table.html" if web.is_htmx(request) else "queue.html",
        viewer,
        rows=rows,
        rules=rules,
        bands=bands,
        views=views.QUEUE_VIEWS,
        filters={"view": view, "rule": rule, "band": band, "min_risk": min_risk},
        now=utcnow(),
        just_decided=just_decided,
    )


@router.get(
    "/dashboard/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **web.DASHBOARD_ERRORS},
)
async def queue_events(
    request: Request,
    viewer: web.ViewerDep,
    settings: SettingsDep,
    max_seconds: Annotated[float, Query(ge=0, le=3600)] = 300,
) -> StreamingResponse:
    """Server-sent events: `queue` whenever the tenant's waiting tasks change (a new task, a
    claim, a decision), with every waiting task's state and claimant. The stream ends after
    `max_seconds` (browsers reconnect by themselves), and with an `ended` event as soon as
    the session does (signed out, expired, user disabled)."""
    viewer.principal.require(*queue.REVIEWER_ROLES)
    tenant_id = viewer.principal.tenant_id
    token = request.cookies[web.SESSION_COOKIE]

    def snapshot() -> dict[str, dict[str, object]] | None:
        with read_scope() as session:
            try:
                users.resolve(session=session, token=token)
            except AuthenticationError:
                return None
            return views.queue_snapshot(session, tenant_id)

    async def stream() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        deadline = time.monotonic() + max_seconds
        last = None
        while True:
            current = await run_in_threadpool(snapshot)
            if current is None:
                yield "event: ended\ndata: the session has ended\n\n"
                return
            if current != last:
                yield f"event: queue\ndata: {json.dumps({'tasks': current})}\n\n"
                last = current
            if time.monotonic() >= deadline or _closing.is_set() or await request.is_disconnected():
                return
            await asyncio.sleep(settings.dashboard.events_poll_seconds)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _task_or_none(viewer: users.Viewer, task_id: str | None) -> ReviewTaskOut | None:
    """The task a decision was just made on, for the page's confirmation."""
    if not task_id:
        return None
    with read_scope() as session:
        return review_api.task_out(
            queue.get_task(session=session, tenant_id=viewer.principal.tenant_id, task_id=task_id)
        )


def _review_page(
    request: Request,
    viewer: web.ViewerDep,
    task_id: str,
    just_decided: ReviewTaskOut | None = None,
) -> Response:
    with read_scope() as session:
        review = views.review_view(
            session=session, tenant_id=viewer.principal.tenant_id, task_id=task_id
        )
    return web.render(
        request,
        "_review_status.html" if web.is_htmx(request) else "review.html",
        viewer,
        review=review,
        reject_reasons=REJECT_REASONS,
        reasons=queue.REASONS,
        now=utcnow(),
        just_decided=just_decided,
    )


@router.get(
    "/dashboard/reviews/{task_id}", response_class=HTMLResponse, responses=web.DASHBOARD_ERRORS
)
def review_page(
    request: Request,
    task_id: str,
    viewer: web.ViewerDep,
    decided: Annotated[
        str | None, Query(max_length=32, description="the task just decided")
    ] = None,
) -> Response:
    """One task: the images with their match boxes beside the matched exemplars, each
    matcher's score and embedder, the prompt with what the policy matched highlighted, the
    reasons, and the decision keys."""
    viewer.principal.require(*queue.REVIEWER_ROLES)
    return _review_page(request, viewer, task_id, just_decided=_task_or_none(viewer, decided))


@router.post(
    "/dashboard/reviews/{task_id}/claim",
    response_class=HTMLResponse,
    responses=web.DASHBOARD_ERRORS,
)
def claim(
    request: Request, task_id: str, viewer: web.PostingViewerDep, settings: SettingsDep
) -> Response:
    """Claim the task for the lease time; htmx gets the task's status panel back."""
    viewer.principal.require(*queue.REVIEWER_ROLES)
    review_api.claim_task(viewer.principal, settings, task_id)
    if web.is_htmx(request):
        return _review_page(request, viewer, task_id)
    return web.see_other(request, f"/dashboard/reviews/{task_id}")


@router.post(
    "/dashboard/reviews/{task_id}/decision",
    response_class=HTMLResponse,
    responses=web.DASHBOARD_ERRORS,
)
def decide(
    request: Request,
    task_id: str,
    viewer: web.PostingViewerDep,
    settings: SettingsDep,
    decision: Annotated[Literal["approve", "reject", "escalate"], Form()],
    reason: Annotated[str, Form(max_length=40)],
    note: Annotated[str, Form(max_length=queue.MAX_NOTE)] = "",
) -> Response:
    """Approve, reject (with a reason code) or escalate, claiming the task first if the
    reviewer does not hold it; then on to the next task of the queue."""
    viewer.principal.require(*queue.REVIEWER_ROLES)
    tenant_id = viewer.principal.tenant_id
    with read_scope() as session:
        current = review_api.task_out(
            queue.get_task(session=session, tenant_id=tenant_id, task_id=task_id)
        )
        _, next_id = views.neighbours(session, tenant_id, task_id)
    review_api.decide_task(
        viewer.principal,
        settings,
        task_id,
        ReviewDecisionIn(decision=decision, reason=reason, note=note),
        claim=current.claimed_by != viewer.principal.actor,
    )
    target = f"/dashboard/reviews/{next_id}" if next_id else "/dashboard/queue"
    return web.see_other(request, f"{target}?decided={task_id}")


@router.get(
    "/dashboard/reviews/{task_id}/images/{index}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
        **web.DASHBOARD_ERRORS,
    },
)
def review_image(
    task_id: str, index: int, viewer: web.ViewerDep, settings: SettingsDep
) -> Response:
    """A generated image of the task's job, released or not: reviewers of the job's tenant
    are the only ones who ever see an image before its release."""
    viewer.principal.require(*queue.REVIEWER_ROLES)
    with read_scope() as session:
        task = queue.get_task(
            session=session, tenant_id=viewer.principal.tenant_id, task_id=task_id
        )
        job = jobs.get_job(
            session=session, tenant_id=viewer.principal.tenant_id, job_id=task.job_id
        )
        image = next((i for i in job.images if i.index == index), None)
        if image is None:
            raise NotFoundError(f"the job has no image {index}", field="index")
        data = BlobStore(settings.blob_dir).get(image.blob_sha256)
    return Response(data, media_type=_sniff(data), headers=IMAGE_HEADERS)


@router.get(
    "/dashboard/exemplars/{exemplar_id}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, **web.DASHBOARD_ERRORS},
)
def exemplar_image(exemplar_id: str, viewer: web.ViewerDep, settings: SettingsDep) -> Response:
    """An exemplar of the shared catalogue or of the viewer's tenant."""
    viewer.principal.require(*queue.REVIEWER_ROLES)
    with read_scope() as session:
        reference = session.get(ReferenceImage, exemplar_id)
        if reference is None or not views.visible_exemplar(reference, viewer.principal.tenant_id):
            raise NotFoundError(f"exemplar {exemplar_id!r} does not exist", field="exemplar_id")
        data = BlobStore(settings.blob_dir).get(reference.blob_sha256)
    return Response(data, media_type=_sniff(data), headers=IMAGE_HEADERS)

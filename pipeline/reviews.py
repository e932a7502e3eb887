"""Where the review queue meets jobs (the route stage opens the tasks, and the prompt_check
stage for a flagged image to edit): a person's decision moves the job (approve → approved
and released, or on to generation when nothing was generated yet; reject → rejected), an
appeal reopens a rejected job, and decisions confirmed by legal or admin feed the reference
index.

Each function runs inside the caller's transaction, so a decision, the job's new state and
their audit events commit together or not at all.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.blobs import BlobStore
from core.errors import ConflictError, NotFoundError
from core.settings import Settings
from pipeline.models import APPROVED, GENERATING, IN_REVIEW, REJECTED, Job
from pipeline.stages import GENERATE, RELEASE, ROUTE, set_state
from reference_index import index as index_versions
from reference_index import service as catalogue
from review import queue
from review.models import APPROVE, NORMAL, REJECT, ReviewTask

# Decisions these roles take part in are confirmed feedback for the reference index.
CONFIRMING_ROLES = ("legal", "admin")


def _job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.tenant_id != tenant_id:
        raise NotFoundError(f"job {job_id!r} does not exist", field="job_id")
    return job


def decide(
    *,
    session: Session,
    settings: Settings,
    tenant_id: str,
    task_id: str,
    reviewer: str,
    role: str,
    decision: str,
    reason: str,
    note: str,
) -> tuple[ReviewTask, str | None]:
    """Record a decision and apply its outcome to the job; with it, the stage the job goes on
    from, if it goes on (the caller enqueues it once this transaction has committed): RELEASE
    for an approved job, GENERATE for an approved image to edit."""
    outcome = queue.decide(
        session=session,
        tenant_id=tenant_id,
        task_id=task_id,
        reviewer=reviewer,
        role=role,
        decision=decision,
        reason=reason,
        note=note,
    )
    if outcome.final is None:
        return outcome.task, None
    job = _job(session, tenant_id, outcome.task.job_id)
    if job.state != IN_REVIEW:
        raise ConflictError(f"job {job.id!r} is {job.state}, not in review", field="job_id")
    # Before routing, what was reviewed is the image to edit: nothing is generated yet.
    routed = any(d.stage == ROUTE for d in job.decisions)
    if outcome.final != APPROVE:
        new_state, next_stage = REJECTED, None
    elif routed:
        new_state, next_stage = APPROVED, RELEASE
    else:
        new_state, next_stage = GENERATING, GENERATE
    set_state(session, job, new_state, stage="review", task_id=outcome.task.id, reviewer=reviewer)
    # Confirmed when legal or admin took part in the decision (four-eyes: either approval).
    if any(d.role in CONFIRMING_ROLES for d in outcome.task.decisions):
        _feedback(session, settings, job, outcome.task, outcome.final, reason, reviewer)
    return outcome.task, next_stage


def _feedback(
    session: Session,
    settings: Settings,
    job: Job,
    task: ReviewTask,
    final: str,
    reason: str,
    actor: str,
) -> None:
    """A confirmed infringement becomes an exemplar of the asset it matched; a confirmed
    approval of a flagged image becomes a negative exemplar, so the same look-alike does not
    flag again. Either is the job's tenant's own: it teaches that tenant's checks, not the
    shared catalogue (one tenant's approval must not silence a match for another)."""
    if final == REJECT and reason == "infringement":
        polarity = "positive"
    elif final == APPROVE:
        polarity = "negative"
    else:
        return
    flagged: dict[int, set[str]] = {}
    for r in task.reasons:
        if r.get("asset_id") and "matcher" in r and "image_index" in r:
            flagged.setdefault(int(r["image_index"]), set()).add(str(r["asset_id"]))
    if not flagged:
        return
    blobs = BlobStore(settings.blob_dir)
    added = []
    for image in job.images:
        for asset_id in sorted(flagged.get(image.index, ())):
            reference, new = catalogue.add_reference_image(
                session=session,
                blobs=blobs,
                asset_id=asset_id,
                data=blobs.get(image.blob_sha256),
                source=f"review:{task.id}",
                actor=actor,
                polarity=polarity,
                tenant_id=job.tenant_id,
            )
            if new:
                added.append(reference.id)
    if added:
        index_versions.add(
            session=session, settings=settings, blobs=blobs, reference_ids=added, actor=actor
        )


def appeal(
    *, session: Session, settings: Settings, tenant_id: str, job_id: str, requester: str, note: str
) -> ReviewTask:
    """A rejected job back in review, once, decided by someone who did not reject it."""
    job = _job(session, tenant_id, job_id)
    if job.state != REJECTED:
        raise ConflictError(
            f"job {job_id!r} is {job.state}; only a rejected job can be appealed", field="job_id"
        )
    if job.created_by != requester:
        raise ConflictError("only the requester of a job may appeal it", field="job_id")
    task = queue.appeal(
        session=session,
        tenant_id=tenant_id,
        job_id=job_id,
        requester=requester,
        note=note,
        sla=queue.sla(settings.review, NORMAL),
    )
    set_state(session, job, IN_REVIEW, stage="appeal", task_id=task.id)
    return task

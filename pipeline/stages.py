"""The stages of a job. Each runs as: claim (short transaction), work (no transaction held,
may take minutes), record (short transaction). Results, the state change and the audit events
of a stage are written in one transaction, so a stage either happened entirely or not at all.

Idempotency: a stage whose `JobStage` row is finished is never run again, and a stage whose
job has moved on (failed, blocked) does nothing. So a redelivered task adds no second image,
decision or audit event. Each function returns whether the job goes on to the next stage.

A task that runs the next stage itself (pipeline.tasks) passes a `Relay`: the stage then
claims the next one in its own result transaction, and the next one starts from that claim
instead of a claim transaction of its own.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from audit import service as audit
from core.blobs import BlobStore
from core.db import read_scope, session_scope, utcnow
from core.settings import Settings, get_settings
from generation import costs
from generation import service as generation
from generation.bfl import ProviderRequest
from generation.errors import ContentModeratedError
from generation.models import ProviderRequestRecord
from generation.schemas import GenerationSpec
from generation.variants import VARIANTS
from pipeline import policy as prompt_policy
from pipeline import provenance, routing, webhooks
from pipeline.errors import JobNotFoundError, SigningError
from pipeline.models import (
    APPROVED,
    BLOCKED,
    CHECKING_IMAGES,
    CHECKING_PROMPT,
    FAILED,
    FINAL_STATES,
    GENERATING,
    IN_REVIEW,
    QUEUED,
    RELEASED,
    SETTLED_STATES,
    Job,
    JobDecision,
    JobImage,
    JobStage,
)
from pipeline.policy import PromptRequest
from reference_index import checks
from review import queue
from review.models import HIGH, NORMAL
from review.schemas import Use

ACTOR = "system:pipeline"

PROMPT_CHECK = "prompt_check"
# Not a stage of its own: prompt_check records the image checks of an image to edit under it.
INPUT_CHECK = "input_check"
GENERATE = "generate"
IMAGE_CHECK = "image_check"
ROUTE = "route"
RELEASE = "release"
STAGES = (PROMPT_CHECK, GENERATE, IMAGE_CHECK, ROUTE, RELEASE)


@dataclass(frozen=True)
class StageRule:
    entry_states: frozenset[str]
    # The job state while the stage runs; None for stages that are one short transaction.
    running_state: str | None
    after: str | None


RULES = {
    PROMPT_CHECK: StageRule(frozenset({QUEUED, CHECKING_PROMPT}), CHECKING_PROMPT, None),
    GENERATE: StageRule(frozenset({CHECKING_PROMPT, GENERATING}), GENERATING, PROMPT_CHECK),
    IMAGE_CHECK: StageRule(frozenset({GENERATING, CHECKING_IMAGES}), CHECKING_IMAGES, GENERATE),
    ROUTE: StageRule(frozenset({CHECKING_IMAGES}), None, IMAGE_CHECK),
    RELEASE: StageRule(frozenset({APPROVED}), None, ROUTE),
}


# Route claims, decides and records in one transaction: claiming it in the transaction
# before would save nothing.
_CLAIMS_ITSELF = frozenset({ROUTE})
NEXT_STAGE = dict(pairwise(STAGES))


@dataclass
class Relay:
    """Stages run one after another by one task. `claims_next(stage)` is asked in a stage's
    result transaction, once the stage is recorded and goes on: whether the task will run
    `stage` next (it may depend on how long this one took). If so the stage claims it in that
    transaction, and leaves the job, as claimed, in `claimed` for it."""

    claims_next: Callable[[str], bool]
    claimed: tuple[str, Job] | None = None

    def holds(self, stage: str) -> bool:
        return self.claimed is not None and self.claimed[0] == stage

    def take(self, stage: str) -> Job | None:
        """The job as claimed for `stage` by the stage before it, once; None if it was not."""
        claimed, self.claimed = self.claimed, None
        return claimed[1] if claimed is not None and claimed[0] == stage else None


@dataclass(frozen=True)
class StageContext:
    settings: Settings
    blobs: BlobStore


@lru_cache(maxsize=1)
def default_context() -> StageContext:
    settings = get_settings()
    return StageContext(settings=settings, blobs=BlobStore(settings.blob_dir))


def _lock_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise JobNotFoundError(f"job {job_id!r} does not exist", field="job_id")
    return job


def set_state(session: Session, job: Job, state: str, **details: object) -> None:
    previous, job.state = job.state, state
    audit.append(
        session=session,
        actor=ACTOR,
        tenant_id=job.tenant_id,
        type="job.state_changed",
        subject=f"job:{job.id}",
        payload={"from": previous, "to": state, **details},
    )
    # The webhook outbox rows commit (or roll back) with the state change itself.
    webhooks.enqueue(session=session, job=job, previous=previous, details=details)


def _claim(session: Session, job_id: str, stage: str, max_attempts: int) -> Job | None:
    """Start (or restart) `stage`; None when it must not run (done already, or the job
    has moved on). Counts attempts, so a stage that keeps killing its worker fails the job
    instead of looping."""
    return _claim_locked(session, _lock_job(session, job_id), stage, max_attempts)


def _claim_locked(session: Session, job: Job, stage: str, max_attempts: int) -> Job | None:
    """`_claim`, with the job locked already."""
    job_id = job.id
    rule = RULES[stage]
    # The stage's row and the one of the stage before it, in one round trip.
    wanted = [stage] if rule.after is None else [stage, rule.after]
    rows = session.scalars(
        select(JobStage).where(JobStage.job_id == job_id, JobStage.stage.in_(wanted))
    )
    runs = {row.stage: row for row in rows}
    run = runs.get(stage)
    if run is not None and run.finished_at is not None:
        return None
    if job.state not in rule.entry_states:
        return None
    if rule.after is not None:
        before = runs.get(rule.after)
        if before is None or before.finished_at is None:
            return None
    if run is None:
        run = JobStage(job_id=job_id, stage=stage, attempts=0, started_at=utcnow())
        session.add(run)
    run.attempts += 1
    if run.attempts > max_attempts:
        _fail(session, job, stage, f"the stage was interrupted {max_attempts} times")
        return None
    if rule.running_state is not None and job.state != rule.running_state:
        set_state(session, job, rule.running_state, stage=stage, attempt=run.attempts)
    return job


def _begin(job_id: str, stage: str, ctx: StageContext, relay: Relay | None) -> Job | None:
    claimed = relay.take(stage) if relay is not None else None
    if claimed is not None:
        return claimed
    with session_scope() as session:
        return _claim(session, job_id, stage, ctx.settings.worker.max_stage_attempts)


def _reclaim(session: Session, job_id: str, stage: str) -> Job | None:
    """Lock the job to record `stage`'s results, unless another delivery finished the stage
    meanwhile or the job was failed while the work ran."""
    job = _lock_job(session, job_id)
    run = session.get(JobStage, (job_id, stage))
    if run is None or run.finished_at is not None or job.state in FINAL_STATES:
        return None
    return job


def _finish(
    session: Session, job: Job, stage: str, outcome: str, ctx: StageContext, relay: Relay | None
) -> bool:
    """Stamp the stage finished, last in its result transaction; whether the job goes on.
    With a relay, also claim the next stage here when the relay's task runs it next."""
    run = session.get(JobStage, (job.id, stage))
    assert run is not None  # _reclaim checked it under the job's lock
    run.finished_at, run.outcome = utcnow(), outcome
    following = NEXT_STAGE.get(stage)
    if (
        relay is not None
        and following is not None
        and following not in _CLAIMS_ITSELF
        and job.state not in SETTLED_STATES
        and relay.claims_next(following)
    ):
        claimed = _claim_locked(session, job, following, ctx.settings.worker.max_stage_attempts)
        relay.claimed = (following, claimed) if claimed is not None else None
    return job.state not in SETTLED_STATES


def _record_decision(
    session: Session,
    job: Job,
    stage: str,
    decision: str,
    reasons: list[dict[str, Any]],
    **extra: object,
) -> None:
    session.add(JobDecision(job_id=job.id, stage=stage, decision=decision, reasons=reasons))
    audit.append(
        session=session,
        actor=ACTOR,
        tenant_id=job.tenant_id,
        type=f"{stage}.decided",
        subject=f"job:{job.id}",
        payload={"decision": decision, "reasons": reasons, **extra},
    )


def goes_on(job_id: str) -> bool:
    with read_scope() as session:
        job = session.get(Job, job_id)
        return job is not None and job.state not in SETTLED_STATES


_SEVERITY = {"approve": 0, "review": 1, "reject": 2}


def _check(data: bytes, ctx: StageContext, tenant_id: str) -> checks.CheckResult:
    """The catalogue and NSFW checks of one image for the job's tenant (the shared catalogue
    and its own assets)."""
    with read_scope() as session:
        return checks.check_image(data, session=session, settings=ctx.settings, tenant_id=tenant_id)


def _worst(decisions: list[str]) -> str:
    return max(decisions, key=_SEVERITY.__getitem__, default="approve")


def prompt_check(job_id: str, ctx: StageContext, relay: Relay | None = None) -> bool:
    """The request, before anything is generated: prompt policy, and for an editing job the
    image checks on the image to edit."""
    job = _begin(job_id, PROMPT_CHECK, ctx, relay)
    if job is None:
        return goes_on(job_id)
    use: Use = "commercial" if job.use == "commercial" else "non-commercial"
    with read_scope() as session:
        decision = prompt_policy.check_prompt(
            PromptRequest(job.prompt, job.variant, use, job.tenant_id),
            session=session,
            settings=ctx.settings,
        )
    input_check = None
    if job.input_image_sha256 is not None:
        input_check = _check(ctx.blobs.get(job.input_image_sha256), ctx, job.tenant_id).to_dict()
    with session_scope() as session:
        locked = _reclaim(session, job_id, PROMPT_CHECK)
        if locked is None:
            return False
        body = decision.to_dict()
        _record_decision(
            session,
            locked,
            PROMPT_CHECK,
            decision.decision,
            body["reasons"],
            rules_version=decision.rules_version,
            catalogue_version=decision.catalogue_version,
        )
        if input_check is not None:
            _record_decision(
                session,
                locked,
                INPUT_CHECK,
                input_check["decision"],
                routing.image_reasons(input_check, 0),
                check=input_check,
            )
        if decision.decision == "block":
            set_state(session, locked, BLOCKED, stage=PROMPT_CHECK)
        elif input_check is not None and input_check["decision"] != "approve":
            # A protected asset (or worse) in the image to edit: a person decides before
            # anything is generated from it (an approval sends the job on to generation).
            chosen = routing.route(
                decision.decision,
                input_check["decision"],
                routing.image_reasons(input_check, 0),
                settings=ctx.settings.routing,
                sample_draw=1.0,  # no quality sample: a person sees this job anyway
            )
            set_state(session, locked, IN_REVIEW, stage=PROMPT_CHECK, reason="input image check")
            _open_review(session, locked, chosen, ctx)
        return _finish(session, locked, PROMPT_CHECK, decision.decision, ctx, relay)


class _Progress:
    """Writes denoising progress to the job, at most a few times a second (and always the
    last step), in its own short transactions."""

    def __init__(self, job_id: str, interval_s: float = 0.25) -> None:
        self.job_id, self.interval_s, self.last = job_id, interval_s, 0.0

    def __call__(self, step: int, total: int) -> None:
        now = time.monotonic()
        if step < total and now - self.last < self.interval_s:
            return
        self.last = now
        with session_scope() as session:
            session.execute(
                update(Job)
                .where(Job.id == self.job_id)
                .values(progress_step=step, progress_total=total)
            )


def _provider_requests(job_id: str) -> dict[int, ProviderRequest]:
    with read_scope() as session:
        rows = session.scalars(
            select(ProviderRequestRecord).where(ProviderRequestRecord.job_id == job_id)
        ).all()
        return {
            r.image_index: ProviderRequest(r.image_index, r.request_id, r.polling_url) for r in rows
        }


def _recorder(job_id: str) -> Callable[[ProviderRequest], None]:
    def record(request: ProviderRequest) -> None:
        # Committed before polling starts: a retry or a restarted worker finds it.
        with session_scope() as session:
            session.add(
                ProviderRequestRecord(
                    job_id=job_id,
                    image_index=request.image_index,
                    request_id=request.request_id,
                    polling_url=request.polling_url,
                )
            )

    return record


def generate(job_id: str, ctx: StageContext, relay: Relay | None = None) -> bool:
    job = _begin(job_id, GENERATE, ctx, relay)
    if job is None:
        return goes_on(job_id)
    with read_scope() as session:
        loras = generation.resolve_loras(
            session=session,
            requested=[(lora["name"], lora["scale"]) for lora in job.loras],
            tenant_id=job.tenant_id,
        )
    spec = GenerationSpec(
        prompt=job.prompt,
        variant=job.variant,
        width=job.width,
        height=job.height,
        seed=job.seed,
        n_images=job.n_images,
        steps=job.steps,
        input_image=ctx.blobs.get(job.input_image_sha256) if job.input_image_sha256 else None,
        loras=loras,
    )
    try:
        result = generation.generate(
            spec,
            ctx.settings,
            on_step=_Progress(job_id),
            known_requests=_provider_requests(job_id),
            record_request=_recorder(job_id),
        )
    except ContentModeratedError as moderated:
        return _moderated(job_id, moderated, ctx)
    # Content-addressed: a second delivery writes the same names, not new files.
    stored = [(image, ctx.blobs.put(image.png)) for image in result.images]
    with session_scope() as session:
        locked = _reclaim(session, job_id, GENERATE)
        if locked is None:
            return False
        locked.model = result.model
        for image, sha256 in stored:
            session.add(
                JobImage(
                    job_id=job_id,
                    index=image.index,
                    seed=image.seed,
                    blob_sha256=sha256,
                    width=image.width,
                    height=image.height,
                )
            )
        charged = costs.record(
            session=session,
            tenant_id=locked.tenant_id,
            project=locked.project,
            job_id=job_id,
            variant=VARIANTS[locked.variant],
            result=result,
            settings=ctx.settings,
        )
        audit.append(
            session=session,
            actor=ACTOR,
            tenant_id=locked.tenant_id,
            type="images.generated",
            subject=f"job:{job_id}",
            payload={
                "model": result.model,
                "placement": result.placement,
                "seconds": round(result.seconds, 3),
                "loras": locked.loras,
                "cost_usd": str(sum(entry.amount_usd for entry in charged)),
                "images": [{"index": i.index, "seed": i.seed, "sha256": s} for i, s in stored],
            },
        )
        return _finish(session, locked, GENERATE, "generated", ctx, relay)


def _moderated(job_id: str, moderated: ContentModeratedError, ctx: StageContext) -> bool:
    """The provider's moderation refused the request: the job is blocked, with its reason."""
    with session_scope() as session:
        locked = _reclaim(session, job_id, GENERATE)
        if locked is None:
            return False
        reason = {
            "rule": "provider.moderation",
            "decision": "block",
            "detail": moderated.detail,
            "status": moderated.status,
            "provider_reasons": moderated.reasons,
        }
        _record_decision(session, locked, GENERATE, "block", [reason])
        set_state(session, locked, BLOCKED, stage=GENERATE)
        return _finish(session, locked, GENERATE, "moderated", ctx, None)


def image_check(job_id: str, ctx: StageContext, relay: Relay | None = None) -> bool:
    job = _begin(job_id, IMAGE_CHECK, ctx, relay)
    if job is None:
        return goes_on(job_id)
    with read_scope() as session:
        images = [(i.id, i.index, i.blob_sha256) for i in session.get_one(Job, job_id).images]
    results: list[tuple[str, int, dict[str, Any]]] = []
    for image_id, index, sha in images:
        result = _check(ctx.blobs.get(sha), ctx, job.tenant_id)
        results.append((image_id, index, result.to_dict()))
        if result.out_of_time:
            # The soft time limit arrived in a matcher: record now, before the hard limit
            # kills the worker; the images not checked yet go to a person as they are.
            reason = f"not checked: the stage ran out of time while checking image {index}"
            results += [
                (rest_id, rest, checks.not_checked(reason, embedder=result.embedder).to_dict())
                for rest_id, rest, _ in images[len(results) :]
            ]
            break
    with session_scope() as session:
        locked = _reclaim(session, job_id, IMAGE_CHECK)
        if locked is None:
            return False
        reasons: list[dict[str, Any]] = []
        for image_id, index, check in results:
            image = session.get_one(JobImage, image_id)
            image.check, image.matches = check, check["matches"]
            reasons += routing.image_reasons(check, index)
        decision = _worst([check["decision"] for _, _, check in results])
        _record_decision(
            session,
            locked,
            IMAGE_CHECK,
            decision,
            reasons,
            images_checked=len(results),
            embedder=results[0][2]["embedder"] if results else None,
            index_checkpoint=results[0][2]["index_checkpoint"] if results else None,
        )
        return _finish(session, locked, IMAGE_CHECK, decision, ctx, relay)


def _open_review(session: Session, job: Job, chosen: routing.Route, ctx: StageContext) -> None:
    """The review task for a job just put in review, urgent when its risk is high."""
    priority = HIGH if chosen.risk >= ctx.settings.routing.high_risk_at else NORMAL
    queue.open_task(
        session=session,
        tenant_id=job.tenant_id,
        job_id=job.id,
        requester=job.created_by,
        priority=priority,
        band=chosen.band,
        reasons=chosen.reasons,
        sla=queue.sla(ctx.settings.review, priority),
        actor=ACTOR,
    )


def route(job_id: str, ctx: StageContext, relay: Relay | None = None) -> bool:
    with session_scope() as session:
        job = _claim(session, job_id, ROUTE, ctx.settings.worker.max_stage_attempts)
        if job is None:
            return session.get_one(Job, job_id).state not in SETTLED_STATES
        decisions = {d.stage: d for d in job.decisions}
        prompt = decisions.get(PROMPT_CHECK)
        images = decisions.get(IMAGE_CHECK)
        chosen = routing.route(
            prompt.decision if prompt else None,
            images.decision if images else None,
            images.reasons if images else [],
            settings=ctx.settings.routing,
            sample_draw=random.random(),  # noqa: S311 (a quality sample, not a secret)
            require_human_approval=job.require_human_approval,
        )
        _record_decision(
            session,
            job,
            ROUTE,
            chosen.state,
            chosen.reasons,
            band=chosen.band,
            risk=chosen.risk,
            categories=chosen.categories,
        )
        set_state(session, job, chosen.state, stage=ROUTE, band=chosen.band)
        if chosen.state == IN_REVIEW:
            _open_review(session, job, chosen, ctx)
        return _finish(session, job, ROUTE, chosen.band, ctx, relay)


def release(job_id: str, ctx: StageContext, relay: Relay | None = None) -> bool:
    """Sign each image (C2PA manifest and IPTC XMP, as PNG and as JPEG) and release the
    signed copies. Fail closed: if any image cannot be signed, the job fails and nothing is
    released."""
    if _begin(job_id, RELEASE, ctx, relay) is None:
        return False
    try:
        with read_scope() as session:
            facts = provenance.release_facts(session=session, job=session.get_one(Job, job_id))
        credentials = provenance.load_credentials(ctx.settings)
        signed = []
        for f in facts:
            png = ctx.blobs.get(f.generated_sha256)
            signed.append((f, provenance.signed_copies(png, f, credentials, ctx.settings)))
    except SigningError as e:
        fail_job(job_id, RELEASE, e.detail)
        return False
    # Signatures differ on every run, so a redelivered task stores other blobs; only the
    # delivery that records below is ever served.
    stored = {f.image_id: (ctx.blobs.put(s.png), ctx.blobs.put(s.jpeg)) for f, s in signed}
    with session_scope() as session:
        job = _reclaim(session, job_id, RELEASE)
        if job is None:
            return False
        now = utcnow()
        for image in job.images:
            image.released_sha256, image.released_jpeg_sha256 = stored[image.id]
            image.released_at = now
        audit.append(
            session=session,
            actor=ACTOR,
            tenant_id=job.tenant_id,
            type="job.released",
            subject=f"job:{job_id}",
            payload={
                "images": [
                    {
                        "id": i.id,
                        "sha256": i.blob_sha256,
                        "signed_sha256": i.released_sha256,
                        "signed_jpeg_sha256": i.released_jpeg_sha256,
                    }
                    for i in job.images
                ],
                "approval_event_hash": facts[0].approval_event_hash if facts else None,
                "signer": {"subject": credentials.subject, "sha256": credentials.fingerprint},
            },
        )
        set_state(session, job, RELEASED, stage=RELEASE)
        return _finish(session, job, RELEASE, "released", ctx, relay)


STAGE_FUNCTIONS = {
    PROMPT_CHECK: prompt_check,
    GENERATE: generate,
    IMAGE_CHECK: image_check,
    ROUTE: route,
    RELEASE: release,
}


def _fail(session: Session, job: Job, stage: str, error: str) -> None:
    if job.state in FINAL_STATES:
        return
    job.error = f"{stage}: {error}"
    run = session.get(JobStage, (job.id, stage))
    if run is None:
        run = JobStage(job_id=job.id, stage=stage, attempts=0, started_at=utcnow())
        session.add(run)
    run.finished_at, run.outcome = utcnow(), "error"
    set_state(session, job, FAILED, stage=stage, error=error)


def fail_job(job_id: str, stage: str, error: str) -> None:
    """Fail closed: the job ends `failed` with the error; none of its images is released."""
    with session_scope() as session:
        _fail(session, _lock_job(session, job_id), stage, error)

"""Thin Celery wrappers: one task per stage, each taking a job id.

No chain is fixed up front: each stage task sends the job on itself once its stage has
recorded its result. When the next stage's queue is one this worker consumes (an embedded
worker consumes both), the task runs that stage in the same process straight away, with no
round trip through the broker, and so on until the job settles or reaches a stage on a
queue this worker does not consume, which it publishes there: a `checks` worker hands
generation to the `gpu` queue and a `gpu`-only worker hands the image check back. A stage
run inline is claimed in the result transaction of the stage before it (`stages.Relay`; route,
one transaction by itself, claims itself) and records its results, state change and audit
events exactly as when its own task runs it, so `enqueue(job_id, first=...)` can start a job
at any stage and every stage task stays runnable on its own.

Redelivery: tasks are acknowledged late, after every stage they ran has recorded and the
next one, if any, is published. A worker that dies at any point in between gives the task
back; the redelivered task finds its own stage finished (the stage's claim guard), sends
the job on from there exactly as the first delivery would have, and so reaches the stage
that was interrupted, whose claim counts the attempt. No stage runs twice: a finished stage
is never claimed again.

Time limits: Celery's limits bound a task, not a stage. A task runs the next stage inline
only while it has used less than INLINE_WITHIN of the soft limit, so that stage still has at
least nine tenths of it and no task runs longer than one stage may (the broker's visibility
timeout is set from that); past it, the next stage is published and gets a task of its own.

A stage that raises or runs out of time fails its job (fail closed) and the job goes no
further; transient infrastructure errors are retried with backoff, up to a cap per stage,
then fail the job.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import InterfaceError, OperationalError

from core.celery_app import CHECKS_QUEUE, ENQUEUE_RETRY_POLICY, GPU_QUEUE, app, consumed_queues
from pipeline import stages, webhooks
from pipeline.errors import EnqueueError
from pipeline.stages import Relay, StageContext

log = logging.getLogger(__name__)


# A dropped connection, a restarting server or a locked database clear up; a bad statement
# or a bad model does not, and is not retried.
TRANSIENT_ERRORS = (BrokerError, OperationalError, InterfaceError)

# A task runs the next stage inline only while it has used less than this share of the
# stage soft time limit (which is its own).
INLINE_WITHIN = 0.1


def queue_of(stage: str) -> str:
    # One generation at a time per GPU: workers with a GPU consume `gpu`, alone or with
    # `checks`; everything else runs on CPU workers.
    return GPU_QUEUE if stage == stages.GENERATE else CHECKS_QUEUE


def _backoff(retries: int) -> float:
    return min(60.0, 2.0**retries) * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not crypto)


def _send(task: Task, stage: str, job_id: str, **options: Any) -> None:
    """Publish `stage`'s task from inside a stage task."""
    try:
        STAGE_TASKS[stage].apply_async((job_id,), queue=queue_of(stage), **options)
    except BrokerError as unreachable:
        # Still unreachable after the publish retries (a minute): acknowledging this task now
        # would leave the job where it is for ever. Its retry finds its own stage finished
        # and sends the job on again.
        raise task.retry(
            exc=unreachable, countdown=_backoff(task.request.retries or 0)
        ) from unreachable


def _retries(task: Task, ran: list[str]) -> int:
    """The retries so far of the stage running now: a stage run inline has had none."""
    return 0 if ran else (task.request.retries or 0)


def _again(task: Task, stage: str, job_id: str, ran: list[str], error: Exception) -> NoReturn:
    """Run `stage` again after a backoff: the task's own stage through Celery's retry; a stage
    run inline by its own task, published with the count of retries it has had."""
    retries = _retries(task, ran)
    countdown = _backoff(retries)
    if not ran:
        raise task.retry(exc=error, countdown=countdown)
    _send(task, stage, job_id, countdown=countdown, retries=retries + 1)
    raise Ignore()


def _fail(task: Task, stage: str, job_id: str, ran: list[str], error: str) -> NoReturn:
    try:
        stages.fail_job(job_id, stage, error)
    except TRANSIENT_ERRORS as unrecorded:
        # The database is still down, so the failure cannot be recorded: dropping the task
        # now would leave the job unfinished for ever. Try again later, with no cap; the
        # next run may find the database back and the stage succeeding after all.
        _again(task, stage, job_id, ran, unrecorded)
    raise Ignore()


def _run_stage(
    task: Task, stage: str, job_id: str, ctx: StageContext, ran: list[str], relay: Relay
) -> bool:
    """Run one stage, failing the job when it raises; whether the job goes on. `ran`: the
    stages this task ran before it (none: it is the task's own stage)."""
    try:
        return stages.STAGE_FUNCTIONS[stage](job_id, ctx, relay)
    except SoftTimeLimitExceeded:
        limit = ctx.settings.worker.stage_soft_time_limit_s
        shared = f" (the limit of its task, which ran {', '.join(ran)} first)" if ran else ""
        _fail(task, stage, job_id, ran, f"timed out after {limit:g} s{shared}")
    except Exception as error:
        transient = isinstance(error, TRANSIENT_ERRORS)
        if transient and _retries(task, ran) < ctx.settings.worker.transient_retries:
            _again(task, stage, job_id, ran, error)
        log.exception("stage %s of job %s failed", stage, job_id)
        _fail(task, stage, job_id, ran, f"{type(error).__name__}: {error}")


def _inline(stage: str, started: float, ctx: StageContext) -> bool:
    """Whether this task runs `stage` itself instead of publishing it."""
    used = time.monotonic() - started
    return (
        queue_of(stage) in consumed_queues()
        and used < INLINE_WITHIN * ctx.settings.worker.stage_soft_time_limit_s
    )


def _run(task: Task, stage: str, job_id: str) -> None:
    """Run `stage` of the job, then the stages after it that this worker may run inline;
    publish the first one it may not. Stops where the job stops: blocked, in review,
    released or failed."""
    started = time.monotonic()
    ctx = stages.default_context()
    relay = Relay(claims_next=lambda following: _inline(following, started, ctx))
    ran: list[str] = []
    while _run_stage(task, stage, job_id, ctx, ran, relay):
        ran.append(stage)
        stage = stages.NEXT_STAGE[stage]
        # A stage claimed for this task runs here whatever the time: its claim is an attempt.
        if not (relay.holds(stage) or _inline(stage, started, ctx)):
            _send(task, stage, job_id)
            return
        log.info("job %s: %s runs inline after %s", job_id, stage, ran[-1])


def _stage_task(stage: str) -> Task:
    # No Celery cap on retries (its default of 3 would end them before worker.transient_retries
    # and let the error through, leaving the job unfinished): `_run_stage` counts them itself.
    @app.task(name=f"pipeline.{stage}", bind=True, max_retries=None)
    def run_stage(self: Task, job_id: str) -> None:
        _run(self, stage, job_id)

    return run_stage


prompt_check = _stage_task(stages.PROMPT_CHECK)
generate = _stage_task(stages.GENERATE)
image_check = _stage_task(stages.IMAGE_CHECK)
route = _stage_task(stages.ROUTE)
release = _stage_task(stages.RELEASE)


# In pipeline order.
STAGE_TASKS = {
    stages.PROMPT_CHECK: prompt_check,
    stages.GENERATE: generate,
    stages.IMAGE_CHECK: image_check,
    stages.ROUTE: route,
    stages.RELEASE: release,
}


def enqueue(job_id: str, first: str = stages.PROMPT_CHECK) -> None:
    """Send the job on from stage `first`: a new job from the start, a job a person approved
    from release, or from generation when it was its image to edit that was approved. The
    stage's task sends the job on from there. Call after the job's transaction has
    committed."""
    try:
        STAGE_TASKS[first].apply_async(
            (job_id,), queue=queue_of(first), retry_policy=ENQUEUE_RETRY_POLICY
        )
    except BrokerError as e:
        raise EnqueueError(f"the task broker is unreachable: {e}") from e


@app.task(name="pipeline.dispatch_webhooks")
def dispatch_webhooks() -> int:
    """Run by Celery beat: send the webhook deliveries that are due (the outbox). Safe to run
    in parallel and to redeliver: each delivery is claimed under a lease."""
    return webhooks.dispatch_due(stages.default_context().settings)

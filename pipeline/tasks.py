"""Thin Celery wrappers: one task per stage, each taking a job id.

A stage that raises or runs out of time fails its job (fail closed) and stops the chain;
transient infrastructure errors are retried with backoff, up to a cap, then fail the job.
"""

from __future__ import annotations

import logging
import random
from typing import NoReturn

from celery import Task, chain
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import InterfaceError, OperationalError

from core.celery_app import ENQUEUE_RETRY_POLICY, GPU_QUEUE, app
from pipeline import stages, webhooks
from pipeline.errors import EnqueueError

log = logging.getLogger(__name__)


# A dropped connection, a restarting server or a locked database clear up; a bad statement
# or a bad model does not, and is not retried.
TRANSIENT_ERRORS = (BrokerError, OperationalError, InterfaceError)


def _backoff(retries: int) -> float:
    return min(60.0, 2.0**retries) * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not crypto)


def _fail(task: Task, stage: str, job_id: str, error: str) -> NoReturn:
    try:
        stages.fail_job(job_id, stage, error)
    except TRANSIENT_ERRORS as unrecorded:
        # The database is still down, so the failure cannot be recorded: dropping the task
        # now would leave the job unfinished for ever. Try again later, with no cap; the
        # next run may find the database back and the stage succeeding after all.
        raise task.retry(exc=unrecorded, countdown=_backoff(task.request.retries or 0)) from None
    raise Ignore()


def _run(task: Task, stage: str, job_id: str) -> None:
    ctx = stages.default_context()
    try:
        goes_on = stages.STAGE_FUNCTIONS[stage](job_id, ctx)
    except SoftTimeLimitExceeded:
        limit = ctx.settings.worker.stage_soft_time_limit_s
        _fail(task, stage, job_id, f"timed out after {limit:g} s")
    except Exception as error:
        retries = task.request.retries or 0
        if isinstance(error, TRANSIENT_ERRORS) and retries < ctx.settings.worker.transient_retries:
            raise task.retry(exc=error, countdown=_backoff(retries)) from error
        log.exception("stage %s of job %s failed", stage, job_id)
        _fail(task, stage, job_id, f"{type(error).__name__}: {error}")
    if not goes_on:
        # Blocked, in review, released or failed: the rest of the chain has nothing to do.
        raise Ignore()


def _stage_task(stage: str) -> Task:
    # No Celery cap on retries (its default of 3 would end them before worker.transient_retries
    # and let the error through, leaving the job unfinished): `_run` counts them itself.
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
    """Send the job down the chain from stage `first`: a new job from the start, a job a
    person approved from release, or from generation when it was its image to edit that was
    approved. Call after the job's transaction has committed."""
    names = list(STAGE_TASKS)
    signatures = []
    for name in names[names.index(first) :]:
        signature = STAGE_TASKS[name].si(job_id)
        if name == stages.GENERATE:
            # One generation at a time per GPU: workers with a GPU consume this queue alone.
            signature = signature.set(queue=GPU_QUEUE)
        signatures.append(signature)
    try:
        chain(*signatures).apply_async(retry_policy=ENQUEUE_RETRY_POLICY)
    except BrokerError as e:
        raise EnqueueError(f"the task broker is unreachable: {e}") from e


@app.task(name="pipeline.dispatch_webhooks")
def dispatch_webhooks() -> int:
    """Run by Celery beat: send the webhook deliveries that are due (the outbox). Safe to run
    in parallel and to redeliver: each delivery is claimed under a lease."""
    return webhooks.dispatch_due(stages.default_context().settings)

"""Thin Celery wrappers: one task per stage, each taking a job id.

A stage that raises or runs out of time fails its job (fail closed) and stops the chain;
transient infrastructure errors are retried with backoff, up to a cap, then fail the job.
"""

from __future__ import annotations

import logging
import random

from celery import Task, chain
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import InterfaceError, OperationalError

from core.celery_app import GPU_QUEUE, app
from pipeline import stages, webhooks
from pipeline.errors import EnqueueError

log = logging.getLogger(__name__)


# A dropped connection, a restarting server or a locked database clear up; a bad statement
# or a bad model does not, and is not retried.
TRANSIENT_ERRORS = (BrokerError, OperationalError, InterfaceError)


def _backoff(retries: int) -> float:
    return min(60.0, 2.0**retries) * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not crypto)


def _run(task: Task, stage: str, job_id: str) -> None:
    ctx = stages.default_context()
    try:
        goes_on = stages.STAGE_FUNCTIONS[stage](job_id, ctx)
    except SoftTimeLimitExceeded:
        limit = ctx.settings.worker.stage_soft_time_limit_s
        stages.fail_job(job_id, stage, f"timed out after {limit:g} s")
        raise Ignore() from None
    except Exception as error:
        retries = task.request.retries or 0
        if isinstance(error, TRANSIENT_ERRORS) and retries < ctx.settings.worker.transient_retries:
            raise task.retry(exc=error, countdown=_backoff(retries)) from error
        log.exception("stage %s of job %s failed", stage, job_id)
        stages.fail_job(job_id, stage, f"{type(error).__name__}: {error}")
        raise Ignore() from None
    if not goes_on:
        # Blocked, in review, released or failed: the rest of the chain has nothing to do.
        raise Ignore()


def _stage_task(stage: str) -> Task:
    @app.task(name=f"pipeline.{stage}", bind=True)
    def run_stage(self: Task, job_id: str) -> None:
        _run(self, stage, job_id)

    return run_stage


prompt_check = _stage_task(stages.PROMPT_CHECK)
generate = _stage_task(stages.GENERATE)
image_check = _stage_task(stages.IMAGE_CHECK)
route = _stage_task(stages.ROUTE)
release = _stage_task(stages.RELEASE)


def enqueue(job_id: str) -> None:
    """Send the job down the chain. Call after the job's transaction has committed."""
    pipeline = chain(
        prompt_check.si(job_id),
        # One generation at a time per GPU: workers with a GPU consume this queue alone.
        generate.si(job_id).set(queue=GPU_QUEUE),
        image_check.si(job_id),
        route.si(job_id),
        release.si(job_id),
    )
    try:
        pipeline.apply_async()
    except BrokerError as e:
        raise EnqueueError(f"the task broker is unreachable: {e}") from e


def enqueue_release(job_id: str) -> None:
    """Release a job a person approved. Call after the decision's transaction has committed."""
    try:
        release.si(job_id).apply_async()
    except BrokerError as e:
        raise EnqueueError(f"the task broker is unreachable: {e}") from e


@app.task(name="pipeline.dispatch_webhooks")
def dispatch_webhooks() -> int:
    """Run by Celery beat: send the webhook deliveries that are due (the outbox). Safe to run
    in parallel and to redeliver: each delivery is claimed under a lease."""
    return webhooks.dispatch_due(stages.default_context().settings)

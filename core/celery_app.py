"""The one Celery app. Stage tasks register on it from `pipeline.tasks`.

Queues: `gpu` for generation (one task at a time per GPU), `checks` for everything else.
An embedded deployment runs one worker that consumes both. A stage task runs the job's next
stage itself when the next stage's queue is one its worker consumes (`consumed_queues`).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init

from core.db import dispose_engines
from core.settings import Settings, get_settings

GPU_QUEUE = "gpu"
CHECKS_QUEUE = "checks"

# How hard a publish retries while the broker is unreachable: a worker waits out a broker
# restart; a request to the API is answered 503 within a second or so (Celery's default).
WORKER_RETRY_POLICY = {
    "max_retries": 30,
    "interval_start": 0,
    "interval_step": 1,
    "interval_max": 2,
}
ENQUEUE_RETRY_POLICY = {
    "max_retries": 3,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 1,
}

# kombu's SQLAlchemy transport polls its tables; its default of 1 s adds up to a second to every
# stage. It is a class attribute because `broker_transport_options` goes to `create_engine`.
EMBEDDED_BROKER_POLL_S = 0.1

app = Celery("clearance")

# The queues the worker of this process consumes, set when it starts (pool children inherit
# it); empty outside a worker (the API, a test calling a task directly).
_consumed: frozenset[str] = frozenset()


def configure(settings: Settings | None = None) -> Celery:
    """Point the app at the configured broker. Called by the API and the worker at start."""
    settings = settings or get_settings()
    broker = settings.broker
    transport_options: dict[str, Any] = {}
    if broker.startswith("sqla+"):
        from kombu.transport import sqlalchemy as kombu_sqlalchemy

        kombu_sqlalchemy.Transport.polling_interval = EMBEDDED_BROKER_POLL_S
        if broker.startswith("sqla+sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            # Handed to create_engine: wait for the broker file's lock instead of failing.
            transport_options = {"connect_args": {"timeout": 30, "check_same_thread": False}}
    elif broker.startswith("redis"):
        # Unacknowledged tasks come back after this long; longer than any stage may run.
        visibility = int(settings.worker.stage_time_limit_s * 3)
        transport_options = {
            "visibility_timeout": visibility,
            # kombu looks for such tasks at a worker's start and then only every 100 s
            # (every 10th sweep of 10 s): a task whose worker was killed would wait up to
            # that long past its timeout. Sweep every twentieth of the timeout instead.
            "unacked_restore_interval": max(1, visibility // 20),
            "unacked_restore_throttle": 1,
        }
    app.conf.update(
        broker_url=broker,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        # A worker sends a job's next stage when a stage ends. Celery gives up after about
        # a second; a broker restarting then would leave the job with no next stage until
        # its task came back after the visibility timeout. Wait up to a minute instead
        # (the API enqueues with ENQUEUE_RETRY_POLICY, so a request is not held that long).
        task_publish_retry_policy=WORKER_RETRY_POLICY,
        task_acks_late=True,
        # A worker killed mid-task gives the task back; the stage guard counts the attempts.
        task_reject_on_worker_lost=True,
        task_default_queue=CHECKS_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker.concurrency,
        worker_max_tasks_per_child=settings.worker.max_tasks_per_child,
        worker_max_memory_per_child=settings.worker.max_memory_per_child_mb * 1024,
        worker_hijack_root_logger=False,
        task_soft_time_limit=settings.worker.stage_soft_time_limit_s,
        task_time_limit=settings.worker.stage_time_limit_s,
        timezone="UTC",
        enable_utc=True,
        beat_schedule_filename=str(settings.data_dir / "celerybeat-schedule"),
    )
    # Time-based audit checkpoints; appends write the count-based ones themselves.
    app.conf.beat_schedule = {
        **(app.conf.beat_schedule or {}),
        "audit-checkpoint": {
            "task": "audit.checkpoint",
            "schedule": settings.audit.checkpoint_every_minutes * 60,
        },
        # Review tasks past their SLA go to legal by themselves.
        "review-escalate-overdue": {
            "task": "review.escalate_overdue",
            "schedule": settings.review.escalation_check_seconds,
        },
        # The webhook outbox: deliveries written with a job's state change are sent from here.
        "webhooks-dispatch": {
            "task": "pipeline.dispatch_webhooks",
            "schedule": settings.webhooks.dispatch_every_s,
            # A run that waited longer than the interval is superseded by the next one.
            "options": {"expires": settings.webhooks.dispatch_every_s},
        },
    }
    return app


def consumed_queues() -> frozenset[str]:
    """The queues this process's worker consumes; none outside a worker."""
    return _consumed


@worker_init.connect
def _remember_queues(sender: Any, **_: Any) -> None:
    # Sent once `--queues` has been applied, before the pool children are forked.
    global _consumed
    _consumed = frozenset(sender.app.amqp.queues.consume_from)


@worker_process_init.connect
def _fresh_connections_in_child(**_: Any) -> None:
    dispose_engines()

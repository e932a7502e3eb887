"""How a stage task hands the job on (pipeline/tasks.py), with real `clearance worker`
processes on the test's database (SQLite and PostgreSQL) and the embedded broker: the next
stage runs inline when its queue is one the worker consumes and is published to its queue
otherwise; a task delivered again for a stage already finished continues the job from where
it is and runs no stage twice. And in this process: a task that has used a tenth of its time
limit publishes the next stage instead of running it."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from audit.models import AuditEvent
from core.celery_app import CHECKS_QUEUE, GPU_QUEUE
from core.db import read_scope
from core.settings import Settings
from pipeline import stages, tasks
from pipeline.models import SETTLED_STATES, Job, JobImage, JobStage
from tests.conftest import reset_caches
from tests.e2e.conftest import Service
from tests.pipeline.conftest import NewJobFactory
from tests.reliability.conftest import wait_for

LATER_STAGES = stages.STAGES[1:]


@pytest.fixture
def service(settings: Settings, tmp_path: Path) -> Iterator[Service]:
    """Starts workers on this test's settings (its database, data folder and the embedded
    broker, from the environment the `settings` fixture set); stops them afterwards."""
    workers = Service(tmp_path, {})
    yield workers
    workers.stop_all()


def log_of(service: Service, name: str) -> str:
    path = service.root / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_for_line(service: Service, name: str, pattern: str) -> None:
    wait_for(
        f"{pattern!r} in the log of {name}",
        lambda: re.search(pattern, log_of(service, name), re.MULTILINE) is not None,
        180,
        service.logs,
    )


def received(service: Service, name: str, stage: str) -> int:
    return len(re.findall(rf"Task pipeline\.{stage}\[[\w-]+\] received", log_of(service, name)))


def inline(service: Service, name: str, stage: str) -> int:
    return len(re.findall(rf"{stage} runs inline after \w+", log_of(service, name)))


def wait_settled(service: Service, job_id: str) -> Job:
    def settled() -> bool:
        with read_scope() as session:
            return session.get_one(Job, job_id).state in SETTLED_STATES

    wait_for(f"job {job_id} to settle", settled, 180, service.logs)
    with read_scope() as session:
        job = session.get_one(Job, job_id)
        _ = job.stages, job.images  # loaded while the session is open
        return job


def attempts(job: Job) -> dict[str, int]:
    return {run.stage: run.attempts for run in job.stages}


def queued(broker_file: Path) -> list[tuple[str, str, str]]:
    """(queue, task name, its arguments) of each message waiting in the embedded broker."""
    with sqlite3.connect(broker_file) as connection:
        try:
            rows = connection.execute(
                "SELECT q.name, m.payload FROM kombu_message m"
                " JOIN kombu_queue q ON q.id = m.queue_id WHERE m.visible"
            ).fetchall()
        except sqlite3.OperationalError:  # no tables yet: nothing was ever sent
            return []
    return [
        (queue, message["headers"]["task"], message["headers"]["argsrepr"])
        for queue, payload in rows
        for message in [json.loads(payload)]
    ]


def audit_counts(job_id: str) -> Counter[str]:
    with read_scope() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.subject == f"job:{job_id}"))
        return Counter(event.type for event in events)


@pytest.mark.e2e
def test_a_worker_consuming_both_queues_runs_the_job_in_one_delivery(
    service: Service, new_job: NewJobFactory, broker_file: Path
) -> None:
    job_id = new_job()
    service.start("worker", "worker")
    tasks.enqueue(job_id)

    job = wait_settled(service, job_id)
    assert job.state == "released", service.logs()
    assert attempts(job) == dict.fromkeys(stages.STAGES, 1)
    # One task delivered; every later stage ran inline in it, none through the broker.
    assert received(service, "worker", stages.PROMPT_CHECK) == 1
    for stage in LATER_STAGES:
        assert received(service, "worker", stage) == 0
        assert inline(service, "worker", stage) == 1
    assert queued(broker_file) == []


@pytest.mark.e2e
def test_a_checks_worker_hands_generation_to_the_gpu_queue_and_gets_the_checks_back(
    service: Service, new_job: NewJobFactory, broker_file: Path
) -> None:
    job_id = new_job()
    service.start("checks", "worker", "--queues", "checks")
    tasks.enqueue(job_id)
    wait_for_line(service, "checks", r"Task pipeline\.prompt_check\[[\w-]+\] succeeded")

    # Its task ended: prompt_check recorded, generation not started here but waiting on
    # the `gpu` queue, for a worker that has a GPU.
    with read_scope() as session:
        runs = session.scalars(select(JobStage).where(JobStage.job_id == job_id)).all()
        assert [(run.stage, run.finished_at is not None) for run in runs] == [
            (stages.PROMPT_CHECK, True)
        ]
    assert queued(broker_file) == [("gpu", "pipeline.generate", repr((job_id,)))]
    assert inline(service, "checks", stages.GENERATE) == 0

    service.start("gpu", "worker", "--queues", "gpu")
    job = wait_settled(service, job_id)
    assert job.state == "released", service.logs()
    assert attempts(job) == dict.fromkeys(stages.STAGES, 1)
    # The GPU worker ran generation alone and handed the image check back to `checks`,
    # whose worker ran the rest inline.
    assert received(service, "gpu", stages.GENERATE) == 1
    assert all(inline(service, "gpu", stage) == 0 for stage in LATER_STAGES)
    assert received(service, "checks", stages.IMAGE_CHECK) == 1
    assert inline(service, "checks", stages.ROUTE) == 1
    assert inline(service, "checks", stages.RELEASE) == 1
    assert queued(broker_file) == []


@pytest.mark.e2e
def test_a_task_delivered_again_continues_the_job_from_where_it_is(
    service: Service, new_job: NewJobFactory, broker_file: Path
) -> None:
    """What a worker killed at the wrong moment leaves behind, and the broker's redelivery of
    the job's prompt_check task: each job ends released with every stage run once, apart
    from the one interrupted, which runs again."""
    ctx = stages.default_context()
    # Killed after prompt_check recorded, before the next stage was published.
    recorded = new_job(seed=1)
    assert stages.prompt_check(recorded, ctx)
    # Killed inside generation run inline: claimed in prompt_check's result transaction,
    # never finished.
    interrupted = new_job(seed=2)
    relay = stages.Relay(claims_next=lambda stage: True)
    assert stages.prompt_check(interrupted, ctx, relay)
    assert relay.holds(stages.GENERATE)

    service.start("worker", "worker")
    for job_id in (recorded, interrupted):
        tasks.prompt_check.apply_async((job_id,), queue="checks")

    first = wait_settled(service, recorded)
    assert first.state == "released", service.logs()
    assert attempts(first) == dict.fromkeys(stages.STAGES, 1)
    second = wait_settled(service, interrupted)
    assert second.state == "released", service.logs()
    assert attempts(second) == dict.fromkeys(stages.STAGES, 1) | {stages.GENERATE: 2}
    for job in (first, second):
        assert len(job.images) == 1
        events = audit_counts(job.id)
        assert all(events[f"{stage}.decided"] == 1 for stage in ("prompt_check", "route"))
        assert events["images.generated"] == events["job.released"] == 1

    # Delivered once more after the job was released: nothing is run or recorded again.
    before = audit_counts(recorded)
    again = tasks.prompt_check.apply_async((recorded,), queue="checks")
    wait_for_line(service, "worker", rf"Task pipeline\.prompt_check\[{again.id}\] succeeded")
    assert audit_counts(recorded) == before
    with read_scope() as session:
        images = session.scalars(select(JobImage).where(JobImage.job_id == recorded)).all()
        assert len(images) == 1
    assert queued(broker_file) == []


def test_past_a_tenth_of_its_time_limit_a_task_publishes_the_next_stage(
    new_job: NewJobFactory, broker_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery's time limits bound a task: a task runs the next stage only while that stage
    keeps nine tenths of the limit, otherwise the stage gets a task (and a limit) of its own."""
    monkeypatch.setattr(tasks, "consumed_queues", lambda: frozenset({GPU_QUEUE, CHECKS_QUEUE}))
    quick = new_job(seed=1)
    tasks.prompt_check.apply(args=(quick,))
    with read_scope() as session:
        assert session.get_one(Job, quick).state == "released"
    assert queued(broker_file) == []

    # A limit of a millisecond: prompt_check alone takes more than a tenth of it.
    monkeypatch.setenv("CLEARANCE_WORKER__STAGE_SOFT_TIME_LIMIT_S", "0.001")
    reset_caches()
    slow = new_job(seed=2)
    tasks.prompt_check.apply(args=(slow,))
    with read_scope() as session:
        runs = session.scalars(select(JobStage).where(JobStage.job_id == slow)).all()
        assert [run.stage for run in runs] == [stages.PROMPT_CHECK]
    assert queued(broker_file) == [("gpu", "pipeline.generate", repr((slow,)))]

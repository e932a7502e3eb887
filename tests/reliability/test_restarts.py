"""The broker and the database restarted under a running service, each a server of the
test's own (the machine's Redis and PostgreSQL are never touched).

Redis, restarted while two workers are in the middle of 200 jobs: no job is lost, every
one ends released. While it is down, a submission is refused with 503 at once (the job it
stored is failed with the reason, not left queued for ever).

PostgreSQL, restarted while a job is being generated: while it is down the API answers
503 with the usual error body; once it is back the API answers again without being
restarted, and the workers retry the interrupted stages until every job is released. In
this process, the same retries with a longer outage: a stage retries as often as
worker.transient_retries says, and a failure that cannot be recorded yet is retried, never
dropped (either would leave the job unfinished for ever)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from core.db import read_scope
from core.settings import Settings
from pipeline import stages, tasks
from pipeline.models import Job, JobStage
from tests.conftest import TenantKeys
from tests.reliability.conftest import JOB, PostgresCluster, RedisServer, Stack, wait_for
from tests.reliability.test_check_faults import new_job

REDIS_RUN_JOBS = 200
POSTGRES_RUN_JOBS = 10
# Long enough for the workers to run into the outage: stages end, publish the next stage,
# write to the database, and find the server gone.
OUTAGE_S = 5


def first_job_under_way(stack: Stack, job_ids: list[str]) -> None:
    """Wait until some stage of these jobs has started and not finished."""
    wait_for(
        "a stage under way",
        lambda: bool(
            stack.query(
                "SELECT 1 FROM job_stages WHERE finished_at IS NULL AND job_id = ANY(:ids)",
                ids=job_ids,
            )
        ),
        300,
        stack.logs,
    )


@pytest.mark.e2e
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.timeout(1800)
def test_a_redis_restart_loses_no_job(
    private_redis: RedisServer, postgres_database: str, make_stack: Callable[[str, str], Stack]
) -> None:
    stack = make_stack(postgres_database, private_redis.url)
    job_ids = stack.submit_jobs(REDIS_RUN_JOBS)
    stack.start_worker("worker-1")
    stack.start_worker("worker-2")
    # Well into the run (both workers warm, a tenth of the stages done), a stage under way.
    wait_for(
        "a tenth of the stages to finish",
        lambda: (
            stack.query("SELECT count(*) FROM job_stages WHERE finished_at IS NOT NULL")[0][0]
            >= REDIS_RUN_JOBS * 5 // 10
        ),
        600,
        stack.logs,
    )
    first_job_under_way(stack, job_ids)

    private_redis.stop()
    with stack.http() as client:
        refused = client.post("/v1/jobs", json=JOB | {"seed": REDIS_RUN_JOBS})
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "broker_unavailable"
    time.sleep(OUTAGE_S)
    private_redis.start()

    # The API reconnects by itself; a job submitted now is part of the run.
    job_ids += stack.submit_jobs(1)
    assert stack.wait_all_settled(job_ids, timeout=1200) == {"released": len(job_ids)}, stack.logs()
    # The refused submission's job is not lost either: it is final, with the reason.
    failed = stack.query("SELECT state, error FROM jobs WHERE id <> ALL(:ids)", ids=job_ids)
    assert [(state, "broker" in error) for state, error in failed] == [("failed", True)]


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_a_postgres_restart_answers_503_then_recovers(
    private_postgres: PostgresCluster,
    private_redis: RedisServer,
    make_stack: Callable[[str, str], Stack],
) -> None:
    stack = make_stack(private_postgres.create_database("clearance"), private_redis.url)
    job_ids = stack.submit_jobs(POSTGRES_RUN_JOBS)
    stack.start_worker()
    # Generation under way (it writes the job's progress as it goes): the outage lands in
    # the middle of a stage.
    wait_for(
        "a generation under way",
        lambda: bool(
            stack.query(
                "SELECT 1 FROM job_stages s JOIN jobs j ON j.id = s.job_id WHERE s.stage ="
                " 'generate' AND s.finished_at IS NULL AND j.progress_step IS NOT NULL"
            )
        ),
        300,
        stack.logs,
    )

    stack.engine.dispose()  # the test's own view holds no connection through the outage
    private_postgres.stop()
    with stack.http() as client:
        for answer in (
            client.get(f"/v1/jobs/{job_ids[0]}"),
            client.get("/v1/jobs"),
            client.post("/v1/jobs", json=JOB | {"seed": POSTGRES_RUN_JOBS}),
        ):
            assert answer.status_code == 503, answer.text
            body = answer.json()
            assert body["error"] == "unavailable", body
            assert "database" in body["detail"], body
        assert client.get("/healthz").status_code == 503
        time.sleep(OUTAGE_S)
        private_postgres.start()

        # The same API process answers again, with no restart.
        def answers() -> bool:
            try:
                return client.get(f"/v1/jobs/{job_ids[0]}").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the API to answer after the restart", answers, 60, stack.logs)

    assert stack.wait_all_settled(job_ids, timeout=600) == {"released": POSTGRES_RUN_JOBS}, (
        stack.logs()
    )
    # The workers got there by retrying: the stage that met the outage was retried.
    worker_log = (stack.root / "worker.log").read_text()
    retried = [line for line in worker_log.splitlines() if "retry: Retry in" in line]
    assert any("OperationalError" in line for line in retried), stack.logs()


DATABASE_DOWN = OperationalError("SELECT 1", {}, ConnectionRefusedError("the server is down"))


def down_for(calls: int, then: Callable[..., object]) -> Callable[..., object]:
    """A stand-in that fails as an unreachable database `calls` times, then calls `then`."""
    made: list[object] = []

    def call(*args: object) -> object:
        made.append(args)
        if len(made) <= calls:
            raise DATABASE_DOWN
        return then(*args)

    return call


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "_backoff", lambda retries: 0)


def test_a_stage_retries_as_often_as_configured(
    settings: Settings, tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch, no_backoff: None
) -> None:
    job_id = new_job(settings, tenant)
    outage = settings.worker.transient_retries  # every retry but the last meets it
    real = stages.STAGE_FUNCTIONS[stages.PROMPT_CHECK]
    monkeypatch.setitem(stages.STAGE_FUNCTIONS, stages.PROMPT_CHECK, down_for(outage, real))
    tasks.prompt_check.apply(args=(job_id,))
    with read_scope() as session:
        run = session.get_one(JobStage, (job_id, stages.PROMPT_CHECK))
        assert (run.outcome, run.attempts) == ("allow", 1)


def test_a_failure_that_cannot_be_recorded_yet_is_retried(
    settings: Settings, tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch, no_backoff: None
) -> None:
    """The outage outlasts the retries; failing the job meets it twice more; then the
    database is back and the job is failed, with the error."""
    job_id = new_job(settings, tenant)
    forever = down_for(10**6, stages.STAGE_FUNCTIONS[stages.PROMPT_CHECK])
    monkeypatch.setitem(stages.STAGE_FUNCTIONS, stages.PROMPT_CHECK, forever)
    monkeypatch.setattr(stages, "fail_job", down_for(2, stages.fail_job))
    tasks.prompt_check.apply(args=(job_id,))
    with read_scope() as session:
        job = session.get_one(Job, job_id)
        assert job.state == "failed"
        assert job.error is not None
        assert "OperationalError" in job.error

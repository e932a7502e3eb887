"""A worker killed with SIGKILL (the worker and its pool processes, as the kernel's OOM
killer or a lost machine would) in the middle of generation and in the middle of an image
check, on PostgreSQL and Redis, and started again each time: every job still ends
released, with one set of images, one charge per image and one of each audit event, and
the audit chain verifies.

Each kill lands inside its stage by construction, not by timing: the test watches the
database for a stage that has started and not finished (for generation: denoising has
begun, the job shows progress), stops the worker's processes (SIGSTOP), checks that the
stage is still unfinished, and only then kills them. After the kill the stage's row is
still unfinished: the work was lost mid-way, and only a redelivered task can finish it."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest

from pipeline.stages import GENERATE, IMAGE_CHECK
from tests.reliability.conftest import JOB, RedisServer, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(1800)]

JOBS = 100
# Where the SIGKILLs land, and how many in each stage.
KILLS = {GENERATE: 5, IMAGE_CHECK: 5}
# A stage that has started and not finished, of a job not killed yet. Generation writes
# the job's progress from its first denoising step on, so a generation with progress is
# past loading the model and into the images themselves.
UNDER_WAY = {
    GENERATE: "SELECT s.job_id FROM job_stages s JOIN jobs j ON j.id = s.job_id"
    " WHERE s.stage = 'generate' AND s.finished_at IS NULL AND j.progress_step IS NOT NULL"
    " AND s.job_id <> ALL(:killed)",
    IMAGE_CHECK: "SELECT job_id FROM job_stages"
    " WHERE stage = 'image_check' AND finished_at IS NULL AND job_id <> ALL(:killed)",
}
# Once each per job; state changes are checked separately (one per state reached).
ONCE = ("job.created", "prompt_check.decided", "images.generated", "image_check.decided",
        "route.decided", "job.released")  # fmt: skip


def unfinished(stack: Stack, job_id: str, stage: str) -> bool:
    rows = stack.query(
        "SELECT finished_at IS NULL FROM job_stages WHERE job_id = :job AND stage = :stage",
        job=job_id,
        stage=stage,
    )
    return bool(rows and rows[0][0])


def kill_inside(stack: Stack, owed: Counter[str], killed: list[str]) -> tuple[str, str]:
    """SIGKILL the worker while a stage still owed a kill is under way for some job not
    killed yet; that job and stage."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for stage in [stage for stage, count in owed.items() if count]:
            found = stack.query(UNDER_WAY[stage], killed=killed)
            if not found:
                continue
            job_id = str(found[0][0])
            group = stack.processes["worker"].pid
            os.killpg(group, signal.SIGSTOP)
            # A commit already on the wire when the worker stopped reaches the server now.
            time.sleep(0.2)
            if unfinished(stack, job_id, stage):
                stack.kill()
                assert unfinished(stack, job_id, stage), f"{stage} of {job_id} finished"
                owed[stage] -= 1
                return job_id, stage
            os.killpg(group, signal.SIGCONT)  # it finished meanwhile: wait for another
        time.sleep(0.02)
    raise AssertionError(f"no stage of {sorted(+owed)} under way for 600 s\n{stack.logs()}")


def test_sigkill_mid_stage_loses_nothing_and_charges_once(
    private_redis: RedisServer, postgres_database: str, make_stack: Callable[[str, str], Stack]
) -> None:
    stack = make_stack(postgres_database, private_redis.url)
    job_ids = stack.submit_jobs(JOBS)
    stack.start_worker()

    owed = Counter(KILLS)
    kills: list[tuple[str, str]] = []
    while owed.total():
        kills.append(kill_inside(stack, owed, [job for job, _ in kills]))
        stack.start_worker()

    assert stack.wait_all_settled(job_ids, timeout=1200) == {"released": JOBS}, stack.logs()

    # Each killed stage was started again, by the redelivered task, and finished that time.
    attempts = dict(
        stack.query(
            "SELECT job_id || ':' || stage, attempts FROM job_stages WHERE job_id = ANY(:ids)",
            ids=job_ids,
        )
    )
    assert [attempts[f"{job}:{stage}"] for job, stage in kills] == [2] * len(kills)

    # One set of images per job, one charge per image.
    images = stack.query(
        "SELECT job_id, index, seed, blob_sha256, released_sha256, released_jpeg_sha256"
        " FROM job_images WHERE job_id = ANY(:ids)",
        ids=job_ids,
    )
    per_job = Counter(row[0] for row in images)
    assert len(per_job) == JOBS
    assert set(per_job.values()) == {JOB["n_images"]}
    assert len({(row[0], row[1]) for row in images}) == len(images)
    charges = Counter(
        job for (job,) in stack.query(
            "SELECT job_id FROM cost_entries WHERE job_id = ANY(:ids)", ids=job_ids
        )
    )  # fmt: skip
    assert charges == per_job

    # Content-addressed blobs: a generation killed after storing its images and run again
    # wrote the same files. Nothing is stored that no row refers to.
    referenced = {sha for row in images for sha in row[3:]}
    stored = {
        path.name
        for path in (stack.root / "var" / "blobs").rglob("*")
        if re.fullmatch(r"[0-9a-f]{64}", path.name)
    }
    assert stored == referenced

    # One of each audit event per job, one state change into each state.
    events: dict[str, Counter[str]] = {job: Counter() for job in job_ids}
    for subject, kind, payload in stack.query(
        "SELECT subject, type, payload FROM audit_events WHERE subject LIKE 'job:%'"
    ):
        job = subject.removeprefix("job:")
        if job in events:
            to = json.loads(payload)["to"] if kind == "job.state_changed" else ""
            events[job][f"{kind}{':' + to if to else ''}"] += 1
    for job, counted in events.items():
        assert set(counted.values()) == {1}, (job, counted)
        assert all(counted[kind] == 1 for kind in ONCE), (job, counted)

    verified = stack.cli("audit", "verify")
    assert "audit chain OK" in verified.stdout

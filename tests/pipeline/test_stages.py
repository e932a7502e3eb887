"""The stages against a real database (SQLite and PostgreSQL) and the real tiny model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image, ImageEnhance
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from audit import service as audit
from audit.models import AuditEvent
from core.blobs import BlobStore
from core.db import read_scope, session_scope
from core.settings import Settings
from generation import service as generation
from pipeline import stages, tasks
from pipeline.models import Job, JobDecision, JobImage, JobStage
from reference_index.checks import check_image
from tests.api.test_dashboard import png
from tests.conftest import reset_caches
from tests.pipeline.conftest import NewJobFactory, run_all_stages
from tests.reference_index.test_keypoints import letters_covered, sign_with_letters


def load(job_id: str) -> Job:
    with read_scope() as session:
        job = session.get_one(Job, job_id)
        # Touch the relationships while the session is open.
        _ = (job.stages, job.decisions, job.images)
        return job


def counts(job_id: str) -> tuple[int, int, int, int]:
    """(images, decisions, finished stages, audit events) of one job."""
    with read_scope() as session:
        return (
            session.scalar(select(func.count()).where(JobImage.job_id == job_id)) or 0,
            session.scalar(select(func.count()).where(JobDecision.job_id == job_id)) or 0,
            session.scalar(
                select(func.count()).where(
                    JobStage.job_id == job_id, JobStage.finished_at.is_not(None)
                )
            )
            or 0,
            session.scalar(select(func.count()).where(AuditEvent.subject == f"job:{job_id}")) or 0,
        )


def chain_verifies() -> bool:
    with read_scope() as session:
        return audit.verify(session=session).ok


def test_a_clean_job_is_released_with_every_stage_recorded(new_job: NewJobFactory) -> None:
    job_id = new_job()
    assert run_all_stages(job_id) == list(stages.STAGES)
    job = load(job_id)
    assert job.state == "released"
    assert "offline fallback" in (job.model or "")
    assert [s.stage for s in job.stages] == list(stages.STAGES)
    assert all(s.finished_at is not None and s.attempts == 1 for s in job.stages)
    assert {d.stage: d.decision for d in job.decisions} == {
        "prompt_check": "allow",
        "image_check": "approve",
        "route": "approved",
    }
    assert len(job.images) == 1
    assert job.images[0].released_at is not None
    assert job.images[0].check is not None
    assert job.images[0].check["decision"] == "approve"
    assert chain_verifies()


def test_every_state_change_is_in_the_audit_log(new_job: NewJobFactory) -> None:
    job_id = new_job()
    run_all_stages(job_id)
    with read_scope() as session:
        events = audit.events_for(session=session, subject=f"job:{job_id}")
    changes = [json.loads(e.payload)["to"] for e in events if e.type == "job.state_changed"]
    assert changes == [
        "checking_prompt",
        "generating",
        "checking_images",
        "approved",
        "released",
    ]
    types = [e.type for e in events]
    assert types[0] == "job.created"
    assert {"prompt_check.decided", "images.generated", "image_check.decided"} <= set(types)


def test_redelivered_stages_add_nothing(new_job: NewJobFactory) -> None:
    """A task delivered again after it finished is a no-op: no second image, decision or
    audit event."""
    job_id = new_job(n_images=2)
    run_all_stages(job_id)
    before = counts(job_id)
    for stage in stages.STAGES:
        stages.STAGE_FUNCTIONS[stage](job_id, stages.default_context())
    assert counts(job_id) == before
    assert before[0] == 2
    assert chain_verifies()


def test_a_stage_interrupted_mid_way_runs_again_once(new_job: NewJobFactory) -> None:
    """A worker killed inside `generate` leaves the stage claimed but unfinished; the
    redelivered task runs it to completion with exactly one set of images."""
    job_id = new_job(n_images=2)
    ctx = stages.default_context()
    stages.prompt_check(job_id, ctx)
    with session_scope() as session:
        assert stages._claim(session, job_id, stages.GENERATE, 3) is not None
    # ...the worker dies here; the broker redelivers the task:
    assert stages.generate(job_id, ctx)
    job = load(job_id)
    generate_run = next(s for s in job.stages if s.stage == stages.GENERATE)
    assert generate_run.attempts == 2
    assert len(job.images) == 2


def test_a_stage_that_keeps_dying_fails_the_job(new_job: NewJobFactory, settings: Settings) -> None:
    job_id = new_job()
    stages.prompt_check(job_id, stages.default_context())
    limit = settings.worker.max_stage_attempts
    for _ in range(limit):
        with session_scope() as session:
            assert stages._claim(session, job_id, stages.GENERATE, limit) is not None
    assert not stages.generate(job_id, stages.default_context())
    job = load(job_id)
    assert job.state == "failed"
    assert f"interrupted {limit} times" in (job.error or "")
    assert job.images == []


def test_a_licence_violation_is_blocked_before_generation(new_job: NewJobFactory) -> None:
    job_id = new_job(variant="dev", use="commercial")
    assert run_all_stages(job_id) == [stages.PROMPT_CHECK]
    # Even if the next task were delivered, it would do nothing.
    assert not stages.generate(job_id, stages.default_context())
    job = load(job_id)
    assert job.state == "blocked"
    assert [s.stage for s in job.stages] == [stages.PROMPT_CHECK]
    (decision,) = job.decisions
    assert decision.reasons[0]["rule"] == "licence.non_commercial"
    assert "'schnell'" in decision.reasons[0]["detail"]
    assert job.images == []


def _protect(settings: Settings, tmp_path: Path, exemplar: bytes) -> None:
    """Make `exemplar` the only exemplar of a protected asset, and index it."""
    from reference_index import index as versions
    from reference_index import service as references

    (tmp_path / "exemplar.png").write_bytes(exemplar)
    catalogue = tmp_path / "catalogue.yaml"
    catalogue.write_text(
        "assets:\n  - id: storm-light\n    name: Storm Light\n    kind: artwork\n"
        "    exemplars: [exemplar.png]\n"
    )
    blobs = BlobStore(settings.blob_dir)
    with session_scope() as session:
        references.import_catalogue(session=session, blobs=blobs, path=catalogue, actor="test")
        versions.build(session=session, settings=settings, blobs=blobs, actor="test")


def _brighter(png: bytes) -> bytes:
    """An edited copy: 30% brighter, as if someone touched up a protected image."""
    edited = ImageEnhance.Brightness(Image.open(io.BytesIO(png))).enhance(1.3)
    buffer = io.BytesIO()
    edited.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_pdq_match_below_a_copy_goes_to_review(
    new_job: NewJobFactory, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exemplar is a retouched version of what the same prompt and seed generate. With
    keypoint matches set never to count as copies, PDQ sees a match but not a copy (distance
    over 8), so a person decides."""
    monkeypatch.setenv("CLEARANCE_MATCHING__KEYPOINT_REJECT_INLIERS", "100000")
    reset_caches()
    first = new_job(seed=7)
    run_all_stages(first)
    image = load(first).images[0]
    _protect(settings, tmp_path, _brighter(BlobStore(settings.blob_dir).get(image.blob_sha256)))
    second = new_job(seed=7)
    assert run_all_stages(second)[-1] == stages.ROUTE
    job = load(second)
    assert job.state == "in_review", job.decisions[-1].reasons
    route = next(d for d in job.decisions if d.stage == "route")
    pdq_reason = next(r for r in route.reasons if r["rule"] == "images.pdq_match")
    assert pdq_reason["asset_id"] == "storm-light"
    assert pdq_reason["strength"] == "review"
    assert job.images[0].released_at is None


def test_an_exact_copy_of_a_protected_image_is_rejected(
    new_job: NewJobFactory, settings: Settings, tmp_path: Path
) -> None:
    first = new_job(seed=7)
    run_all_stages(first)
    image = load(first).images[0]
    _protect(settings, tmp_path, BlobStore(settings.blob_dir).get(image.blob_sha256))
    second = new_job(seed=7)
    run_all_stages(second)
    job = load(second)
    assert job.state == "rejected"
    route = next(d for d in job.decisions if d.stage == "route")
    assert route.decision == "rejected"
    assert any(r["strength"] == "reject" and r["asset_id"] == "storm-light" for r in route.reasons)
    assert job.images[0].released_at is None


def test_a_covered_copy_is_reported_as_a_copy_as_a_whole_whatever_the_inliers_asked(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cover leaves fewer corners than any homography needs; the copy is judged by its
    pixels at the pose the image's frame gives, and keypoint_min_inliers (a homography's
    count) does not silence it."""
    monkeypatch.setenv("CLEARANCE_MATCHING__KEYPOINT_MIN_INLIERS", "40")
    reset_caches()
    sign = sign_with_letters()
    _protect(settings, tmp_path, png(sign))
    with session_scope() as session:
        result = check_image(
            png(letters_covered(sign)), session=session, settings=settings, tenant_id=None
        )
    (match,) = [m for m in result.matches if m.matcher == "keypoints"]
    assert match.asset_id == "storm-light"
    assert match.detail.startswith("a copy of an exemplar as a whole")
    assert result.decision == "review"


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (RuntimeError("CUDA error: an illegal memory access"), "RuntimeError: CUDA error"),
        (SoftTimeLimitExceeded(), "timed out after"),
    ],
)
def test_a_failing_stage_fails_the_job_and_releases_nothing(
    new_job: NewJobFactory, monkeypatch: pytest.MonkeyPatch, fault: Exception, expected: str
) -> None:
    """Through the real Celery task wrapper: an exception or a timeout inside generation."""
    job_id = new_job()
    tasks.prompt_check.apply(args=[job_id])

    def broken(*_: object, **__: object) -> None:
        raise fault

    monkeypatch.setattr(generation, "generate", broken)
    tasks.generate.apply(args=[job_id])
    job = load(job_id)
    assert job.state == "failed"
    assert expected in (job.error or "")
    assert job.images == []
    # Later stages, delivered anyway, do nothing.
    for task in (tasks.image_check, tasks.route, tasks.release):
        task.apply(args=[job_id])
    assert load(job_id).state == "failed"
    assert chain_verifies()


def test_a_transient_database_error_is_retried(
    new_job: NewJobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = new_job()
    tasks.prompt_check.apply(args=[job_id])
    real = generation.generate
    calls = []

    def flaky(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(generation, "generate", flaky)
    monkeypatch.setattr(tasks, "_backoff", lambda retries: 0.0)
    tasks.generate.apply(args=[job_id])
    assert len(calls) == 2
    job = load(job_id)
    assert job.state == "generating"
    assert len(job.images) == 1

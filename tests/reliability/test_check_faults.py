"""Faults injected into each image check, with jobs run through the real stages in this
process on SQLite and PostgreSQL: a matcher that raises (PDQ, CLIP, keypoints, NSFW, the
index loader), Celery's soft time limit arriving inside a matcher or inside the stage, and
an index whose files on disk are garbage. No image is ever approved on the strength of the
checks that did run: the job goes to a person with the fault in the image_check decision's
reasons (rule images.check_fault) naming the matcher; a stage that runs out of time fails
the job.

There is no timeout of its own in reference_index/checks.py: the only time limit is the
stage's Celery soft time limit (worker.stage_soft_time_limit_s), which arrives as
SoftTimeLimitExceeded in whatever code is running at the time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml
from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from sqlalchemy import select

from core.blobs import BlobStore
from core.db import read_scope, session_scope
from core.settings import Settings
from pipeline import service, stages, tasks
from pipeline.models import Job
from reference_index import checks, index, nsfw, pdq
from reference_index.keypoints import KeypointIndex
from reference_index.models import IndexVersion
from reference_index.service import import_catalogue
from reference_index.vector_index import VectorIndex
from tests.api.test_generation_api import astronaut_png
from tests.conftest import TenantKeys
from tests.pipeline.conftest import run_all_stages


@pytest.fixture
def index_folder(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A catalogue of one asset with one exemplar, indexed; the folder of the active
    version. The process's loaded index is forgotten, so each test loads its own."""
    folder = tmp_path / "catalogue"
    folder.mkdir()
    (folder / "astronaut.png").write_bytes(astronaut_png())
    catalogue = folder / "catalogue.yaml"
    asset = {"id": "eileen", "name": "Eileen Collins portrait", "kind": "character"}
    catalogue.write_text(yaml.safe_dump({"assets": [{**asset, "exemplars": ["astronaut.png"]}]}))
    blobs = BlobStore(settings.blob_dir)
    with session_scope() as session:
        import_catalogue(session=session, blobs=blobs, path=catalogue, actor="test")
        index.build(session=session, settings=settings, blobs=blobs, actor="test")
    monkeypatch.setattr(index, "_loaded", None)
    with read_scope() as session:
        version = session.scalar(select(IndexVersion).where(IndexVersion.active))
        assert version is not None
        return Path(version.path)


def new_job(settings: Settings, tenant: TenantKeys, n_images: int = 1) -> str:
    with session_scope() as session:
        job = service.create_job(
            session=session,
            settings=settings,
            blobs=BlobStore(settings.blob_dir),
            tenant_id=tenant.id,
            actor="test",
            request=service.NewJob(
                prompt="a lighthouse in a storm",
                variant="schnell",
                use="commercial",
                width=256,
                height=256,
                seed=42,
                n_images=n_images,
            ),
        )
        return job.id


def outcome(job_id: str) -> tuple[str, dict[str, tuple[str, list[dict[str, Any]]]]]:
    with read_scope() as session:
        job = session.get_one(Job, job_id)
        return job.state, {d.stage: (d.decision, d.reasons) for d in job.decisions}


def raiser(error: BaseException) -> Callable[..., Any]:
    def fail(*args: object, **kwargs: object) -> Any:
        raise error

    return fail


def test_without_a_fault_the_same_job_is_released(
    settings: Settings, tenant: TenantKeys, index_folder: Path
) -> None:
    """The control: the faults below, not the image, are what sends the job to a person."""
    job_id = new_job(settings, tenant)
    run_all_stages(job_id)
    state, decisions = outcome(job_id)
    assert state == "released", decisions
    assert decisions["image_check"][0] == "approve"
    assert not [r for r in decisions["image_check"][1] if r["rule"] == "images.check_fault"]


INJECTED = "injected fault"
# Where to inject, and the matcher the fault must name.
FAULTS: list[Any] = [
    pytest.param(pdq, "compute_array", RuntimeError(INJECTED), "pdq", id="pdq-raises"),
    pytest.param(VectorIndex, "search", RuntimeError(INJECTED), "clip", id="clip-raises"),
    pytest.param(KeypointIndex, "search", MemoryError(INJECTED), "keypoints", id="kp-raises"),
    pytest.param(nsfw, "detect", RuntimeError(INJECTED), "nsfw", id="nsfw-raises"),
    pytest.param(index, "load_active", OSError(INJECTED), "index", id="index-load-raises"),
    pytest.param(
        KeypointIndex, "search", SoftTimeLimitExceeded(INJECTED), "keypoints", id="kp-times-out"
    ),
]


@pytest.mark.parametrize(("owner", "name", "error", "matcher"), FAULTS)
def test_a_matcher_that_fails_sends_the_job_to_review_naming_it(
    settings: Settings,
    tenant: TenantKeys,
    index_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    error: BaseException,
    matcher: str,
) -> None:
    monkeypatch.setattr(owner, name, raiser(error))
    job_id = new_job(settings, tenant)
    run_all_stages(job_id)
    state, decisions = outcome(job_id)
    assert state == "in_review", decisions
    decision, reasons = decisions["image_check"]
    assert decision == "review"
    faults = [r for r in reasons if r["rule"] == "images.check_fault"]
    assert [f"the {matcher} check failed" in r["detail"] for r in faults] == [True]
    assert f"{type(error).__name__}: " in faults[0]["detail"]
    assert INJECTED in faults[0]["detail"]
    route, route_reasons = decisions["route"]
    assert route == "in_review"
    assert faults[0] in route_reasons


@pytest.mark.parametrize("file", ["keypoints.npz", "vectors.faiss", "index.json", "texts.npy"])
def test_a_corrupt_index_file_sends_the_job_to_review(
    settings: Settings, tenant: TenantKeys, index_folder: Path, file: str
) -> None:
    """The active version's file overwritten with garbage after the build: the index cannot
    be loaded, no index matcher runs, and the fault names the index."""
    (index_folder / file).write_bytes(b"\x00garbage\xff" * 64)
    job_id = new_job(settings, tenant)
    run_all_stages(job_id)
    state, decisions = outcome(job_id)
    assert state == "in_review", decisions
    decision, reasons = decisions["image_check"]
    assert decision == "review"
    faults = [r for r in reasons if r["rule"] == "images.check_fault"]
    assert len(faults) == 1
    assert "the index check failed" in faults[0]["detail"]


def test_a_stage_that_runs_out_of_time_fails_the_job(
    settings: Settings, tenant: TenantKeys, index_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The soft time limit arriving in the stage outside any matcher (here: decoding the
    image) fails the job through the task wrapper; nothing is released."""
    job_id = new_job(settings, tenant)
    ctx = stages.default_context()
    assert stages.prompt_check(job_id, ctx)
    assert stages.generate(job_id, ctx)
    monkeypatch.setattr(checks, "decode_image", raiser(SoftTimeLimitExceeded()))
    task = cast(Task, SimpleNamespace(request=SimpleNamespace(retries=0)))
    with pytest.raises(Ignore):
        tasks._run(task, stages.IMAGE_CHECK, job_id)
    state, decisions = outcome(job_id)
    assert state == "failed", decisions
    assert "image_check" not in decisions or decisions["image_check"][0] != "approve"


def test_a_soft_time_limit_in_a_matcher_ends_the_image_check_there(
    settings: Settings, tenant: TenantKeys, index_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The soft time limit arriving in a matcher of the first of two images ends the check at
    once: no later matcher runs and the second image is not checked (the hard limit would
    kill the worker first), and both images go to a person, each with its reason."""
    ran: list[str] = []

    def keypoints_out_of_time(*args: object, **kwargs: object) -> Any:
        ran.append("keypoints")
        raise SoftTimeLimitExceeded(INJECTED)

    detect = nsfw.detect

    def counted_detect(*args: Any, **kwargs: Any) -> Any:
        ran.append("nsfw")
        return detect(*args, **kwargs)

    monkeypatch.setattr(KeypointIndex, "search", keypoints_out_of_time)
    monkeypatch.setattr(nsfw, "detect", counted_detect)
    job_id = new_job(settings, tenant, n_images=2)
    run_all_stages(job_id)
    state, decisions = outcome(job_id)
    assert state == "in_review", decisions
    assert ran == ["keypoints"]
    decision, reasons = decisions["image_check"]
    assert decision == "review"
    first, second = [r["detail"] for r in reasons if r["rule"] == "images.check_fault"]
    assert first.startswith("image 0: the keypoints check failed: SoftTimeLimitExceeded")
    assert INJECTED in first
    assert second == (
        "image 1: the image check failed: not checked: the stage ran out of time while "
        "checking image 0"
    )

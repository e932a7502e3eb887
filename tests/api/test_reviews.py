"""The human review queue through the API, on SQLite and PostgreSQL, with jobs run through the
real stages in this process: approval workflows, leases, four-eyes, self-review, the race of
two decisions, appeals, SLA escalation and feedback into the reference index."""

from __future__ import annotations

import io
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image, ImageEnhance
from sqlalchemy import select, update

from api import auth
from api.app import create_app
from api.models import ROLES
from core.blobs import BlobStore
from core.db import read_scope, session_scope, utcnow
from core.settings import Settings
from pipeline import stages
from pipeline.models import Job
from reference_index import index
from reference_index.models import ReferenceImage
from reference_index.service import add_reference_image, import_catalogue
from review import tasks as review_tasks
from review.models import ReviewTask
from tests.conftest import TenantKeys, reset_caches
from tests.pipeline.conftest import run_all_stages


def new_tenant(name: str, require_human_approval: bool = False) -> TenantKeys:
    with session_scope() as session:
        tenant = auth.create_tenant(
            session=session, name=name, actor="test", require_human_approval=require_human_approval
        )
        keys = {
            role: auth.create_key(session=session, tenant=tenant, role=role, actor="test")
            for role in ROLES
        }
        # A second reviewer, for four-eyes and appeals.
        keys["reviewer2"] = auth.create_key(
            session=session, tenant=tenant, role="reviewer", actor="test"
        )
        return TenantKeys(tenant.id, name, keys)


class Desk:
    """One tenant's API, by role."""

    def __init__(self, client: TestClient, tenant: TenantKeys) -> None:
        self.client, self.tenant = client, tenant

    def call(self, method: str, path: str, role: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tenant.keys[role]}"}
        response = self.client.request(method, path, headers=headers, **kwargs)
        return response.status_code, response.json() if response.content else None

    def submit(self, prompt: str = "a lighthouse in a storm", seed: int = 7) -> str:
        status, job = self.call(
            "POST",
            "/v1/jobs",
            "requester",
            json={"prompt": prompt, "width": 256, "height": 256, "seed": seed},
        )
        assert status == 201, job
        run_all_stages(job["id"])
        return str(job["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        status, job = self.call("GET", f"/v1/jobs/{job_id}", "requester")
        assert status == 200
        return dict(job)

    def task_of(self, job_id: str) -> dict[str, Any]:
        status, tasks = self.call("GET", "/v1/reviews", "reviewer")
        assert status == 200
        (task,) = [t for t in tasks["items"] if t["job_id"] == job_id and t["state"] != "decided"]
        return dict(task)

    def claim(self, task_id: str, role: str = "reviewer") -> tuple[int, Any]:
        return self.call("POST", f"/v1/reviews/{task_id}/claim", role)

    def decide(
        self, task_id: str, decision: str, role: str = "reviewer", reason: str = "acceptable_use"
    ) -> tuple[int, Any]:
        body = {"decision": decision, "reason": reason, "note": "looked at it"}
        return self.call("POST", f"/v1/reviews/{task_id}/decision", role, json=body)


@pytest.fixture
def desk(client: TestClient, settings: Settings) -> Desk:
    return Desk(client, new_tenant("approvals", require_human_approval=True))


def released(job_id: str) -> str:
    """Run the release the approval queued (no worker in these tests)."""
    stages.release(job_id, stages.default_context())
    with read_scope() as session:
        return session.get_one(Job, job_id).state


def test_an_approval_workflow_releases_only_after_a_person_approves(desk: Desk) -> None:
    job_id = desk.submit()
    job = desk.job(job_id)
    assert job["state"] == "in_review"
    route = {d["stage"]: d for d in job["decisions"]}["route"]
    assert route["reasons"][0]["rule"] == "tenant.approval_required"
    task = desk.task_of(job_id)
    assert (task["band"], task["priority"], task["required_approvals"]) == (
        "approval-required",
        "normal",
        1,
    )
    # Not claimed: no decision.
    assert desk.decide(task["id"], "approve")[0] == 409
    status, claimed = desk.claim(task["id"])
    assert (status, claimed["state"]) == (200, "claimed")
    status, decided = desk.decide(task["id"], "approve")
    assert (status, decided["state"], decided["outcome"]) == (200, "decided", "approve")
    assert desk.job(job_id)["state"] == "approved"
    assert released(job_id) == "released"
    image = desk.job(job_id)["images"][0]
    response = desk.client.get(image["url"], headers=desk.tenant.headers("requester"))
    assert response.status_code == 200
    assert response.content.startswith(b"\x89PNG")


def test_bad_decisions_are_refused_naming_the_field(desk: Desk) -> None:
    task = desk.task_of(desk.submit())
    desk.claim(task["id"])
    status, error = desk.decide(task["id"], "approve", reason="because")
    assert (status, error["field"]) == (422, "reason")
    assert "infringement" in error["detail"]
    status, error = desk.decide(task["id"], "maybe")
    assert (status, error["field"]) == (422, "decision")
    status, error = desk.call("GET", "/v1/reviews?state=pending", "reviewer")
    assert (status, error["field"]) == (422, "state")
    # A requester may not review at all.
    assert desk.claim(task["id"], role="requester")[0] == 403
    assert desk.task_of(task["job_id"])["state"] == "claimed"


def test_a_lapsed_claim_returns_the_task_to_the_queue(desk: Desk) -> None:
    task = desk.task_of(desk.submit())
    assert desk.claim(task["id"])[0] == 200
    status, error = desk.claim(task["id"], role="reviewer2")
    assert status == 409
    assert "claimed by" in error["detail"]
    with session_scope() as session:
        session.execute(
            update(ReviewTask)
            .where(ReviewTask.id == task["id"])
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    status, tasks = desk.call("GET", "/v1/reviews?state=open", "reviewer")
    assert [t["id"] for t in tasks["items"]] == [task["id"]]
    assert tasks["items"][0]["claimed_by"] is None
    assert desk.claim(task["id"], role="reviewer2")[0] == 200
    # The first reviewer's lease is gone: their decision is refused.
    assert desk.decide(task["id"], "approve")[0] == 409
    assert desk.decide(task["id"], "approve", role="reviewer2")[0] == 200


def test_high_risk_needs_two_different_reviewers(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLEARANCE_ROUTING__HIGH_RISK_AT", "0")
    reset_caches()
    job_id = desk.submit()
    task = desk.task_of(job_id)
    assert (task["priority"], task["required_approvals"]) == ("high", 2)
    desk.claim(task["id"])
    status, first = desk.decide(task["id"], "approve")
    assert (status, first["state"], first["approvals"]) == (200, "open", [first["approvals"][0]])
    assert desk.job(job_id)["state"] == "in_review"
    # The same reviewer again does not count twice.
    status, error = desk.claim(task["id"])
    assert (status, error["field"]) == (403, "reviewer")
    desk.claim(task["id"], role="reviewer2")
    status, second = desk.decide(task["id"], "approve", role="reviewer2")
    assert (status, second["outcome"], len(second["approvals"])) == (200, "approve", 2)
    assert desk.job(job_id)["state"] == "approved"


def test_nobody_reviews_their_own_job(desk: Desk) -> None:
    status, job = desk.call(
        "POST", "/v1/jobs", "admin", json={"prompt": "a cat", "width": 256, "height": 256}
    )
    run_all_stages(job["id"])
    task = desk.task_of(job["id"])
    status, error = desk.claim(task["id"], role="admin")
    assert status == 403
    assert "own job" in error["detail"]


def test_two_decisions_at_once_one_wins_the_other_gets_409(client: TestClient, desk: Desk) -> None:
    task = desk.task_of(desk.submit())
    desk.claim(task["id"])
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def decide(decision: str) -> None:
        with TestClient(create_app()) as own:
            barrier.wait()
            statuses.append(Desk(own, desk.tenant).decide(task["id"], decision)[0])

    threads = [threading.Thread(target=decide, args=(d,)) for d in ("approve", "reject")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 409]
    with read_scope() as session:
        stored = session.get_one(ReviewTask, task["id"])
        assert len(stored.decisions) == 1
        outcome = stored.outcome
    assert desk.job(task["job_id"])["state"] == ("approved" if outcome == "approve" else "rejected")


def test_a_rejection_is_appealed_once_and_decided_by_someone_else(desk: Desk) -> None:
    job_id = desk.submit()
    task = desk.task_of(job_id)
    desk.claim(task["id"])
    assert desk.decide(task["id"], "reject", reason="trademark")[0] == 200
    assert desk.job(job_id)["state"] == "rejected"
    path = f"/v1/jobs/{job_id}/appeal"
    status, error = desk.call("POST", path, "requester", json={"note": ""})
    assert (status, error["field"]) == (422, "note")
    status, appeal = desk.call("POST", path, "requester", json={"note": "it is our own logo"})
    assert (status, appeal["band"], appeal["appeal_of"]) == (201, "appeal", task["id"])
    assert desk.job(job_id)["state"] == "in_review"
    status, error = desk.claim(appeal["id"])  # the reviewer who rejected it
    assert (status, error["field"]) == (403, "reviewer")
    desk.claim(appeal["id"], role="reviewer2")
    assert desk.decide(appeal["id"], "approve", role="reviewer2")[0] == 200
    assert desk.job(job_id)["state"] == "approved"
    status, error = desk.call("POST", path, "requester", json={"note": "again"})
    assert status == 409


def test_an_sla_breach_escalates_to_legal_by_itself(desk: Desk) -> None:
    task = desk.task_of(desk.submit())
    assert review_tasks.escalate_overdue() == 0
    with session_scope() as session:
        session.execute(
            update(ReviewTask)
            .where(ReviewTask.id == task["id"])
            .values(due_at=utcnow() - timedelta(minutes=1))
        )
    assert review_tasks.escalate_overdue() == 1
    assert review_tasks.escalate_overdue() == 0
    status, escalated = desk.call("GET", "/v1/reviews?state=escalated", "reviewer")
    assert [t["id"] for t in escalated["items"]] == [task["id"]]
    status, error = desk.claim(task["id"])
    assert (status, error["field"]) == (403, "role")
    assert desk.claim(task["id"], role="legal")[0] == 200
    assert desk.decide(task["id"], "approve", role="legal")[0] == 200


def brighter(png: bytes, factor: float = 1.15) -> bytes:
    image = ImageEnhance.Brightness(Image.open(io.BytesIO(png))).enhance(factor)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def catalogue_with(folder: Path, exemplar: bytes) -> Path:
    (folder / "look-alike.png").write_bytes(exemplar)
    path = folder / "catalogue.yaml"
    asset = {
        "id": "noise-co",
        "name": "Noise Co",
        "kind": "logo",
        "owner": "Noise Co Ltd",
        "exemplars": ["look-alike.png"],
    }
    path.write_text(yaml.safe_dump({"assets": [asset]}))
    return path


def flag_a_look_alike(
    desk: Desk, settings: Settings, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[bytes, str]:
    """(the image seed 11 gives, its job flagged for review) once a brightened copy of it is
    an exemplar of 'noise-co'."""
    # Only an exact copy is a copy: the brightened exemplar is a look-alike for a person.
    monkeypatch.setenv("CLEARANCE_MATCHING__PDQ_REJECT_DISTANCE", "0")
    monkeypatch.setenv("CLEARANCE_MATCHING__KEYPOINT_REJECT_INLIERS", "100000")
    reset_caches()
    first = desk.submit(seed=11)
    assert desk.job(first)["state"] == "released"
    blobs = BlobStore(settings.blob_dir)
    with read_scope() as session:
        png = blobs.get(session.get_one(Job, first).images[0].blob_sha256)
    with session_scope() as session:
        summary = import_catalogue(
            session=session,
            blobs=blobs,
            path=catalogue_with(folder, brighter(png)),
            actor="test",
        )
        index.add(
            session=session,
            settings=settings,
            blobs=blobs,
            reference_ids=summary.new_reference_ids,
            actor="test",
        )
    flagged = desk.submit(seed=11)  # the very same image
    assert desk.job(flagged)["state"] == "in_review"
    return png, flagged


def approve_as_false_positive(desk: Desk, job_id: str) -> None:
    task = desk.task_of(job_id)
    assert "noise-co" in {r.get("asset_id") for r in task["reasons"]}
    assert task["required_approvals"] == 2  # a close match is high risk: four-eyes
    for role in ("legal", "reviewer2"):
        desk.claim(task["id"], role=role)
        assert desk.decide(task["id"], "approve", role=role, reason="false_positive")[0] == 200


def noise_co_polarities() -> list[str]:
    with read_scope() as session:
        return sorted(
            r.polarity
            for r in session.scalars(
                select(ReferenceImage).where(ReferenceImage.asset_id == "noise-co")
            )
        )


def test_a_confirmed_infringement_rejects_the_same_image_from_then_on(
    client: TestClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Legal rejects a look-alike as an infringement: it becomes an exemplar and the same
    image is rejected from then on."""
    desk = Desk(client, new_tenant("studio"))
    _, flagged = flag_a_look_alike(desk, settings, tmp_path, monkeypatch)
    task = desk.task_of(flagged)
    desk.claim(task["id"], role="legal")
    assert desk.decide(task["id"], "reject", role="legal", reason="infringement")[0] == 200
    assert noise_co_polarities() == ["positive", "positive"]
    assert desk.job(desk.submit(seed=11))["state"] == "rejected"


def test_an_approved_false_positive_releases_the_same_image_from_then_on(
    client: TestClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Legal approves a look-alike as a false positive: it becomes a negative exemplar and
    the very same image is released from then on, whatever the matchers' scores (an
    exemplar brightened by 15% may score a little better than the identical image does)."""
    desk = Desk(client, new_tenant("studio"))
    _, flagged = flag_a_look_alike(desk, settings, tmp_path, monkeypatch)
    approve_as_false_positive(desk, flagged)
    assert noise_co_polarities() == ["negative", "positive"]
    assert desk.job(desk.submit(seed=11))["state"] == "released"


def test_an_exemplar_added_after_an_approval_flags_the_approved_image_again(
    client: TestClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An approval judged the image against the exemplars of its day; an exemplar the asset
    gains afterwards is evidence nobody has weighed, so the image goes to a person again,
    matched to that exemplar alone."""
    desk = Desk(client, new_tenant("studio"))
    png, flagged = flag_a_look_alike(desk, settings, tmp_path, monkeypatch)
    approve_as_false_positive(desk, flagged)
    blobs = BlobStore(settings.blob_dir)
    with session_scope() as session:
        newer, _ = add_reference_image(
            session=session,
            blobs=blobs,
            asset_id="noise-co",
            data=brighter(png, 1.1),
            source="test",
            actor="test",
        )
        index.add(
            session=session,
            settings=settings,
            blobs=blobs,
            reference_ids=[newer.id],
            actor="test",
        )
        newer_id = newer.id
    again = desk.job(desk.submit(seed=11))
    assert again["state"] == "in_review"
    assert {m["exemplar_id"] for m in again["images"][0]["matches"]} == {newer_id}

"""The dashboard over HTTP, on SQLite and PostgreSQL, with jobs put in review by the real stages
in this process: sessions and sign-out, CSRF, disabled users, tenant isolation, and pages that
show what the services hold."""

from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import re
import zipfile
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from api import users
from api.app import create_app
from api.cli import main
from api.models import DashboardSession, DashboardUser
from audit import export, signing
from audit.models import AuditEvent
from core.blobs import BlobStore
from core.db import read_scope, session_scope, utcnow
from core.settings import Settings
from pipeline import stages
from pipeline.models import Job
from reference_index import index
from reference_index.service import import_catalogue
from review.models import ReviewTask
from tests.api.dashboard_helpers import PASSWORD, Session, csrf_of, make_user, post_sign_in
from tests.api.test_security import set_human_approval, submit
from tests.conftest import TenantKeys, make_tenant, reset_caches
from tests.pipeline.conftest import run_all_stages
from tests.reference_index.test_keypoints import iou, logo

HTML = {"Accept": "text/html"}


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app()


def in_review(client: TestClient, tenant: TenantKeys, prompt: str = "a red barn at dawn") -> str:
    """A job of the tenant run through the real stages into review; returns its task's id."""
    set_human_approval(tenant, True)
    job_id = submit(client, tenant, prompt)
    run_all_stages(job_id)
    with read_scope() as session:
        (task,) = session.scalars(select(ReviewTask).where(ReviewTask.job_id == job_id)).all()
        return task.id


def events(type_prefix: str) -> list[AuditEvent]:
    with read_scope() as session:
        return list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.type.startswith(type_prefix))
                .order_by(AuditEvent.seq)
            )
        )


def test_a_session_is_an_httponly_cookie_and_signing_out_revokes_it(
    app: FastAPI, tenant: TenantKeys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    email = make_user(tenant, "reviewer")
    browser = TestClient(app, headers=HTML)
    form = browser.get("/dashboard/login")
    login_csrf = csrf_of(form.text)
    signed = browser.post(
        "/dashboard/login",
        data={
            "tenant": tenant.name,
            "email": email,
            "password": PASSWORD,
            "csrf_token": login_csrf,
        },
        follow_redirects=False,
    )
    assert signed.status_code == 303, signed.text
    assert signed.headers["location"] == "/dashboard"
    cookie = next(
        c for c in signed.headers.get_list("set-cookie") if c.startswith("clearance_session=")
    )
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Path=/dashboard" in cookie
    assert "Secure" not in cookie  # the embedded default serves plain HTTP
    token = browser.cookies["clearance_session"]
    with read_scope() as session:
        (row,) = session.scalars(select(DashboardSession)).all()
        # Only the hash of the session id is kept.
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert token not in row.token_hash
    queue_page = browser.get("/dashboard/queue")
    assert queue_page.status_code == 200
    assert email in queue_page.text
    csrf = csrf_of(queue_page.text)

    out = browser.post("/dashboard/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert out.headers["location"] == "/dashboard/login"
    with read_scope() as session:
        assert session.scalars(select(DashboardSession)).all() == []
    # The old cookie, sent again, opens nothing: a browser is sent to sign in, others get 401.
    replay = TestClient(app, cookies={"clearance_session": token})
    again = replay.get("/dashboard/queue", headers=HTML, follow_redirects=False)
    assert again.status_code == 303
    assert again.headers["location"].startswith("/dashboard/login?next=")
    assert replay.get("/dashboard/queue").status_code == 401
    assert replay.post("/dashboard/logout", data={"csrf_token": csrf}).status_code == 401

    (login,) = events("dashboard.login")
    (logout,) = events("dashboard.logout")
    assert login.actor == logout.actor == f"user:{email}"
    secrets = {"password": PASSWORD, "session id": token, "csrf": csrf, "login csrf": login_csrf}
    trail = " ".join(f"{e.actor} {e.subject} {e.payload}" for e in events(""))
    logged = "\n".join(f"{r.getMessage()} {r.args!r} {vars(r)!r}" for r in caplog.records)
    assert not [name for name, value in secrets.items() if value in trail or value in logged]


def test_failed_sign_ins_are_refused_alike_and_audited(
    app: FastAPI, tenant: TenantKeys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    email = make_user(tenant, "legal")
    browser = TestClient(app, headers=HTML)
    attempts = [
        (tenant.name, email, "wrong password, long enough", "wrong password"),
        (tenant.name, "nobody@acme.test", PASSWORD, "unknown user"),
        ("no-such-tenant", email, PASSWORD, "unknown tenant"),
    ]
    for tenant_name, who, password, _ in attempts:
        refused = post_sign_in(browser, tenant_name, who, password)
        # The same answer whatever was wrong: it does not tell which emails have an account.
        assert refused.status_code == 401
        assert "the tenant, email or password is wrong, the user is disabled" in refused.text
        assert "clearance_session" not in browser.cookies
    failed = events("dashboard.login_failed")
    assert [json.loads(e.payload)["reason"] for e in failed] == [a[3] for a in attempts]
    assert [e.tenant_id for e in failed] == [tenant.id, tenant.id, None]
    everything = " ".join(e.payload for e in events("")) + "\n".join(
        r.getMessage() for r in caplog.records
    )
    assert "wrong password, long enough" not in everything
    assert PASSWORD not in everything
    # Without the sign-in form's own CSRF cookie and token: 403, nothing checked.
    bare = TestClient(app)
    forged = bare.post(
        "/dashboard/login", data={"tenant": tenant.name, "email": email, "password": PASSWORD}
    )
    assert forged.status_code == 403
    assert forged.json()["field"] == "csrf_token"


def test_an_account_is_locked_after_too_many_failed_sign_ins(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    """Five wrong passwords within the window lock the account: the right password is then
    refused too, with the same answer as any refusal, until the failures are older than the
    window. Refusals while locked do not extend the lock; a sign-in forgives earlier failures."""
    tenant = make_tenant("acme")
    email = make_user(tenant, "reviewer")
    other = make_user(tenant, "legal")
    browser = TestClient(create_app(), headers=HTML)
    wrong = "wrong password, long enough"
    for _ in range(2):
        for _ in range(4):
            assert post_sign_in(browser, tenant.name, email, wrong).status_code == 401
        # Four since the last sign-in (eight within the window the second time): not locked.
        assert post_sign_in(browser, tenant.name, email).status_code == 303
    for _ in range(5):
        assert post_sign_in(browser, tenant.name, email, wrong).status_code == 401
    locked = post_sign_in(browser, tenant.name, email)
    assert locked.status_code == 401
    assert "too many failed sign-ins (wait 15 minutes)" in locked.text
    assert json.loads(events("dashboard.login_locked")[-1].payload)["password_ok"] is True
    # Another account of the tenant is not affected.
    assert post_sign_in(browser, tenant.name, other).status_code == 303
    # The window later, for the lock (the locked refusal since then does not count).
    later = utcnow() + timedelta(minutes=settings.dashboard.failed_sign_in_minutes, seconds=1)
    monkeypatch.setattr(users, "utcnow", lambda: later)
    assert post_sign_in(browser, tenant.name, email).status_code == 303
    assert len(events("dashboard.login_failed")) == 13


def test_the_session_cookie_is_secure_when_configured(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.setenv("CLEARANCE_DASHBOARD__SECURE_COOKIE", "true")
    reset_caches()
    tenant = make_tenant("acme")
    email = make_user(tenant, "admin")
    browser = TestClient(create_app(), base_url="https://testserver", headers=HTML)
    signed = post_sign_in(browser, tenant.name, email)
    cookies = signed.headers.get_list("set-cookie")
    session_cookie = next(c for c in cookies if c.startswith("clearance_session="))
    assert "Secure" in session_cookie
    assert "HttpOnly" in session_cookie


def test_admins_manage_their_tenants_users_and_a_disabled_user_is_out(
    app: FastAPI, client: TestClient, tenant: TenantKeys
) -> None:
    admin = tenant.headers("admin")
    created = client.post(
        "/v1/admin/users",
        headers=admin,
        json={"email": "Rita@Acme.test", "role": "reviewer", "password": PASSWORD},
    )
    assert created.status_code == 201, created.text
    user = created.json()
    assert (user["email"], user["role"], user["disabled"]) == ("rita@acme.test", "reviewer", False)
    assert "password" not in created.text
    again = client.post(
        "/v1/admin/users",
        headers=admin,
        json={"email": "rita@acme.test", "role": "legal", "password": PASSWORD},
    )
    assert again.status_code == 409
    for body, field in (
        ({"email": "x@acme.test", "role": "boss", "password": PASSWORD}, "role"),
        ({"email": "x@acme.test", "role": "legal", "password": "short"}, "password"),
        ({"email": "not-an-email", "role": "legal", "password": PASSWORD}, "email"),
    ):
        bad = client.post("/v1/admin/users", headers=admin, json=body)
        assert bad.status_code == 422, bad.text
        assert bad.json()["field"] == field
        assert PASSWORD not in bad.text
    with read_scope() as session:
        stored = session.get_one(DashboardUser, user["id"])
        assert stored.password_hash.startswith("$argon2id$")
        assert PASSWORD not in stored.password_hash

    rita = Session(app, tenant.name, "rita@acme.test")
    assert rita.client.get("/dashboard/queue").status_code == 200
    # Another tenant's admin neither sees nor disables her.
    other = make_tenant("other")
    assert client.get("/v1/admin/users", headers=other.headers("admin")).json()["total"] == 0
    foreign = client.post(f"/v1/admin/users/{user['id']}/disable", headers=other.headers("admin"))
    assert foreign.status_code == 404

    disabled = client.post(f"/v1/admin/users/{user['id']}/disable", headers=admin)
    assert disabled.status_code == 200
    assert disabled.json()["disabled"] is True
    # Her open session ends at once, and she cannot sign in again.
    assert rita.client.get("/dashboard/queue", follow_redirects=False).status_code == 303
    assert (
        TestClient(app, cookies={"clearance_session": rita.token})
        .get("/dashboard/queue")
        .status_code
        == 401
    )
    refused = post_sign_in(TestClient(app, headers=HTML), tenant.name, "rita@acme.test")
    assert refused.status_code == 401
    assert json.loads(events("dashboard.login_failed")[-1].payload)["reason"] == "user disabled"
    (event,) = events("user.disabled")
    assert event.actor.startswith("api_key:")
    listed = client.get("/v1/admin/users", headers=admin).json()
    assert [(u["email"], u["disabled"]) for u in listed["items"]] == [("rita@acme.test", True)]
    sam = {"email": "sam@acme.test", "role": "legal", "password": PASSWORD}
    assert client.post("/v1/admin/users", headers=admin, json=sam).status_code == 201
    page = client.get("/v1/admin/users", params={"offset": 1, "limit": 1}, headers=admin).json()
    assert ([u["email"] for u in page["items"]], page["total"]) == (["sam@acme.test"], 2)


def test_every_state_changing_post_needs_the_sessions_csrf_token(
    app: FastAPI, client: TestClient, tenant: TenantKeys
) -> None:
    task_id = in_review(client, tenant)
    reviewer = Session(app, tenant.name, make_user(tenant, "reviewer"))
    other = Session(app, tenant.name, make_user(tenant, "legal"))
    posts = [
        (f"/dashboard/reviews/{task_id}/claim", {}),
        (
            f"/dashboard/reviews/{task_id}/decision",
            {"decision": "reject", "reason": "policy", "note": ""},
        ),
        ("/dashboard/logout", {}),
    ]
    for path, data in posts:
        for token in (None, "0" * 64, other.csrf):
            form = dict(data) | ({"csrf_token": token} if token else {})
            refused = reviewer.client.post(path, data=form, follow_redirects=False)
            assert refused.status_code == 403, (path, token, refused.text)
        # htmx sends it as a header; a wrong header is refused too.
        wrong = reviewer.client.post(path, data=data, headers={"X-CSRF-Token": other.csrf})
        assert wrong.status_code == 403
    with read_scope() as session:
        task = session.get_one(ReviewTask, task_id)
        assert (task.state, task.claimed_by, task.decisions) == ("open", None, [])
    claimed = reviewer.client.post(
        f"/dashboard/reviews/{task_id}/claim",
        headers={"HX-Request": "true", "X-CSRF-Token": reviewer.csrf},
    )
    assert claimed.status_code == 200, claimed.text
    assert "Claimed by you" in claimed.text


def test_nothing_of_another_tenant_is_found_in_the_dashboard(
    app: FastAPI, client: TestClient, settings: Settings
) -> None:
    a, b = make_tenant("tenant-a"), make_tenant("tenant-b")
    released_job = submit(client, a, "a lighthouse in a storm")
    run_all_stages(released_job)
    with read_scope() as session:
        released_image = session.get_one(Job, released_job).images[0].id
    task_id = in_review(client, a)
    with read_scope() as session:
        waiting_job = session.get_one(ReviewTask, task_id).job_id

    a_reviewer = Session(app, a.name, make_user(a, "reviewer"))
    image = a_reviewer.client.get(f"/dashboard/reviews/{task_id}/images/0")
    # The same tenant's reviewers see the image before it is released, no one else.
    assert image.status_code == 200
    assert Image.open(io.BytesIO(image.content)).size == (256, 256)
    assert a_reviewer.client.get(f"/dashboard/reviews/{task_id}/images/5").status_code == 404
    assert image.headers["cache-control"] == "private, no-store"
    a_requester = Session(app, a.name, make_user(a, "requester"))
    assert a_requester.client.get(f"/dashboard/reviews/{task_id}/images/0").status_code == 403
    assert a_requester.client.get(f"/dashboard/images/{released_image}").status_code == 200
    assert a_requester.client.get(f"/dashboard/jobs/{waiting_job}").status_code == 200

    for role in ("reviewer", "legal", "admin", "requester"):
        intruder = Session(app, b.name, make_user(b, role))
        reads = [
            f"/dashboard/jobs/{released_job}",
            f"/dashboard/jobs/{waiting_job}",
            f"/dashboard/images/{released_image}",
        ]
        if role != "requester":
            reads += [f"/dashboard/reviews/{task_id}", f"/dashboard/reviews/{task_id}/images/0"]
        for path in reads:
            response = intruder.client.get(path)
            assert response.status_code == 404, (role, path, response.status_code)
            assert "lighthouse" not in response.text
            assert "barn" not in response.text
        if role != "requester":
            for path, data in (
                (f"/dashboard/reviews/{task_id}/claim", {}),
                (
                    f"/dashboard/reviews/{task_id}/decision",
                    {"decision": "approve", "reason": "acceptable_use"},
                ),
            ):
                assert intruder.post(path, data).status_code == 404, (role, path)
            page = intruder.client.get("/dashboard/queue")
            assert task_id not in page.text
            assert "barn" not in page.text
        jobs = intruder.client.get("/dashboard/jobs")
        assert released_job not in jobs.text
        assert "lighthouse" not in jobs.text
        if role in ("legal", "admin"):
            trail = intruder.client.get("/dashboard/audit")
            assert a.id not in trail.text
            assert released_job not in trail.text
    with read_scope() as session:
        task = session.get_one(ReviewTask, task_id)
        assert (task.state, task.decisions) == ("open", [])


def png(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


def logo_at_an_angle() -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """A synthetic logo, a picture of it seen at an angle, and where it is in the picture."""
    source = logo(3)
    h, w = source.shape[:2]
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    tilted = np.array([[90, 70], [w + 50, 110], [w + 50, h + 30], [90, h + 70]], np.float32)
    warp = cv2.getPerspectiveTransform(corners, tilted)
    picture = cv2.warpPerspective(source, warp, (w + 160, h + 160), borderValue=(200, 200, 200))
    return source, picture, (90, 70, w + 50, h + 70)


def flagged_task(client: TestClient, tenant: TenantKeys, settings: Settings, tmp: Path) -> str:
    """A job whose prompt names a catalogue person and whose image shows a catalogue logo, in
    review through the real checks and routing; returns its task's id. The tiny offline
    model makes only noise, so its image is swapped for a picture of the logo before the
    image checks run: the one stand-in, for what a real model could have drawn."""
    source, picture, _ = logo_at_an_angle()
    (tmp / "logo.png").write_bytes(png(source))
    assets = [
        {"id": "noise-co", "name": "Noise Co", "kind": "logo", "exemplars": ["logo.png"]},
        {"id": "ada-quill", "name": "Ada Quillfeather", "kind": "person"},
    ]
    (tmp / "catalogue.yaml").write_text(json.dumps({"assets": assets}))
    blobs = BlobStore(settings.blob_dir)
    with session_scope() as session:
        summary = import_catalogue(
            session=session, blobs=blobs, path=tmp / "catalogue.yaml", actor="test"
        )
        index.add(
            session=session,
            settings=settings,
            blobs=blobs,
            reference_ids=summary.new_reference_ids,
            actor="test",
        )
    job_id = submit(client, tenant, "a portrait of Ada Quillfeather in a garden")
    ctx = stages.default_context()
    assert stages.prompt_check(job_id, ctx)
    assert stages.generate(job_id, ctx)
    with session_scope() as session:
        image = session.get_one(Job, job_id).images[0]
        image.blob_sha256 = blobs.put(png(picture))
        image.height, image.width = picture.shape[:2]
    assert stages.image_check(job_id, ctx)
    stages.route(job_id, ctx)
    with read_scope() as session:
        (task,) = session.scalars(select(ReviewTask).where(ReviewTask.job_id == job_id)).all()
        return task.id


def test_the_review_page_shows_boxes_exemplars_scores_and_the_highlighted_prompt(
    app: FastAPI,
    client: TestClient,
    tenant: TenantKeys,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The logo in the picture goes to a person, not straight to a rejection, and is high risk.
    monkeypatch.setenv("CLEARANCE_MATCHING__KEYPOINT_REJECT_INLIERS", "100000")
    monkeypatch.setenv("CLEARANCE_ROUTING__HIGH_RISK_AT", "0.8")
    reset_caches()
    task_id = flagged_task(client, tenant, settings, tmp_path)
    with read_scope() as session:
        task = session.get_one(ReviewTask, task_id)
        job = session.get_one(Job, task.job_id)
        image = job.images[0]
        assert image.check is not None
        matches, embedder = image.matches, image.check["embedder"]
    reviewer = Session(app, tenant.name, make_user(tenant, "reviewer"))
    page = reviewer.client.get(f"/dashboard/reviews/{task_id}")
    assert page.status_code == 200, page.text
    shown = page.text
    assert "content-security-policy" in page.headers
    # The prompt, with what the policy matched highlighted.
    assert "<mark>Ada Quillfeather</mark>" in shown
    # Every match with its score; boxes drawn where a matcher found one.
    assert matches, "the logo matched nothing"
    for m in matches:
        assert f"{m['score']:.3f}" in shown
        if m["box"]:
            x0, y0, x1, y1 = m["box"]
            assert f'x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}"' in shown
    (found,) = [m for m in matches if m["matcher"] == "keypoints"]
    assert iou(tuple(found["box"]), logo_at_an_angle()[2]) > 0.6
    # The tiny CLIP stand-in says it is not a semantic check, wherever its scores show.
    assert embedder == "tiny-random (not a semantic check)"
    assert shown.count("tiny-random (not a semantic check)") >= 1 + sum(
        m["matcher"].startswith("clip") for m in matches
    )
    exemplar_ids = {m["exemplar_id"] for m in matches if m["exemplar_id"]}
    for exemplar_id in exemplar_ids:
        assert f'src="/dashboard/exemplars/{exemplar_id}"' in shown
        exemplar = reviewer.client.get(f"/dashboard/exemplars/{exemplar_id}")
        assert exemplar.status_code == 200
        assert exemplar.content.startswith(b"\x89PNG")
    # Risk, four-eyes and the reasons it is here.
    assert task.priority == "high"
    assert "four-eyes: 0 of 2 approvals" in shown
    for reason in task.reasons:
        assert reason["rule"] in shown


def test_reviewers_claim_and_decide_and_four_eyes_needs_two_of_them(
    app: FastAPI,
    client: TestClient,
    tenant: TenantKeys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = (
        in_review(client, tenant, "a red barn"),
        in_review(client, tenant, "a blue barn"),
    )
    one = Session(app, tenant.name, make_user(tenant, "reviewer", "one@acme.test"))
    htmx = {"HX-Request": "true"}
    # Rejecting needs a reason code; a bad one is named with the valid choices.
    missing = one.post(f"/dashboard/reviews/{first}/decision", {"decision": "reject"}, headers=htmx)
    assert missing.status_code == 422
    bad = one.post(
        f"/dashboard/reviews/{first}/decision",
        {"decision": "reject", "reason": "ugly"},
        headers=htmx,
    )
    assert bad.status_code == 422
    assert "'infringement'" in html.unescape(bad.text)
    # A decision claims the task first, then the page moves on to the next task.
    done = one.post(
        f"/dashboard/reviews/{first}/decision",
        {"decision": "reject", "reason": "trademark", "note": "logo on the barn"},
        headers=htmx,
    )
    assert done.status_code == 200, done.text
    assert done.headers["HX-Redirect"] == f"/dashboard/reviews/{second}?decided={first}"
    banner = one.client.get(done.headers["HX-Redirect"])
    assert "rejected" in banner.text
    with read_scope() as session:
        task = session.get_one(ReviewTask, first)
        assert (task.outcome, [d.reviewer for d in task.decisions]) == (
            "reject",
            ["user:one@acme.test"],
        )
        assert session.get_one(Job, task.job_id).state == "rejected"
        claimed = [e for e in events("review.claimed") if first in e.payload]
        assert [e.actor for e in claimed] == ["user:one@acme.test"]

    # Four-eyes: a high-risk task needs two different reviewers.
    monkeypatch.setenv("CLEARANCE_ROUTING__HIGH_RISK_AT", "0")
    reset_caches()
    high = in_review(client, tenant, "a green barn")
    approve = {"decision": "approve", "reason": "acceptable_use"}
    assert one.post(f"/dashboard/reviews/{high}/decision", approve).status_code == 303
    page = one.client.get(f"/dashboard/reviews/{high}")
    assert "four-eyes: 1 of 2 approvals" in page.text
    assert "You approved this task" in page.text
    twice = one.post(f"/dashboard/reviews/{high}/decision", approve, headers=htmx)
    assert twice.status_code == 403
    assert "four-eyes needs a different reviewer" in html.unescape(twice.text)
    two = Session(app, tenant.name, make_user(tenant, "reviewer", "two@acme.test"))
    assert two.post(f"/dashboard/reviews/{high}/decision", approve).status_code == 303
    with read_scope() as session:
        task = session.get_one(ReviewTask, high)
        assert (task.outcome, task.approvals) == (
            "approve",
            ["user:one@acme.test", "user:two@acme.test"],
        )
        assert session.get_one(Job, task.job_id).state == "approved"


def test_the_queue_shows_risk_and_sla_filters_and_streams_changes(
    app: FastAPI, client: TestClient, tenant: TenantKeys
) -> None:
    tasks = [in_review(client, tenant, p) for p in ("a red barn", "a blue barn")]
    reviewer = Session(app, tenant.name, make_user(tenant, "reviewer"))
    page = reviewer.client.get("/dashboard/queue")
    assert page.status_code == 200
    for task_id in tasks:
        assert f'data-href="/dashboard/reviews/{task_id}"' in page.text
    assert re.search(r'<time class="sla" datetime="[^"]+">23h 5\dm left</time>', page.text)
    assert "approval-required" in page.text
    # Filters: by reason, and by risk (approval-required tasks carry none).
    table = reviewer.client.get(
        "/dashboard/queue",
        params={"rule": "tenant.approval_required"},
        headers={"HX-Request": "true"},
    )
    assert "<html" not in table.text  # htmx gets the table alone
    assert all(t in table.text for t in tasks)
    assert "0 tasks" in reviewer.client.get("/dashboard/queue", params={"min_risk": 0.5}).text
    assert "0 tasks" in reviewer.client.get("/dashboard/queue", params={"rule": "x"}).text
    bad = reviewer.client.get("/dashboard/queue", params={"view": "nope"})
    assert bad.status_code == 422
    # Live updates: the stream names every waiting task and who holds it.
    reviewer.post(f"/dashboard/reviews/{tasks[0]}/claim")
    with reviewer.client.stream("GET", "/dashboard/events", params={"max_seconds": 0}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    (data,) = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert "event: queue" in text
    sent = json.loads(data)["tasks"]
    assert sent == {
        tasks[0]: {"state": "claimed", "claimed_by": "user:reviewer@acme.test"},
        tasks[1]: {"state": "open", "claimed_by": None},
    }


def test_the_job_page_follows_progress_until_the_job_settles(
    app: FastAPI, client: TestClient, tenant: TenantKeys
) -> None:
    job_id = submit(client, tenant, "a quiet harbour")
    requester = Session(app, tenant.name, make_user(tenant, "requester"))
    waiting = requester.client.get(f"/dashboard/jobs/{job_id}")
    assert waiting.status_code == 200
    assert 'hx-trigger="every 1s"' in waiting.text
    assert "queued" in waiting.text
    stages.prompt_check(job_id, stages.default_context())
    part = requester.client.get(f"/dashboard/jobs/{job_id}", headers={"HX-Request": "true"})
    assert part.text.lstrip().startswith('<section id="progress"')
    assert "checking_prompt" in part.text or "generating" in part.text
    run_all_stages(job_id)
    done = requester.client.get(f"/dashboard/jobs/{job_id}")
    assert 'hx-trigger="every 1s"' not in done.text
    assert "released" in done.text
    for stage in stages.STAGES:
        assert f"<td>{stage}</td>" in done.text
    assert "/dashboard/images/" in done.text
    listed = requester.client.get("/dashboard/jobs")
    assert job_id in listed.text


def test_stats_count_volume_routing_decisions_false_positives_and_sla(
    app: FastAPI, client: TestClient, tenant: TenantKeys
) -> None:
    approved = submit(client, tenant, "a lighthouse")
    run_all_stages(approved)
    tasks = [in_review(client, tenant, p) for p in ("a red barn", "a blue barn")]
    reviewer = Session(app, tenant.name, make_user(tenant, "reviewer"))
    reviewer.post(
        f"/dashboard/reviews/{tasks[0]}/decision", {"decision": "reject", "reason": "policy"}
    )
    page = reviewer.client.get("/dashboard/stats")
    assert page.status_code == 200
    shown = page.text
    assert re.search(r'id="total-jobs">3<', shown)
    # One of three routed jobs went through on the checks alone.
    assert re.search(r'id="auto-approve-rate">33%<', shown)
    assert re.search(r'id="sla-breaches">0<', shown)
    assert '<svg class="chart bars" id="decisions"' in shown
    assert "<title>reject: 1</title>" in shown
    assert "<title>policy: 1</title>" in shown
    assert "cdn" not in shown.lower()


def test_legal_searches_the_audit_log_and_downloads_the_signed_export(
    app: FastAPI, client: TestClient, tenant: TenantKeys, settings: Settings
) -> None:
    other = make_tenant("other")
    submit(client, other, "another tenant's secret prompt")
    legal = Session(app, tenant.name, make_user(tenant, "legal"))
    for role in ("reviewer", "requester"):
        someone = Session(app, tenant.name, make_user(tenant, role))
        assert someone.client.get("/dashboard/audit").status_code == 403
        assert someone.client.get("/dashboard/audit/export").status_code == 403
    found = legal.client.get("/dashboard/audit", params={"type": "dashboard."})
    assert found.status_code == 200
    assert "dashboard.login" in found.text
    assert "api_key.created" not in found.text
    assert other.id not in found.text
    bad = legal.client.get("/dashboard/audit", params={"from": "last tuesday"})
    assert bad.status_code == 422
    assert "from" in bad.text

    download = legal.client.get("/dashboard/audit/export", params={"format": "jsonl"})
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".jsonl")]
        data = archive.read(name)
        manifest = archive.read(name + export.MANIFEST_SUFFIX)
    check = export.verify_export(data, manifest, signing.trusted_keys(settings))
    assert check.count > 0
    rows = [json.loads(line) for line in data.decode().splitlines()]
    assert {r["tenant_id"] for r in rows} == {tenant.id}
    assert "secret prompt" not in data.decode()
    (exported,) = events("audit.exported")
    assert exported.actor == "user:legal@acme.test"


def test_static_files_are_served_and_nothing_else(client: TestClient) -> None:
    htmx = client.get("/dashboard/static/htmx.min.js")
    assert htmx.status_code == 200
    assert htmx.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert client.get("/dashboard/static/dashboard.js").status_code == 200
    assert client.get("/dashboard/static/web.py").status_code == 404
    assert client.get("/dashboard/static/..%2Fweb.py").status_code == 404


def test_the_cli_creates_and_disables_users(app: FastAPI, tenant: TenantKeys) -> None:
    runner = CliRunner()
    create = ["users", "create", "--tenant", tenant.name, "--role", "legal"]
    made = runner.invoke(
        main, [*create, "--email", "cli@acme.test", "--password-stdin"], input=PASSWORD + "\n"
    )
    assert made.exit_code == 0, made.output
    assert re.fullmatch(r"[0-9a-f]{32}\n", made.stdout)
    assert PASSWORD not in made.output
    # Without --password-stdin it asks twice, echoing nothing.
    asked = runner.invoke(
        main, [*create, "--email", "ask@acme.test"], input=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert asked.exit_code == 0, asked.output
    assert PASSWORD not in asked.output
    short = runner.invoke(
        main, [*create, "--email", "x@acme.test", "--password-stdin"], input="short\n"
    )
    assert short.exit_code == 1
    assert "the password must be 12 to 1024 characters long" in short.stderr
    legal = Session(app, tenant.name, "cli@acme.test")
    assert legal.client.get("/dashboard/audit").status_code == 200
    off = runner.invoke(
        main, ["users", "disable", "--tenant", tenant.name, "--email", "cli@acme.test"]
    )
    assert off.exit_code == 0, off.output
    assert legal.client.get("/dashboard/audit", follow_redirects=False).status_code == 303
    unknown = runner.invoke(
        main, ["users", "disable", "--tenant", tenant.name, "--email", "no@acme.test"]
    )
    assert unknown.exit_code == 1

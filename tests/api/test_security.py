"""Security of the HTTP API: a role x route matrix over every route of the app, tenant
isolation of every per-tenant resource, images withheld before release, and no key or secret
in the logs. Jobs run through the real stages in this process."""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import update

from api import auth
from api.app import create_app
from api.models import ROLES, ApiKey, DashboardSession, Tenant
from core.db import session_scope, utcnow
from core.settings import Settings
from pipeline import webhooks
from tests.api.dashboard_helpers import PASSWORD, Session, make_user
from tests.api.webhook_receiver import Receiver
from tests.conftest import TenantKeys, make_tenant, reset_caches
from tests.pipeline.conftest import run_all_stages

ANY = frozenset(ROLES)
OPEN = "open"  # no key needed
TOKEN = "metrics token"  # the settings' metrics token, not a role
# Anyone may post the sign-in form; it answers 401 to wrong credentials and 403 without its
# own CSRF cookie (tests/api/test_dashboard.py tests both).
SIGN_IN = "sign-in form"
REQUESTERS = frozenset({"requester", "admin"})
REVIEWERS = frozenset({"reviewer", "legal", "admin"})
EDITORS = frozenset({"legal", "admin"})
ADMIN = frozenset({"admin"})

# Who may call each route, read from the `principal.require(...)` calls in api/*.py. A route
# of the app missing here fails test_every_route_has_an_entry.
ALLOWED: dict[tuple[str, str], frozenset[str] | str] = {
    # api/routes.py
    ("POST", "/v1/jobs"): REQUESTERS,
    ("GET", "/v1/jobs"): ANY,
    ("POST", "/v1/jobs/{job_id}/cancel"): REQUESTERS,
    ("GET", "/v1/jobs/{job_id}"): ANY,
    ("POST", "/v1/uploads"): REQUESTERS,
    ("GET", "/v1/usage"): ANY,
    ("GET", "/v1/images/{image_id}"): ANY,
    ("GET", "/healthz"): OPEN,
    # api/catalogue.py: anyone with a key reads the shared catalogue and its tenant's own
    # assets and runs checks; editors change their tenant's own assets only.
    ("GET", "/v1/assets"): ANY,
    ("POST", "/v1/assets"): EDITORS,
    ("GET", "/v1/assets/{asset_id}"): ANY,
    ("PUT", "/v1/assets/{asset_id}"): EDITORS,
    ("DELETE", "/v1/assets/{asset_id}"): EDITORS,
    ("GET", "/v1/assets/{asset_id}/exemplars"): ANY,
    ("POST", "/v1/assets/{asset_id}/exemplars"): EDITORS,
    ("DELETE", "/v1/assets/{asset_id}/exemplars/{exemplar_id}"): EDITORS,
    ("POST", "/v1/checks"): ANY,
    ("GET", "/v1/index"): ANY,
    # api/policy.py
    ("POST", "/v1/policy/check"): ANY,
    # api/reviews.py
    ("GET", "/v1/reviews"): REVIEWERS,
    ("GET", "/v1/reviews/{task_id}"): REVIEWERS,
    ("POST", "/v1/reviews/{task_id}/claim"): REVIEWERS,
    ("POST", "/v1/reviews/{task_id}/decision"): REVIEWERS,
    ("POST", "/v1/jobs/{job_id}/appeal"): REQUESTERS,
    # api/audit_log.py
    ("GET", "/v1/audit/export"): EDITORS,
    ("GET", "/v1/audit/public-key"): EDITORS,
    # api/webhooks.py
    ("POST", "/v1/webhooks"): ADMIN,
    ("GET", "/v1/webhooks"): ADMIN,
    ("DELETE", "/v1/webhooks/{webhook_id}"): ADMIN,
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): ADMIN,
    ("POST", "/v1/webhooks/deliveries/{delivery_id}/replay"): ADMIN,
    # api/metrics.py
    ("GET", "/metrics"): TOKEN,
    # api/admin.py
    ("GET", "/v1/admin/keys"): ADMIN,
    ("POST", "/v1/admin/keys"): ADMIN,
    ("DELETE", "/v1/admin/keys/{key_id}"): ADMIN,
    ("GET", "/v1/admin/budgets"): ADMIN,
    ("PUT", "/v1/admin/budgets"): ADMIN,
    ("GET", "/v1/admin/loras"): ADMIN,
    ("POST", "/v1/admin/loras"): ADMIN,
    ("GET", "/v1/admin/rules"): ADMIN,
    ("PUT", "/v1/admin/rules"): ADMIN,
    # api/admin_users.py
    ("GET", "/v1/admin/users"): ADMIN,
    ("POST", "/v1/admin/users"): ADMIN,
    ("POST", "/v1/admin/users/{user_id}/disable"): ADMIN,
    # api/dashboard/: a session cookie, not an API key, opens these (see dashboard_callers).
    ("GET", "/dashboard/static/{name}"): OPEN,
    ("GET", "/dashboard/login"): OPEN,
    ("POST", "/dashboard/login"): SIGN_IN,
    ("POST", "/dashboard/logout"): ANY,
    ("GET", "/dashboard"): ANY,
    ("GET", "/dashboard/queue"): REVIEWERS,
    ("GET", "/dashboard/events"): REVIEWERS,
    ("GET", "/dashboard/reviews/{task_id}"): REVIEWERS,
    ("POST", "/dashboard/reviews/{task_id}/claim"): REVIEWERS,
    ("POST", "/dashboard/reviews/{task_id}/decision"): REVIEWERS,
    ("GET", "/dashboard/reviews/{task_id}/images/{index}"): REVIEWERS,
    ("GET", "/dashboard/exemplars/{exemplar_id}"): REVIEWERS,
    ("GET", "/dashboard/jobs"): ANY,
    ("GET", "/dashboard/jobs/{job_id}"): ANY,
    ("GET", "/dashboard/images/{image_id}"): ANY,
    ("GET", "/dashboard/stats"): REVIEWERS,
    ("GET", "/dashboard/audit"): EDITORS,
    ("GET", "/dashboard/audit/export"): EDITORS,
    # FastAPI's own documentation routes.
    ("GET", "/openapi.json"): OPEN,
    ("GET", "/docs"): OPEN,
    ("GET", "/docs/oauth2-redirect"): OPEN,
    ("GET", "/redoc"): OPEN,
}

NOT_AN_IMAGE = ("x.png", b"not an image", "image/png")

# A request that passes validation, so a forbidden role meets `principal.require` (a body
# that fails validation would answer 422 first). Ids are dummies: allowed roles may get 404.
REQUESTS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/jobs"): {
        "json": {"prompt": "a lighthouse in a storm", "width": 256, "height": 256, "seed": 7}
    },
    ("POST", "/v1/jobs/{job_id}/cancel"): {"json": {"reason": "test"}},
    # An allowed role gets 422 for the content type, after the role check.
    ("POST", "/v1/uploads"): {"files": {"file": ("x.txt", b"hello", "text/plain")}},
    ("POST", "/v1/assets"): {"json": {"id": "matrix-asset", "name": "Matrix", "kind": "logo"}},
    ("PUT", "/v1/assets/{asset_id}"): {"json": {"name": "Matrix", "kind": "logo"}},
    ("POST", "/v1/assets/{asset_id}/exemplars"): {"files": {"file": NOT_AN_IMAGE}},
    ("POST", "/v1/checks"): {"files": {"file": NOT_AN_IMAGE}},
    ("POST", "/v1/policy/check"): {"json": {"prompt": "a lighthouse in a storm"}},
    ("POST", "/v1/reviews/{task_id}/decision"): {
        "json": {"decision": "approve", "reason": "other"}
    },
    ("POST", "/v1/jobs/{job_id}/appeal"): {"json": {"note": "please"}},
    ("POST", "/v1/webhooks"): {
        "json": {"url": "https://example.invalid/hook", "events": ["job.released"]}
    },
    ("POST", "/v1/admin/keys"): {"json": {"role": "requester"}},
    ("PUT", "/v1/admin/budgets"): {"json": {"project": "matrix", "monthly_usd": "10"}},
    # No adapter folder is set here: an admin gets 422 naming the setting.
    ("POST", "/v1/admin/loras"): {
        "json": {"name": "matrix", "path": "x.safetensors", "licence_note": "test"}
    },
    ("PUT", "/v1/admin/rules"): {"json": {"yaml": "review_terms: [matrix]"}},
    ("POST", "/v1/admin/users"): {
        "json": {"email": "matrix@acme.test", "role": "reviewer", "password": "matrix password"}
    },
    # The live-update stream, sent once and ended.
    ("GET", "/dashboard/events"): {"params": {"max_seconds": 0}},
    ("POST", "/dashboard/reviews/{task_id}/decision"): {
        "data": {"decision": "approve", "reason": "other"}
    },
}


def app_routes() -> list[tuple[str, str]]:
    """(method, path) of every route, routers included: this FastAPI keeps an included router
    as one entry of `app.routes` that holds its routes."""
    found = []
    for route in create_app().routes:
        contexts = getattr(route, "effective_route_contexts", None)
        for r in list(contexts()) if contexts is not None else [route]:
            methods = set(getattr(r, "methods", None) or ())
            assert methods, f"a route with no methods: {r!r}"
            for method in sorted(methods - {"HEAD", "OPTIONS"}):
                found.append((method, getattr(r, "path", "")))
    return found


def dummy_path(path: str) -> str:
    return path.format(
        job_id="job-x",
        image_id="image-x",
        asset_id="asset-x",
        exemplar_id="exemplar-x",
        task_id="task-x",
        webhook_id="webhook-x",
        delivery_id="delivery-x",
        key_id="key-x",
        user_id="user-x",
        index="0",
        name="x.js",
    )


def test_every_route_has_an_entry(settings: Settings) -> None:
    routes = app_routes()
    assert len(routes) == len(set(routes))
    missing = sorted(set(routes) - set(ALLOWED))
    assert not missing, f"routes with no expected roles in ALLOWED: {missing}"
    stale = sorted(set(ALLOWED) - set(routes))
    assert not stale, f"ALLOWED names routes the app does not have: {stale}"


def make_revoked_admin_key(tenant: TenantKeys) -> str:
    with session_scope() as session:
        row = session.get_one(Tenant, tenant.id)
        key = auth.create_key(session=session, tenant=row, role="admin", actor="test")
        session.flush()
        session.execute(
            update(ApiKey).where(ApiKey.prefix == key.split("_")[1]).values(revoked_at=utcnow())
        )
    return key


def dashboard_callers(client: TestClient, tenant: TenantKeys) -> dict[str, dict[str, str]]:
    """Who calls the dashboard: no session, an API key (it opens no page), a session that was
    signed out, has expired or was never issued; and a signed-in user of each role, sending
    the session's CSRF token as htmx does."""

    def cookie(session: Session) -> dict[str, str]:
        return {"Cookie": f"clearance_session={session.token}", "X-CSRF-Token": session.csrf}

    signed = {role: Session(client.app, tenant.name, make_user(tenant, role)) for role in ROLES}
    ended = Session(client.app, tenant.name, make_user(tenant, "admin", "ended@acme.test"))
    assert ended.post("/dashboard/logout").status_code == 303
    expired = Session(client.app, tenant.name, make_user(tenant, "admin", "expired@acme.test"))
    expired_hash = hashlib.sha256(expired.token.encode()).hexdigest()
    with session_scope() as session:
        session.execute(
            update(DashboardSession)
            .where(DashboardSession.token_hash == expired_hash)
            .values(expires_at=utcnow())
        )
    return {
        "no session": {},
        "admin API key": tenant.headers("admin"),
        "signed-out session": cookie(ended),
        "expired session": cookie(expired),
        "forged session": {"Cookie": f"clearance_session={'x' * 43}"},
        **{role: cookie(session) for role, session in signed.items()},
    }


def test_role_route_matrix(client: TestClient, tenant: TenantKeys) -> None:
    revoked = make_revoked_admin_key(tenant)
    sessions = dashboard_callers(client, tenant)
    callers: dict[str, dict[str, str]] = {
        "no key": {},
        "bad key": {"Authorization": "Bearer clr_000000000000_" + "x" * 43},
        "not bearer": {"Authorization": f"Basic {tenant.keys['admin']}"},
        # A real admin key's prefix with another secret.
        "wrong secret": {
            "Authorization": f"Bearer {tenant.keys['admin'].rsplit('_', 1)[0]}_{'z' * 43}"
        },
        "revoked admin key": {"Authorization": f"Bearer {revoked}"},
        **{role: tenant.headers(role) for role in ROLES},
    }
    wrong: list[str] = []
    # Signing out ends the session it is sent with, so that route comes last.
    for method, path in sorted(app_routes(), key=lambda r: r == ("POST", "/dashboard/logout")):
        allowed = ALLOWED[(method, path)]
        if allowed in (TOKEN, SIGN_IN):
            continue  # test_metrics_wants_its_token_not_a_role_key, tests/api/test_dashboard.py
        for caller, headers in (sessions if path.startswith("/dashboard") else callers).items():
            response = client.request(
                method,
                dummy_path(path),
                headers=headers,
                follow_redirects=False,
                **REQUESTS.get((method, path), {}),
            )
            got = response.status_code
            if allowed == OPEN:
                ok = got not in (401, 403)
                expected = "open"
            elif caller not in ROLES:
                ok = got == 401
                expected = "401"
            elif caller in allowed:
                ok = got not in (401, 403) and got < 500
                expected = "allowed"
            else:
                ok = got == 403
                expected = "403"
            if not ok:
                wrong.append(f"{method} {path} as {caller}: {got}, expected {expected}")
    assert not wrong, "\n".join(wrong)


def test_metrics_wants_its_token_not_a_role_key(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.setenv("CLEARANCE_METRICS__TOKEN", "s3cret-metrics-token-for-tests")
    reset_caches()
    tenant = make_tenant("acme")
    with TestClient(create_app()) as client:
        for role in ROLES:
            assert client.get("/metrics", headers=tenant.headers(role)).status_code == 401
        assert client.get("/metrics").status_code == 401
        good = {"Authorization": "Bearer s3cret-metrics-token-for-tests"}
        assert client.get("/metrics", headers=good).status_code == 200


def png_bytes(color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


def submit(client: TestClient, tenant: TenantKeys, prompt: str = "a lighthouse in a storm") -> str:
    response = client.post(
        "/v1/jobs",
        headers=tenant.headers("requester"),
        json={"prompt": prompt, "width": 256, "height": 256, "seed": 7},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def set_human_approval(tenant: TenantKeys, value: bool) -> None:
    with session_scope() as session:
        session.execute(
            update(Tenant).where(Tenant.id == tenant.id).values(require_human_approval=value)
        )


def export_events(client: TestClient, tenant: TenantKeys, role: str) -> list[str]:
    response = client.get("/v1/audit/export", headers=tenant.headers(role))
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".jsonl")]
        return archive.read(name).decode().splitlines()


def test_tenants_see_only_their_own_resources(client: TestClient, settings: Settings) -> None:
    a, b = make_tenant("tenant-a"), make_tenant("tenant-b")
    receiver = Receiver()
    try:
        hook = client.post(
            "/v1/webhooks",
            headers=a.headers("admin"),
            json={"url": receiver.url, "events": ["job.released", "job.in_review"]},
        )
        assert hook.status_code == 201, hook.text
        hook_id = hook.json()["id"]
        receiver.secret = hook.json()["secret"]

        # A released job of A, with its images.
        released = submit(client, a)
        run_all_stages(released)
        job = client.get(f"/v1/jobs/{released}", headers=a.headers()).json()
        assert job["state"] == "released", job
        image_ids = [i["id"] for i in job["images"]]
        assert image_ids
        ok = client.get(f"/v1/images/{image_ids[0]}", headers=a.headers())
        assert ok.status_code == 200

        # A job of A waiting for a person, with its review task.
        set_human_approval(a, True)
        waiting = submit(client, a, prompt="a red barn at dawn")
        run_all_stages(waiting)
        tasks = client.get("/v1/reviews", headers=a.headers("reviewer")).json()["items"]
        (task,) = [t for t in tasks if t["job_id"] == waiting]

        # A job of A still queued (not run): cancellable by A.
        queued = submit(client, a, prompt="a quiet harbour")

        upload = client.post(
            "/v1/uploads",
            headers=a.headers(),
            files={"file": ("a.png", png_bytes(), "image/png")},
        )
        assert upload.status_code == 201, upload.text

        # A's own asset, a key, a budget and policy overrides, all made by A's admin.
        admin_a = a.headers("admin")
        asset = client.post(
            "/v1/assets", headers=admin_a, json={"id": "logo", "name": "Zorblax", "kind": "logo"}
        )
        assert asset.status_code == 201, asset.text
        asset_id = asset.json()["id"]
        key = client.post("/v1/admin/keys", headers=admin_a, json={"role": "reviewer"})
        assert key.status_code == 201, key.text
        budget = {"project": "posters", "monthly_usd": "12.5"}
        assert client.put("/v1/admin/budgets", headers=admin_a, json=budget).is_success
        rules = {"yaml": "review_terms: [zorblax]"}
        assert client.put("/v1/admin/rules", headers=admin_a, json=rules).is_success

        assert webhooks.dispatch_due(settings) >= 1
        deliveries = client.get(f"/v1/webhooks/{hook_id}/deliveries", headers=a.headers("admin"))
        assert deliveries.status_code == 200
        delivery_id = deliveries.json()[0]["id"]

        # B gets 404 for every one of A's ids, whatever its role, and none of A's data.
        probes: list[tuple[str, str, str, dict[str, Any]]] = [
            ("requester", "GET", f"/v1/jobs/{released}", {}),
            ("admin", "GET", f"/v1/jobs/{waiting}", {}),
            ("requester", "POST", f"/v1/jobs/{queued}/cancel", {"json": {"reason": "x"}}),
            ("admin", "POST", f"/v1/jobs/{queued}/cancel", {}),
            ("requester", "POST", f"/v1/jobs/{released}/appeal", {"json": {"note": "x"}}),
            *[("requester", "GET", f"/v1/images/{i}", {}) for i in image_ids],
            ("admin", "GET", f"/v1/images/{image_ids[0]}?format=jpeg", {}),
            ("reviewer", "GET", f"/v1/reviews/{task['id']}", {}),
            ("reviewer", "POST", f"/v1/reviews/{task['id']}/claim", {}),
            (
                "admin",
                "POST",
                f"/v1/reviews/{task['id']}/decision",
                {"json": {"decision": "approve", "reason": "other"}},
            ),
            ("admin", "GET", f"/v1/webhooks/{hook_id}/deliveries", {}),
            ("admin", "DELETE", f"/v1/webhooks/{hook_id}", {}),
            ("admin", "POST", f"/v1/webhooks/deliveries/{delivery_id}/replay", {}),
            ("requester", "GET", f"/v1/assets/{asset_id}", {}),
            ("requester", "GET", f"/v1/assets/{asset_id}/exemplars", {}),
            ("legal", "PUT", f"/v1/assets/{asset_id}", {"json": {"name": "x", "kind": "logo"}}),
            ("admin", "DELETE", f"/v1/assets/{asset_id}", {}),
            (
                "admin",
                "POST",
                f"/v1/assets/{asset_id}/exemplars",
                {"files": {"file": ("a.png", png_bytes(), "image/png")}},
            ),
            ("admin", "DELETE", f"/v1/admin/keys/{key.json()['id']}", {}),
            ("admin", "DELETE", f"/v1/admin/keys/{key.json()['prefix']}", {}),
        ]
        for role, method, path, kwargs in probes:
            response = client.request(method, path, headers=b.headers(role), **kwargs)
            assert response.status_code == 404, (role, method, path, response.text)
            # The not-found error echoes the id asked for, and nothing of A's.
            body = response.json()
            assert body["error"].endswith("not_found"), (method, path, body)
            assert "lighthouse" not in response.text
            assert "barn" not in response.text
            assert "Zorblax" not in response.text

        # Using A's upload as an input image: not found for B either.
        as_input = client.post(
            "/v1/jobs",
            headers=b.headers(),
            json={
                "prompt": "make it blue",
                "variant": "kontext-dev",
                "input_image": upload.json()["id"],
                "width": 256,
                "height": 256,
            },
        )
        assert as_input.status_code == 404, as_input.text
        assert as_input.json()["error"] == "upload_not_found"

        # The same bytes uploaded by B are B's own upload, not A's row.
        again = client.post(
            "/v1/uploads", headers=b.headers(), files={"file": ("b.png", png_bytes(), "image/png")}
        )
        assert again.status_code == 201, again.text
        assert again.json()["id"] != upload.json()["id"]

        # An Idempotency-Key is per tenant: B's request with A's key and body is a new job.
        body = {"prompt": "a windmill", "width": 256, "height": 256, "seed": 3}
        first = client.post(
            "/v1/jobs", headers={**a.headers(), "Idempotency-Key": "k-1"}, json=body
        )
        assert first.status_code == 201, first.text
        theirs = client.post(
            "/v1/jobs", headers={**b.headers(), "Idempotency-Key": "k-1"}, json=body
        )
        assert theirs.status_code == 201, theirs.text
        assert theirs.json()["id"] != first.json()["id"]
        client.post(f"/v1/jobs/{theirs.json()['id']}/cancel", headers=b.headers())

        # Lists never include A's items.
        for role in ROLES:
            listed = client.get("/v1/jobs", headers=b.headers(role)).json()
            assert [j["id"] for j in listed["items"]] == [theirs.json()["id"]], role
            assert listed["total"] == 1, role
        for role in REVIEWERS:
            listed = client.get("/v1/reviews", headers=b.headers(role)).json()
            assert (listed["items"], listed["total"]) == ([], 0), role
        assert client.get("/v1/webhooks", headers=b.headers("admin")).json() == []
        for role in ROLES:
            listed = client.get("/v1/assets", headers=b.headers(role))
            assert asset_id not in listed.text, role
            assert "Zorblax" not in listed.text, role
        admin_b = b.headers("admin")
        keys_b = client.get("/v1/admin/keys", params={"limit": 500}, headers=admin_b).json()
        assert {k["prefix"] for k in keys_b["items"]} == {k.split("_")[1] for k in b.keys.values()}
        assert client.get("/v1/admin/budgets", headers=admin_b).json()["items"] == []
        assert client.get("/v1/admin/rules", headers=admin_b).json()["yaml"] == ""
        assert client.get("/v1/admin/keys", headers=admin_a).json()["total"] == len(a.keys) + 1
        usage_a = client.get("/v1/usage", headers=a.headers()).json()
        usage_b = client.get("/v1/usage", headers=b.headers()).json()
        assert float(usage_a["total_usd"]) > 0
        assert float(usage_b["total_usd"]) == 0
        assert usage_b["lines"] == []

        # Audit: B's legal exports B's events only, and may not name A.
        events = "\n".join(export_events(client, b, "legal"))
        assert a.id not in events
        assert released not in events
        refused = client.get(
            "/v1/audit/export", params={"tenant": a.name}, headers=b.headers("legal")
        )
        assert refused.status_code == 403
        refused = client.get(
            "/v1/audit/export", params={"tenant": a.name}, headers=b.headers("admin")
        )
        assert refused.status_code == 403

        # The dashboard: B's signed-in users find none of A's jobs, tasks or images (B's
        # requesters may not open review pages at all), and B's admin none of A's users.
        a_user = client.post(
            "/v1/admin/users",
            headers=a.headers("admin"),
            json={"email": "rita@tenant-a.test", "role": "reviewer", "password": "a long password"},
        )
        assert a_user.status_code == 201, a_user.text
        pages = [
            f"/dashboard/jobs/{released}",
            f"/dashboard/jobs/{waiting}",
            *[f"/dashboard/images/{i}" for i in image_ids],
            f"/dashboard/reviews/{task['id']}",
            f"/dashboard/reviews/{task['id']}/images/0",
        ]
        for role in ROLES:
            viewer = Session(client.app, b.name, make_user(b, role))
            for path in pages:
                response = viewer.client.get(path)
                answer = 403 if role == "requester" and "/reviews/" in path else 404
                assert response.status_code == answer, (role, path, response.status_code)
                assert "lighthouse" not in response.text
                assert "barn" not in response.text
            if role in REVIEWERS:
                claim = viewer.post(f"/dashboard/reviews/{task['id']}/claim")
                assert claim.status_code == 404, role
                decide = viewer.post(
                    f"/dashboard/reviews/{task['id']}/decision",
                    {"decision": "approve", "reason": "other"},
                )
                assert decide.status_code == 404, role
                assert task["id"] not in viewer.client.get("/dashboard/queue").text
            assert released not in viewer.client.get("/dashboard/jobs").text
        disable = client.post(
            f"/v1/admin/users/{a_user.json()['id']}/disable", headers=b.headers("admin")
        )
        assert disable.status_code == 404
        listed_users = client.get("/v1/admin/users", headers=b.headers("admin"))
        assert "rita@tenant-a.test" not in listed_users.text
        assert listed_users.json()["total"] == len(ROLES)

        # A still sees all of it; B's attempts changed nothing.
        assert client.get(f"/v1/jobs/{queued}", headers=a.headers()).json()["state"] != "cancelled"
        assert (
            client.get(f"/v1/reviews/{task['id']}", headers=a.headers("reviewer")).json()["state"]
            == "open"
        )
        listed_hooks = client.get("/v1/webhooks", headers=a.headers("admin"))
        assert len(listed_hooks.json()) == 1
        assert receiver.secret not in listed_hooks.text  # shown once, at creation
        assert client.get("/v1/jobs", headers=a.headers()).json()["total"] == 4
    finally:
        receiver.close()


def test_images_are_withheld_until_release(client: TestClient, settings: Settings) -> None:
    a, b = make_tenant("tenant-a"), make_tenant("tenant-b")
    set_human_approval(a, True)
    job_id = submit(client, a)
    run_all_stages(job_id)
    job = client.get(f"/v1/jobs/{job_id}", headers=a.headers()).json()
    assert job["state"] != "released", job
    assert job["images"], job
    for image in job["images"]:
        assert image["released"] is False
        assert image["url"] is None
        for role in ROLES:
            for fmt in ("png", "jpeg"):
                response = client.get(
                    f"/v1/images/{image['id']}", params={"format": fmt}, headers=a.headers(role)
                )
                # No role, reviewers included, gets unreleased bytes through the API.
                assert response.status_code == 409, (role, fmt, response.status_code)
                assert not response.content.startswith((b"\x89PNG", b"\xff\xd8"))
            other = client.get(f"/v1/images/{image['id']}", headers=b.headers(role))
            assert other.status_code == 404


def test_keys_and_secrets_are_never_logged(
    client: TestClient, tenant: TenantKeys, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = Receiver()
    try:
        secret = "whsec_security-test-secret-0123456789"
        hook = client.post(
            "/v1/webhooks",
            headers=tenant.headers("admin"),
            json={"url": receiver.url, "events": ["job.released"], "secret": secret},
        )
        assert hook.status_code == 201, hook.text
        receiver.secret = secret
        job_id = submit(client, tenant)
        run_all_stages(job_id)
        job = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers()).json()
        assert job["state"] == "released", job
        assert client.get(
            f"/v1/images/{job['images'][0]['id']}", headers=tenant.headers()
        ).is_success
        assert webhooks.dispatch_due(settings) >= 1
        assert client.get("/v1/audit/export", headers=tenant.headers("legal")).is_success
        # A dashboard user signs in, works and signs out.
        viewer = Session(client.app, tenant.name, make_user(tenant, "reviewer"))
        assert viewer.client.get("/dashboard/queue").is_success
        assert viewer.post("/dashboard/logout").status_code == 303
        # Failed authentications are logged too, perhaps: a wrong key must not be either.
        wrong_key = "clr_0123456789ab_" + "y" * 43
        assert (
            client.get("/v1/jobs", headers={"Authorization": f"Bearer {wrong_key}"}).status_code
            == 401
        )
    finally:
        receiver.close()

    secrets = {f"{role} key": key for role, key in tenant.keys.items()}
    for role, key in tenant.keys.items():
        # clr_PREFIX_SECRET, where the base64url secret may itself hold "_".
        secrets[f"{role} key secret part"] = key.split("_", 2)[2]
    secrets["wrong key"] = wrong_key
    secrets["dashboard password"] = PASSWORD
    secrets["dashboard session id"] = viewer.token
    secrets["dashboard CSRF token"] = viewer.csrf
    secrets["webhook secret"] = secret
    for name, path in (
        ("provenance signing key", settings.signing_key_path),
        ("audit signing key", settings.audit_signing_key_file),
    ):
        assert path.exists(), f"{name} was not made at {path}"
        body = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("-----")
        ]
        secrets[name] = "".join(body)
        for i, line in enumerate(body):
            secrets[f"{name} line {i}"] = line
    # The stages and the API log at DEBUG and INFO: the check has something to read.
    assert len(caplog.records) >= 5, [r.getMessage() for r in caplog.records]
    logged = "\n".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''} {vars(r)!r}" for r in caplog.records
    )
    leaked = [name for name, value in secrets.items() if value and value in logged]
    assert not leaked, f"found in the logs: {leaked}"

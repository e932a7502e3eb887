"""The admin API of a tenant (api/admin.py): API keys, budgets, LoRA adapters and the tenant's
own prompt-policy overrides, on SQLite and PostgreSQL. Who may call each route is the role
matrix's (tests/api/test_security.py); here, what each does, its bad input, and its audit."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from api.cli import main
from audit.models import AuditEvent
from core.db import read_scope
from core.settings import Settings
from tests.conftest import TenantKeys, make_tenant, reset_caches
from tests.generation.lora_helpers import tiny_lora_fixture  # noqa: F401
from tests.pipeline.conftest import run_all_stages

# Each route with a body that passes validation, so the role check is what answers.
ADMIN_ROUTES: tuple[tuple[str, str, dict[str, Any] | None], ...] = (
    ("GET", "/v1/admin/keys", None),
    ("POST", "/v1/admin/keys", {"role": "requester"}),
    ("DELETE", "/v1/admin/keys/x", None),
    ("GET", "/v1/admin/budgets", None),
    ("PUT", "/v1/admin/budgets", {"monthly_usd": "1"}),
    ("GET", "/v1/admin/loras", None),
    ("POST", "/v1/admin/loras", {"name": "ink", "path": "ink.safetensors", "licence_note": "x"}),
    ("GET", "/v1/admin/rules", None),
    ("PUT", "/v1/admin/rules", {"yaml": ""}),
)


def events(type_: str) -> list[AuditEvent]:
    with read_scope() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.type == type_).order_by(AuditEvent.seq)
            )
        )


def error(response: Any, status: int, code: str, field: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert (body["error"], body.get("field")) == (code, field), body
    assert body["detail"]
    return body


def test_only_admins_and_they_are_told_which_role_it_needs(
    client: TestClient, tenant: TenantKeys
) -> None:
    for method, path, body in ADMIN_ROUTES:
        for role in ("requester", "reviewer", "legal"):
            response = client.request(method, path, headers=tenant.headers(role), json=body)
            refused = error(response, 403, "forbidden", "role")
            assert "'admin'" in refused["detail"], refused


# --- keys ------------------------------------------------------------------------------------


def test_a_key_is_shown_once_listed_without_its_secret_and_revoked_for_good(
    client: TestClient, tenant: TenantKeys
) -> None:
    admin = tenant.headers("admin")
    created = client.post("/v1/admin/keys", headers=admin, json={"role": "reviewer"})
    assert created.status_code == 201, created.text
    new = created.json()
    key = new["key"]
    assert key.startswith(f"clr_{new['prefix']}_")
    assert (new["role"], new["revoked"], new["revoked_at"]) == ("reviewer", False, None)
    reviewer = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/reviews", headers=reviewer).status_code == 200

    listed = client.get("/v1/admin/keys", headers=admin)
    assert listed.status_code == 200
    page = listed.json()
    assert page["total"] == len(tenant.keys) + 1
    assert [k["prefix"] for k in page["items"]][-1] == new["prefix"]
    # Never a key, its secret part or its hash.
    assert "key" not in page["items"][0]
    for secret in (key, key.split("_", 2)[2], hashlib.sha256(key.encode()).hexdigest()):
        assert secret not in listed.text
    second = client.get("/v1/admin/keys", params={"offset": 1, "limit": 1}, headers=admin).json()
    assert [k["id"] for k in second["items"]] == [page["items"][1]["id"]]
    assert (second["total"], second["offset"], second["limit"]) == (page["total"], 1, 1)

    revoked = client.delete(f"/v1/admin/keys/{new['id']}", headers=admin)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked"] is True
    refused = error(
        client.get("/v1/jobs", headers=reviewer), 401, "unauthenticated", "Authorization"
    )
    assert "revoked" in refused["detail"]
    # Again (by its prefix this time): nothing changes, and no second event.
    again = client.delete(f"/v1/admin/keys/{new['prefix']}", headers=admin)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]

    subject = f"api_key:{new['prefix']}"
    for type_ in ("api_key.created", "api_key.revoked"):
        (event,) = [e for e in events(type_) if e.subject == subject]
        assert event.tenant_id == tenant.id
        assert event.actor == f"api_key:{tenant.keys['admin'].split('_')[1]}"
        assert json.loads(event.payload) == {"role": "reviewer"}
        assert key not in event.payload


def test_bad_key_requests_name_the_field_and_choices(
    client: TestClient, tenant: TenantKeys
) -> None:
    admin = tenant.headers("admin")
    body = error(
        client.post("/v1/admin/keys", headers=admin, json={"role": "owner"}),
        422,
        "invalid_input",
        "role",
    )
    for role in ("requester", "reviewer", "legal", "admin"):
        assert repr(role) in body["detail"]
    error(client.post("/v1/admin/keys", headers=admin, json={}), 422, "invalid_input", "role")
    extra = {"role": "admin", "tenant": "other"}
    error(client.post("/v1/admin/keys", headers=admin, json=extra), 422, "invalid_input", "tenant")
    error(client.delete("/v1/admin/keys/nope", headers=admin), 404, "api_key_not_found", "key_id")
    bad_page = client.get("/v1/admin/keys", params={"limit": 0}, headers=admin)
    error(bad_page, 422, "invalid_input", "limit")


def test_the_last_admin_key_cannot_be_revoked(client: TestClient, tenant: TenantKeys) -> None:
    own = tenant.headers("admin")
    own_id = next(
        k["id"]
        for k in client.get("/v1/admin/keys", headers=own).json()["items"]
        if k["role"] == "admin"
    )
    refused = client.delete(f"/v1/admin/keys/{own_id}", headers=own)
    assert "last active admin key" in error(refused, 409, "conflict", "key_id")["detail"]
    assert client.get("/v1/admin/keys", headers=own).status_code == 200  # still works

    spare = client.post("/v1/admin/keys", headers=own, json={"role": "admin"}).json()
    assert client.delete(f"/v1/admin/keys/{own_id}", headers=own).status_code == 200
    assert client.get("/v1/admin/keys", headers=own).status_code == 401
    other = {"Authorization": f"Bearer {spare['key']}"}
    error(client.delete(f"/v1/admin/keys/{spare['id']}", headers=other), 409, "conflict", "key_id")


def test_the_cli_lists_and_revokes_with_the_same_rules(
    client: TestClient, tenant: TenantKeys
) -> None:
    runner = CliRunner()
    listed = runner.invoke(main, ["keys", "list", "--tenant", tenant.name])
    assert listed.exit_code == 0, listed.output
    prefixes = {key.split("_")[1]: role for role, key in tenant.keys.items()}
    assert {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()} == prefixes
    assert not any(key.split("_", 2)[2] in listed.stdout for key in tenant.keys.values())

    admin_prefix = tenant.keys["admin"].split("_")[1]
    last = runner.invoke(main, ["keys", "revoke", "--tenant", tenant.name, admin_prefix])
    assert last.exit_code == 1
    assert "last active admin key" in last.stderr
    requester = tenant.keys["requester"].split("_")[1]
    done = runner.invoke(main, ["keys", "revoke", "--tenant", tenant.name, requester])
    assert done.exit_code == 0, done.output
    assert client.get("/v1/jobs", headers=tenant.headers("requester")).status_code == 401
    (event,) = [e for e in events("api_key.revoked") if e.subject == f"api_key:{requester}"]
    assert event.actor == "cli"


# --- budgets ---------------------------------------------------------------------------------


def test_budgets_are_set_listed_and_enforced(client: TestClient, tenant: TenantKeys) -> None:
    admin = tenant.headers("admin")
    assert client.get("/v1/admin/budgets", headers=admin).json()["items"] == []
    whole = client.put("/v1/admin/budgets", headers=admin, json={"monthly_usd": "5"})
    assert whole.status_code == 200, whole.text
    assert whole.json() == {
        "project": "",
        "monthly_usd": "5.000000",
        "spent_usd": "0.000000",
        "remaining_usd": "5.000000",
    }
    posters = {"project": "posters", "monthly_usd": 0}
    assert client.put("/v1/admin/budgets", headers=admin, json=posters).status_code == 200
    page = client.get("/v1/admin/budgets", headers=admin).json()
    assert [(b["project"], b["monthly_usd"]) for b in page["items"]] == [
        ("", "5.000000"),
        ("posters", "0.000000"),
    ]
    one = client.get("/v1/admin/budgets", params={"offset": 1, "limit": 1}, headers=admin)
    assert [b["project"] for b in one.json()["items"]] == ["posters"]
    assert one.json()["total"] == 2
    # The same ledger as `clearance usage` and GET /v1/usage.
    assert client.get("/v1/usage", headers=tenant.headers()).json()["budgets"] == page["items"]

    job = {"prompt": "a lighthouse", "width": 256, "height": 256, "project": "posters"}
    refused = client.post("/v1/jobs", headers=tenant.headers(), json=job)
    error(refused, 402, "budget_exceeded", "project")
    assert client.post("/v1/jobs", headers=tenant.headers(), json=job | {"project": ""}).is_success

    (first, second) = [e for e in events("budget.set") if e.tenant_id == tenant.id]
    assert json.loads(second.payload) == {"project": "posters", "monthly_usd": "0.000000"}
    assert first.actor == second.actor == f"api_key:{tenant.keys['admin'].split('_')[1]}"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"monthly_usd": "-1"}, "monthly_usd"),
        ({"monthly_usd": "lots"}, "monthly_usd"),
        ({"monthly_usd": "1e12"}, "monthly_usd"),
        ({"monthly_usd": "0.0000001"}, "monthly_usd"),
        ({"project": "no spaces", "monthly_usd": "1"}, "project"),
        ({"project": "posters"}, "monthly_usd"),
    ],
)
def test_bad_budgets_are_refused_naming_the_field(
    client: TestClient, tenant: TenantKeys, body: dict[str, Any], field: str
) -> None:
    response = client.put("/v1/admin/budgets", headers=tenant.headers("admin"), json=body)
    error(response, 422, "invalid_input", field)
    assert client.get("/v1/admin/budgets", headers=tenant.headers("admin")).json()["total"] == 0


def test_a_bad_month_is_named(client: TestClient, tenant: TenantKeys) -> None:
    response = client.get(
        "/v1/admin/budgets", params={"month": "2026-13"}, headers=tenant.headers("admin")
    )
    assert "YYYY-MM" in error(response, 422, "invalid_generation_request", "month")["detail"]


# --- LoRA adapters ---------------------------------------------------------------------------


@pytest.fixture
def lora_dir(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path, tiny_lora: Path
) -> Iterator[Path]:
    """The operator's adapter folder, with one adapter in it, and a file outside it."""
    folder = tmp_path / "adapters"
    (folder / "styles").mkdir(parents=True)
    shutil.copy(tiny_lora, folder / "styles" / "ink.safetensors")
    shutil.copy(tiny_lora, tmp_path / "outside.safetensors")
    os.symlink(tmp_path / "outside.safetensors", folder / "sneaky.safetensors")
    monkeypatch.setenv("CLEARANCE_GENERATION__LORA_DIR", str(folder))
    reset_caches()
    yield folder
    reset_caches()


def test_without_an_adapter_folder_only_operators_register(
    client: TestClient, tenant: TenantKeys, tiny_lora: Path
) -> None:
    body = {"name": "ink", "path": str(tiny_lora), "licence_note": "CC-BY-4.0"}
    response = client.post("/v1/admin/loras", headers=tenant.headers("admin"), json=body)
    detail = error(response, 422, "invalid_generation_request", "path")["detail"]
    assert "CLEARANCE_GENERATION__LORA_DIR" in detail
    assert client.get("/v1/admin/loras", headers=tenant.headers("admin")).json()["items"] == []


def test_a_tenant_registers_adapters_from_the_operators_folder_for_itself_only(
    lora_dir: Path, tiny_lora: Path
) -> None:
    acme, globex = make_tenant("acme"), make_tenant("globex")
    shared = CliRunner().invoke(
        main, ["loras", "register", "house-style", str(tiny_lora), "--licence-note", "ours"]
    )
    assert shared.exit_code == 0, shared.output
    with TestClient(create_app()) as client:
        admin = acme.headers("admin")
        body = {"name": "ink", "path": "styles/ink.safetensors", "licence_note": "CC-BY-4.0"}
        created = client.post("/v1/admin/loras", headers=admin, json=body)
        assert created.status_code == 201, created.text
        adapter = created.json()
        assert adapter["name"] == "acme:ink"
        assert (adapter["scope"], adapter["path"]) == ("tenant", "styles/ink.safetensors")
        assert adapter["sha256"] == hashlib.sha256(tiny_lora.read_bytes()).hexdigest()

        # Never a file outside the folder: not by a relative path, an absolute one, nor a link.
        for path in ("../outside.safetensors", str(lora_dir.parent / "outside.safetensors")):
            outside = client.post("/v1/admin/loras", headers=admin, json=body | {"path": path})
            detail = error(outside, 422, "invalid_generation_request", "path")["detail"]
            assert str(lora_dir) not in detail
        for bad, code, field in [
            (
                {"name": "sneaky", "path": "sneaky.safetensors"},
                "invalid_generation_request",
                "path",
            ),
            ({"name": "Ink Style"}, "invalid_input", "name"),
            ({"licence_note": ""}, "invalid_input", "licence_note"),
        ]:
            refused = client.post("/v1/admin/loras", headers=admin, json=body | bad)
            error(refused, 422, code, field)

        mine = client.get("/v1/admin/loras", headers=admin).json()
        assert [(a["name"], a["scope"], a["path"]) for a in mine["items"]] == [
            ("acme:ink", "tenant", "styles/ink.safetensors"),
            ("house-style", "shared", None),
        ]
        theirs = client.get("/v1/admin/loras", headers=globex.headers("admin"))
        assert [a["name"] for a in theirs.json()["items"]] == ["house-style"]

        job = {"prompt": "a lighthouse", "width": 256, "height": 256, "seed": 3}
        with_ink = job | {"loras": [{"name": "acme:ink", "scale": 0.8}]}
        refused = client.post("/v1/jobs", headers=globex.headers(), json=with_ink)
        detail = error(refused, 422, "invalid_generation_request", "loras")["detail"]
        assert "'house-style'" in detail
        assert "acme:ink" not in detail.split("registered:")[1]
        accepted = client.post("/v1/jobs", headers=acme.headers(), json=with_ink)
        assert accepted.status_code == 201, accepted.text
        # The tenant's adapter loads into the pipeline under its "<tenant>:<name>" name.
        run_all_stages(accepted.json()["id"])
        done = client.get(f"/v1/jobs/{accepted.json()['id']}", headers=acme.headers()).json()
        assert done["state"] == "released", done

    (event,) = [e for e in events("lora.registered") if e.subject == "lora:acme:ink"]
    assert event.tenant_id == acme.id
    assert json.loads(event.payload)["licence_note"] == "CC-BY-4.0"


# --- prompt-policy rules ---------------------------------------------------------------------


def policy_check(client: TestClient, tenant: TenantKeys, prompt: str) -> dict[str, Any]:
    response = client.post(
        "/v1/policy/check",
        headers=tenant.headers(),
        json={"prompt": prompt, "variant": "schnell", "use": "commercial"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_tenants_overrides_apply_to_it_alone_with_a_new_rules_version(
    client: TestClient, settings: Settings
) -> None:
    acme, globex = make_tenant("acme"), make_tenant("globex")
    admin = acme.headers("admin")
    before = client.get("/v1/admin/rules", headers=admin).json()
    assert (before["yaml"], before["revision"], before["updated_by"]) == ("", 0, None)
    assert before["locked_rules"] == ["category.child_abuse", "category.child_safety"]
    assert "category.nudity" in before["overridable_rules"]
    assert not set(before["locked_rules"]) & set(before["overridable_rules"])

    override = "allow_terms: [nude]\nblock_terms: [zorblax]\n"
    saved = client.put("/v1/admin/rules", headers=admin, json={"yaml": override})
    assert saved.status_code == 200, saved.text
    after = saved.json()
    assert (after["yaml"], after["revision"]) == (override, 1)
    assert after["updated_by"] == f"api_key:{acme.keys['admin'].split('_')[1]}"
    assert after["rules_version"] != before["rules_version"]
    assert client.get("/v1/admin/rules", headers=admin).json() == after

    blocked = policy_check(client, acme, "a zorblax at dawn")
    assert blocked["decision"] == "block"
    assert blocked["rules_version"] == after["rules_version"]
    assert policy_check(client, acme, "a nude statue in a museum")["decision"] == "allow"
    # The other tenant: neither the block nor the allowance.
    assert policy_check(client, globex, "a zorblax at dawn")["decision"] == "allow"
    assert policy_check(client, globex, "a nude statue in a museum")["decision"] == "review"
    assert client.get("/v1/admin/rules", headers=globex.headers("admin")).json()["yaml"] == ""

    replaced = client.put("/v1/admin/rules", headers=admin, json={"yaml": ""})
    assert replaced.json()["revision"] == 2
    assert policy_check(client, acme, "a zorblax at dawn")["decision"] == "allow"
    (first, second) = [e for e in events("policy.override_set") if e.tenant_id == acme.id]
    assert json.loads(first.payload) == {
        "revision": 1,
        "rules_version": after["rules_version"],
        "sha256": hashlib.sha256(override.encode()).hexdigest(),
        "yaml": override,
    }
    assert json.loads(second.payload)["revision"] == 2


@pytest.mark.parametrize(
    ("override", "line", "words"),
    [
        # Sexual content involving minors: no override can lift it.
        ("block_terms: [x]\ndecisions:\n  category.child_safety: allow\n", 3, ["locked"]),
        ("decisions:\n  category.child_abuse: review\n", 2, ["locked"]),
        ("decisions: {category.nope: allow}\n", 1, ["no rule", "'category.gore'"]),
        ("allow_terms: [a]\n\ncolour: red\n", 3, ["valid keys", "'block_terms'"]),
        ("decisions: {category.gore: maybe}\n", 1, ["'allow'", "'block'"]),
        ("review_terms: ['  ']\n", 1, ["blank"]),
        ("allow_terms: [a\nblock_terms: []\n", 2, ["not valid YAML"]),
        ("- just\n- a list\n", 1, ["expected a mapping"]),
    ],
)
def test_a_bad_override_is_refused_naming_its_line(
    client: TestClient, tenant: TenantKeys, override: str, line: int, words: list[str]
) -> None:
    admin = tenant.headers("admin")
    before = client.get("/v1/admin/rules", headers=admin).json()
    response = client.put("/v1/admin/rules", headers=admin, json={"yaml": override})
    body = error(response, 422, "invalid_rules", "yaml")
    assert body["line"] == line, body
    assert f"line {line}:" in body["detail"]
    for word in words:
        assert word in body["detail"], body
    assert client.get("/v1/admin/rules", headers=admin).json() == before
    assert events("policy.override_set") == []


def test_allowed_terms_never_weaken_a_locked_rule(client: TestClient, tenant: TenantKeys) -> None:
    override = {"yaml": "allow_terms: [teen, nude, child]\n"}
    assert client.put("/v1/admin/rules", headers=tenant.headers("admin"), json=override).is_success
    assert policy_check(client, tenant, "a nude statue")["decision"] == "allow"
    minors = policy_check(client, tenant, "a nude teen")
    assert minors["decision"] == "block"
    assert "category.child_safety" in {r["rule"] for r in minors["reasons"]}


def test_an_override_the_rule_file_outgrew_stops_its_tenant_only(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path
) -> None:
    """An override names a rule the operator then locks: that tenant's prompts are refused,
    naming the line and how to fix it, and everyone else's are judged as before."""
    from review.rules import DEFAULT_RULES_FILE

    rules_file = tmp_path / "rules.yaml"
    shutil.copy(DEFAULT_RULES_FILE, rules_file)
    monkeypatch.setenv("CLEARANCE_POLICY__RULES_FILE", str(rules_file))
    reset_caches()
    acme, globex = make_tenant("acme"), make_tenant("globex")
    with TestClient(create_app()) as client:
        body = {"yaml": "review_terms: [x]\ndecisions: {category.gore: allow}\n"}
        assert client.put("/v1/admin/rules", headers=acme.headers("admin"), json=body).is_success
        assert policy_check(client, acme, "graphic gore")["decision"] == "allow"
        text = rules_file.read_text()
        locked = text.replace("detail: graphic gore", "detail: graphic gore\n    locked: true")
        rules_file.write_text(locked.replace('version: "2025.06.1"', 'version: "2025.06.2"'))

        refused = client.post(
            "/v1/policy/check",
            headers=acme.headers(),
            json={"prompt": "a quiet harbour", "variant": "schnell"},
        )
        detail = error(refused, 422, "invalid_rules", "rules")["detail"]
        assert "PUT /v1/admin/rules" in detail
        assert "line 2" in detail
        assert "locked" in detail
        assert policy_check(client, globex, "graphic gore")["decision"] == "review"
        # The admin sees what to replace, and a fixed override serves the tenant again.
        assert client.get("/v1/admin/rules", headers=acme.headers("admin")).status_code == 200
        fixed = {"yaml": "review_terms: [x]\n"}
        assert client.put("/v1/admin/rules", headers=acme.headers("admin"), json=fixed).is_success
        assert policy_check(client, acme, "graphic gore")["decision"] == "review"

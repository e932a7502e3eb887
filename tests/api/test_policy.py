"""Prompt policy through the pipeline's one entry point: `POST /v1/policy/check`,
`clearance policy check` and the prompt_check stage, all reading the catalogue from the
database (SQLite and PostgreSQL) and the packaged rule file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.cli import main
from audit.models import AuditEvent
from core.blobs import BlobStore
from core.db import read_scope, session_scope
from core.settings import Settings
from pipeline.models import BLOCKED, Job
from reference_index import service as catalogue
from tests.conftest import TenantKeys
from tests.pipeline.conftest import run_all_stages

CATALOGUE = Path(__file__).parents[1] / "review" / "data" / "catalogue.yaml"


@pytest.fixture
def imported(settings: Settings) -> Settings:
    with session_scope() as session:
        catalogue.import_catalogue(
            session=session, blobs=BlobStore(settings.blob_dir), path=CATALOGUE, actor="test"
        )
    return settings


def check(client: TenantClient, **body: object) -> tuple[int, dict[str, Any]]:
    response = client.client.post(
        "/v1/policy/check", json=body, headers=client.tenant.headers("requester")
    )
    return response.status_code, response.json()


class TenantClient:
    def __init__(self, client: TestClient, tenant: TenantKeys) -> None:
        self.client, self.tenant = client, tenant


@pytest.fixture
def api(client: TestClient, tenant: TenantKeys, imported: Settings) -> TenantClient:
    return TenantClient(client, tenant)


def test_a_protected_name_is_blocked_with_every_reason_quoting_the_prompt(
    api: TenantClient,
) -> None:
    status, body = check(
        api, prompt="M1ckey  M-o-u-s-e at a medieval sword fight", variant="dev", use="commercial"
    )
    assert status == 200
    assert body["decision"] == "block"
    reasons = {r["rule"]: r for r in body["reasons"]}
    assert set(reasons) == {"licence.non_commercial", "asset.name"}
    assert reasons["asset.name"]["asset_id"] == "mickey-mouse"
    # The reason quotes what the prompt said, not the normalised text.
    assert reasons["asset.name"]["matched"] == "M1ckey  M-o-u-s-e"
    assert "schnell" in reasons["licence.non_commercial"]["detail"]
    assert body["rules_version"]
    assert str(body["catalogue_version"]).startswith("catalogue-")


def test_the_field_report_prompts(api: TenantClient) -> None:
    """Weapons and historical violence pass; words that share a protected name's spelling
    pass; a person by name and an indirect description go to a person."""
    allowed = [
        "a knight holding a medieval sword, oil painting",
        "a field mouse in a wheat field at dawn",
        "an apple pie on a windowsill",
        "a fighter jet breaking the sound barrier with a sonic boom",
    ]
    for prompt in allowed:
        status, body = check(api, prompt=prompt, variant="schnell", use="commercial")
        assert (status, body["decision"]) == (200, "allow"), (prompt, body)
    status, body = check(
        api,
        prompt="a cartoon mouse with large round black ears, red shorts and white gloves",
        variant="schnell",
        use="commercial",
    )
    assert body["decision"] == "review"
    # Other cartoon mice may resemble it too; the one described is the closest.
    assert {r["decision"] for r in body["reasons"]} == {"review"}
    closest = max(body["reasons"], key=lambda r: r["score"])
    assert closest["asset_id"] == "mickey-mouse"
    status, body = check(api, prompt="a portrait of Taylor Swift on stage")
    assert body["decision"] == "review"
    assert [r["asset_id"] for r in body["reasons"]] == ["taylor-swift"]


def test_a_new_asset_is_matched_without_a_restart(api: TenantClient, imported: Settings) -> None:
    prompt = "the Zorblax Quantum mascot on a cereal box"
    assert check(api, prompt=prompt)[1]["decision"] == "allow"
    with session_scope() as session:
        catalogue.save_asset(
            session=session,
            asset_id="zorblax",
            fields=catalogue.AssetFields(
                name="Zorblax Quantum", kind="character", owner="Zorblax Inc."
            ),
            actor="test",
        )
    status, body = check(api, prompt=prompt)
    assert (status, body["decision"]) == (200, "block")
    assert body["reasons"][0]["asset_id"] == "zorblax"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   \n\t"}, "prompt"),
        ({"prompt": "a cat " * 20_000}, "prompt"),  # 120 kB
        ({"prompt": "a cat", "variant": "flux-9"}, "variant"),
        ({"prompt": "a cat", "use": "personal"}, "use"),
        ({"prompt": 42}, "prompt"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(
    api: TenantClient, body: dict[str, object], field: str
) -> None:
    status, answer = check(api, **body)
    assert status == 422, answer
    assert field in json.dumps(answer)


def test_invalid_utf8_and_odd_prompts_never_break_the_service(api: TenantClient) -> None:
    response = api.client.post(
        "/v1/policy/check",
        content=b'{"prompt": "a cat \xff\xfe"}',
        headers={**api.tenant.headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["field"] == "body"
    for prompt in ["\U0001f600\U0001f3a8\U0001f5e1", "a cat\x07 on a\x1b[31m mat"]:
        status, body = check(api, prompt=prompt)
        assert (status, body["decision"]) == (200, "allow"), body
    # NUL is refused wherever it is sent (PostgreSQL cannot store it), as a job's prompt is.
    status, body = check(api, prompt="a cat\x00 on a mat")
    assert (status, body["field"]) == (422, "prompt"), body


def test_the_stage_uses_the_catalogue_and_records_both_versions(
    api: TenantClient, imported: Settings
) -> None:
    response = api.client.post(
        "/v1/jobs",
        json={"prompt": "Pikachu surfing a wave", "variant": "schnell", "use": "commercial"},
        headers=api.tenant.headers(),
    )
    job_id = response.json()["id"]
    assert run_all_stages(job_id) == ["prompt_check"]
    with read_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.state == BLOCKED
        (decided,) = session.scalars(
            select(AuditEvent).where(AuditEvent.type == "prompt_check.decided")
        ).all()
    payload = json.loads(decided.payload)
    assert payload["decision"] == "block"
    assert [r["asset_id"] for r in payload["reasons"]] == ["pikachu"]
    assert payload["rules_version"]
    assert payload["catalogue_version"].startswith("catalogue-")


def run(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.stdout


def test_cli_check_prints_json_and_says_by_exit_status(imported: Settings) -> None:
    code, out = run("policy", "check", "--variant", "dev", "--use", "commercial", "--json", "a fox")
    assert code == 3
    answer = json.loads(out)
    assert answer["decision"] == "block"
    assert [r["rule"] for r in answer["reasons"]] == ["licence.non_commercial"]
    code, out = run("policy", "check", "--json", "a fox in the snow")
    assert (code, json.loads(out)["decision"]) == (0, "allow")


def test_cli_batch_answers_every_line_in_order(imported: Settings, tmp_path: Path) -> None:
    lines = [
        {"prompt": "a field mouse", "variant": "schnell", "use": "commercial"},
        {"prompt": "Spider-Man on a rooftop", "variant": "schnell", "use": "commercial"},
        "this line is not JSON",
        {"prompt": "a cat", "variant": "flux-9", "use": "commercial"},
        {"prompt": "a lighthouse", "variant": "dev", "use": "non-commercial"},
        {"prompt": ""},
    ]
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    code, out = run("policy", "check", "--jsonl", "-", stdin=text)
    answers = [json.loads(line) for line in out.splitlines()]
    assert code == 1  # some lines could not be judged
    assert [a.get("decision") or a["error"] for a in answers] == [
        "allow",
        "block",
        "invalid_input",
        "invalid_generation_request",
        "allow",
        "invalid_policy_input",
    ]
    assert "line 3" in answers[2]["detail"]
    assert answers[3]["field"] == "variant"
    assert "schnell" in answers[3]["detail"]
    # The same from a file.
    batch = tmp_path / "prompts.jsonl"
    batch.write_text(text, encoding="utf-8")
    assert run("policy", "check", "--jsonl", str(batch)) == (code, out)


def test_cli_refuses_an_unknown_tenant_naming_the_existing_ones(imported: Settings) -> None:
    result = CliRunner().invoke(main, ["policy", "check", "--tenant", "nobody", "a cat"])
    assert result.exit_code == 1
    assert "tenant 'nobody' does not exist" in result.stderr

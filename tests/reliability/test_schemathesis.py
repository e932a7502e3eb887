"""schemathesis against the app's own OpenAPI schema, on a real migrated database (SQLite and
PostgreSQL) with real API keys.

Every operation gets generated requests, valid and invalid, as an admin and as a requester;
then a stateful run chains operations through the links schemathesis infers (a job created,
then read, cancelled, appealed; an asset created, then updated, deleted...), so responses
about real objects are checked too. No answer may be a 5xx or break the schema: a status code
the operation does not document, a body or content type that does not match its declaration,
a header it declares missing, or a request that violates the schema accepted.

One check is off: `positive_data_acceptance` (a request that matches the schema must not be
refused). The schema cannot express the rules that need the database or other fields, and
the API rightly refuses such requests with a 4xx that names the field: a width outside the
variant's range, a LoRA that is not registered, an upload id that does not exist, a review
task that is not claimed, a budget that would be exceeded.
"""

from __future__ import annotations

import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis.errors import Flaky, Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok

from api.app import create_app
from core.settings import Settings, get_settings
from tests.conftest import TenantKeys

# Generated requests per operation and generation mode, by the role of the key that sends
# them: the admin reaches every operation; the requester mostly meets 403s, still documented.
EXAMPLES = {"admin": 8, "requester": 3}
STATEFUL_SCENARIOS = 25
STATEFUL_STEPS = 8
# Requests the stateful scenarios make at least, within this many runs.
STATEFUL_REQUESTS = 150
STATEFUL_RUNS = 4
MIN_REQUESTS = 1000

CONFIG = schemathesis.Config.from_dict({"checks": {"positive_data_acceptance": {"enabled": False}}})
QUIET = hsettings(
    deadline=None,
    # Examples come from the seed alone: no database of earlier failures under the repo.
    database=None,
    # Slow or heavily filtered generation is expected of deep schemas; it is not a failure.
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Tally:
    """Requests sent, per operation ("stateful ..." in scenarios), and answers per class."""

    sent: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)

    def answered(self, response: Any) -> None:
        self.answers[f"{response.status_code // 100}xx"] += 1


def fuzz_operation(
    operation: Any, mode: GenerationMode, examples: int, headers: dict[str, str], tally: Tally
) -> None:
    @hsettings(QUIET, max_examples=examples, phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        tally.sent[operation.label] += 1
        tally.answered(case.call_and_validate(headers=headers))

    try:
        run()
    except Unsatisfiable:
        # No request can break this operation's schema (no parameters, or only free text):
        # nothing negative to send.
        assert mode == GenerationMode.NEGATIVE


def run_stateful(schema: Any, headers: dict[str, str], tally: Tally, failures: list[str]) -> None:
    """Scenarios of linked operations. Problems are recorded, not raised: Hypothesis replays a
    failing scenario to shrink it, and a replay against a database that the first run changed
    draws differently ("inconsistent data generation"), which would hide the problem."""

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": headers}

        def call(self, case: Any, **kwargs: Any) -> Any:
            tally.sent[f"stateful {case.operation.label}"] += 1
            try:
                response = super().call(case, **kwargs)
            except Exception as e:  # the app raised: a 500
                failures.append(f"stateful {case.operation.label}: {type(e).__name__}: {e}")
                raise
            tally.answered(response)
            return response

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            try:
                super().validate_response(response, case, **kwargs)
            except FailureGroup as e:
                failures.append(f"stateful {case.operation.label}: {e}")

    def stateful_requests() -> int:
        return sum(n for label, n in tally.sent.items() if label.startswith("stateful "))

    # A run that the database's state made draw inconsistently ends early; the next one goes
    # on from the state the last left, as schemathesis' own runner does.
    for _ in range(STATEFUL_RUNS):
        if stateful_requests() >= STATEFUL_REQUESTS:
            break
        try:
            Workflow.run(
                settings=hsettings(
                    QUIET,
                    max_examples=STATEFUL_SCENARIOS,
                    stateful_step_count=STATEFUL_STEPS,
                    phases=[Phase.generate],
                )
            )
        except Flaky:
            pass
        except AssertionError as e:
            # Hypothesis asserts, instead of raising Flaky, when a replay draws past a value
            # that an earlier run rejected.
            frames = traceback.extract_tb(e.__traceback__)
            if not frames or not frames[-1].filename.endswith("conjecture/datatree.py"):
                raise


@pytest.fixture
def every_variant_configured(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment that offers every variant, as production does: with no key for the Black
    Forest Labs API, a job for `pro` is refused with 503 (by design, tested in
    tests/api/test_jobs_api.py). No worker runs here, so the key is never sent anywhere."""
    monkeypatch.setenv("CLEARANCE_GENERATION__BFL__API_KEY", "bfl-key-that-is-never-sent")
    get_settings.cache_clear()


@pytest.mark.usefixtures("every_variant_configured")
def test_no_request_gets_a_server_error_or_an_answer_outside_the_schema(
    settings: Settings, tenant: TenantKeys, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(), config=CONFIG)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the schema has an operation it cannot describe: {result}"
        operations.append(result.ok())
    tally = Tally()
    # Every operation is fuzzed even after one fails, so one run lists every problem.
    failures = []
    for operation in operations:
        for role, examples in EXAMPLES.items():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    fuzz_operation(operation, mode, examples, tenant.headers(role), tally)
                except (Exception, FailureGroup) as e:  # a FailureGroup is a BaseException
                    failures.append(f"{operation.label} as {role}, {mode.value} data: {e}")
    # Last: a stateful scenario may revoke keys or delete what it created.
    run_stateful(schema, tenant.headers("admin"), tally, failures)

    total = sum(tally.sent.values())
    stateful = sum(n for label, n in tally.sent.items() if label.startswith("stateful "))
    with capsys.disabled():
        print(
            f"\nschemathesis on {settings.db_url.split(':')[0]}: {total} requests "
            f"({stateful} in stateful scenarios) over "
            f"{len(operations)} operations; answers: {dict(sorted(tally.answers.items()))}"
        )
    assert failures == [], "\n\n".join(failures)
    untested = [o.label for o in operations if not tally.sent[o.label]]
    assert untested == []
    assert total >= MIN_REQUESTS


# What schemathesis found, pinned. Each of these answered 500 (on SQLite, PostgreSQL or both)
# or was accepted although the schema forbids it; each is now a 422 naming the field.
FOUND = [
    pytest.param("GET", "/v1/jobs?offset=9223372036854775808", None, "offset", id="offset"),
    pytest.param(
        "GET",
        "/v1/jobs?created_from=0001-01-01T00:00:00%2B00:01",
        None,
        "created_from",
        id="datetime-out-of-range",
    ),
    pytest.param(
        "GET", "/v1/jobs?created_to=-27871772423218.234", None, "created_to", id="number-as-time"
    ),
    pytest.param("POST", "/v1/jobs", {"prompt": "a cat\x00"}, "prompt", id="nul-in-body"),
    pytest.param("GET", "/v1/jobs/a%00b", None, "job_id", id="nul-in-path"),
    pytest.param("GET", "/v1/jobs?project=a%00", None, "project", id="nul-in-query"),
    pytest.param(
        "POST",
        "/v1/assets",
        {"id": "x", "name": "X", "kind": "logo", "thresholds": {"clip_min_text_score": False}},
        "thresholds.clip_min_text_score",
        id="boolean-as-number",
    ),
    pytest.param(
        "POST", "/v1/jobs", {"prompt": "a cat", "n_images": "2"}, "n_images", id="string-as-integer"
    ),
]


@pytest.mark.parametrize(("method", "url", "body", "field"), FOUND)
def test_what_schemathesis_found_is_refused_naming_the_field(
    tenant: TenantKeys, method: str, url: str, body: object, field: str
) -> None:
    with TestClient(create_app()) as client:
        response = client.request(method, url, json=body, headers=tenant.headers("admin"))
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_a_body_that_cannot_be_parsed_is_refused_as_bad_input(tenant: TenantKeys) -> None:
    """Starlette answered broken multipart data with a bare 400, which no operation
    documents; it is bad input like any other."""
    with TestClient(create_app()) as client:
        response = client.post(
            "/v1/checks",
            content=b"--b\r\n-1715452--b--\r\n",
            headers={**tenant.headers("admin"), "Content-Type": "multipart/form-data; boundary=b"},
        )
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_input"
    assert response.json()["field"] == "body"

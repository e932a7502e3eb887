"""The BFL API client against an imitation of the API served over real HTTP.

What matters most is money: every accepted submission is billed, so the tests count the
submissions the provider saw, not the calls the client made.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from core.settings import BflSettings
from generation.bfl import API_KEY_ENV, BflClient, ProviderRequest, generate_via_api
from generation.errors import (
    ContentModeratedError,
    ModelUnavailableError,
    ProviderError,
    SubmissionUnknownError,
)
from generation.schemas import GeneratedImage, GenerationSpec
from generation.variants import get_variant
from tests.generation.fake_bfl import (
    FOREVER_S,
    FakeBfl,
    Fault,
    Route,
    color_for,
    running_fake_bfl,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEY = "bfl-test-key"


class FakeTime:
    """Records sleeps instead of sleeping; the clock moves only by them."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.requests: list[ProviderRequest] = []

    def __call__(self, request: ProviderRequest) -> None:
        self.requests.append(request)


@pytest.fixture
def fake() -> Iterator[FakeBfl]:
    with running_fake_bfl(api_key=KEY) as server:
        yield server


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


def settings_for(fake: FakeBfl, **changes: Any) -> BflSettings:
    values: dict[str, Any] = {
        "base_url": fake.base_url,
        "api_key": SecretStr(KEY),
        # Short, so timeout faults cost little real time; the fake answers well within it.
        "request_timeout_s": 1.0,
        "poll_interval_s": 2.0,
        "max_wait_s": 60.0,
        "max_retries": 3,
    }
    return BflSettings(**(values | changes))


def client_for(
    fake: FakeBfl, clock: FakeTime, transport: httpx.BaseTransport | None = None, **changes: Any
) -> BflClient:
    return BflClient(
        settings_for(fake, **changes),
        sleep=clock.sleep,
        clock=clock.monotonic,
        transport=transport,
    )


def spec(**changes: Any) -> GenerationSpec:
    base = GenerationSpec(
        prompt="a lighthouse on a cliff at dusk",
        variant="pro",
        width=1024,
        height=768,
        seed=41,
        n_images=1,
    )
    return dataclasses.replace(base, **changes)


def generate(
    fake: FakeBfl,
    clock: FakeTime,
    request: GenerationSpec | None = None,
    *,
    known: dict[int, ProviderRequest] | None = None,
    record: Recorder | None = None,
    transport: httpx.BaseTransport | None = None,
    **changes: Any,
) -> list[GeneratedImage]:
    request = request or spec()
    with client_for(fake, clock, transport, **changes) as client:
        return generate_via_api(
            request,
            get_variant(request.variant),
            client,
            known=known or {},
            record=record or Recorder(),
        )


def pixels(image: GeneratedImage) -> tuple[tuple[int, int], Any]:
    with Image.open(io.BytesIO(image.png)) as decoded:
        assert decoded.format == "PNG"
        return decoded.size, decoded.getpixel((0, 0))


def test_pro_generates_one_billed_image_per_seed(
    fake: FakeBfl, clock: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    record = Recorder()
    with caplog.at_level(logging.DEBUG):
        images = generate(fake, clock, spec(n_images=3), record=record)

    assert [(i.index, i.seed, i.width, i.height) for i in images] == [
        (0, 41, 1024, 768),
        (1, 42, 1024, 768),
        (2, 43, 1024, 768),
    ]
    for image in images:
        assert image.png.startswith(PNG_SIGNATURE)
        assert pixels(image) == ((1024, 768), color_for(image.seed))
    assert len({i.png for i in images}) == 3

    assert [(s.endpoint, s.seed, s.key) for s in fake.submissions] == [
        ("/v1/flux-pro-1.1", 41, KEY),
        ("/v1/flux-pro-1.1", 42, KEY),
        ("/v1/flux-pro-1.1", 43, KEY),
    ]
    assert fake.submissions[0].body == {
        "prompt": "a lighthouse on a cliff at dusk",
        "seed": 41,
        "safety_tolerance": 2,
        "output_format": "png",
        "width": 1024,
        "height": 768,
    }
    assert [r.request_id for r in record.requests] == [s.id for s in fake.submissions]
    assert [r.image_index for r in record.requests] == [0, 1, 2]
    # One Pending answer per image, so one poll interval each.
    assert clock.sleeps == [2.0, 2.0, 2.0]
    # The signed sample URL lives on another host: the key must not travel there.
    assert fake.sample_keys == [None, None, None]
    assert KEY not in caplog.text


def test_ultra_sends_the_aspect_ratio_and_reports_the_real_size(
    fake: FakeBfl, clock: FakeTime
) -> None:
    images = generate(fake, clock, spec(variant="pro-ultra", width=1536, height=1024, n_images=2))

    assert [(s.endpoint, s.seed) for s in fake.submissions] == [
        ("/v1/flux-pro-1.1-ultra", 41),
        ("/v1/flux-pro-1.1-ultra", 42),
    ]
    body = fake.submissions[0].body
    assert body["aspect_ratio"] == "3:2"
    assert "width" not in body
    assert "height" not in body
    assert [(i.seed, i.width, i.height) for i in images] == [(41, 2048, 1365), (42, 2048, 1365)]
    assert pixels(images[1]) == ((2048, 1365), color_for(42))


def test_without_a_polling_url_the_client_polls_get_result(clock: FakeTime) -> None:
    with running_fake_bfl(api_key=KEY, include_polling_url=False) as fake:
        record = Recorder()
        images = generate(fake, clock, record=record)
        request_id = fake.submissions[0].id
        assert record.requests == [
            ProviderRequest(0, request_id, f"{fake.base_url}/v1/get_result?id={request_id}")
        ]
    assert pixels(images[0]) == ((1024, 768), color_for(41))


@pytest.mark.parametrize("status", [429, 502, 503])
def test_submit_is_resent_when_the_provider_did_not_accept_it(
    fake: FakeBfl, clock: FakeTime, status: int
) -> None:
    fake.fail("submit", Fault(status=status), Fault(status=status))

    images = generate(fake, clock)

    assert len(images) == 1
    assert len(fake.submissions) == 1
    assert len(clock.sleeps) == 2 + 1  # two backoffs, one poll interval


def test_retry_after_is_honoured(fake: FakeBfl, clock: FakeTime) -> None:
    fake.fail("submit", Fault(status=429, headers={"Retry-After": "7"}))

    generate(fake, clock)

    assert clock.sleeps[0] == 7.0
    assert len(fake.submissions) == 1


def test_a_retry_after_longer_than_the_cap_gives_up(fake: FakeBfl, clock: FakeTime) -> None:
    fake.fail("submit", Fault(status=429, headers={"Retry-After": "3600"}))

    with pytest.raises(ProviderError, match="wait 3600 s"):
        generate(fake, clock)
    assert fake.submissions == []


class RefuseConnections(httpx.BaseTransport):
    """A network that refuses the first `count` POSTs before they leave the machine."""

    def __init__(self, count: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.count = count

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and self.count:
            self.count -= 1
            raise httpx.ConnectError("connection refused", request=request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_submit_is_resent_after_a_refused_connection(fake: FakeBfl, clock: FakeTime) -> None:
    images = generate(fake, clock, transport=RefuseConnections(2))

    assert len(images) == 1
    assert len(fake.submissions) == 1


def test_an_unreachable_provider_exhausts_the_retries(clock: FakeTime) -> None:
    with running_fake_bfl(api_key=KEY) as fake:
        address = fake.base_url
    # The server is gone: every connection is refused before anything is sent.
    settings = BflSettings(base_url=address, api_key=SecretStr(KEY), max_retries=2)
    with (
        BflClient(settings, sleep=clock.sleep) as client,
        pytest.raises(ProviderError, match="after 2 retries; last: ConnectError"),
    ):
        generate_via_api(spec(), get_variant("pro"), client, known={}, record=Recorder())
    assert len(clock.sleeps) == 2


def test_submit_retries_are_capped(fake: FakeBfl, clock: FakeTime) -> None:
    fake.fail("submit", *[Fault(status=503)] * 3)

    with pytest.raises(ProviderError, match="after 2 retries; last: HTTP 503"):
        generate(fake, clock, max_retries=2)
    assert fake.submissions == []
    assert len(clock.sleeps) == 2


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault(accept_first=True, delay_s=FOREVER_S), id="read-timeout"),
        pytest.param(Fault(accept_first=True, status=500), id="500"),
        pytest.param(Fault(accept_first=True, status=504), id="504"),
        pytest.param(Fault(accept_first=True, drop=True), id="dropped"),
        pytest.param(Fault(accept_first=True, body={"queued": True}), id="no-id"),
    ],
)
def test_a_lost_answer_to_an_accepted_submit_is_not_resent(
    fake: FakeBfl, clock: FakeTime, fault: Fault
) -> None:
    fake.fail("submit", fault)
    record = Recorder()

    with pytest.raises(SubmissionUnknownError, match="not resubmitted to avoid paying twice"):
        generate(fake, clock, record=record)

    assert len(fake.submissions) == 1  # billed once, and only once
    assert record.requests == []
    assert fake.polls == []


def test_a_slow_submit_within_the_timeout_succeeds(fake: FakeBfl, clock: FakeTime) -> None:
    fake.fail("submit", Fault(accept_first=True, delay_s=0.2))

    images = generate(fake, clock)

    assert len(images) == 1
    assert len(fake.submissions) == 1


@pytest.mark.parametrize(
    ("fake_options", "generation_spec", "message"),
    [
        pytest.param({"api_key": "another-key"}, spec(), "HTTP 403: Not authenticated", id="403"),
        pytest.param({"credits": 0}, spec(), "HTTP 402: Insufficient credits", id="402"),
        pytest.param({}, spec(width=1040), "HTTP 422: width: must be a multiple of 32", id="422"),
    ],
)
def test_refusals_are_provider_errors_and_not_retried(
    clock: FakeTime, fake_options: dict[str, Any], generation_spec: GenerationSpec, message: str
) -> None:
    with running_fake_bfl(**fake_options) as fake:
        with pytest.raises(ProviderError, match=message) as raised:
            generate(fake, clock, generation_spec)
        assert fake.submissions == []
    assert clock.sleeps == []
    assert raised.value.code == "provider_error"


@pytest.mark.parametrize(
    ("route", "faults"),
    [
        pytest.param("poll", [Fault(status=500), Fault(status=502)], id="poll-5xx"),
        pytest.param("poll", [Fault(status=429, headers={"Retry-After": "1"})], id="poll-429"),
        pytest.param("poll", [Fault(delay_s=FOREVER_S)], id="poll-timeout"),
        pytest.param("poll", [Fault(drop=True)], id="poll-dropped"),
        pytest.param("poll", [Fault(delay_s=0.2)], id="poll-slow"),
        pytest.param("sample", [Fault(status=503), Fault(status=500)], id="sample-5xx"),
        pytest.param("sample", [Fault(delay_s=FOREVER_S)], id="sample-timeout"),
        pytest.param("sample", [Fault(drop=True)], id="sample-dropped"),
    ],
)
def test_polls_and_downloads_are_retried(
    fake: FakeBfl, clock: FakeTime, route: Route, faults: list[Fault]
) -> None:
    fake.fail(route, *faults)

    images = generate(fake, clock)

    assert pixels(images[0]) == ((1024, 768), color_for(41))
    assert len(fake.submissions) == 1


def test_poll_retries_count_consecutive_failures(fake: FakeBfl, clock: FakeTime) -> None:
    # Two failures, a Pending answer, two more failures: never more than two in a row.
    fake.fail("poll", Fault(status=500), Fault(status=500), Fault(), *[Fault(status=500)] * 2)

    images = generate(fake, clock, max_retries=2)

    assert len(images) == 1
    assert len(fake.submissions) == 1


def test_poll_retries_are_capped(fake: FakeBfl, clock: FakeTime) -> None:
    fake.fail("poll", *[Fault(status=500)] * 3)

    with pytest.raises(ProviderError, match="after 2 retries; last: HTTP 500"):
        generate(fake, clock, max_retries=2)
    assert len(fake.submissions) == 1


def test_download_retries_are_capped_and_hide_the_signature(fake: FakeBfl, clock: FakeTime) -> None:
    fake.fail("sample", *[Fault(status=502)] * 3)

    with pytest.raises(ProviderError, match="after 2 retries") as raised:
        generate(fake, clock, max_retries=2)
    assert "sig=" not in str(raised.value)


@pytest.mark.parametrize(
    ("prompt", "status"),
    [
        ("a forbidden lighthouse", "Request Moderated"),
        ("an unsightly lighthouse", "Content Moderated"),
    ],
)
def test_moderation_is_its_own_error(
    fake: FakeBfl, clock: FakeTime, prompt: str, status: str
) -> None:
    with pytest.raises(ContentModeratedError) as raised:
        generate(fake, clock, spec(prompt=prompt))

    assert raised.value.status == status
    assert raised.value.reasons == {"Moderation Reasons": [f"contains {prompt.split()[1]!r}"]}
    assert raised.value.to_dict()["error"] == "content_moderated"
    assert len(fake.submissions) == 1


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"status": "Task not found"}, "no longer knows"),
        ({"status": "Error", "details": "GPU fell over"}, r"failed the generation \(Error\)"),
        ({"status": "Failed"}, r"failed the generation \(Failed\)"),
        ({"status": "Exploded"}, "unexpected status 'Exploded'"),
    ],
)
def test_failed_generations_are_provider_errors(
    fake: FakeBfl, clock: FakeTime, answer: dict[str, Any], message: str
) -> None:
    fake.fail("poll", Fault(body=answer))

    with pytest.raises(ProviderError, match=message):
        generate(fake, clock)


def test_a_result_that_is_not_an_image_is_refused(fake: FakeBfl, clock: FakeTime) -> None:
    fake.fail("sample", Fault(raw=b"<html>signature expired</html>"))

    with pytest.raises(ProviderError, match="is not an image"):
        generate(fake, clock)


def test_waiting_stops_at_max_wait(clock: FakeTime) -> None:
    with running_fake_bfl(api_key=KEY, pending_polls=1000) as fake:
        with pytest.raises(ProviderError, match=r"still pending after 10 s \(limit 10 s\)"):
            generate(fake, clock, max_wait_s=10.0)
        assert len(fake.polls) == 6  # at 0, 2, 4, 6, 8 and 10 s
    assert clock.now == 10.0


def test_a_retried_job_resumes_its_submissions_and_pays_nothing_more(
    fake: FakeBfl, clock: FakeTime
) -> None:
    # First try: both images are submitted and recorded, then polling breaks down.
    record = Recorder()
    fake.fail("poll", *[Fault(status=503)] * 3)
    with pytest.raises(ProviderError):
        generate(fake, clock, spec(n_images=2), record=record, max_retries=2)
    assert len(fake.submissions) == 2

    resumed = Recorder()
    known = {r.image_index: r for r in record.requests}
    images = generate(fake, clock, spec(n_images=2), known=known, record=resumed)

    assert len(fake.submissions) == 2
    assert resumed.requests == []
    assert [(i.index, i.seed) for i in images] == [(0, 41), (1, 42)]
    assert [pixels(i) for i in images] == [((1024, 768), color_for(s)) for s in (41, 42)]


def test_only_unknown_indexes_are_submitted(fake: FakeBfl, clock: FakeTime) -> None:
    with client_for(fake, clock) as client:
        request_id, polling_url = client.submit(
            endpoint="/v1/flux-pro-1.1",
            prompt="a lighthouse",
            width=512,
            height=512,
            seed=41,
            ultra=False,
        )
    record = Recorder()
    known = {0: ProviderRequest(0, request_id, polling_url)}

    images = generate(fake, clock, spec(n_images=2), known=known, record=record)

    assert [s.seed for s in fake.submissions] == [41, 42]
    assert [r.image_index for r in record.requests] == [1]
    assert [(i.index, i.seed, i.width) for i in images] == [(0, 41, 512), (1, 42, 1024)]


def test_a_resumed_request_the_provider_forgot_is_a_provider_error(
    fake: FakeBfl, clock: FakeTime
) -> None:
    expired = ProviderRequest(0, "gone", f"{fake.base_url}/v1/get_result?id=gone")

    with pytest.raises(ProviderError, match="no longer knows"):
        generate(fake, clock, known={0: expired})
    assert fake.submissions == []


def test_the_submission_is_recorded_before_it_is_polled(fake: FakeBfl, clock: FakeTime) -> None:
    def record(request: ProviderRequest) -> None:
        raise RuntimeError("database is down")

    with client_for(fake, clock) as client, pytest.raises(RuntimeError, match="database"):
        generate_via_api(spec(), get_variant("pro"), client, known={}, record=record)
    assert len(fake.submissions) == 1
    assert fake.polls == []


@pytest.mark.parametrize("api_key", [None, SecretStr("")])
def test_a_missing_key_names_the_setting(api_key: SecretStr | None) -> None:
    with pytest.raises(ModelUnavailableError, match=API_KEY_ENV):
        BflClient(BflSettings(api_key=api_key))
    assert API_KEY_ENV == "CLEARANCE_GENERATION__BFL__API_KEY"


def test_a_variant_without_an_endpoint_is_unavailable(fake: FakeBfl, clock: FakeTime) -> None:
    with pytest.raises(ModelUnavailableError, match="'schnell' is not served") as raised:
        generate(fake, clock, spec(variant="schnell"))
    assert "'dev', 'pro' or 'pro-ultra'" in str(raised.value)
    assert fake.submissions == []


def test_the_key_never_reaches_an_error_or_a_log(
    fake: FakeBfl, clock: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    # A provider that echoes the key it was sent, first in a retried answer, then in a refusal.
    echo = {"detail": f"key {KEY} is not allowed here"}
    fake.fail("submit", Fault(status=503, body=echo), Fault(status=400, body=echo))

    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderError) as raised:
        generate(fake, clock)

    assert "HTTP 503: key [redacted] is not allowed here" in caplog.text
    assert "HTTP 400: key [redacted] is not allowed here" in str(raised.value)
    assert KEY not in caplog.text
    assert KEY not in repr(raised.value.to_dict())

"""The Black Forest Labs API backend: submit a generation, poll until it is ready, download it.

Every accepted submission is billed, so a submission is sent again only when the provider
surely never accepted it (rate limited, overloaded, or the connection never opened). When the
answer is lost after the request went out, the job fails with `SubmissionUnknownError`
instead: paying twice is worse than retrying a job by hand. Polls and downloads are reads,
and are retried freely.

The caller records each accepted submission before it is polled, so a retried task or a
restarted worker resumes the recorded request instead of paying for a new one.
"""

from __future__ import annotations

import io
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError

from core.errors import choices
from core.settings import BflSettings
from generation.errors import (
    ContentModeratedError,
    ModelUnavailableError,
    ProviderError,
    SubmissionUnknownError,
)
from generation.schemas import MAX_SEED, GeneratedImage, GenerationSpec
from generation.variants import VARIANTS, Variant

log = logging.getLogger(__name__)

API_KEY_ENV = "CLEARANCE_GENERATION__BFL__API_KEY"

# Answers that come before the provider takes the job: a rate limit or an overloaded front
# end. 500 and 504 are missing on purpose: the provider may have queued the job behind them.
RESUBMIT_STATUSES = frozenset({429, 502, 503})
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0

PENDING_STATUSES = frozenset({"Pending", "Processing", "Queued"})
MODERATED_STATUSES = frozenset({"Request Moderated", "Content Moderated"})
FAILED_STATUSES = frozenset({"Error", "Failed"})
EXPIRED_STATUS = "Task not found"


@dataclass(frozen=True)
class ProviderRequest:
    """A submission the provider accepted (and bills): enough to fetch its image later."""

    image_index: int
    request_id: str
    polling_url: str


class BflClient:
    """Two connection pools: one to the API, which carries the key, and a keyless one for
    downloading results. Close it (or use it in a `with` block) when done."""

    def __init__(
        self,
        settings: BflSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        key = settings.api_key.get_secret_value() if settings.api_key else ""
        if not key:
            raise ModelUnavailableError(
                f"no Black Forest Labs API key is configured: set {API_KEY_ENV}",
                field="variant",
            )
        self._settings = settings
        self._key = key
        self._sleep = sleep
        self._clock = clock
        self._api = httpx.Client(
            base_url=settings.base_url,
            headers={"x-key": key},
            timeout=settings.request_timeout_s,
            transport=transport,
        )
        # Result samples are signed URLs on another host: they must never see the key.
        self._downloads = httpx.Client(timeout=settings.request_timeout_s, transport=transport)

    def close(self) -> None:
        self._api.close()
        self._downloads.close()

    def __enter__(self) -> BflClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def submit(
        self, *, endpoint: str, prompt: str, width: int, height: int, seed: int, ultra: bool
    ) -> tuple[str, str]:
        """Ask for one image; return the provider's request id and polling URL. Sent more
        than once only when no earlier attempt can have been accepted."""
        body: dict[str, Any] = {
            "prompt": prompt,
            "seed": seed,
            "safety_tolerance": self._settings.safety_tolerance,
            "output_format": "png",
        }
        if ultra:
            # Ultra picks its own resolution (about 4 MP) and takes only the shape.
            divisor = math.gcd(width, height)
            body["aspect_ratio"] = f"{width // divisor}:{height // divisor}"
        else:
            body |= {"width": width, "height": height}

        for attempt in range(self._settings.max_retries + 1):
            try:
                response = self._api.post(endpoint, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                failure, retry_after = f"{type(e).__name__}: {e}", None
            except httpx.TransportError as e:
                raise self._unknown(endpoint, f"{type(e).__name__}: {e}") from e
            else:
                if response.is_success:
                    return self._accepted(endpoint, response)
                if response.status_code not in RESUBMIT_STATUSES:
                    if response.is_server_error:
                        raise self._unknown(endpoint, self._describe(response))
                    raise self._error(f"{endpoint} refused the request: {self._describe(response)}")
                failure, retry_after = self._describe(response), _retry_after(response)
            if attempt < self._settings.max_retries:
                log.warning("submit to %s failed (%s); sending again", endpoint, failure)
                self._back_off(attempt, retry_after)
        raise self._error(
            f"gave up submitting to {endpoint} after {self._settings.max_retries} retries; "
            f"last: {failure}"
        )

    def wait(self, polling_url: str) -> bytes:
        """Poll until the image is ready and return its bytes (as the provider encoded them)."""
        started = self._clock()
        while True:
            answer = self._get_json(polling_url)
            status = answer.get("status")
            if status == "Ready":
                result = answer.get("result")
                sample = result.get("sample") if isinstance(result, dict) else None
                if not isinstance(sample, str):
                    raise self._error(f"{polling_url} is Ready but names no result.sample")
                return self._get(
                    self._downloads, sample, shown=f"the sample of {polling_url}"
                ).content
            if status in MODERATED_STATUSES:
                reasons = answer.get("details") or answer.get("result")
                raise ContentModeratedError(
                    self._redact(
                        f"the provider's moderation refused the image ({status}): {reasons}"
                    ),
                    status=str(status),
                    reasons=reasons,
                )
            if status in FAILED_STATUSES:
                details = answer.get("details") or answer.get("result")
                raise self._error(f"the provider failed the generation ({status}): {details}")
            if status == EXPIRED_STATUS:
                raise self._error(
                    f"the provider no longer knows {polling_url} ({status}): results expire"
                )
            if status not in PENDING_STATUSES:
                known = sorted(PENDING_STATUSES | MODERATED_STATUSES | FAILED_STATUSES)
                raise self._error(
                    f"unexpected status {status!r} from {polling_url}; expected "
                    f"{choices(['Ready', *known, EXPIRED_STATUS])}"
                )
            waited = self._clock() - started
            if waited >= self._settings.max_wait_s:
                raise self._error(
                    f"{polling_url} is still pending after {waited:.0f} s "
                    f"(limit {self._settings.max_wait_s:g} s)"
                )
            self._sleep(self._settings.poll_interval_s)

    def _accepted(self, endpoint: str, response: httpx.Response) -> tuple[str, str]:
        try:
            answer = response.json()
            request_id = answer["id"]
        except (ValueError, TypeError, KeyError) as e:
            # A success status means the provider took (and bills) the job we cannot track.
            raise self._unknown(endpoint, f"HTTP {response.status_code} without an id") from e
        polling_url = answer.get("polling_url") or (
            f"{self._settings.base_url.rstrip('/')}/v1/get_result?id={request_id}"
        )
        log.info("submitted to %s: request %s", endpoint, request_id)
        return str(request_id), str(polling_url)

    def _get_json(self, url: str) -> dict[str, Any]:
        response = self._get(self._api, url, shown=url)
        try:
            answer = response.json()
        except ValueError as e:
            raise self._error(f"{url} answered something other than JSON") from e
        if not isinstance(answer, dict):
            raise self._error(f"{url} answered {answer!r}, not a JSON object")
        return answer

    def _get(self, client: httpx.Client, url: str, *, shown: str) -> httpx.Response:
        """GET with retries: reading twice costs nothing. `shown` names the URL in messages,
        since a signed sample URL carries its signature."""
        for attempt in range(self._settings.max_retries + 1):
            try:
                response = client.get(url)
            except httpx.TransportError as e:
                failure, retry_after = f"{type(e).__name__}: {e}", None
            else:
                if response.is_success:
                    return response
                if response.status_code != 429 and not response.is_server_error:
                    raise self._error(f"GET {shown}: {self._describe(response)}")
                failure, retry_after = self._describe(response), _retry_after(response)
            if attempt < self._settings.max_retries:
                log.warning("GET %s failed (%s); retrying", shown, failure)
                self._back_off(attempt, retry_after)
        raise self._error(
            f"gave up on GET {shown} after {self._settings.max_retries} retries; last: {failure}"
        )

    def _back_off(self, attempt: int, retry_after: float | None) -> None:
        if retry_after is not None:
            if retry_after > BACKOFF_CAP_S:
                raise self._error(
                    f"the provider asks to wait {retry_after:g} s before retrying, "
                    f"longer than the {BACKOFF_CAP_S:g} s this client waits"
                )
            self._sleep(retry_after)
            return
        # Full jitter spreads out workers that failed together; the value is no secret.
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)
        self._sleep(random.uniform(0, ceiling))  # noqa: S311

    def _error(self, detail: str) -> ProviderError:
        return ProviderError(self._redact(detail))

    def _unknown(self, endpoint: str, failure: str) -> SubmissionUnknownError:
        return SubmissionUnknownError(
            self._redact(
                f"the answer to the submission to {endpoint} was lost ({failure}); the provider "
                "may have accepted and billed it, so it was not resubmitted to avoid paying twice"
            )
        )

    def _describe(self, response: httpx.Response) -> str:
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = None
        text = detail if detail is not None else response.text[:200]
        return self._redact(f"HTTP {response.status_code}: {text}")

    def _redact(self, detail: str) -> str:
        # Provider messages are echoed into errors, which reach logs and API responses.
        return detail.replace(self._key, "[redacted]")


def generate_via_api(
    spec: GenerationSpec,
    variant: Variant,
    client: BflClient,
    *,
    known: Mapping[int, ProviderRequest],
    record: Callable[[ProviderRequest], None],
) -> list[GeneratedImage]:
    """Generate `spec` on the API. Image i uses seed `spec.seed + i`. Indexes in `known` were
    submitted (and paid for) before and are only fetched; every new submission is passed to
    `record` before it is polled, so that it is never paid for twice."""
    endpoint = variant.api_endpoint
    if endpoint is None:
        served = [v.name for v in VARIANTS.values() if v.api_endpoint]
        raise ModelUnavailableError(
            f"variant {variant.name!r} is not served by the Black Forest Labs API; "
            f"API variants: {choices(served)}",
            field="variant",
        )
    # The request schema belongs to the endpoint: only the ultra one takes an aspect ratio.
    ultra = endpoint.endswith("-ultra")
    seeds = [(spec.seed + i) % (MAX_SEED + 1) for i in range(spec.n_images)]

    # Submit everything first so the provider works on all images at once.
    requests: list[ProviderRequest] = []
    for index, seed in enumerate(seeds):
        request = known.get(index)
        if request is None:
            request_id, polling_url = client.submit(
                endpoint=endpoint,
                prompt=spec.prompt,
                width=spec.width,
                height=spec.height,
                seed=seed,
                ultra=ultra,
            )
            request = ProviderRequest(index, request_id, polling_url)
            record(request)
        requests.append(request)

    images = []
    for request, seed in zip(requests, seeds, strict=True):
        png, width, height = _to_png(client.wait(request.polling_url), request)
        images.append(GeneratedImage(request.image_index, seed, png, width, height))
    return images


def _to_png(data: bytes, request: ProviderRequest) -> tuple[bytes, int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ProviderError(
            f"the result of request {request.request_id} is not an image: {e}"
        ) from e
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return out.getvalue(), rgb.width, rgb.height


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        # Absent, or an HTTP date: fall back to our own backoff.
        return None

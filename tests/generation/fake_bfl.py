"""An imitation of the Black Forest Labs API, served over real HTTP on 127.0.0.1.

It answers like the provider: a POST to a model endpoint bills and queues a job, GET
/v1/get_result reports it Pending a few times and then Ready with a signed sample URL, and
the sample is a real PNG whose colour comes from the seed. Prompts with a chosen word are
moderated. Tests queue `Fault`s per route to reproduce rate limits, 5xx, dropped connections
and answers slower than the client's timeout, and read back what the provider saw:
`submissions` (each one billed), `polls` and `sample_keys`.
"""

from __future__ import annotations

import io
import json
import random
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from PIL import Image

Route = Literal["submit", "poll", "sample"]

ENDPOINTS = ("/v1/flux-pro-1.1", "/v1/flux-pro-1.1-ultra", "/v1/flux-dev")
ULTRA_ENDPOINT = "/v1/flux-pro-1.1-ultra"
ULTRA_LONG_SIDE = 2048
# Longer than any client timeout in the tests; the server wakes such answers when it stops.
FOREVER_S = 60.0


@dataclass(frozen=True)
class Fault:
    """The next answer on a route. `Fault()` is a normal answer; `delay_s` alone makes it
    slow; `status`, `body`, `raw` or `drop` replace it."""

    status: int | None = None
    body: Any = None
    raw: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Wait before answering (FOREVER_S: past any client timeout).
    delay_s: float = 0.0
    # Submit only: take and bill the submission before the fault applies, as a provider
    # whose answer is lost on the way back does.
    accept_first: bool = False
    # Close the connection without answering.
    drop: bool = False

    @property
    def replaces_answer(self) -> bool:
        return self.status is not None or self.body is not None or self.raw is not None


@dataclass(frozen=True)
class Submission:
    """One accepted, billed submission."""

    id: str
    endpoint: str
    body: dict[str, Any]
    key: str
    width: int
    height: int

    @property
    def seed(self) -> int:
        return int(self.body["seed"])

    @property
    def prompt(self) -> str:
        return str(self.body["prompt"])


def color_for(seed: int) -> tuple[int, int, int]:
    """The colour of every sample generated with `seed`."""
    rng = random.Random(seed)
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


class FakeBfl:
    def __init__(
        self,
        *,
        api_key: str = "bfl-test-key",
        pending_polls: int = 1,
        request_moderated_word: str = "forbidden",
        content_moderated_word: str = "unsightly",
        include_polling_url: bool = True,
        credits: int | None = None,
    ) -> None:
        self.api_key = api_key
        self.pending_polls = pending_polls
        self.request_moderated_word = request_moderated_word
        self.content_moderated_word = content_moderated_word
        self.include_polling_url = include_polling_url
        self.credits = credits
        self.base_url = ""
        self.submissions: list[Submission] = []
        self.polls: list[str] = []
        # The x-key header sent with each sample download (None: none was sent).
        self.sample_keys: list[str | None] = []
        self.stopping = threading.Event()
        self._faults: dict[Route, deque[Fault]] = {r: deque() for r in ("submit", "poll", "sample")}
        self._lock = threading.Lock()

    def fail(self, route: Route, *faults: Fault) -> None:
        """Queue answers for the next requests on `route`, in order."""
        with self._lock:
            self._faults[route].extend(faults)

    def next_fault(self, route: Route) -> Fault | None:
        with self._lock:
            return self._faults[route].popleft() if self._faults[route] else None

    def submission(self, request_id: str) -> Submission | None:
        with self._lock:
            return next((s for s in self.submissions if s.id == request_id), None)

    def bill(self, endpoint: str, body: dict[str, Any], key: str) -> Submission | str:
        """Record the submission, or say why the provider refuses it (not billed)."""
        problem = _invalid(endpoint, body)
        if problem:
            return problem
        if endpoint == ULTRA_ENDPOINT:
            ratio = Fraction(*map(int, str(body["aspect_ratio"]).split(":")))
            if ratio >= 1:
                width, height = ULTRA_LONG_SIDE, round(ULTRA_LONG_SIDE / ratio)
            else:
                width, height = round(ULTRA_LONG_SIDE * ratio), ULTRA_LONG_SIDE
        else:
            width, height = int(body["width"]), int(body["height"])
        with self._lock:
            if self.credits is not None:
                if self.credits <= 0:
                    return "Insufficient credits"
                self.credits -= 1
            submission = Submission(uuid.uuid4().hex, endpoint, body, key, width, height)
            self.submissions.append(submission)
        return submission

    def result(self, request_id: str) -> dict[str, Any]:
        """What GET /v1/get_result answers now for `request_id`."""
        with self._lock:
            self.polls.append(request_id)
            polled = self.polls.count(request_id)
        submission = self.submission(request_id)
        if submission is None:
            return {"id": request_id, "status": "Task not found"}
        prompt = submission.prompt.lower()
        if self.request_moderated_word in prompt:
            return _moderated(request_id, "Request Moderated", self.request_moderated_word)
        if polled <= self.pending_polls:
            return {"id": request_id, "status": "Pending", "result": None, "progress": 0.5}
        if self.content_moderated_word in prompt:
            return _moderated(request_id, "Content Moderated", self.content_moderated_word)
        sample = f"{self.base_url}/samples/{request_id}.png?se=2099-01-01&sig=signature"
        return {
            "id": request_id,
            "status": "Ready",
            "result": {"sample": sample, "prompt": submission.prompt, "seed": submission.seed},
        }

    def sample(self, request_id: str) -> bytes | None:
        submission = self.submission(request_id)
        if submission is None:
            return None
        image = Image.new("RGB", (submission.width, submission.height), color_for(submission.seed))
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()


def _moderated(request_id: str, status: str, word: str) -> dict[str, Any]:
    return {
        "id": request_id,
        "status": status,
        "result": None,
        "details": {"Moderation Reasons": [f"contains {word!r}"]},
    }


def _invalid(endpoint: str, body: dict[str, Any]) -> str | None:
    """Validate as the provider does (FastAPI: HTTP 422); sides are multiples of 32."""
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return "prompt: field required"
    if not isinstance(body.get("seed"), int):
        return "seed: must be an integer"
    if endpoint == ULTRA_ENDPOINT:
        if "width" in body or "height" in body:
            return "width/height: not accepted by ultra, use aspect_ratio"
        try:
            ratio = Fraction(*map(int, str(body.get("aspect_ratio")).split(":")))
        except (TypeError, ValueError, ZeroDivisionError):
            return "aspect_ratio: must be 'W:H'"
        if not Fraction(9, 21) <= ratio <= Fraction(21, 9):
            return "aspect_ratio: must be between 21:9 and 9:21"
        return None
    for side in ("width", "height"):
        value = body.get(side)
        if not isinstance(value, int) or not 256 <= value <= 1440 or value % 32:
            return f"{side}: must be a multiple of 32 from 256 to 1440, got {value!r}"
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeBfl) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet

    def do_POST(self) -> None:
        fake = self.server.fake
        fault = fake.next_fault("submit")
        if fault and not fault.accept_first:
            if self._answer_fault(fault):
                return
            fault = None
        path = urlsplit(self.path).path
        if path not in ENDPOINTS:
            self._json(404, {"detail": "Not Found"})
            return
        key = self.headers.get("x-key")
        if key != fake.api_key:
            self._json(403, {"detail": "Not authenticated - Invalid Authentication"})
            return
        length = int(self.headers.get("content-length") or 0)
        try:
            body = json.loads(self.rfile.read(length))
        except json.JSONDecodeError:
            self._json(422, {"detail": "body: invalid JSON"})
            return
        submission = fake.bill(path, body, key)
        if isinstance(submission, str):
            status = 402 if submission == "Insufficient credits" else 422
            self._json(status, {"detail": submission})
            return
        if fault and self._answer_fault(fault):
            return
        answer = {"id": submission.id}
        if fake.include_polling_url:
            answer["polling_url"] = f"{fake.base_url}/v1/get_result?id={submission.id}"
        self._json(200, answer)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/v1/get_result":
            self._poll(parse_qs(url.query).get("id", [""])[0])
        elif url.path.startswith("/samples/") and url.path.endswith(".png"):
            self._sample(url.path.removeprefix("/samples/").removesuffix(".png"))
        else:
            self._json(404, {"detail": "Not Found"})

    def _poll(self, request_id: str) -> None:
        fake = self.server.fake
        fault = fake.next_fault("poll")
        if fault and self._answer_fault(fault):
            return
        if self.headers.get("x-key") != fake.api_key:
            self._json(403, {"detail": "Not authenticated - Invalid Authentication"})
            return
        self._json(200, fake.result(request_id))

    def _sample(self, request_id: str) -> None:
        fake = self.server.fake
        fake.sample_keys.append(self.headers.get("x-key"))
        fault = fake.next_fault("sample")
        if fault and self._answer_fault(fault):
            return
        png = fake.sample(request_id)
        if png is None:
            self._send(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
        else:
            self._send(200, png, "image/png")

    def _answer_fault(self, fault: Fault) -> bool:
        """Apply the fault; True when it answered (or dropped) instead of the normal path."""
        if fault.delay_s:
            self.server.fake.stopping.wait(fault.delay_s)
        if fault.drop:
            return True
        if fault.raw is not None:
            self._send(fault.status or 200, fault.raw, "application/octet-stream", fault.headers)
            return True
        if fault.replaces_answer:
            body = fault.body if fault.body is not None else {"detail": f"HTTP {fault.status}"}
            self._json(fault.status or 200, body, fault.headers)
            return True
        return False

    def _json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(
        self,
        status: int,
        content: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(content)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(content)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting: that is what a timeout fault is for


@contextmanager
def running_fake_bfl(**options: Any) -> Iterator[FakeBfl]:
    """Serve a `FakeBfl(**options)` on a free port until the block ends."""
    fake = FakeBfl(**options)
    server = _Server(fake)
    fake.base_url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield fake
    finally:
        fake.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()

"""`clearance serve` with dashboards open: a live-update stream does not outlive its session,
and stopping the server does not wait for the streams."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.api.dashboard_helpers import PASSWORD, csrf_of, post_sign_in
from tests.e2e.conftest import CLEARANCE, Service

pytestmark = pytest.mark.e2e


def test_signing_out_and_ctrl_c_end_open_live_update_streams(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    service = Service(
        tmp_path,
        {
            "CLEARANCE_DATA_DIR": str(tmp_path / "var"),
            "CLEARANCE_GENERATION__TINY_MODEL_DIR": str(tiny_model_dir),
        },
    )
    service.cli("db", "upgrade")
    service.cli("tenants", "create", "acme")
    create = ["users", "create", "--tenant", "acme", "--email", "r@acme.test", "--role", "reviewer"]
    made = subprocess.run(
        [CLEARANCE, *create, "--password-stdin"],
        input=PASSWORD + "\n",
        env=service.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    service.start_api("--no-worker")
    try:
        first, second = signed_in(service), signed_in(service)
        streams = [Stream(first), Stream(second)]
        for stream in streams:
            assert stream.opened.wait(60), service.logs()
        # Signing out ends that session's stream at once, with an `ended` event.
        csrf = csrf_of(first.get("/dashboard/jobs").text)
        assert first.post("/dashboard/logout", data={"csrf_token": csrf}).status_code == 303
        streams[0].thread.join(60)
        assert streams[0].events[-1] == "ended"
        assert not streams[1].done.is_set()
        # Ctrl-C: the server, and the other stream with it, end (interrupt() fails after 60 s;
        # the stream alone would have kept the server up for 300).
        service.interrupt("api")
        streams[1].thread.join(30)
        assert streams[1].done.is_set()
        assert streams[1].events == ["queue"]
        assert "Traceback" not in (tmp_path / "api.log").read_text()
    finally:
        service.stop_all()


def signed_in(service: Service) -> httpx.Client:
    browser = httpx.Client(base_url=service.api_url, timeout=30)
    signed = post_sign_in(browser, "acme", "r@acme.test")
    assert signed.status_code == 303, signed.text
    return browser


class Stream:
    """A dashboard's live-update stream, read in a thread: the events it got, and whether it
    has ended."""

    def __init__(self, browser: httpx.Client) -> None:
        self.browser = browser
        self.events: list[str] = []
        self.opened, self.done = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        with self.browser.stream("GET", "/dashboard/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    self.events.append(line.removeprefix("event: "))
                    self.opened.set()
        self.done.set()

"""Real Chromium against a real server: Debian's Chromium (/usr/bin/chromium) driven by
Playwright, and `clearance serve` (uvicorn) on its own SQLite database. Jobs are put in review
by the real stages, run in this process on the same database (as a worker would)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright

from api.app import create_app
from core import celery_app
from core.settings import get_settings
from tests.conftest import reset_caches
from tests.e2e.conftest import Service

CHROMIUM = Path(os.environ.get("CLEARANCE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = (
            f"Chromium is not at {CHROMIUM}: install Debian's with `apt-get install -y chromium` "
            "(or point CLEARANCE_TEST_CHROMIUM at a Chromium binary)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true, so the browser tests must run, not skip")
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sqlite_template: Path
) -> Iterator[Service]:
    """`clearance serve --no-worker` on a migrated SQLite database, with this process's settings
    pointed at the same database and data folder."""
    root = tmp_path_factory.mktemp("browser")
    shutil.copy(sqlite_template, root / "clearance.db")
    env = {
        "CLEARANCE_DATA_DIR": str(root / "var"),
        "CLEARANCE_DATABASE_URL": f"sqlite:///{root / 'clearance.db'}",
        "CLEARANCE_BROKER_URL": f"sqla+sqlite:///{root / 'broker.db'}",
        "CLEARANCE_GENERATION__TINY_MODEL_DIR": str(tiny_model_dir),
        # No random quality sample: a test knows which jobs a person must see.
        "CLEARANCE_ROUTING__SAMPLE_RATE": "0",
        # A catalogue logo in a job's image goes to a person (not straight to a rejection),
        # as a high-risk, four-eyes task.
        "CLEARANCE_MATCHING__KEYPOINT_REJECT_INLIERS": "100000",
        "CLEARANCE_ROUTING__HIGH_RISK_AT": "0.8",
        "CLEARANCE_DASHBOARD__EVENTS_POLL_SECONDS": "0.5",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        reset_caches()
        celery_app.configure(get_settings())
        service = Service(root, env)
        try:
            service.start_api("--no-worker")
            yield service
        finally:
            service.stop_all()
            reset_caches()


@pytest.fixture
def api(served: Service) -> Iterator[TestClient]:
    """The API in this process, on the served database: jobs are submitted through it."""
    with TestClient(create_app()) as client:
        yield client


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Path:
    folder = Path(request.config.rootpath) / "var" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Reviewer:
    """One person in their own browser context (cookies of their own)."""

    def __init__(self, context: BrowserContext, base_url: str) -> None:
        self.context = context
        self.page: Page = context.new_page()
        self.base_url = base_url
        # A script error, a Content-Security-Policy violation or a missing file fails the
        # test; a refused sign-in (401) is what a test asks for.
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def goto(self, path: str) -> None:
        self.page.goto(self.base_url + path)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "status of 401" not in message.text:
            self.errors.append(message.text)

    def at(self, path: str) -> None:
        """Wait until the page is at exactly this path (and query)."""
        self.page.wait_for_url(self.base_url + path)

    def sign_in(self, tenant: str, email: str, password: str) -> None:
        """Type into the sign-in form, field by field, as a person does."""
        self.page.wait_for_selector("form[action='/dashboard/login']")
        keyboard = self.page.keyboard
        self.page.focus("input[name=tenant]")
        keyboard.type(tenant)
        keyboard.press("Tab")
        keyboard.type(email)
        keyboard.press("Tab")
        keyboard.type(password)
        keyboard.press("Enter")


@pytest.fixture
def browse(chromium: Browser, served: Service) -> Iterator[Callable[[], Reviewer]]:
    """Opens a browser context per person; at the end, any script error or CSP violation any
    of them met fails the test."""
    opened: list[Reviewer] = []

    def open_one() -> Reviewer:
        person = Reviewer(chromium.new_context(accept_downloads=True), served.api_url)
        opened.append(person)
        return person

    yield open_one
    for person in opened:
        person.context.close()
    errors = [error for person in opened for error in person.errors]
    assert errors == [], f"errors in the browser: {errors}"

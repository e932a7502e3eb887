"""A reviewer works the queue in real Chromium, from the keyboard alone: sign in, claim,
approve, reject with a reason, the second approval of a four-eyes task, live updates; legal
downloads the signed audit export. Screenshots go to var/screenshots/."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import expect

from api.dashboard.reviewing import REJECT_REASONS
from core.db import read_scope
from core.settings import get_settings
from pipeline.models import Job
from review.models import ReviewTask
from tests.api.dashboard_helpers import PASSWORD, make_user
from tests.api.test_dashboard import flagged_task, in_review
from tests.browser.conftest import Reviewer
from tests.conftest import make_tenant
from tests.e2e.conftest import Service

pytestmark = pytest.mark.browser

Browse = Callable[[], Reviewer]


def task(task_id: str) -> ReviewTask:
    with read_scope() as session:
        found = session.get_one(ReviewTask, task_id)
        _ = found.decisions  # loaded while the session is open
        return found


def job_state(task_id: str) -> str:
    with read_scope() as session:
        return session.get_one(Job, session.get_one(ReviewTask, task_id).job_id).state


def signed_in(browse: Browse, tenant: str, email: str, start: str = "/dashboard/queue") -> Reviewer:
    person = browse()
    person.goto(start)
    person.sign_in(tenant, email, PASSWORD)
    person.at(start)
    return person


def test_sign_in_and_out(browse: Browse, screenshots: Path) -> None:
    tenant = make_tenant("signin")
    email = make_user(tenant, "reviewer")
    person = browse()
    page = person.page
    person.goto("/dashboard/queue")
    # Not signed in: the sign-in page, which comes back here afterwards.
    page.wait_for_url(re.compile(r"/dashboard/login\?next=/dashboard/queue$"))
    person.sign_in(tenant.name, email, "not the password at all")
    expect(page.get_by_role("alert")).to_contain_text("the tenant, email or password is wrong")
    page.screenshot(path=screenshots / "login-refused.png")
    person.sign_in(tenant.name, email, PASSWORD)
    person.at("/dashboard/queue")
    expect(page.get_by_role("heading", name="Review queue")).to_be_visible()
    expect(page.locator("header .user")).to_have_text(email)
    page.screenshot(path=screenshots / "signed-in.png")
    (cookie,) = [c for c in person.context.cookies() if c["name"] == "clearance_session"]
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Lax")

    # A second tab, live; signing out in the first sends it to the sign-in page too.
    other_tab = person.context.new_page()
    other_tab.goto(person.base_url + "/dashboard/queue")
    expect(other_tab.locator("body")).to_have_attribute("data-live", "connected")
    page.get_by_role("button", name="Sign out").click()
    person.at("/dashboard/login")
    other_tab.wait_for_url(re.compile(r"/dashboard/login\?next=/dashboard/queue$"))
    person.goto("/dashboard/queue")
    page.wait_for_url(re.compile(r"/dashboard/login\?next="))


def test_claim_from_the_keyboard(browse: Browse, api: TestClient, screenshots: Path) -> None:
    tenant = make_tenant("claim")
    task_id = in_review(api, tenant)
    email = make_user(tenant, "reviewer")
    person = signed_in(browse, tenant.name, email)
    page = person.page
    expect(page.locator(f"#task-{task_id}")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("Enter")
    person.at(f"/dashboard/reviews/{task_id}")
    expect(page.locator("#claim-state")).to_contain_text("Not claimed")
    page.keyboard.press("c")
    expect(page.locator("#claim-state")).to_contain_text("Claimed by you")
    page.screenshot(path=screenshots / "claimed.png", full_page=True)
    assert task(task_id).claimed_by == f"user:{email}"


def test_approve_and_reject_with_a_reason_from_the_keyboard_alone(
    browse: Browse, api: TestClient, screenshots: Path
) -> None:
    tenant = make_tenant("keyboard")
    first, second, third = (
        in_review(api, tenant, p) for p in ("a red barn", "a blue barn", "a tall barn")
    )
    person = signed_in(browse, tenant.name, make_user(tenant, "reviewer"))
    page = person.page
    keys = page.keyboard
    # j and k move through the queue; Enter opens the selected task.
    keys.press("j")
    keys.press("j")
    keys.press("k")
    expect(page.locator(f"#task-{second}")).to_have_attribute("aria-selected", "true")
    keys.press("k")
    keys.press("Enter")
    person.at(f"/dashboard/reviews/{first}")
    expect(page.locator("#review-status")).to_be_visible()
    page.screenshot(path=screenshots / "review-before-approve.png", full_page=True)

    # a approves (claiming it on the way) and moves on to the next task.
    keys.press("a")
    person.at(f"/dashboard/reviews/{second}?decided={first}")
    expect(page.locator("#just-decided")).to_contain_text("approved")
    assert task(first).outcome == "approve"
    assert job_state(first) == "approved"

    # j and k on the review page walk the queue too.
    keys.press("j")
    person.at(f"/dashboard/reviews/{third}")
    keys.press("k")
    person.at(f"/dashboard/reviews/{second}")

    # r asks for a reason: a number picks it, Enter rejects.
    keys.press("r")
    dialog = page.locator("#reject-dialog")
    expect(dialog).to_be_visible()
    keys.press("3")
    expect(dialog.locator("input[type=radio]").nth(2)).to_be_checked()
    page.screenshot(path=screenshots / "reject-reason-picker.png")
    keys.press("Enter")
    person.at(f"/dashboard/reviews/{third}?decided={second}")
    expect(page.locator("#just-decided")).to_contain_text(f"rejected ({REJECT_REASONS[2]})")
    rejected = task(second)
    assert (rejected.outcome, rejected.decisions[-1].reason) == ("reject", REJECT_REASONS[2])
    assert job_state(second) == "rejected"
    page.screenshot(path=screenshots / "after-reject.png", full_page=True)

    # Escape closes the picker without deciding; q goes back to the queue.
    keys.press("r")
    expect(dialog).to_be_visible()
    keys.press("Escape")
    expect(dialog).to_be_hidden()
    keys.press("q")
    person.at("/dashboard/queue")
    expect(page.locator("tr.task")).to_have_count(1)
    assert task(third).state == "open"


def test_the_second_approval_of_a_four_eyes_task(
    browse: Browse, api: TestClient, screenshots: Path, tmp_path: Path
) -> None:
    tenant = make_tenant("foureyes")
    # A catalogue logo in the image, a catalogue person in the prompt: high risk.
    task_id = flagged_task(api, tenant, get_settings(), tmp_path)
    assert task(task_id).required_approvals == 2
    one = signed_in(browse, tenant.name, make_user(tenant, "reviewer", "one@foureyes.test"))
    one.page.keyboard.press("Enter")
    one.at(f"/dashboard/reviews/{task_id}")
    # The match is drawn on the image, beside the exemplar it matched.
    expect(one.page.locator("svg.overlay rect.box").first).to_be_visible()
    expect(one.page.locator(".exemplar img").first).to_be_visible()
    expect(one.page.locator("#prompt mark")).to_have_text("Ada Quillfeather")
    expect(one.page.locator("p.embedder")).to_contain_text("tiny-random (not a semantic check)")
    one.page.screenshot(path=screenshots / "four-eyes-first-reviewer.png", full_page=True)
    one.page.keyboard.press("a")
    one.at(f"/dashboard/queue?decided={task_id}")
    expect(one.page.locator("#just-decided")).to_contain_text("1 of 2 approvals")
    assert (task(task_id).state, job_state(task_id)) == ("open", "in_review")

    two = signed_in(browse, tenant.name, make_user(tenant, "reviewer", "two@foureyes.test"))
    two.page.keyboard.press("Enter")
    two.at(f"/dashboard/reviews/{task_id}")
    expect(two.page.locator("#four-eyes")).to_have_text("four-eyes: 1 of 2 approvals")
    two.page.screenshot(path=screenshots / "four-eyes-second-reviewer.png", full_page=True)
    two.page.keyboard.press("a")
    two.at(f"/dashboard/queue?decided={task_id}")
    expect(two.page.locator("#just-decided")).to_contain_text("approved")
    decided = task(task_id)
    assert (decided.outcome, decided.approvals) == (
        "approve",
        ["user:one@foureyes.test", "user:two@foureyes.test"],
    )
    assert job_state(task_id) == "approved"


def test_live_updates_show_new_tasks_and_claims_by_others(
    browse: Browse, api: TestClient, screenshots: Path
) -> None:
    tenant = make_tenant("live")
    first = in_review(api, tenant, "a red barn")
    watcher = signed_in(browse, tenant.name, make_user(tenant, "reviewer", "watcher@live.test"))
    expect(watcher.page.locator("tr.task")).to_have_count(1)
    # The page's event stream has its first snapshot before anything changes.
    expect(watcher.page.locator("body")).to_have_attribute("data-live", "connected")
    second = in_review(api, tenant, "a blue barn")
    expect(watcher.page.locator(f"#task-{second}")).to_be_visible()
    expect(watcher.page.locator("#messages")).to_contain_text("1 new task in the queue")

    other = signed_in(
        browse,
        tenant.name,
        make_user(tenant, "reviewer", "other@live.test"),
        f"/dashboard/reviews/{first}",
    )
    other.page.keyboard.press("c")
    expect(other.page.locator("#claim-state")).to_contain_text("Claimed by you")
    expect(watcher.page.locator(f"#task-{first}")).to_contain_text("by user:other@live.test")
    expect(watcher.page.locator("#messages")).to_contain_text("claimed by user:other@live.test")
    watcher.page.screenshot(path=screenshots / "live-updates.png", full_page=True)


def test_legal_downloads_the_audit_export(
    browse: Browse, served: Service, screenshots: Path, tmp_path: Path
) -> None:
    tenant = make_tenant("legalteam")
    person = signed_in(browse, tenant.name, make_user(tenant, "legal"), "/dashboard/audit")
    page = person.page
    page.fill("input[name=type]", "dashboard.")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(r"type=dashboard\."))
    expect(page.locator("#events tbody tr").first).to_contain_text("dashboard.login")
    page.screenshot(path=screenshots / "audit-search.png", full_page=True)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download export").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name.startswith("audit-export-")
    assert saved.suffix == ".zip"
    verified = served.cli("audit", "verify-export", str(saved))
    assert verified.stdout.startswith("export OK: ")

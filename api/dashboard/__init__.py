"""The reviewer dashboard: server-rendered pages (Jinja2 templates, htmx, a small script for
keyboard shortcuts and live updates), signed in with a session cookie. Every page reads and
writes through the same services as the REST API."""

from fastapi import APIRouter

from api.dashboard import account, pages, reviewing

router = APIRouter(tags=["dashboard"])
router.include_router(account.router)
router.include_router(reviewing.router)
router.include_router(pages.router)

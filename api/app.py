"""The FastAPI app factory."""

from __future__ import annotations

from fastapi import FastAPI

from api import audit_log, catalogue, errors, metrics, policy, reviews, routes, webhooks
from core import celery_app
from core.settings import get_settings


def create_app() -> FastAPI:
    settings = get_settings()
    celery_app.configure(settings)
    app = FastAPI(
        title="Clearance",
        version="0.1.0",
        description=(
            "Content clearance for FLUX.1 image generation. Every job passes prompt policy, "
            "generation, image checks and routing before its images are released."
        ),
    )
    app.state.settings = settings
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(catalogue.router)
    app.include_router(policy.router)
    app.include_router(reviews.router)
    app.include_router(audit_log.router)
    app.include_router(webhooks.router)
    app.include_router(metrics.router)
    return app

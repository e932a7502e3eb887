"""The FastAPI app factory."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from api import (
    admin,
    admin_users,
    audit_log,
    catalogue,
    dashboard,
    errors,
    metrics,
    policy,
    reviews,
    routes,
    webhooks,
)
from api.deps import refuse_nul
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
        dependencies=[Depends(refuse_nul)],
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
    app.include_router(admin.router)
    app.include_router(admin_users.router)
    app.include_router(dashboard.router)
    return app

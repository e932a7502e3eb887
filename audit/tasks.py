"""Thin Celery wrapper: the time-based audit checkpoint, run by Celery beat."""

from __future__ import annotations

from audit import service
from core.celery_app import app
from core.db import session_scope
from core.settings import get_settings

CHECKPOINT_TASK = "audit.checkpoint"


@app.task(name=CHECKPOINT_TASK)
def checkpoint() -> int | None:
    """Checkpoint the chain head if events came since the last checkpoint. Idempotent: a
    redelivered run finds the head checkpointed already and writes nothing."""
    with session_scope() as session:
        written = service.write_checkpoint(session=session, settings=get_settings())
        return written.seq if written else None
